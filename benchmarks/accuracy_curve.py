"""Accuracy at measured speed and at storage compression: uniprune against its rivals (issue 24, item 6).

One point per (method, fraction or budget): the dense model compressed, fine-tuned the same way (``--epochs`` of
``--train-limit`` images, one cosine, the best epoch by validation kept, the dense model as teacher), its test top-1,
its storage compression, and its measured speed over the fastest dense engine at its default precision (torch, ONNX
Runtime, OpenVINO: bf16 where the CPU has it) at batch 1 and at batch 32, each in the same interleaved rounds:

- ``8x4``, ``4x1``, ``1x1``: uniform blocks (out x in channels, a conv block spanning the kernel window),
  ``--fractions`` of the blocks of every compressible layer but the stem and the classifier pruned, masked retraining, run on uniprune's lean plan in
  ``--precision`` (auto: bf16 where the CPU has it);
- ``searched``: uniprune's search (the default knapsack searcher; prune and unify; the block shape searched per layer
  among 8x4, 4x1 and 1x1) at each of ``--budgets``, then the same fine-tune;
- ``channel``: Torch-Pruning to MAC ratios ``1 - fraction``, the smaller dense model on its fastest engine;
- ``magnitude``: unstructured magnitude pruning of each layer's weights (the stem and classifier dense) (storage axis only: no engine runs it faster),
  stored as a 1-bit mask per weight plus the kept weights.

The dense model's own engine modes are drawn as points too: OpenVINO at its default precision, f32, and the INT8 modes
(ONNX Runtime's static quantization, per-channel, calibrated on ``--calibration`` training images), each with its
top-1 on the test images. The dense reference is the starting model after the same fine-tuning budget (for CIFAR:
the pretrained checkpoint adapted to the JPEG training set with ``--epochs`` of ``--train-limit`` images).

Writes docs/curve_<name>.png (three panels: speed at batch 1, speed at batch 32, storage) and section ``curve_<name>``
of docs/RESULTS.md, where <name> is the dataset for the digits CNN and the model for the CIFAR-10 ResNets.

    python benchmarks/accuracy_curve.py                                   # digits CNN, embedded digits
    python benchmarks/accuracy_curve.py --dataset fashion-mnist           # apt-get install dataset-fashion-mnist
    python benchmarks/accuracy_curve.py --model cifar-resnet20 --test-limit 2000   # shared data
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_channel import DATA, _load, adapted_dense  # noqa: E402
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.accounting import FLOAT_BITS, model_size  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.core.policy import Policy  # noqa: E402
from uniprune.compressors.core.projection import project_model  # noqa: E402
from uniprune.compressors.core.structure import BlockShape  # noqa: E402
from uniprune.compressors.latency.engines import DenseEngines, dense_engines, top1  # noqa: E402
from uniprune.compressors.latency.table import measure_model_ms  # noqa: E402
from uniprune.compressors.train.baselines import magnitude_masks, uniform_policy  # noqa: E402
from uniprune.compressors.train.channel_strategy import prune_to_ratio, time_pruned  # noqa: E402
from uniprune.compressors.train.finetune import AdmmConfig, ChannelConfig, finetune  # noqa: E402
from uniprune.compressors.train.training import (  # noqa: E402
    Distillation,
    cosine_schedule,
    evaluate,
    make_optimizer,
    train_epoch,
)
from uniprune.search import api, sensitivity  # noqa: E402
from uniprune.search.api.env import dense_layers  # noqa: E402
from uniprune.search.api.search import run_config  # noqa: E402
from uniprune.search.datasets import load_dataset  # noqa: E402
from uniprune.search.models import build_model  # noqa: E402

# 16x2: one channel pair over a whole AMX panel of 16 output channels, the fine shape the AMX conv skips without
# waste (docs/RESULTS.md, panel_occupancy)
SHAPES = {"8x4": BlockShape(8, 4), "4x1": BlockShape(4, 1), "1x1": BlockShape(1, 1), "16x2": BlockShape(16, 2)}
METHODS = (*SHAPES, "searched", "channel", "magnitude")
CIFAR = ("cifar-resnet20", "cifar-resnet56")
DOCS = Path(__file__).resolve().parents[1] / "docs"
BATCHES = (1, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("digits-cnn", *CIFAR), default="digits-cnn")
    p.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits",
                   help="for the digits CNN: digits (embedded, 8x8) or fashion-mnist (Debian's dataset-fashion-mnist); "
                        "the CIFAR ResNets always use CIFAR-10 JPEG from --data")
    p.add_argument("--data", default=str(DATA), help="the shared data folder (cifar10-jpeg/ and pretrained/ inside)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {list(METHODS)}")
    p.add_argument("--fractions", default="0.5,0.75,0.9", help="block shares pruned (and MAC ratios 1 - f for channel pruning)")
    p.add_argument("--budgets", default="0.9,0.75", help="latency budgets of the searched points (fractions of the fastest engine)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of every point (default 10 digits, 2 CIFAR)")
    p.add_argument("--train-limit", type=int, default=None, help="training images per epoch (default all; CIFAR 5000)")
    p.add_argument("--test-limit", type=int, default=None, help="test images, a fixed random subset (default all)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning lr, one cosine (default 0.02 digits, 0.01 CIFAR)")
    p.add_argument("--dense-epochs", type=int, default=30, help="digits CNN: training epochs of the dense model (default 30)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the lean plan's precision (default auto)")
    p.add_argument("--calibration", type=int, default=256, help="training images that calibrate the INT8 engines (0: none)")
    p.add_argument("--threads", type=int, default=1, help="threads of training and timing (default 1)")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per point and batch size (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/uniprune-curve", help="search runs and the dense checkpoint go here")
    p.add_argument("--json-out", default=None, help="also write the figures here")
    p.add_argument("--retime", action="store_true",
                   help="time the points of --json-out again (a quieter machine), keeping their top-1: each point's "
                        "structure rebuilt from the dense model in --out (the fine-tune changes weights, not structure)")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/")
    p.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                   help="redraw docs/curve_<name>.png from these runs' --json-out files (one dense reference: the first's "
                        "engine points; a later run's point replaces an earlier one's at the same method and level); "
                        "nothing is trained or timed, RESULTS.md is left alone")
    args = p.parse_args(argv)
    cifar = args.model in CIFAR
    args.epochs = args.epochs or (2 if cifar else 10)
    args.lr = args.lr or (0.01 if cifar else 0.02)
    args.train_limit = args.train_limit or (5000 if cifar else None)
    args.name = args.model.replace("-", "_") if cifar else args.dataset.replace("-", "_")
    return args


@dataclass
class Setup:
    """The dense model and the data every point shares."""

    bundle: Any
    dense: nn.Module
    checkpoint: Path
    data: api.DataSpec
    input_shape: tuple[int, ...]
    augment: bool

    def train(self, args: argparse.Namespace) -> Callable[[int], Iterable]:
        return lambda epoch: self.bundle.batches("train", 64, shuffle=True, seed=1000 + epoch, limit=args.train_limit,
                                                 **({"augment": True} if self.augment else {}))

    def val(self, model: nn.Module) -> float:
        return evaluate(model, self.bundle.batches("val", 256, shuffle=True, seed=12_345, limit=1000))

    def test_batches(self, args: argparse.Namespace) -> Iterable:
        return self.bundle.batches("test", 250, shuffle=True, seed=12_345, limit=args.test_limit)


def setup(args: argparse.Namespace) -> Setup:
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    if args.model in CIFAR:
        jpeg = Path(args.data) / "cifar10-jpeg"
        if not jpeg.is_dir():
            sys.exit(f"accuracy_curve: the shared data is missing ({jpeg}); see ../shared/data/README.md")
        files = f"{jpeg / 'cifar10-jpeg-train.tar.gz'},{jpeg / 'cifar10-jpeg-test.tar.gz'}"
        bundle = load_dataset("imagefolder", files, val_fraction=0.1, seed=args.seed)
        dense = adapted_dense(args.model, Path(args.data), bundle, epochs=args.epochs, limit=args.train_limit,
                              cache=out / "dense.pt")
        return Setup(bundle, dense.eval(), out / "dense.pt", api.DataSpec(dataset="imagefolder", data=files), (3, 32, 32), True)
    bundle = load_dataset(args.dataset, None)
    torch.manual_seed(args.seed)
    dense = build_model("digits-cnn", num_classes=bundle.num_classes, input_shape=bundle.input_shape)
    if args.retime:
        dense.load_state_dict(torch.load(out / "dense.pt", map_location="cpu", weights_only=True))
        return Setup(bundle, dense.eval(), out / "dense.pt", api.DataSpec(dataset=args.dataset), tuple(bundle.input_shape), False)
    optimizer = make_optimizer(dense, lr=0.05)
    schedule = cosine_schedule(optimizer, bundle.num_batches("train", 64, limit=args.train_limit) * args.dense_epochs)
    for epoch in range(args.dense_epochs):
        train_epoch(dense, bundle.batches("train", 64, shuffle=True, seed=epoch, limit=args.train_limit), optimizer, scheduler=schedule)
    torch.save(dense.state_dict(), out / "dense.pt")
    return Setup(bundle, dense.eval(), out / "dense.pt", api.DataSpec(dataset=args.dataset), tuple(bundle.input_shape), False)


def engines_at(s: Setup, args: argparse.Namespace) -> dict[int, DenseEngines]:
    """The dense model's engine modes at each batch size, INT8 included when calibration images are asked for."""
    # Real images as the engines' fixed input: their output check against torch on random noise fails the INT8 modes,
    # whose ranges were calibrated on images.
    images = torch.cat([x for x, _ in s.bundle.batches("train", 256, shuffle=True, seed=99, limit=max(args.calibration, 32))])
    calibration = images.numpy().astype(np.float32) if args.calibration else None
    out = {}
    for batch in BATCHES:
        x = images[:batch].float().contiguous()
        out[batch] = dense_engines(s.dense, x, threads=args.threads, int8_calibration=calibration, progress=True)
    return out


def edge_layers(model: nn.Module) -> list[str]:
    """The stem conv and the classifier, which uniform pruning leaves dense as the search does (``--keep-dense ends``):
    75 % of a 3-input stem's 8x4 blocks is all of them, and the network goes blind."""
    return dense_layers("ends", [s.name for s in compressible_layers(model)])


def masked_unstructured(model: nn.Module, fraction: float, s: Setup, args: argparse.Namespace) -> float:
    """Magnitude-prune each compressible layer to ``fraction`` and retrain with the mask held; returns the storage
    compression (dense bits over: kept weights at 32 bits plus a 1-bit mask per weight, other parameters dense)."""
    masks = magnitude_masks(model, fraction, skip=edge_layers(model))
    weights = {name: model.get_submodule(name).weight for name in masks}

    def hold() -> None:
        with torch.no_grad():
            for name, mask in masks.items():
                weights[name].mul_(mask)

    hold()
    optimizer = make_optimizer(model, lr=args.lr)
    steps = s.bundle.num_batches("train", 64, limit=args.train_limit)
    schedule = cosine_schedule(optimizer, steps * args.epochs)
    best, best_state = -1.0, None
    for epoch in range(args.epochs):
        train_epoch(model, s.train(args)(epoch), optimizer, scheduler=schedule, after_step=hold,
                    distill=Distillation(teacher=s.dense))
        acc = s.val(model)
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    total = sum(p.numel() for p in model.parameters())
    masked = sum(m.numel() for m in masks.values())
    kept = sum(float(m.sum()) for m in masks.values())
    return total * FLOAT_BITS / ((total - masked + kept) * FLOAT_BITS + masked)


def searched_policy(budget: float, s: Setup, args: argparse.Namespace) -> Policy:
    """uniprune's search (default searcher) at ``budget``, block shapes searched among 8x4, 4x1 and 1x1."""
    run = Path(args.out) / args.name / f"search-{budget}"
    spec = api.EnvSpec(model=api.ModelSpec(model=args.model, checkpoint=str(s.checkpoint)), data=s.data,
                       latency=api.LatencySpec(latency_statistic="min", threads=args.threads, batch_size=1, precision=args.precision),
                       budget=api.BudgetSpec(latency_budget=budget, block_shape="8x4,4x1,1x1"),
                       scoring=api.ScoringSpec(val_samples=1000), seed=args.seed)
    search = api.SearchSpec(env=spec, run_dir=str(run), force=True)
    # the layers' scores do not depend on the budget: an earlier budget's run of the same dense model lends its own
    scoring = sensitivity.scoring_key(run_config(search))
    earlier = [d for d in sorted(run.parent.glob("search-*")) if d != run and (d / sensitivity.FILE).is_file()
               and not sensitivity.mismatch(sensitivity.read(d / sensitivity.FILE)["scoring"], scoring)]
    api.search(search.replace(sensitivity_from=str(earlier[0]) if earlier else None))
    return Policy.load(run / "policy.json")


def timings(model: nn.Module, structures: Any, s: Setup, engines: dict[int, DenseEngines],
            args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """The compressed model (``structures``: block structures, or None for a channel-pruned dense model) raced
    against every dense engine mode at each batch size."""
    out = {}
    for batch in BATCHES:
        if structures is None:
            x = torch.randn(batch, *s.input_shape, generator=torch.Generator().manual_seed(0))
            out[batch] = time_pruned(engines[batch], model.eval(), x, threads=args.threads, repeats=args.repeats, statistic="min")
        else:
            out[batch] = measure_model_ms(model.eval(), structures, s.input_shape, batch_size=batch, threads=args.threads,
                                          repeats=args.repeats, statistic="min", dense=engines[batch], precision=args.precision)
    return out


def speeds(timed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The ``b1``/``b32`` fields of a point from :func:`timings`."""
    return {f"b{batch}": {"ms": t["compressed_ms"], "speedup": t["speedup"], "baseline": t["best_engine"],
                          "baseline_precision": t["precisions"].get(t["best_engine"], "f32"), "baseline_ms": t["best_dense_ms"],
                          "engines": t["engines"]} for batch, t in timed.items()}


def point(method: str, level: float, s: Setup, engines: dict[int, DenseEngines], args: argparse.Namespace) -> dict[str, Any]:
    """One compressed, fine-tuned and timed point; ``level`` is the pruned fraction, or the budget for ``searched``."""
    model = copy.deepcopy(s.dense)
    t0 = time.time()
    timed: dict[int, dict[str, Any]] = {}
    row: dict[str, Any] = {"method": method, "level": level}
    if method == "magnitude":
        row["compression"] = masked_unstructured(model, level, s, args)
        row["finetune_seconds"] = time.time() - t0
        row["mac_ratio"] = None
    elif method == "channel":
        result = finetune(model, Policy(layers={}), s.train(args), s.val,
                          ChannelConfig(target=1 - level, epochs=args.epochs, lr=args.lr, progress=False), teacher=s.dense)
        row["finetune_seconds"] = time.time() - t0
        timed = timings(model, None, s, engines, args)
        row.update(mac_ratio=result["channels"]["mac_ratio"],
                   compression=sum(p.numel() for p in s.dense.parameters()) / sum(p.numel() for p in model.parameters()),
                   runs_on=f"{timed[1]['compressed_engine']} ({timed[1]['compressed_precision']})")
    else:
        if method == "searched":
            policy = searched_policy(level, s, args)
            row["search_seconds"] = time.time() - t0
            t0 = time.time()
        else:
            policy = uniform_policy(model, level, block_shapes={"conv": SHAPES[method]}, skip=edge_layers(model))
        result = finetune(model, policy, s.train(args), s.val, AdmmConfig(method="masked", retrain_epochs=args.epochs, lr=args.lr,
                                                                          schedule="run", progress=False), teacher=s.dense)
        row["finetune_seconds"] = time.time() - t0
        timed = timings(model, result["structures"], s, engines, args)
        sized = model_size(model, result["structures"], input_shape=s.input_shape)["total"]
        row.update(mac_ratio=sized["mac_ratio"], compression=1 / sized["size_ratio"],
                   runs_on=f"uniprune {timed[1]['runtime']} ({timed[1]['precision']})")
    row["top1"] = evaluate(model, s.test_batches(args))
    row.update(speeds(timed))
    row["load"] = _load()
    return row


def retime(row: dict[str, Any], s: Setup, engines: dict[int, DenseEngines], args: argparse.Namespace) -> dict[str, Any]:
    """``row`` timed again on its structure rebuilt from the dense model: the same uniform or searched policy projected,
    or the same channel MAC ratio pruned (the kept blocks or channels may differ; their counts do not)."""
    model = copy.deepcopy(s.dense)
    if row["method"] == "channel":
        x = torch.randn(1, *s.input_shape, generator=torch.Generator().manual_seed(0))
        model = prune_to_ratio(model, x, 1 - row["level"])[0]
        timed = timings(model, None, s, engines, args)
    else:
        policy = Policy.load(Path(args.out) / args.name / f"search-{row['level']}" / "policy.json") if row["method"] == "searched" \
            else uniform_policy(model, row["level"], block_shapes={"conv": SHAPES[row["method"]]}, skip=edge_layers(model))
        timed = timings(model, project_model(model, policy), s, engines, args)
    return {**row, **speeds(timed), "first_timing": {k: row[k] for k in ("b1", "b32", "load") if k in row}, "load": _load()}


def engine_points(s: Setup, engines: dict[int, DenseEngines], rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The dense model on each engine mode: its top-1 and its speed over the fastest default mode, from the rounds of
    the timed points (the median over points of each mode's speedup)."""
    out = []
    for mode, infer in engines[1].infer.items():
        row: dict[str, Any] = {"mode": mode, "precision": engines[1].precisions[mode],
                               "top1": top1(infer, ((x.numpy(), y.numpy()) for x, y in s.test_batches(args)), 1)}
        for batch in BATCHES:
            ratios = [r[f"b{batch}"]["baseline_ms"] / r[f"b{batch}"]["engines"][mode] for r in rows
                      if f"b{batch}" in r and mode in r[f"b{batch}"]["engines"]]
            row[f"b{batch}"] = float(np.median(ratios)) if ratios else None
        out.append(row)
    return out


def merged(paths: list[str]) -> dict[str, Any]:
    """The figures of several runs of one dense reference as one (see ``--merge``); exits naming a run whose dense
    top-1 differs from the first's."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    out, points = runs[0], {}
    for path, run in zip(paths, runs):
        if abs(run["dense_top1"] - out["dense_top1"]) > 1e-9:
            sys.exit(f"accuracy_curve: {path} has another dense reference ({run['dense_top1']:.4f} against "
                     f"{out['dense_top1']:.4f}); merge runs of one dense model")
        points.update({(r["method"], r["level"]): r for r in run["rows"] if "error" not in r})
    return {**out, "rows": list(points.values())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge:
        figures = merged(args.merge)
        plot(figures, DOCS / f"curve_{args.name}.png", args)
        return figures
    torch.set_num_threads(args.threads)
    started = time.time()
    s = setup(args)
    engines = engines_at(s, args)
    if args.retime:
        if not args.json_out or not Path(args.json_out).is_file():
            sys.exit("accuracy_curve: --retime reads the figures of an earlier run: give its --json-out")
        figures = json.loads(Path(args.json_out).read_text())
        figures["retimed"] = {"load_before": _load(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        figures["rows"] = [r if "error" in r or "b1" not in r else retime(r, s, engines, args) for r in figures["rows"]]
        return finish(figures, s, engines, args, started)
    figures = {"dense_top1": evaluate(s.dense, s.test_batches(args)), "load_before": _load(), "rows": [], "command": command_line(), "args": vars(args),
               "n_test": min(args.test_limit or len(s.bundle.test), len(s.bundle.test))}
    print(f"dense: test {figures['dense_top1']:.4f}", file=sys.stderr)
    for method in args.methods.split(","):
        levels = args.budgets if method == "searched" else args.fractions
        for level in (float(v) for v in levels.split(",")):
            try:
                row = point(method, level, s, engines, args)
            except Exception as exc:  # noqa: BLE001 - a point that cannot be made (an unreachable budget) is reported, not fatal
                row = {"method": method, "level": level, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            figures["rows"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    figures["seconds"] = time.time() - started
    return finish(figures, s, engines, args, started)


def finish(figures: dict[str, Any], s: Setup, engines: dict[int, DenseEngines], args: argparse.Namespace,
           started: float) -> dict[str, Any]:
    """The engine points, then the JSON, the plot and the section."""
    made = [r for r in figures["rows"] if "error" not in r]
    figures["engines"] = engine_points(s, engines, made, args)
    if args.retime:
        figures["retimed"]["seconds"] = time.time() - started
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1) + "\n")
    if not args.no_write:
        plot(figures, DOCS / f"curve_{args.name}.png", args)
        write_section(f"curve_{args.name}", render(figures, args))
    print(json.dumps({k: v for k, v in figures.items() if k != "rows"}))
    return figures


def _title(args: argparse.Namespace) -> str:
    return f"{args.model} on CIFAR-10 JPEG" if args.model in CIFAR else f"digits CNN on {args.dataset}"


def plot(figures: dict[str, Any], path: Path, now: argparse.Namespace) -> Path:
    args = _run_args(figures, now)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in figures["rows"] if "error" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for ax, key in zip(axes, ("b1", "b32", "compression"), strict=True):
        for method in METHODS:
            pts = [r for r in rows if r["method"] == method and (key == "compression" or key in r)]
            if not pts:
                continue
            xs = [r[key] if key == "compression" else r[key]["speedup"] for r in pts]
            order = np.argsort(xs)
            label = {"searched": "uniprune search (prune + unify, shapes searched)", "channel": "channel pruning (its fastest engine)",
                     "magnitude": "unstructured magnitude (storage only)"}.get(method, f"uniform {method} blocks")
            ax.plot(np.array(xs)[order], [100 * pts[i]["top1"] for i in order], marker="o", label=label)
        if key != "compression":
            for e in figures["engines"]:
                if e[key] is not None:
                    ax.scatter([e[key]], [100 * e["top1"]], marker="*", s=120, label=f"dense on {e['mode']} ({e['precision']})")
            base = sorted({f"{r[key]['baseline']} ({r[key]['baseline_precision']})" for r in rows if key in r})
            ax.set_xlabel(f"speedup at batch {key[1:]} over {', '.join(base)}")
            ax.axvline(1.0, color="0.7", ls=":")
        else:
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, 2, 4, 8, 16, 32], ["1x", "2x", "4x", "8x", "16x", "32x"])  # the storage levels
            ax.set_xlabel("storage compression (dense bits / stored bits)")
        ax.axhline(100 * figures["dense_top1"], color="0.4", ls="--", label=f"dense {100 * figures['dense_top1']:.1f} %")
        ax.set_ylabel("test top-1 (%)")
        ax.legend(loc="lower left", fontsize=7)
    fig.suptitle(f"{_title(args)}: accuracy at measured speed and storage ({args.epochs} fine-tuning epochs per point)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _speed(r: dict[str, Any], key: str) -> str:
    t = r.get(key)
    return f"{t['ms']:.3f} | {t['baseline']} {t['baseline_precision']} ({t['baseline_ms']:.3f}) | **{t['speedup']:.2f}x**" if t else "– | – | –"


def _run_args(figures: dict[str, Any], now: argparse.Namespace) -> argparse.Namespace:
    """The settings of the run that made ``figures`` (they differ from ``now`` when these are a re-timing)."""
    return argparse.Namespace(**{**vars(now), **figures.get("args", {})})


def render(figures: dict[str, Any], now: argparse.Namespace) -> str:
    args = _run_args(figures, now)
    cifar = args.model in CIFAR
    dense_how = (f"the pretrained checkpoint (akamaster) adapted to the JPEG training set for the points' budget ({args.epochs} "
                 f"epochs of {args.train_limit} augmented images, lr 0.01, one cosine)") if cifar else \
        f"trained {args.dense_epochs} epochs"
    lines = [
        f"## Accuracy at measured speed, {_title(args)} (`benchmarks/accuracy_curve.py`)",
        "",
        f"Machine: {machine_line()}; {args.threads} thread(s); load average at the start: "
        f"{figures['load_before']}; {figures['seconds'] / 60:.0f} min in all. Command: `{figures.get('command', command_line())}`"
        + (f". Timings taken again on {figures['retimed']['date']} (load at the start {figures['retimed']['load_before']}) "
           f"with `{command_line()}`: each point's structure rebuilt from the dense model, the top-1 kept from the first run"
           if "retimed" in figures else ""),
        "",
        f"Dense reference: {dense_how}: top-1 **{100 * figures['dense_top1']:.2f} %** on {figures['n_test']} test images. Each "
        f"point: compressed, fine-tuned {args.epochs} epochs{f' of {args.train_limit} images' if args.train_limit else ''} "
        f"(lr {args.lr:g}, one cosine, best epoch by validation kept, the dense model as teacher), top-1 of the f32 model on the "
        f"same test images, then timed at batch 1 and 32 against every dense engine mode in the same interleaved rounds (min); "
        f"the lean plan in precision {args.precision}. Storage: dense bits over stored bits (blocks: kept weights, unified "
        "blocks' signs and magnitudes, the state index; channel: the smaller model's parameters; magnitude: kept weights plus a "
        f"1-bit mask). Plot: `docs/curve_{args.name}.png`. The machine was shared (the load column): read speedup differences "
        "under about 0.1x as noise.",
        "",
        f"![{_title(args)}: accuracy at measured speed](curve_{args.name}.png)",
        "",
        "| method | pruned / budget | MACs kept | storage | top-1 | vs dense | runs on | b1 ms | b1 fastest dense (ms) | b1 speedup | "
        "b32 ms | b32 fastest dense (ms) | b32 speedup | fine-tune s | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in figures["rows"]:
        name = {"searched": "uniprune search"}.get(r["method"], f"uniform {r['method']}" if r["method"] in SHAPES else r["method"])
        level = f"budget {r['level']:g}" if r["method"] == "searched" else f"{100 * r['level']:.0f} %"
        if "error" in r:
            lines.append(f"| {name} | {level} | not made: {r['error']} |" + " |" * 12)
            continue
        macs = f"{r['mac_ratio']:.3f}" if r.get("mac_ratio") is not None else "–"
        lines.append(f"| {name} | {level} | {macs} | {r['compression']:.1f}x | {100 * r['top1']:.2f} % | "
                     f"{100 * (r['top1'] - figures['dense_top1']):+.2f} | {r.get('runs_on', '– (storage only)')} | {_speed(r, 'b1')} | "
                     f"{_speed(r, 'b32')} | {r['finetune_seconds']:.0f} | {r['load'].split(',')[0]} |")
    lines += ["", "The dense model on each engine mode (speedup: the median over the points' rounds of the fastest default mode's "
              "ms over this mode's; INT8 calibrated on training images, so its top-1 is on test images it never saw):", "",
              "| engine mode | precision | top-1 | speed at batch 1 | speed at batch 32 |", "| --- | --- | ---: | ---: | ---: |"]
    for e in figures["engines"]:
        b1, b32 = (f"{e[k]:.2f}x" if e[k] is not None else "–" for k in ("b1", "b32"))
        lines.append(f"| {e['mode']} | {e['precision']} | {100 * e['top1']:.2f} % | {b1} | {b32} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
