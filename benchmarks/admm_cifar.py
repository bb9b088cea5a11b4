"""ADMM against masked fine-tuning at equal epochs: CIFAR-10 (JPEG copy), pretrained ResNet-20.

Steps (issue 3, "Must show"):

1. load the pretrained CIFAR-10 ResNet-20 (akamaster) and adapt it to the JPEG training set for
   ``--adapt-epochs`` epochs (the JPEG copy is a slightly different distribution); report that dense
   baseline;
2. for each policy, uniform 50 % block pruning and 50 % prune + 25 % unify, on every compressible layer:
   test accuracy after the hard projection alone; after masked fine-tuning for ``--epochs`` E; after
   ADMM for the same E epochs in total (``E - R`` ADMM iterations of one epoch, then ``R`` retraining
   epochs); optionally after AGP (``--methods ...,agp``) for the same E; storage and MAC ratios.

Everything runs on the CPU unless ``--device cuda``; on two shared cores use the subset options
(``--train-limit`` samples per epoch, ``--test-limit`` test images). The section ``admm_cifar`` of
docs/RESULTS.md is rewritten with the figures and the exact command.

    python benchmarks/admm_cifar.py --train-limit 5000 --test-limit 2000 --epochs 3 --adapt-epochs 1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.accounting import model_size  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.core.projection import project_model  # noqa: E402
from uniprune.compressors.train.baselines import uniform_policy  # noqa: E402
from uniprune.compressors.train.finetune import AdmmConfig, AgpConfig, finetune  # noqa: E402
from uniprune.compressors.train.training import cosine_schedule, evaluate, make_optimizer, train_epoch  # noqa: E402
from uniprune.search.api.env import dense_layers  # noqa: E402
from uniprune.search.datasets import load_dataset  # noqa: E402
from uniprune.search.models import build_model, load_weights  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
POLICIES = {"prune50": (0.5, 0.0), "prune50-unify25": (0.5, 0.25)}
METHODS = ("masked", "admm", "agp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA), help="the shared data folder (cifar10-jpeg/ and pretrained/ inside)")
    p.add_argument("--model", default="cifar-resnet20", help="cifar-resnet20|32|44|56 (its pretrained file must be in DATA/pretrained)")
    p.add_argument("--checkpoint", default=None,
                   help="an already adapted dense checkpoint (uniprune train --checkpoint PRETRAINED --dataset imagefolder ...); "
                   "skips the adaptation")
    p.add_argument("--adapt-epochs", type=int, default=1, help="dense epochs on the JPEG training set first (default 1)")
    p.add_argument("--adapt-lr", type=float, default=0.01, help="lr of the dense adaptation (default 0.01)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs E per method (default 3)")
    p.add_argument("--retrain-epochs", type=int, default=1, help="ADMM: retraining epochs R of the E (default 1)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    p.add_argument("--rho", type=float, default=0.2, help="ADMM initial rho (default 0.2; scale it down as steps per epoch grow)")
    p.add_argument("--rho-growth", type=float, default=3.0, help="ADMM rho factor per iteration (default 3)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=None, help="training samples per epoch (default all 45,000)")
    p.add_argument("--val-limit", type=int, default=1000, help="validation samples for the per-epoch logs (default 1000)")
    p.add_argument("--test-limit", type=int, default=None, help="test images scored (default all 10,000)")
    p.add_argument("--methods", default="masked,admm", help=f"comma-separated, of {','.join(METHODS)} (default masked,admm)")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {','.join(POLICIES)}")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--keep-dense", default="ends", help="layers left dense, as 'uniprune search --keep-dense' (default ends: "
                   "the stem and the classifier; 'none': every layer compressed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="also write all figures to this JSON file")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/RESULTS.md")
    p.add_argument("--section", default="admm_cifar", help="the docs/RESULTS.md section to write (default admm_cifar)")
    args = p.parse_args(argv)
    for name in args.methods.split(","):
        if name not in METHODS:
            p.error(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    for name in args.policies.split(","):
        if name not in POLICIES:
            p.error(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if args.epochs <= args.retrain_epochs and "admm" in args.methods.split(","):
        p.error("--epochs must exceed --retrain-epochs so that ADMM gets at least one epoch")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_dir = Path(args.data)
    jpeg = data_dir / "cifar10-jpeg"
    weights = sorted((data_dir / "pretrained").glob(f"resnet{args.model.rsplit('resnet', 1)[-1]}-*.th"))
    if not jpeg.is_dir() or not weights:
        sys.exit(f"admm_cifar: the shared data is missing ({jpeg} and {data_dir / 'pretrained'}); see ../shared/data/README.md")
    started = time.time()
    bundle = load_dataset("imagefolder", f"{jpeg / 'cifar10-jpeg-train.tar.gz'},{jpeg / 'cifar10-jpeg-test.tar.gz'}", val_fraction=0.1, seed=args.seed)
    device = torch.device(args.device)

    def train_batches(epoch: int):
        return bundle.batches("train", args.batch_size, shuffle=True, augment=True, seed=args.seed * 100_003 + epoch,
                              limit=args.train_limit, device=device)

    def val_accuracy(model: nn.Module) -> float:
        # a fixed random subset: the image files are ordered by class, so the first N would be one class
        return evaluate(model, bundle.batches("val", 500, shuffle=True, seed=12_345, limit=args.val_limit, device=device), device=device)

    def test_accuracy(model: nn.Module) -> float:
        return evaluate(model, bundle.batches("test", 500, shuffle=True, seed=12_345, limit=args.test_limit, device=device),
                        device=device, desc="test")

    dense = build_model(args.model, num_classes=bundle.num_classes, input_shape=bundle.input_shape)
    load_weights(dense, weights[0])
    dense.to(device)
    figures: dict[str, Any] = {"pretrained_test_accuracy": test_accuracy(dense)}
    print(f"pretrained {args.model}: test {figures['pretrained_test_accuracy']:.4f}", file=sys.stderr)
    if args.checkpoint:
        load_weights(dense, args.checkpoint)
        args.adapt_epochs = 0
    elif args.adapt_epochs > 0:
        optimizer = make_optimizer(dense, lr=args.adapt_lr)
        steps = bundle.num_batches("train", args.batch_size, limit=args.train_limit)
        schedule = cosine_schedule(optimizer, steps * args.adapt_epochs)
        for epoch in range(args.adapt_epochs):
            train_epoch(dense, train_batches(10_000 + epoch), optimizer, scheduler=schedule, device=device,
                        desc=f"adapt {epoch + 1}/{args.adapt_epochs}", total=steps)
    figures["dense_test_accuracy"] = test_accuracy(dense)
    print(f"dense after {args.adapt_epochs} adaptation epoch(s): test {figures['dense_test_accuracy']:.4f}", file=sys.stderr)

    rows = []
    for policy_name in args.policies.split(","):
        prune, unify = POLICIES[policy_name]
        skip = dense_layers(args.keep_dense, [s.name for s in compressible_layers(dense)])
        policy = uniform_policy(dense, prune, unify, model_name=args.model, skip=skip)
        projected = copy.deepcopy(dense)
        structures = project_model(projected, policy)
        size = model_size(projected, structures, input_shape=bundle.input_shape)["total"]
        row: dict[str, Any] = {"policy": policy_name, "size_ratio": size["size_ratio"], "mac_ratio": size["mac_ratio"],
                               "mult_ratio": size["mults"] / size["dense_macs"], "projected": test_accuracy(projected)}
        print(f"{policy_name}: projection alone {row['projected']:.4f}", file=sys.stderr)
        for method in args.methods.split(","):
            model = copy.deepcopy(dense)
            t0 = time.time()
            if method == "agp":
                ramp = max(1, args.epochs - args.retrain_epochs)
                config = AgpConfig(ramp_epochs=ramp, retrain_epochs=args.epochs - ramp, lr=args.lr, device=args.device)
                result = finetune(model, policy, train_batches, val_accuracy, config)
            else:
                if method == "masked":
                    config = AdmmConfig(method="masked", retrain_epochs=args.epochs, lr=args.lr, device=args.device)
                else:
                    config = AdmmConfig(method="admm", iterations=args.epochs - args.retrain_epochs, epochs_per_iteration=1,
                                        retrain_epochs=args.retrain_epochs, rho=args.rho, rho_growth=args.rho_growth,
                                        lr=args.lr, device=args.device)
                result = finetune(model, policy, train_batches, val_accuracy, config)
            row[method] = test_accuracy(model)
            row[f"{method}_seconds"] = time.time() - t0
            row[f"{method}_projected_val"] = result["projected_accuracy"]
            if method == "admm":
                row["admm_residuals"] = [round(h["residual"], 4) for h in result["admm_history"]]
            print(f"{policy_name}: {method} {row[method]:.4f} ({row[f'{method}_seconds']:.0f} s)", file=sys.stderr)
        rows.append(row)
    figures.update(rows=rows, seconds=time.time() - started, args=vars(args))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    if not args.no_write:
        write_section(args.section, render(figures, args, len(bundle.train), len(bundle.test)))
    print(json.dumps({k: v for k, v in figures.items() if k != "args"}))
    return figures


def render(figures: dict[str, Any], args: argparse.Namespace, n_train: int, n_test: int) -> str:
    """The markdown section: setup, the dense baseline, one table row per policy, and the verdict."""
    methods = args.methods.split(",")
    train_n = min(n_train, args.train_limit or n_train)
    test_n = min(n_test, args.test_limit or n_test)
    lines = [
        "## ADMM vs masked fine-tuning, CIFAR-10 (JPEG), ResNet-20 (`benchmarks/admm_cifar.py`)",
        "",
        f"Machine: {machine_line()}. Command: `{command_line()}`",
        "",
        f"Training samples per epoch: {train_n:,} (random subset each epoch of the {n_train:,}); test images scored: "
        f"{test_n:,} of {n_test:,} (a fixed random subset). Block shapes: conv 8x4, linear 8x8; layers left dense: "
        f"{'the stem and the classifier' if args.keep_dense == 'ends' else args.keep_dense}, every other layer compressed alike. "
        f"Fine-tuning budget E = {args.epochs} epochs per method (ADMM: {args.epochs - args.retrain_epochs} ADMM "
        f"iterations of 1 epoch, rho {args.rho} x{args.rho_growth} per iteration, then {args.retrain_epochs} retraining "
        f"epoch(s)); SGD lr {args.lr}, momentum 0.9, weight decay 5e-4, batch {args.batch_size}.",
        "",
        f"Dense: pretrained {args.model} scores {figures['pretrained_test_accuracy']:.2%} on the JPEG test images; "
        + (f"adapted to the JPEG training set (`{Path(args.checkpoint).name}`): " if args.checkpoint else
           f"after {args.adapt_epochs} adaptation epoch(s) on the JPEG training set: ")
        + f"**{figures['dense_test_accuracy']:.2%}** (the dense baseline).",
        "",
        "| policy | storage ratio | MAC ratio | mult ratio | projection alone | " + " | ".join(f"{m} (E={args.epochs})" for m in methods) + " |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in methods) + " |",
    ]
    for row in figures["rows"]:
        cells = [row["policy"], f"{row['size_ratio']:.3f}", f"{row['mac_ratio']:.3f}", f"{row['mult_ratio']:.3f}", f"{row['projected']:.2%}"]
        cells += [f"{row[m]:.2%}" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if "admm" in methods and "masked" in methods:
        verdicts = []
        for row in figures["rows"]:
            diff = row["admm"] - row["masked"]
            verdicts.append(f"{row['policy']}: ADMM {'beats' if diff > 0 else 'does not beat'} masked fine-tuning "
                            f"({row['admm']:.2%} vs {row['masked']:.2%}, {diff * 100:+.2f} points; ADMM residuals {row.get('admm_residuals')})")
        lines.append("Verdict at equal epochs: " + "; ".join(verdicts) + ".")
        lines.append("")
    seconds = ", ".join(f"{row['policy']} " + "/".join(f"{m} {row[f'{m}_seconds']:.0f} s" for m in methods) for row in figures["rows"])
    lines.append(f"Wall time: {figures['seconds']:.0f} s in all ({seconds}). Storage: kept weights 32 bits, unified "
                 "blocks one 32-bit magnitude + 1 sign bit per weight, 1-2 index bits per block (compressors/core/accounting.py).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
