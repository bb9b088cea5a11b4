"""ResNet-56 per precision: the dense engines as a user runs them against uniprune's artifact in fp32 and bf16.

    python benchmarks/precision.py                      # batch 1 and 32; 8x4, 4x1, 1x1 blocks; 0/50/75/90 % pruned
    python benchmarks/precision.py --batches 1 --shapes 8x4 --precisions fp32 bf16

Dense engines (BatchNorm folded, one ONNX file; uniprune.compressors.latency.engines): ONNX Runtime (f32, its
only CPU precision) and OpenVINO at their default precision (OpenVINO picks bf16 on CPUs with avx512_bf16 or
AMX; the precision column is what it reports), OpenVINO pinned to f32, and both engines on ONNX Runtime's
static INT8 QDQ quantization (per-channel, calibrated on 256 images of the test subset). uniprune: the
artifact (``uniprune export``'s plan run through its own loader) with the given share of every inner conv's
blocks pruned (random placement; the stem conv and the linear are kept dense), in
- ``fp32``: the float32 kernels;
- ``bf16``: bf16 weights, each conv on AMX tiles where the CPU has them or on the float32 kernels, whichever
  its timing at export picked (``auto``, what a user gets);
- ``bf16-dot``: every conv forced onto the bf16 dot-product kernel (VDPBF16PS, the engine of CPUs with
  avx512_bf16 and no AMX, e.g. AMD Zen 4/5), to measure it on this CPU; rows left out without avx512_bf16.
Everything of one batch size runs interleaved in the same rounds (uniprune.compressors.latency.timing); each
figure is the least over the rounds; speedups are over the fastest engine at its default precision. Top-1 on
the exact CIFAR-10 test subset in the shared data, every row on the same images (those the INT8 calibration
did not use), pretrained weights, no fine-tuning (the pruned rows only compare precisions). Writes section
``precision_resnet56_<isa>`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precisions import CHECKPOINT, TEST, calibration_split  # noqa: E402
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.core.structure import BlockShape  # noqa: E402
from uniprune.compressors.formats.artifact import open_artifact, write_artifact  # noqa: E402
from uniprune.compressors.latency.engines import dense_engines, top1  # noqa: E402
from uniprune.compressors.latency.table import compile_for_timing, random_structure  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples  # noqa: E402
from uniprune.compressors.native import kernels  # noqa: E402
from uniprune.compressors.native.library import only_bf16_units  # noqa: E402
from uniprune.compressors.native.plan import LeanSpec, compile_lean_spec  # noqa: E402
from uniprune.search.models import build_model, load_weights  # noqa: E402

FRACTIONS = (0.0, 0.5, 0.75, 0.9)
ENGINE_MODES = ["onnxruntime", "openvino", "openvino:f32", "onnxruntime:int8", "openvino:int8"]
PRECISIONS = ("fp32", "bf16", "bf16-dot")


def images() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(calibration, held_out_images, held_out_labels)`` (:func:`precisions.calibration_split`: 256 images to
    calibrate INT8 on, the rest of the exact subset to score every row on); None without the shared data."""
    return calibration_split() if TEST.is_file() else None


def dot_artifact(model: torch.nn.Module, structures: dict, x: torch.Tensor, threads: int) -> tuple[object, int]:
    """The bf16 artifact with every conv on the dot-product kernel: ``(run, convs on it)``. Lowered as on a CPU
    without AMX, then each conv record pinned to ``"engine": "dpbf16"`` (the export would keep the float32
    kernels where they time faster: on this CPU, everywhere)."""
    with only_bf16_units(("bf16_dot",)):
        spec = compile_lean_spec(model, structures, example_input=x, threads=threads, precision="bf16")
    header = copy.deepcopy(spec.header)
    convs = [op["kernel"] for op in header["ops"] if (op.get("kernel") or {}).get("type") == "conv"]
    for k in convs:
        k["engine"] = "dpbf16"
    folder = tempfile.TemporaryDirectory(prefix="uniprune-dot-")
    write_artifact(Path(folder.name) / "a", LeanSpec(header, spec.arrays), source={"model_name": "cifar-resnet56"})
    art = open_artifact(Path(folder.name) / "a", threads=threads)

    def run(inputs: torch.Tensor, _keep: object = folder) -> torch.Tensor:
        return art(inputs)

    return run, len(convs)


def measure(batch: int, args: argparse.Namespace, data: tuple | None, score: bool) -> tuple[list[dict], list[str]]:
    torch.manual_seed(0)
    model = build_model("cifar-resnet56", num_classes=10, input_shape=(3, 32, 32)).eval()
    if CHECKPOINT.is_file():
        load_weights(model, CHECKPOINT)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    modes = ENGINE_MODES if data is not None else [m for m in ENGINE_MODES if not m.endswith(":int8")]
    dense = dense_engines(model, x, threads=args.threads, engines=modes,
                          int8_calibration=None if data is None else data[0], progress=True)
    rows: dict[str, dict] = {m: {"what": m, "precision": dense.precisions[m], "default": ":" not in m,
                                 "infer": dense.infer[m]} for m in dense.runners}
    fns: dict[str, object] = dict(dense.runners)
    inner = {s.name for s in compressible_layers(model) if s.name not in ("conv1", "linear")}
    has_dot = "bf16_dot" in kernels.bf16_units()
    for precision in args.precisions:
        if precision == "bf16-dot" and not has_dot:
            continue
        for shape in args.shapes:
            out, inp = (int(v) for v in shape.split("x"))
            specs = compressible_layers(model, {"conv": BlockShape(out, inp)})
            for f in FRACTIONS:
                if f == 0 and shape != args.shapes[0]:
                    continue  # nothing pruned: the same model whatever the block shape
                gen = torch.Generator().manual_seed(0)
                structures = {s.name: random_structure(s.grid, f if s.name in inner else 0.0, 0.0, gen) for s in specs}
                if precision == "bf16-dot":
                    compiled, _ = dot_artifact(model, structures, x, args.threads)
                else:
                    compiled, _, _ = compile_for_timing(model, structures, x, args.threads, "artifact", precision)
                what = f"uniprune {precision}, " + ("nothing pruned" if f == 0 else f"{f:.0%} of {shape} blocks")
                rows[what] = {"what": what, "precision": precision, "default": False,
                              "infer": lambda a, c=compiled: c(torch.from_numpy(a)).numpy()}
                fns[what] = (lambda c=compiled: c(x))
                print(f"batch {batch}: built {what}", file=sys.stderr, flush=True)
    t = interleaved_samples(fns, warmup=2, repeats=args.repeats, threads=args.threads, min_seconds=args.min_seconds)
    for k, v in t.items():
        rows[k]["ms"] = min(v)
    if score and data is not None:
        held = [(data[1], data[2])]
        for r in rows.values():
            r["top1"] = 100 * top1(r["infer"], held, batch)
    base = min(r["ms"] for r in rows.values() if r["default"])
    for r in rows.values():
        r["speedup"] = base / r["ms"]
    return list(rows.values()), dense.notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--shapes", nargs="+", default=["8x4", "4x1", "1x1"])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds at least (default 10)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="least span of the rounds, s (default 3)")
    args = parser.parse_args(argv)
    data = images()
    load_before = os.getloadavg()
    per_batch, notes = {}, set()
    for b in sorted(args.batches):
        rows, n = measure(b, args, data, score=b == max(args.batches))
        per_batch[b] = {r["what"]: r for r in rows}
        notes.update(x.splitlines()[0][:300] for x in n)
    order = list(per_batch[min(per_batch)])
    head = ["ResNet-56, 1 thread" if args.threads == 1 else f"ResNet-56, {args.threads} threads", "precision"]
    for b in sorted(per_batch):
        head += [f"batch {b} ms", "speedup"]
    n_scored = 0 if data is None else len(data[2])
    head.append(f"top-1 % ({n_scored} images)")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- | --- |" + " ---: |" * (len(head) - 2)]
    for what in order:
        first = per_batch[min(per_batch)][what]
        cells = [f"**{what}**" if first["default"] else what, first["precision"]]
        for b in sorted(per_batch):
            r = per_batch[b][what]
            cells += [f"{r['ms']:.3f}", f"{r['speedup']:.2f}"]
        t1 = per_batch[max(per_batch)][what].get("top1")
        cells.append("" if t1 is None else f"{t1:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    peaks = {u: kernels.peak_gflops(u, args.threads) for u in kernels.PEAK_UNITS}
    load_after = os.getloadavg()
    md = [
        f"Machine: {machine_line()}; peaks on {args.threads} thread(s): "
        + ", ".join(f"{u} {p:.0f} GFLOP/s" if p else f"{u} n/a" for u, p in peaks.items())
        + f"; load average (1, 5 min) {load_before[0]:.1f}, {load_before[1]:.1f} at the start, "
        f"{load_after[0]:.1f}, {load_after[1]:.1f} at the end.",
        f"Command: `{command_line()}`", "",
        f"Least of at least {args.repeats} interleaved rounds spanning at least {args.min_seconds:g} s per batch size; "
        "every row of a batch in the same rounds. Bold: engines at their default precision; speedup = the fastest of "
        "them / the row. `:int8`: ONNX Runtime's static QDQ quantization (per-channel, calibrated on 256 images). "
        "uniprune rows: the artifact with random block states of the given share in every inner conv (stem conv "
        "and linear dense); fp32: float32 kernels; bf16: each conv on AMX tiles or the float32 kernels, as its "
        "timing at export picked; bf16-dot: every conv forced onto the VDPBF16PS kernel (the engine of CPUs with "
        "avx512_bf16 and no AMX). Top-1 on the CIFAR-10 test images of the exact subset that did not calibrate "
        "INT8, pretrained weights, no fine-tuning (pruned rows compare precisions only).", "",
        *lines,
        *([""] + [f"Note: {n}" for n in sorted(notes)] if notes else []),
    ]
    write_section(f"precision_resnet56_{kernels.isa()}", "## ResNet-56 per precision: engines as users run them "
                  f"(default, f32, INT8) against the artifact in fp32, bf16 on AMX and bf16 on the dot product "
                  f"({kernels.isa()} kernels)\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
