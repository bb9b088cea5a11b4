"""The torchvision classifiers of issue 22 on the lean plan against the dense engines, at 1 and 2 threads.

    python benchmarks/zoo.py                                   # every model, 1 and 2 threads, batch 1, 3x64x64
    python benchmarks/zoo.py --models tv:resnet18 --threads 1 --min-seconds 1
    python benchmarks/zoo.py --models tv:vit_b_16@3x224x224 zoo:small_vit --precision bf16

For each model (random init, 1000 classes) and thread count, every installed dense engine (torch eager, ONNX
Runtime, OpenVINO; BatchNorm folded; all on the same thread count) and uniprune's compressed model on the lean
plan with nothing pruned and with 75 % of the blocks of every compressible layer pruned (random placement;
the stem conv and the classifier left dense, depthwise convs are never compressible) run interleaved in the
same rounds (:func:`uniprune.compressors.latency.timing.interleaved_samples`); each figure is the statistic
over the rounds, speedups are over the fastest dense engine of the same rounds. "dw share" is the part of the
75 %-pruned plan's time spent in its (dense) depthwise convs, from the plan's own per-op clock (least of 20
profiled passes per op), and "attention share" the part in its attention ops. A model name may carry its own
input shape (``tv:vit_b_16@3x224x224``); ``zoo:small_vit`` is a small vision transformer (32x32 images, 8x8
patches, 4 layers of 4 heads, width 128). ``--precision`` is the plan's (``auto``: bf16 where the CPU has
avx512_bf16 or AMX). Writes section ``zoo_<isa>`` (``zoo_<isa>_<name>`` with ``--section NAME``) of
docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.latency.engines import dense_engines  # noqa: E402
from uniprune.compressors.latency.table import compile_for_timing, random_structure  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples, reducer  # noqa: E402
from uniprune.compressors.native import kernels, plan  # noqa: E402
from uniprune.search.models import build_model  # noqa: E402

MODELS = ["tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "tv:mobilenet_v3_small", "tv:mobilenet_v3_large",
          "tv:efficientnet_b0", "tv:regnet_y_400mf", "tv:shufflenet_v2_x1_0", "tv:squeezenet1_1", "tv:densenet121",
          "tv:convnext_tiny", "tv:vit_b_16@3x224x224", "zoo:small_vit"]
FRACTIONS = (0.0, 0.75)


def small_vit(num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 32, 32)) -> torch.nn.Module:
    """``zoo:small_vit``: a torchvision VisionTransformer of 4 layers, 4 heads, width 128 on 8x8 patches."""
    import torchvision

    return torchvision.models.VisionTransformer(image_size=input_shape[1], patch_size=8, num_layers=4, num_heads=4,
                                               hidden_dim=128, mlp_dim=512, num_classes=num_classes)


def op_shares(lean: plan.LeanModel, x: torch.Tensor, passes: int = 20) -> tuple[float, float]:
    """Shares of the plan's time in its depthwise convs and in its attention ops: per op the least of ``passes``
    profiled passes."""
    best = None
    for _ in range(max(1, passes)):
        ms = [row[2] for row in lean.profile(x)]
        best = ms if best is None else [min(a, b) for a, b in zip(best, ms)]
    total = max(sum(best), 1e-12)
    dw = sum(t for op, t in zip(lean.ops, best) if op.kind == plan.OP_GCONV and op.params[8] == op.shape_in[0])
    attn = sum(t for op, t in zip(lean.ops, best) if op.kind == plan.OP_ATTN)
    return dw / total, attn / total


def model_shape(name: str, default: list[int]) -> tuple[str, tuple[int, int, int]]:
    """``NAME@CxHxW`` -> (NAME, (C, H, W)); a bare name takes ``default``; ``zoo:small_vit`` is 3x32x32."""
    name, _, shape = name.partition("@")
    if shape:
        return name, tuple(int(v) for v in shape.split("x"))  # type: ignore[return-value]
    return name, (3, 32, 32) if name == "zoo:small_vit" else tuple(default)  # type: ignore[return-value]


def measure(spec: str, threads: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    name, shape = model_shape(spec, args.input_shape)
    model = build_model(name, num_classes=1000, input_shape=shape).eval()
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    engines = dense_engines(model, x, threads=threads)
    specs = compressible_layers(model)[1:-1]  # the stem conv and the classifier stay dense
    gen = torch.Generator().manual_seed(0)
    compiled, notes, used = {}, list(engines.notes), set()
    for f in FRACTIONS:
        structures = {s.name: random_structure(s.grid, f, 0.0, gen) for s in specs}
        compiled[f], runtime, more = compile_for_timing(model, structures, x, threads, "lean", args.precision)
        used.add(runtime)
        notes += more
    fns = {**engines.runners, **{f"{f:g}": (lambda c=c: c(x)) for f, c in compiled.items()}}
    t = interleaved_samples(fns, warmup=2, repeats=args.repeats, threads=threads, min_seconds=args.min_seconds)
    ms = {k: reducer(args.statistic)(v) for k, v in t.items()}
    dense = {e: ms[e] for e in engines.runners}
    best = min(dense, key=dense.__getitem__)
    pruned = compiled[FRACTIONS[-1]]
    passes = max(1, min(20, int(2000 / max(ms[f"{FRACTIONS[-1]:g}"], 1e-3))))  # about 2 s of profiled passes
    share = op_shares(pruned, x, passes) if isinstance(pruned, plan.LeanModel) else (float("nan"),) * 2
    return {"model": name, "shape": shape, "threads": threads, "engines": dense, "best": best, "runtime": "/".join(sorted(used)),
            "compressed": {f: ms[f"{f:g}"] for f in FRACTIONS}, "dw_share": share[0], "attn_share": share[1],
            "precision": getattr(pruned, "precision", "fp32"), "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS,
                        help="zoo names, NAME@CxHxW for a shape of its own (default: the issue's eleven, vit_b_16 at "
                             "224x224 and zoo:small_vit)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="the plan's precision (default auto: bf16 where the CPU has avx512_bf16 or AMX)")
    parser.add_argument("--section", default="", help="write section zoo_<isa>_<SECTION> (default: zoo_<isa>)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--batch", type=int, default=1, help="samples per pass (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds at least (default 10)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="least span of the rounds, s (default 3)")
    parser.add_argument("--input-shape", type=int, nargs=3, default=[3, 64, 64], help="C H W (default 3 64 64)")
    parser.add_argument("--statistic", choices=["median", "min"], default="min", help="statistic over rounds (default min)")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = []
    for name in args.models:
        for threads in args.threads:
            r = measure(name, threads, args)
            rows.append(r)
            print(f"{name} threads {threads}: " + " ".join(f"{e} {v:.3f}" for e, v in r["engines"].items())
                  + " | " + " ".join(f"{f:.0%} {v:.3f}" for f, v in r["compressed"].items())
                  + f" | dw {r['dw_share']:.0%} attention {r['attn_share']:.0%}", file=sys.stderr, flush=True)
    head = ["model", "input", "threads", "runs on", "dense: fastest engine ms", "compressed ms, nothing pruned / 75 %",
            "speedup, nothing pruned", "speedup at 75 %", "depthwise / attention share at 75 %", "other engines ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        b = r["engines"][r["best"]]
        c0, c75 = (r["compressed"][f] for f in FRACTIONS)
        others = ", ".join(f"{e} {v:.2f}" for e, v in r["engines"].items() if e != r["best"])
        runs = f"native plan, {r['precision']}" if r["runtime"] == "lean" else r["runtime"]
        lines.append(f"| {r['model'][3:] if r['model'].startswith('tv:') else r['model']} | "
                     f"{'x'.join(map(str, r['shape'][1:]))} | {r['threads']} | {runs} | {b:.2f} ({r['best']}) | "
                     f"{c0:.2f} / {c75:.2f} | {b / c0:.2f} | {b / c75:.2f} | {r['dw_share']:.0%} / {r['attn_share']:.0%} | "
                     f"{others} |")
    notes = sorted({n.splitlines()[0][:300] for r in rows for n in r["notes"]})
    md = [f"Machine: {machine_line()}; statistic {args.statistic} over at least {args.repeats} interleaved rounds "
          f"spanning at least {args.min_seconds:g} s; batch {args.batch}, input {'x'.join(map(str, args.input_shape))} "
          "unless the row says; "
          f"load average (1 min) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
          f"Command: `{command_line()}`", "",
          "Random init, 1000 classes. Dense engines with BatchNorm folded, each at its default precision (OpenVINO: "
          "bf16 on avx512_bf16/AMX CPUs), on the row's thread count; uniprune's lean plan (in the precision the row "
          f"says; --precision {args.precision}) with nothing pruned and with 75 % of the 8x4 conv / 8x8 linear blocks "
          "of every compressible layer pruned (random placement; stem conv, classifier and depthwise convs dense; a "
          "ViT's attention projections are compressible Linears). Speedups are over the fastest dense engine in the "
          "same rounds; the depthwise and attention shares are of the 75 % plan's time (its per-op clock).", "",
          *lines, *([""] + [f"Note: {n}" for n in notes] if notes else [])]
    key = f"zoo_{kernels.isa()}" + (f"_{args.section}" if args.section else "")
    write_section(key, f"## The torchvision classifiers on the lean plan (issue 22, {kernels.isa()} kernels"
                  f"{', ' + args.section if args.section else ''})\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
