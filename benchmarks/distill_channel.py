"""Distillation against none at equal epochs, for fine blocks, coarse blocks and channel pruning at half the MACs.

ResNet-20 on CIFAR-10 JPEG (shared data), every method through the one driver
(:func:`uniprune.compressors.train.finetune.finetune`) with the same epochs, learning rate and data:

- ``masked 1x1``: uniform 50 % pruning of 1x1 blocks (a whole 3x3 kernel per input/output channel pair) on every
  compressible layer, projection then masked retraining;
- ``masked 8x4``: the same with the default 8x4 blocks;
- ``channel``: Torch-Pruning of the inner convs of every block (the option-A stream cannot shrink) to half the
  MACs (``ChannelConfig(target=0.5)``), then the smaller dense model fine-tuned.

Each once with the dense teacher's logits (Hinton et al. 2015, T = 4, weight 0.7: the driver's default when it is
given the dense model) and once without. The dense model is the pretrained checkpoint adapted to the JPEG training
set for ``--adapt-epochs`` (kept in ``--dense-cache`` for the next run); it is also the teacher. Top-1 on the JPEG
test set (``--test-limit`` images, a fixed random subset). Writes section ``distill_channel`` of docs/RESULTS.md.

    python benchmarks/distill_channel.py --train-limit 10000 --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.accounting import model_size  # noqa: E402
from uniprune.compressors.core.policy import Policy  # noqa: E402
from uniprune.compressors.core.structure import BlockShape  # noqa: E402
from uniprune.compressors.train.baselines import uniform_policy  # noqa: E402
from uniprune.compressors.train.diagnostics import convergence_warnings  # noqa: E402
from uniprune.compressors.train.finetune import AdmmConfig, ChannelConfig, finetune  # noqa: E402
from uniprune.compressors.train.training import cosine_schedule, evaluate, make_optimizer, train_epoch  # noqa: E402
from uniprune.search.datasets import load_dataset  # noqa: E402
from uniprune.search.models import build_model, load_weights  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNS = ("masked1x1", "channel", "masked8x4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA), help="the shared data folder (cifar10-jpeg/ and pretrained/ inside)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of every run (default 2)")
    p.add_argument("--lr", type=float, default=0.01, help="initial lr of every run, one cosine over its epochs (default 0.01)")
    p.add_argument("--train-limit", type=int, default=10_000, help="training images per epoch (default 10000)")
    p.add_argument("--val-limit", type=int, default=1000, help="validation images (a fixed random subset; default 1000)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (a fixed random subset; default all 10000)")
    p.add_argument("--adapt-epochs", type=int, default=1, help="dense epochs on the JPEG training set first (default 1)")
    p.add_argument("--adapt-limit", type=int, default=20_000, help="training images per adaptation epoch (default 20000)")
    p.add_argument("--dense-cache", default="/tmp/uniprune-resnet20-jpeg.pt", help="the adapted dense state dict, reused when present")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {list(RUNS)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distill", default="on,off", help="distillation settings to run, from on,off (default both)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="minutes per run instead of --epochs: the driver plans the epochs that fit (one cosine over them)")
    p.add_argument("--section", default="distill_channel", help="the section of docs/RESULTS.md to write")
    p.add_argument("--json-out", default=None, help="also write the figures here")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/RESULTS.md")
    return p.parse_args(argv)


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip().split("load average:")[-1].strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def adapted_dense(model_name: str, data: Path, bundle: Any, *, epochs: int, limit: int | None, cache: Path,
                  batch_size: int = 128, lr: float = 0.01) -> nn.Module:
    """The pretrained checkpoint of ``model_name`` (a CIFAR ResNet) adapted to the JPEG training set for ``epochs`` of
    ``limit`` augmented images on one cosine from ``lr``; kept in ``cache`` and read from it when present."""
    model = build_model(model_name, num_classes=10, input_shape=(3, 32, 32))
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model
    depth = model_name.rsplit("resnet", 1)[-1]
    load_weights(model, sorted((data / "pretrained").glob(f"resnet{depth}-*.th"))[0])
    if epochs > 0:
        optimizer = make_optimizer(model, lr=lr)
        steps = bundle.num_batches("train", batch_size, limit=limit)
        schedule = cosine_schedule(optimizer, steps * epochs)
        for epoch in range(epochs):
            batches = bundle.batches("train", batch_size, shuffle=True, augment=True, seed=10_000 + epoch, limit=limit)
            train_epoch(model, batches, optimizer, scheduler=schedule, desc=f"adapt {epoch + 1}/{epochs}", total=steps)
    torch.save(model.state_dict(), cache)
    return model


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    jpeg = Path(args.data) / "cifar10-jpeg"
    if not jpeg.is_dir():
        sys.exit(f"distill_channel: the shared data is missing ({jpeg}); see ../shared/data/README.md")
    started = time.time()
    bundle = load_dataset("imagefolder", f"{jpeg / 'cifar10-jpeg-train.tar.gz'},{jpeg / 'cifar10-jpeg-test.tar.gz'}",
                          val_fraction=0.1, seed=args.seed)

    def train_batches(epoch: int):
        return bundle.batches("train", args.batch_size, shuffle=True, augment=True, seed=args.seed * 100_003 + epoch,
                              limit=args.train_limit)

    def val_accuracy(model: nn.Module) -> float:
        return evaluate(model, bundle.batches("val", 500, shuffle=True, seed=12_345, limit=args.val_limit))

    def test_accuracy(model: nn.Module) -> float:
        return evaluate(model, bundle.batches("test", 500, shuffle=True, seed=12_345, limit=args.test_limit), desc="test")

    dense = adapted_dense("cifar-resnet20", Path(args.data), bundle, epochs=args.adapt_epochs, limit=args.adapt_limit,
                          cache=Path(args.dense_cache), batch_size=args.batch_size).eval()
    figures: dict[str, Any] = {"dense_test": test_accuracy(dense), "dense_val": val_accuracy(dense), "load_before": _load(), "rows": []}
    print(f"dense: test {figures['dense_test']:.4f}", file=sys.stderr)
    for run in args.runs.split(","):
        for distill in (d == "on" for d in args.distill.split(",")):
            model = copy.deepcopy(dense)
            if run == "channel":
                config, policy = ChannelConfig(target=0.5, epochs=args.epochs, lr=args.lr), Policy(layers={})
            else:
                shape = BlockShape(1, 1) if run == "masked1x1" else BlockShape(8, 4)
                policy = uniform_policy(model, 0.5, block_shapes={"conv": shape})
                config = AdmmConfig(method="masked", retrain_epochs=args.epochs, lr=args.lr, schedule="run")
            t0 = time.time()
            result = finetune(model, policy, train_batches, val_accuracy, config, teacher=dense, distill=None if distill else False,
                              time_budget=args.time_budget)
            seconds = time.time() - t0
            mac_ratio = result["channels"]["mac_ratio"] if run == "channel" else \
                model_size(model, result["structures"], input_shape=(3, 32, 32))["total"]["mac_ratio"]
            row = {"run": run, "distill": distill, "test": test_accuracy(model), "val": result["accuracy"],
                   "after_pruning_val": result["projected_accuracy"], "mac_ratio": mac_ratio, "seconds": seconds,
                   "epochs": result["epochs_run"], "budget": result["time_budget"], "warnings": convergence_warnings(result, dense_accuracy=figures["dense_val"]),
                   "load": _load()}
            figures["rows"].append(row)
            print(json.dumps(row), file=sys.stderr)
    figures.update(seconds=time.time() - started, args=vars(args), n_train=len(bundle.train), n_test=len(bundle.test))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    if not args.no_write:
        write_section(args.section, render(figures, args))
    print(json.dumps({k: v for k, v in figures.items() if k != "args"}))
    return figures


def _epochs(row: dict[str, Any]) -> str:
    budget = row.get("budget")
    if not budget:
        return str(row["epochs"])
    verdict = "met" if budget["met"] else "missed"
    return (f"{row['epochs']} of {budget['planned_epochs']} planned ({budget['epoch_seconds']:.0f} s each measured; "
            f"{budget['seconds_used']:.0f} s of {60 * budget['minutes']:.0f}: {verdict})")


def render(figures: dict[str, Any], args: argparse.Namespace) -> str:
    names = {"masked1x1": "masked, 1x1 blocks", "masked8x4": "masked, 8x4 blocks", "channel": "channel (Torch-Pruning)"}
    test_n = args.test_limit or figures["n_test"]
    budget = getattr(args, "time_budget", None)
    lines = [
        "## Fine-tuning to a time budget, 1x1 blocks and channel pruning at half the MACs (`benchmarks/distill_channel.py`)"
        if budget else "## Distillation against none, fine and coarse blocks and channel pruning at half the MACs "
        "(`benchmarks/distill_channel.py`)",
        "",
        f"Machine: {machine_line()}; {os.cpu_count()} cores shared with other jobs, "
        f"{args.threads} torch threads; load average (1, 5, 15 min) at the start: {figures['load_before']}. "
        f"Command: `{command_line()}`",
        "",
        f"ResNet-20, pretrained (akamaster) and adapted to the JPEG training set ({args.adapt_epochs} epoch of "
        f"{args.adapt_limit} images): dense top-1 **{100 * figures['dense_test']:.2f} %** on {test_n} JPEG test images. "
        + (f"Every run: as many epochs as a {budget:g}-min budget fits (the driver times a few batches and a validation "
           "pass, plans the epochs, and checks the clock before each one)" if budget else f"Every run: {args.epochs} epochs")
        + f", each of {args.train_limit} training images (augmented), SGD lr {args.lr:g} on one "
        f"cosine, the best epoch by validation ({args.val_limit} held-out training images) kept. Distillation: the dense "
        "model as teacher, T = 4, weight 0.7 (the driver's default when it is given the teacher). The validation images "
        "are CIFAR-10 training images, which the pretrained model has seen: its validation top-1 "
        f"({100 * figures['dense_val']:.1f} %) is above its test top-1, and the warnings below hold the runs against it.",
        "",
        "| method | MACs kept | distillation | top-1 after pruning (val) | top-1 after fine-tuning (test) | vs dense (points) | epochs | seconds | load (1 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in figures["rows"]:
        lines.append(f"| {names[r['run']]} | {r['mac_ratio']:.3f} | {'on' if r['distill'] else 'off'} | "
                     f"{100 * r['after_pruning_val']:.1f} % | **{100 * r['test']:.2f} %** | "
                     f"{100 * (r['test'] - figures['dense_test']):+.2f} | {_epochs(r)} | {r['seconds']:.0f} | {r['load'].split(',')[0]} |")
    by = {(r["run"], r["distill"]): r["test"] for r in figures["rows"]}
    gains = [f"{names[run]} {100 * (by[(run, True)] - by[(run, False)]):+.2f}" for run in RUNS if (run, True) in by and (run, False) in by]
    if gains:
        lines += ["", f"Distillation's gain at equal epochs (test points): {'; '.join(gains)}."]
    warned = [f"{names[r['run']]}, distillation {'on' if r['distill'] else 'off'}: {w}" for r in figures["rows"] for w in r["warnings"]]
    if warned:
        lines += ["", "Convergence warnings the runs printed (`compressors/train/diagnostics.py`):", ""] + [f"- {w}" for w in warned]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
