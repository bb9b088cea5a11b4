"""The dense engines as users run them (default precision, f32, INT8) against uniprune's artifact, one process.

    python benchmarks/precisions.py                       # ResNet-56 pretrained, 1 thread, batch 1 and 32
    python benchmarks/precisions.py --threads 2 --batches 1

For each batch, every engine mode (uniprune.compressors.latency.engines: torch, ONNX Runtime and OpenVINO at
their default precision, OpenVINO pinned to f32, and ONNX Runtime and OpenVINO on a static INT8 QDQ
quantization calibrated on 256 images) and uniprune's artifact (exported and run through its own loader,
float32 kernels) with 0 % and 75 % of the inner convs' weights pruned by magnitude in 8x4, 4x1 and 1x1
blocks run in the same interleaved rounds; each figure is the least over the rounds. Speedups divide the
fastest engine at its default precision by each row's time. Top-1 on the exact CIFAR-10 test subset
(shared data): every row scored on the same images, those the INT8 calibration did not use. The pruned
rows are not fine-tuned (their top-1 shows what magnitude pruning alone leaves). Writes section
``precisions_<isa>`` (``_<threads>t`` for other thread counts) of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.core.policy import LayerAction, Policy  # noqa: E402
from uniprune.compressors.core.projection import project_model  # noqa: E402
from uniprune.compressors.core.structure import BlockShape  # noqa: E402
from uniprune.compressors.latency.engines import dense_engines, top1  # noqa: E402
from uniprune.compressors.latency.table import RUNTIMES, compile_for_timing  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples  # noqa: E402
from uniprune.compressors.native import kernels  # noqa: E402
from uniprune.search.datasets import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from uniprune.search.models import build_model, load_weights  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHECKPOINT = DATA / "pretrained" / "resnet56-4bfd9763.th"
TEST = DATA / "cifar10-test-exact-first1017.npz"
VARIANTS = [(0.0, "8x4"), (0.75, "8x4"), (0.75, "4x1"), (0.75, "1x1")]  # (share of inner convs' weights pruned, block)


def calibration_split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(calibration, held_out_images, held_out_labels)``: 256 images to calibrate INT8 on (seeded draw), the
    other images of the exact subset to score every row on; all normalised float32."""
    with np.load(TEST, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    x = (images.astype(np.float32) / 255 - np.array(IMAGENET_MEAN, np.float32).reshape(1, -1, 1, 1)) \
        / np.array(IMAGENET_STD, np.float32).reshape(1, -1, 1, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).numpy()
    return x[order[:256]], x[order[256:]], labels[order[256:]]


def _pruned(model: torch.nn.Module, fraction: float, block: str) -> tuple[torch.nn.Module, dict]:
    """A copy of ``model`` with ``fraction`` of every inner conv's weights pruned by magnitude in ``block`` blocks
    (the stem conv and the head stay dense), and its structures."""
    out, inp = (int(v) for v in block.split("x"))
    shapes = {"conv": BlockShape(out, inp)}
    copy_ = copy.deepcopy(model).eval()
    layers = {s.name: LayerAction(fraction if s.name.startswith("layer") else 0.0, 0.0)
              for s in compressible_layers(copy_, shapes)}
    structures = project_model(copy_, Policy(layers=layers, model="cifar-resnet56"), shapes, apply=True)
    return copy_, structures


def measure(batch: int, args: argparse.Namespace, calibration: np.ndarray, held: tuple[np.ndarray, np.ndarray],
            score: bool) -> dict:
    torch.manual_seed(0)
    model = build_model("cifar-resnet56", num_classes=10, input_shape=(3, 32, 32)).eval()
    load_weights(model, CHECKPOINT)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dense = dense_engines(model, x, threads=args.threads, int8_calibration=calibration, progress=True)
    fns = dict(dense.runners)
    rows = {m: {"precision": p} for m, p in dense.precisions.items()}
    pruned = {}
    for fraction, block in VARIANTS:
        name = f"uniprune {args.runtime}, {fraction:.0%} pruned, {block}" if fraction else f"uniprune {args.runtime}, nothing pruned"
        m, structures = _pruned(model, fraction, block)
        compiled, used, notes = compile_for_timing(m, structures, x, args.threads, args.runtime)
        fns[name] = lambda c=compiled: c(x)
        rows[name] = {"precision": "f32", "runtime": used, "notes": notes}
        pruned[name] = m
    print(f"batch {batch}: timing {len(fns)} rows", file=sys.stderr, flush=True)
    t = interleaved_samples(fns, warmup=2, repeats=args.repeats, threads=args.threads, min_seconds=args.min_seconds)
    for k, v in t.items():
        rows[k]["ms"] = min(v)
    if score:
        images, labels = held
        batches = [(images, labels)]
        for mode, infer in dense.infer.items():
            rows[mode]["top1"] = top1(infer, batches, 256 if mode == "torch" else batch)
        with torch.no_grad():
            for name, m in pruned.items():
                rows[name]["top1"] = top1(lambda a, m=m: m(torch.from_numpy(a)).numpy(), batches, 256)
    best = min((m for m in dense.runners if ":" not in m), key=lambda m: rows[m]["ms"])
    return {"batch": batch, "rows": rows, "best": best, "notes": dense.notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every engine and the kernels (default 1)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds at least (default 20)")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="least span of the rounds, s (default 5)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="artifact",
                        help="how uniprune's model runs (default artifact: exported and run by its own loader)")
    args = parser.parse_args(argv)
    if not CHECKPOINT.is_file() or not TEST.is_file():
        print(f"needs the shared data ({CHECKPOINT}, {TEST})", file=sys.stderr)
        return 2
    calibration, *held = calibration_split()
    load_before = os.getloadavg()[0]
    results = []
    for i, batch in enumerate(args.batches):
        r = measure(batch, args, calibration, tuple(held), score=i == 0)
        results.append(r)
        for k, row in r["rows"].items():
            print(f"  {k:<40} {row['precision']:<6} {row['ms']:8.3f} ms", file=sys.stderr, flush=True)
    first = results[0]["rows"]
    head = ["row", "precision", f"top-1 ({len(held[1])} images)"]
    for r in results:
        head += [f"batch {r['batch']} ms", f"speedup over {r['best']} ({r['rows'][r['best']]['precision']})"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in first.items():
        acc = f"{100 * row['top1']:.2f} %" if "top1" in row else "-"
        cells = [name, row["precision"], acc]
        for r in results:
            ms, best = r["rows"][name]["ms"], r["rows"][r["best"]]["ms"]
            cells += [f"**{ms:.3f}**" if name == r["best"] else f"{ms:.3f}", f"{best / ms:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({n.splitlines()[0][:300] for r in results for n in r["notes"]})
    md = [
        f"Machine: {machine_line()}; {args.threads} thread(s); least of at least {args.repeats} interleaved rounds "
        f"spanning at least {args.min_seconds:g} s; 1-minute load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.", f"Command: `{command_line()}`", "",
        "ResNet-56 (pretrained, BatchNorm folded). Engine modes: `torch`, `onnxruntime`, `openvino` at their default "
        "precision (the precision column is what each engine reports; OpenVINO's default is bf16 on CPUs with "
        "avx512_bf16 or AMX), `openvino:f32` pinned to f32, `*:int8` on ONNX Runtime's static QDQ quantization "
        "(per-channel, U8S8, calibrated on 256 images of the test subset). uniprune rows: magnitude pruning of the "
        "inner convs (stem and head dense), f32 kernels, not fine-tuned. Bold: the fastest engine at its default "
        "precision, the baseline every speedup divides. Top-1 on the test images not used to calibrate INT8, "
        f"scored at batch {args.batches[0]}.", "",
        *lines,
        *([""] + [f"Note: {n}" for n in notes] if notes else []),
    ]
    section = f"precisions_{kernels.isa()}" + ("" if args.threads == 1 else f"_{args.threads}t")
    write_section(section, f"## Dense engines at every precision against uniprune, ResNet-56 ({kernels.isa()} kernels, "
                  f"{args.threads} thread{'s' if args.threads > 1 else ''})\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
