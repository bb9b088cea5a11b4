"""Accuracy at measured speed on the digits CNN: uniform blocks per shape against channel pruning (issue 24, item 6).

One point per (method, fraction): the trained digits CNN compressed, fine-tuned the same way (masked retraining
or, for channel pruning, the smaller dense model; ``--epochs`` epochs, the dense model as teacher), its test top-1,
and its measured speed at batch 1 over the fastest dense engine at its default precision (torch, ONNX Runtime,
OpenVINO; each timed in the same interleaved rounds):

- uniform blocks, 8x4, 4x1 and 1x1 (out x in channels, a conv block spanning the 3x3 window), ``--fractions`` of
  every compressible layer's blocks pruned, run on uniprune's lean plan (f32 kernels);
- channel pruning (Torch-Pruning) to the same MAC ratios, run on its own fastest dense engine.

Writes docs/<dataset>_curve.png (speedup against top-1, the dense reference drawn) and section ``<dataset>_curve`` of
docs/RESULTS.md (``digits_curve``, ``fashion_mnist_curve``). ``--dataset fashion-mnist`` runs the same CNN on
Fashion-MNIST (28x28; ``apt-get install dataset-fashion-mnist``).

    python benchmarks/digits_curve.py
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

from distill_channel import _flags, _load  # noqa: E402
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.accounting import model_size  # noqa: E402
from uniprune.compressors.core.policy import Policy  # noqa: E402
from uniprune.compressors.core.structure import BlockShape  # noqa: E402
from uniprune.compressors.latency.table import measure_model_ms  # noqa: E402
from uniprune.compressors.train.baselines import uniform_policy  # noqa: E402
from uniprune.compressors.train.channel_strategy import time_pruned  # noqa: E402
from uniprune.compressors.train.finetune import AdmmConfig, ChannelConfig, finetune  # noqa: E402
from uniprune.compressors.train.training import cosine_schedule, evaluate, make_optimizer, train_epoch  # noqa: E402
from uniprune.search.datasets import load_dataset  # noqa: E402
from uniprune.search.models import build_model  # noqa: E402

SHAPES = {"8x4": BlockShape(8, 4), "4x1": BlockShape(4, 1), "1x1": BlockShape(1, 1)}
DOCS = Path(__file__).resolve().parents[1] / "docs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits",
                   help="digits (embedded, 8x8) or fashion-mnist (Debian's dataset-fashion-mnist, 28x28) (default digits)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="training images per epoch, a seeded draw each epoch (default all)")
    p.add_argument("--fractions", default="0.5,0.75,0.9", help="block shares pruned (and MAC ratios 1 - f for channel pruning)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs of every point (default 10)")
    p.add_argument("--dense-epochs", type=int, default=30, help="training epochs of the dense model (default 30)")
    p.add_argument("--lr", type=float, default=0.02, help="fine-tuning lr, one cosine (default 0.02)")
    p.add_argument("--threads", type=int, default=1, help="threads of training and timing (default 1)")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per point (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="do not touch docs/")
    return p.parse_args(argv)


def _dense(bundle: Any, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(args.seed)
    model = build_model("digits-cnn", num_classes=bundle.num_classes, input_shape=bundle.input_shape)
    optimizer = make_optimizer(model, lr=0.05)
    steps = bundle.num_batches("train", 64, limit=args.train_limit)
    schedule = cosine_schedule(optimizer, steps * args.dense_epochs)
    for epoch in range(args.dense_epochs):
        train_epoch(model, bundle.batches("train", 64, shuffle=True, seed=epoch, limit=args.train_limit), optimizer,
                    scheduler=schedule)
    return model.eval()


def _point(method: str, fraction: float, dense: nn.Module, bundle: Any, args: argparse.Namespace) -> dict[str, Any]:
    def batches(epoch: int):
        return bundle.batches("train", 64, shuffle=True, seed=1000 + epoch, limit=args.train_limit)

    def val(m: nn.Module) -> float:
        return evaluate(m, bundle.batches("val", 256))

    model = copy.deepcopy(dense)
    shape = tuple(bundle.input_shape)
    t0 = time.time()
    if method == "channel":
        result = finetune(model, Policy(layers={}), batches, val, ChannelConfig(target=1 - fraction, epochs=args.epochs, lr=args.lr,
                                                                                progress=False), teacher=dense)
        tuned = time.time() - t0
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        timing = time_pruned(dense, model.eval(), x, threads=args.threads, repeats=args.repeats)
        mac_ratio, runs_on = result["channels"]["mac_ratio"], f"{timing['compressed_engine']} ({timing['compressed_precision']})"
    else:
        policy = uniform_policy(model, fraction, block_shapes={"conv": SHAPES[method]})
        result = finetune(model, policy, batches, val, AdmmConfig(method="masked", retrain_epochs=args.epochs, lr=args.lr,
                                                                  schedule="run", progress=False), teacher=dense)
        tuned = time.time() - t0
        timing = measure_model_ms(model.eval(), result["structures"], shape, threads=args.threads, repeats=args.repeats,
                                  precision="fp32")
        mac_ratio = model_size(model, result["structures"], input_shape=shape)["total"]["mac_ratio"]
        runs_on = f"uniprune {timing['runtime']} (fp32)"
    return {"method": method, "fraction": fraction, "mac_ratio": mac_ratio, "top1": evaluate(model, bundle.batches("test", 256)),
            "ms": timing["compressed_ms"], "speedup": timing["speedup"], "baseline": timing["best_engine"],
            "baseline_precision": timing["precisions"].get(timing["best_engine"], "f32"), "baseline_ms": timing["best_dense_ms"],
            "runs_on": runs_on, "finetune_seconds": tuned, "load": _load()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_dataset(args.dataset, None)
    dense = _dense(bundle, args)
    figures: dict[str, Any] = {"dense_top1": evaluate(dense, bundle.batches("test", 256)), "load_before": _load(), "points": []}
    print(f"dense: test {figures['dense_top1']:.4f}", file=sys.stderr)
    for method in (*SHAPES, "channel"):
        for fraction in (float(f) for f in args.fractions.split(",")):
            point = _point(method, fraction, dense, bundle, args)
            figures["points"].append(point)
            print(json.dumps(point), file=sys.stderr)
    figures["n_test"] = len(bundle.test)
    if not args.no_write:
        stem = args.dataset.replace("-", "_")
        plot(figures, DOCS / f"{stem}_curve.png", args.dataset)
        write_section(f"{stem}_curve", render(figures, args))
    print(json.dumps(figures))
    return figures


def plot(figures: dict[str, Any], path: Path, dataset: str = "digits") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in (*SHAPES, "channel"):
        pts = sorted((p for p in figures["points"] if p["method"] == method), key=lambda p: p["speedup"])
        label = f"uniform {method} blocks (uniprune lean)" if method in SHAPES else "channel pruning (its fastest engine)"
        ax.plot([p["speedup"] for p in pts], [100 * p["top1"] for p in pts], marker="o", label=label)
    ax.axhline(100 * figures["dense_top1"], color="0.4", ls="--", label=f"dense {100 * figures['dense_top1']:.1f} %")
    ax.axvline(1.0, color="0.7", ls=":")
    baselines = sorted({f"{p['baseline']} ({p['baseline_precision']})" for p in figures["points"]})
    ax.set_xlabel(f"speedup at batch 1 over the fastest dense engine at its default precision ({', '.join(baselines)})")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"digits CNN on {dataset}: accuracy at measured speed")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(figures: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"## Accuracy at measured speed, digits CNN on {args.dataset} (`benchmarks/digits_curve.py`)",
        "",
        f"Machine: {machine_line()}; CPU flags: {_flags()}; {args.threads} thread(s); load average at the start: "
        f"{figures['load_before']}. Command: `{command_line()}`",
        "",
        f"The digits CNN trained {args.dense_epochs} epochs"
        f"{f' of {args.train_limit} images' if args.train_limit else ''}: dense top-1 **{100 * figures['dense_top1']:.2f} %** on "
        f"{figures['n_test']} test images. Each point: compressed, fine-tuned {args.epochs} epochs (lr {args.lr:g}, one cosine, "
        "best epoch kept, the dense model as teacher), then timed at batch 1 against every dense engine at its default "
        f"precision in the same interleaved rounds. Plot: `docs/{args.dataset.replace('-', '_')}_curve.png`. The machine was shared (the load column): "
        "each speedup is a ratio of times taken in the same rounds, but a tenth of a millisecond moves with the load, so read "
        "differences under about 0.2x as noise.",
        "",
        f"![digits CNN on {args.dataset}: accuracy at measured speed]({args.dataset.replace('-', '_')}_curve.png)",
        "",
        "| method | pruned | MACs kept | top-1 | runs on | ms | fastest dense engine (ms) | speedup | fine-tune s | load (1 min) |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for p in figures["points"]:
        name = f"uniform {p['method']}" if p["method"] in SHAPES else "channel"
        lines.append(f"| {name} | {100 * p['fraction']:.0f} % | {p['mac_ratio']:.3f} | {100 * p['top1']:.2f} % | {p['runs_on']} | "
                     f"{p['ms']:.3f} | {p['baseline']} {p['baseline_precision']} ({p['baseline_ms']:.3f}) | **{p['speedup']:.2f}x** | "
                     f"{p['finetune_seconds']:.0f} | {p['load'].split(',')[0]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
