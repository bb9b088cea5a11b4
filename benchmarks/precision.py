"""ResNet-56 per precision: the dense engines as a user runs them against uniprune's artifact in fp32 and bf16.

    python benchmarks/precision.py                      # batch 1 and 32; 8x4, 4x1, 1x1 blocks; 0/50/75/90 % pruned
    python benchmarks/precision.py --batches 1 --shapes 8x4

Dense engines (BatchNorm folded, one ONNX file): ONNX Runtime (f32, its only CPU precision), OpenVINO pinned
to f32, and OpenVINO at its default precision (compiled with no precision hint; the precision it picked is
read back from ``INFERENCE_PRECISION_HINT``: bf16 on CPUs with avx512_bf16 or AMX). uniprune: the artifact
(``uniprune export``'s plan run through its own loader) in fp32 and bf16 with the given share of every inner
conv's blocks pruned (random placement; the stem conv and the linear are kept dense). Everything of one batch
size runs interleaved in the same rounds (uniprune.compressors.latency.timing); speedups are over the fastest
engine at its default precision (ONNX Runtime f32, OpenVINO default). Top-1 on the exact CIFAR-10 test subset
in the shared data (pretrained weights, no fine-tuning: the pruned rows only compare fp32 with bf16). Writes
section ``precision_resnet56_<isa>`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.core.structure import BlockShape  # noqa: E402
from uniprune.compressors.latency.engines import _export_onnx, dense_engines  # noqa: E402
from uniprune.compressors.latency.table import compile_for_timing, random_structure  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples, reducer  # noqa: E402
from uniprune.compressors.native import kernels  # noqa: E402
from uniprune.compressors.native.runtime import inference_copy  # noqa: E402
from uniprune.search.models import build_model, load_weights  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FRACTIONS = (0.0, 0.5, 0.75, 0.9)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def openvino_default(model: torch.nn.Module, x: torch.Tensor, threads: int) -> tuple[object, str]:
    """OpenVINO as a user compiles it (no precision hint): ``(run, the precision it chose)``."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        _export_onnx(inference_copy(model).float(), x, path)
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                              "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)

    def run(inputs: torch.Tensor = x) -> torch.Tensor:
        return torch.from_numpy(np.array(request.infer({0: inputs.numpy()})[0]))

    return run, precision


def test_images() -> tuple[torch.Tensor, torch.Tensor] | None:
    path = DATA / "cifar10-test-exact-first1017.npz"
    if not path.is_file():
        return None
    d = np.load(path)
    x = torch.from_numpy(d["images"]).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x.contiguous(), torch.from_numpy(d["labels"]).long()


def top1(run: object, data: tuple[torch.Tensor, torch.Tensor] | None, batch: int) -> float | None:
    if data is None:
        return None
    x, y = data
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):  # the last batch padded: an engine compiled for a fixed batch runs it too
            xb = x[i:i + batch]
            full = torch.cat([xb, xb.new_zeros(batch - len(xb), *xb.shape[1:])]) if len(xb) < batch else xb
            outs.append(torch.as_tensor(run(full.contiguous()))[:len(xb)])
    return 100.0 * float((torch.cat(outs).argmax(1) == y).float().mean())


def measure(batch: int, args: argparse.Namespace, data: tuple | None) -> list[dict]:
    torch.manual_seed(0)
    model = build_model("cifar-resnet56", num_classes=10, input_shape=(3, 32, 32)).eval()
    ckpt = DATA / "pretrained" / "resnet56-4bfd9763.th"
    weights = "pretrained" if ckpt.is_file() else "random init"
    if ckpt.is_file():
        load_weights(model, ckpt)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dense = dense_engines(model, x, threads=args.threads, engines=["onnxruntime", "openvino"])
    rows: dict[str, dict] = {}
    fns: dict[str, object] = {}
    for name, run in dense.runners.items():
        key = f"{name} f32" if name == "onnxruntime" else "openvino f32 (pinned)"
        rows[key] = {"what": key, "default": name == "onnxruntime", "run": None}
        fns[key] = run
    ov_run, ov_prec = openvino_default(model, x, args.threads)
    key = f"openvino default ({ov_prec})"
    rows[key] = {"what": key, "default": True, "run": ov_run}
    fns[key] = ov_run
    inner = [s for s in compressible_layers(model) if s.name not in ("conv1", "linear")]
    others = [s for s in compressible_layers(model) if s.name in ("conv1", "linear")]
    for precision in args.precisions:
        for shape in args.shapes:
            out, inp = (int(v) for v in shape.split("x"))
            specs = compressible_layers(model, {"conv": BlockShape(out, inp)})
            for f in FRACTIONS:
                if f == 0 and shape != args.shapes[0]:
                    continue  # nothing pruned: the same model whatever the block shape
                gen = torch.Generator().manual_seed(0)
                names = {s.name for s in inner}
                structures = {s.name: random_structure(s.grid, f if s.name in names else 0.0, 0.0, gen) for s in specs}
                compiled, runtime, notes = compile_for_timing(model, structures, x, args.threads, args.runtime, precision)
                what = f"uniprune {precision}, " + ("nothing pruned" if f == 0 else f"{f:.0%} of {shape} blocks")
                rows[what] = {"what": what, "default": False, "run": compiled, "runtime": runtime}
                fns[what] = (lambda c=compiled: c(x))
                print(f"batch {batch}: built {what} ({runtime}){'; ' + '; '.join(notes) if notes else ''}",
                      file=sys.stderr, flush=True)
    del others
    t = interleaved_samples(fns, warmup=2, repeats=args.repeats, threads=args.threads, min_seconds=args.min_seconds)
    reduce = reducer("min")
    for k, v in t.items():
        rows[k]["ms"] = reduce(v)
    if batch == max(args.batches):
        for r in rows.values():
            if r["run"] is not None:
                r["top1"] = top1(r["run"], data, batch)
        folded = inference_copy(model).float()
        for k, r in rows.items():
            if r["run"] is None and k.startswith("onnxruntime"):
                r["top1"] = top1(folded, data, batch)  # ONNX Runtime f32 computes what torch does
    base = min(r["ms"] for r in rows.values() if r["default"])
    for r in rows.values():
        r["speedup"] = base / r["ms"]
        r["weights"] = weights
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--shapes", nargs="+", default=["8x4", "4x1", "1x1"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds at least (default 10)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="least span of the rounds, s (default 3)")
    parser.add_argument("--runtime", default="artifact", choices=["artifact", "lean"],
                        help="artifact (default: exported and run by its own loader) or lean (the same plan in process)")
    args = parser.parse_args(argv)
    data = test_images()
    per_batch = {b: {r["what"]: r for r in measure(b, args, data)} for b in sorted(args.batches)}
    order = list(per_batch[min(per_batch)])
    head = ["ResNet-56, 1 thread"]
    for b in sorted(per_batch):
        head += [f"batch {b} ms", "speedup"]
    head.append("top-1 %")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1)]
    for what in order:
        cells = [f"**{what}**" if per_batch[min(per_batch)][what]["default"] else what]
        for b in sorted(per_batch):
            r = per_batch[b][what]
            cells += [f"{r['ms']:.3f}", f"{r['speedup']:.2f}"]
        t1 = per_batch[max(per_batch)][what].get("top1")
        cells.append("" if t1 is None else f"{t1:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    peaks = {u: kernels.peak_gflops(u, args.threads) for u in kernels.PEAK_UNITS}
    flags = sorted(f for f in kernels.cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                                           "amx_bf16", "avx512_fp16"))
    md = [
        f"Machine: {machine_line()}; flags {', '.join(flags)}; peaks on {args.threads} thread(s): "
        + ", ".join(f"{u} {p:.0f} GFLOP/s" if p else f"{u} n/a" for u, p in peaks.items()) + ".",
        f"Command: `{command_line()}`", "",
        f"Least of at least {args.repeats} interleaved rounds spanning at least {args.min_seconds:g} s per batch size; "
        "every row of a batch in the same rounds. Bold: engines at their default precision; speedup = the fastest of "
        f"them / the row. uniprune rows: the artifact ({args.runtime}) with random block states of the given share in every inner conv "
        "(stem conv and linear dense), each conv's kernel (AMX or fp32 engine in bf16; direct or im2col) chosen "
        "by timing at the row's batch. Top-1 on the first 1,017 CIFAR-10 test images (shared data), pretrained "
        "weights, no fine-tuning (pruned rows: fp32 against bf16 only).", "",
        *lines,
    ]
    write_section(f"precision_resnet56_{kernels.isa()}", "## ResNet-56 per precision: engines as users run them "
                  f"against the artifact in fp32 and bf16 ({kernels.isa()} kernels)\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
