"""Dense engines against uniprune's compressed models, whole models, side by side in one process.

    python benchmarks/engines.py                          # ResNet-20, ResNet-56, MobileNetV2, VGG-16; batch 1 and 32
    python benchmarks/engines.py --models cifar-resnet56 --batches 1 --block-shape 4x1

For each model and batch, every installed dense engine (torch eager, ONNX Runtime, OpenVINO; BatchNorm
folded) and uniprune's compressed model (the lean plan unless --runtime python) at 0 / 50 / 75 / 90 % of the blocks pruned (random block states of
exactly that fraction in every compressible layer, the search's default block shapes unless
``--block-shape`` says otherwise) run interleaved in the same rounds (uniprune.compressors.latency.timing); each
figure is the statistic over the rounds. Speedups are over the fastest dense engine. ResNets use the
shared pretrained weights when present (timing does not depend on them); MobileNetV2 (torchvision, 32x32
input, 10 classes) and VGG-16 (CIFAR) are randomly initialised. Writes section ``engines`` of
docs/RESULTS.md, named by the kernel build's ISA (``engines_avx512f``; ``engines_<block shape>_<isa>`` for other
block shapes); ``UNIPRUNE_ISA=avx2`` measures the AVX2 build on an AVX-512 machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.core.structure import BlockShape  # noqa: E402
from uniprune.compressors.latency.engines import dense_engines  # noqa: E402
from uniprune.compressors.latency.table import RUNTIMES, compile_for_timing, random_structure  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples, reducer  # noqa: E402
from uniprune.compressors.native import kernels  # noqa: E402
from uniprune.search.models import build_model, load_weights  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrained"
PRETRAINED = {"cifar-resnet20": "resnet20-12fca82f.th", "cifar-resnet56": "resnet56-4bfd9763.th"}
MODELS = ["cifar-resnet20", "cifar-resnet56", "tv:mobilenet_v2", "cifar-vgg16"]
FRACTIONS = (0.0, 0.5, 0.75, 0.9)


def _model(name: str) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32)).eval()
    file = DATA / PRETRAINED.get(name, "-")
    if file.is_file():
        load_weights(model, file)
        return model, "pretrained"
    return model, "random init"


def _block_shapes(text: str | None) -> dict[str, BlockShape] | None:
    if text is None:
        return None
    out, inp = (int(v) for v in text.lower().split("x"))
    return {"conv": BlockShape(out, inp)}


def measure(name: str, batch: int, args: argparse.Namespace) -> dict:
    """Every engine's ms and the compressed model's ms at each pruned fraction, from the same rounds."""
    model, weights = _model(name)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    engines = dense_engines(model, x, threads=args.threads)
    specs = compressible_layers(model, _block_shapes(args.block_shape))
    gen = torch.Generator().manual_seed(0)
    compiled, notes, used = {}, list(engines.notes), set()
    for f in FRACTIONS:
        structures = {s.name: random_structure(s.grid, f, 0.0, gen) for s in specs}
        compiled[f], runtime, more = compile_for_timing(model, structures, x, args.threads, args.runtime)
        used.add(runtime)
        notes += more
    fns = {**engines.runners, **{f"{f:g}": (lambda c=c: c(x)) for f, c in compiled.items()}}
    t = interleaved_samples(fns, warmup=2, repeats=args.repeats, threads=args.threads, min_seconds=args.min_seconds)
    reduce = reducer(args.statistic)
    ms = {k: reduce(v) for k, v in t.items()}
    dense = {e: ms[e] for e in engines.runners}
    best = min((e for e in dense if ":" not in e), key=dense.__getitem__)
    return {"model": name, "weights": weights, "batch": batch, "engines": dense, "best": best,
            "compressed": {f: ms[f"{f:g}"] for f in FRACTIONS}, "precisions": engines.precisions, "runtime": "/".join(sorted(used)), "notes": notes}


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """Batches, threads and the span of the interleaved rounds: what every whole-model benchmark takes."""
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every engine and the kernels (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds at least (default 10)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="least span of the rounds, s (default 3)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="zoo names (default: ResNet-20, ResNet-56, MobileNetV2, VGG-16)")
    add_timing_arguments(parser)
    parser.add_argument("--statistic", choices=["median", "min"], default="min", help="statistic over rounds (default min)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="lean", help="how the compressed model runs (default lean)")
    parser.add_argument("--block-shape", default=None, help="conv block shape OUTxIN, e.g. 4x1 (default: the search's, 8x4)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        for batch in args.batches:
            r = measure(name, batch, args)
            rows.append(r)
            engines = " ".join(f"{e} {ms:.2f}" for e, ms in r["engines"].items())
            comp = " ".join(f"{f:.0%} {ms:.2f}" for f, ms in r["compressed"].items())
            print(f"{name} batch {batch}: {engines} | uniprune {comp}", file=sys.stderr, flush=True)
    engine_names = list(rows[0]["engines"])
    head = ["model", "weights", "batch", *[f"{e} ms" for e in engine_names], "uniprune runtime",
            *[f"uniprune {f:.0%} pruned ms (speedup)" for f in FRACTIONS]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        best_ms = r["engines"][r["best"]]
        cells = [r["model"], r["weights"], str(r["batch"])]
        cells += [f"**{ms:.2f}**" if e == r["best"] else f"{ms:.2f}" for e, ms in r["engines"].items()]
        cells.append(r["runtime"])
        cells += [f"{ms:.2f} ({best_ms / ms:.2f}x)" for ms in r["compressed"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({n.splitlines()[0][:300] for r in rows for n in r["notes"]})
    shape = args.block_shape or "8x4"
    md = [
        f"Machine: {machine_line()}; {args.threads} thread(s); statistic {args.statistic} over at least {args.repeats} "
        f"interleaved rounds spanning at least {args.min_seconds:g} s.", f"Command: `{command_line()}`", "",
        "Every dense engine mode (BatchNorm folded; ONNX Runtime and OpenVINO on the same exported ONNX file, each at "
        "its default precision, OpenVINO also pinned to f32: `openvino:f32`) "
        f"and uniprune's compressed model (runtime lean: one native plan per pass; python: layer by layer) with the given share of every compressible layer's {shape} conv blocks "
        "pruned (random placement, linear 8x8), timed in the same rounds. Bold: the fastest dense engine, "
        "the baseline (fastest at its default precision; precisions: "
        + ", ".join(f"{e} {p}" for e, p in rows[0]["precisions"].items()) + "); speedups are over it.", "",
        *lines,
        *([""] + [f"Note: {n}" for n in notes] if notes else []),
    ]
    section = "engines" if args.block_shape is None else f"engines_{shape}"
    section += ("" if args.runtime == "lean" else f"_{args.runtime}") + f"_{kernels.isa()}"
    write_section(section, f"## Dense engines against uniprune, whole models ({shape} blocks, {kernels.isa()} kernels)\n\n"
                  + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
