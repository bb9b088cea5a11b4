"""Kernel and latency benchmarks; each subcommand writes its own section of docs/RESULTS.md.

    python benchmarks/kernels.py table --isa avx2   # the kernel table (issues 4, 10): ours vs torch dense
    python benchmarks/kernels.py precision # the kernels in fp32 and bf16 (AMX, dot product), each against its own peak
    python benchmarks/kernels.py latency   # latency-table prediction vs measurement on random policies
    python benchmarks/kernels.py all

Every timing is a median of interleaved rounds in one process (uniprune.compressors.latency.timing). Whole models
against every dense engine: benchmarks/engines.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.projection import structured_weight  # noqa: E402
from uniprune.compressors.core.structure import BlockShape, block_grid  # noqa: E402
from uniprune.compressors.latency.table import (  # noqa: E402
    RUNTIMES,
    build_latency_model,
    check_latency_model,
    random_structure,
)
from uniprune.compressors.latency.timing import time_interleaved  # noqa: E402
from uniprune.compressors.native import kernels  # noqa: E402
from uniprune.compressors.native.library import _UNIT_CODES  # noqa: E402
from uniprune.compressors.native.runtime import CompiledConv2d, CompiledLinear  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONVS = [(16, 32), (32, 16), (64, 8)]  # channels, feature map (ResNet-56 stages)
LINEARS = [(768, 3072), (3072, 768)]  # in, out


CONV_BLOCKS = [BlockShape(8, 4), BlockShape(4, 1), BlockShape(1, 1)]  # out x in channels, whole 3x3 window
LINEAR_BLOCK = BlockShape(8, 8)


def _layer(module: nn.Module, block: BlockShape, prune: float, unify: float, seed: int) -> tuple[nn.Module, float]:
    """The layer compiled (measured choice of implementation) with random block states; and its kept MACs
    per sample and output position (kept weights)."""
    grid = block_grid(tuple(module.weight.shape), block)
    s = random_structure(grid, prune, unify, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        module.weight.copy_(structured_weight(module.weight, s))
    kept = float(s.keep_mask().sum())
    cls = CompiledConv2d if isinstance(module, nn.Conv2d) else CompiledLinear
    return cls(module, s, threads=THREADS, choose="measure"), kept


def _csr_fn(module: nn.Module, x: torch.Tensor):
    w = module.weight.detach()
    csr = w.reshape(w.shape[0], -1).to_sparse_csr()
    return lambda: torch.sparse.mm(csr, x.t()).t()


def table(args: argparse.Namespace) -> None:
    flags = kernels.cpu_flags()
    built = kernels.isa(args.isa)
    peak = kernels.fma_peak_gflops(THREADS, isa=args.isa)
    os.environ["UNIPRUNE_ISA"] = kernels.resolve_isa(args.isa)  # the compiled layers load this build
    rows = []
    cases = ([("conv", c, h, b, blk) for c, h in CONVS for blk in CONV_BLOCKS for b in (1, 32)]
             + [("linear", i, o, b, LINEAR_BLOCK) for i, o in LINEARS for b in (1, 32)])
    for kind, a, bdim, batch, blk in tqdm(cases, desc="kernel table", file=sys.stderr):
        for s in (0.0, 0.75, 0.9):
            for unify_share in ((0.0, 0.5) if kind == "linear" and s > 0 else (0.0,)):
                u = unify_share * (1 - s)
                torch.manual_seed(0)
                if kind == "conv":
                    module, x, name = nn.Conv2d(a, a, 3, padding=1, bias=False), torch.randn(batch, a, bdim, bdim), f"conv3x3 {a}ch@{bdim}x{bdim}"
                    positions = bdim * bdim
                else:
                    module, x, name = nn.Linear(a, bdim, bias=False), torch.randn(batch, a), f"linear {a}->{bdim}"
                    positions = 1
                module.eval()
                layer, kept = _layer(module, blk, s, u, seed=1)
                # the kernels themselves, not the runtime's pick (a quick pick on a shared machine can say dense):
                # every native candidate timed, the faster one reported
                native = {k: f for k, f in layer._candidates(x).items() if k not in ("dense", "shrunk")}
                fns = {f"ours:{k}": (lambda f=f, t=x: f(t)) for k, f in native.items()}
                fns["dense"] = lambda m=module, t=x: m(t)
                if kind == "linear":
                    fns["csr"] = _csr_fn(module, x)
                extra = ""
                if kind == "linear" and batch == 1 and u > 0:
                    fns["materialised"] = lambda m=layer, t=x: m.gemv(t, THREADS)
                t = time_interleaved(fns, warmup=3, repeats=args.repeats, threads=THREADS, statistic="min")
                impl = min((k for k in t if k.startswith("ours:")), key=t.__getitem__)
                t["ours"], impl = t[impl], impl.split(":", 1)[1]
                if "materialised" in t:
                    extra = f" (materialised {t['materialised']:.4f})"
                speed = t["dense"] / t["ours"]
                gflops = 2 * kept * positions * batch / (t["ours"] * 1e-3) / 1e9
                csr = f"{t['csr']:.4f}" if "csr" in t else "-"
                rows.append(f"| {name} | {blk.out}x{blk.inp} | {batch} | {s:.2f} | {u:.3f} | {t['ours']:.4f}{extra} | {impl} "
                            f"| {t['dense']:.4f} | {csr} | {speed:.2f} | {speed * (1 - s):.2f} | {gflops / peak:.2f} |")
    md = [
        f"Machine: {machine_line()}; CPU {'has' if 'avx512f' in flags else 'lacks'} avx512f"
        f"{', has avx2+fma' if {'avx2', 'fma'} <= flags else ''}; kernels built for **{built}** "
        f"(`--isa {args.isa or 'auto'}`, build {kernels.build_id(args.isa)}); FMA peak of that build "
        f"{peak:.1f} GFLOP/s on {THREADS} thread(s); {THREADS} thread(s) for torch and ours.",
        f"Command: `{command_line()}`",
        "",
        "ms = least of interleaved rounds (a shared machine). Blocks out x in channels (conv: whole 3x3 window), "
        "block states random; `unify` = share of all blocks unified (linear only). `ours runs` = the faster "
        "of the native candidates, timed in the same rounds (`sparse`: panels as tall as the blocks; `sparse_p8`: "
        "8-row panels; `sparse`/`gemv`/`gemv_compact` for a linear). torch CSR = `torch.sparse.mm` on the CSR weight (linear only). Speedup = dense / ours; "
        "share of ideal = speedup x (1 - s); share of peak = kept MACs x 2 / time / FMA peak (kept work only: "
        "what the layer must compute, at the build's measured single-core FMA rate).",
        "",
        "| layer | block | batch | block sparsity s | unify | ours ms | ours runs | torch dense ms | torch CSR ms "
        "| speedup | share of ideal | share of FMA peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    section = "kernels" if not args.isa or args.isa == "auto" else f"kernels_{args.isa}"
    write_section(section, f"## Kernel table, {built} build (issues 4, 10)\n\n" + "\n".join(md))


PRECISION_CONVS = [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]  # in, out, map, stride


def precision_table(args: argparse.Namespace) -> None:
    """Each ResNet-56 conv geometry, block shape and sparsity in fp32 and bf16 side by side, with every kernel's
    share of its own precision's peak (fp32: the FMA probe; bf16 on AMX tiles: the TDPBF16PS probe; bf16 on the
    dot product: the VDPBF16PS probe)."""
    amx = "amx_bf16" in kernels.bf16_units()
    dot = "bf16_dot" in kernels.bf16_units()
    peaks: dict[str, float | None] = {u: None for u in kernels.PEAK_UNITS}

    def probe() -> None:
        """Each peak re-probed and the best kept: on a shared machine one probe can land in a neighbour's burst
        (it read 42 of ~105 GFLOP/s once), which would inflate every share of peak."""
        lib = kernels.load()
        for u in kernels.PEAK_UNITS:
            rate = lib.up_fma_peak(0.2, THREADS) if u == "fma" else lib.up_bf16_peak(_UNIT_CODES[u], 0.2, THREADS)
            if rate:
                peaks[u] = max(peaks[u] or 0.0, float(rate))

    probe()
    rows = []
    cases = [(c, b, blk, s) for c in PRECISION_CONVS for b in (1, 32) for blk in CONV_BLOCKS for s in (0.0, 0.75, 0.9)
             if not (s == 0.0 and blk != CONV_BLOCKS[0])]
    for (ci, co, hw, stride), batch, blk, s in tqdm(cases, desc="precision table", file=sys.stderr):
        g = torch.Generator().manual_seed(1)
        weight = torch.randn(co, ci, 3, 3, generator=g)
        st = random_structure(block_grid((co, ci, 3, 3), blk), s, 0.0, g)
        keep = st.keep_mask().reshape(co, ci, -1).any(-1)
        x = torch.randn(batch, ci, hw, hw, generator=g)
        convs = {"fp32": kernels.SparseConv(weight, keep, None, (stride, stride), (1, 1), (1, 1),
                                            rows=kernels.panel_height(blk.out))}
        if amx:
            convs["bf16 amx"] = kernels.SparseConv(weight, keep, None, (stride, stride), (1, 1), (1, 1),
                                                   rows=kernels.panel_height(blk.out), precision="bf16")
        if dot:
            convs["bf16 dot"] = kernels.SparseConv(weight, keep, None, (stride, stride), (1, 1), (1, 1),
                                                   rows=kernels.panel_height(blk.out), precision="bf16", engine="dpbf16")
        fns = {k: (lambda c=c, x=x: c(x, THREADS)) for k, c in convs.items()}
        if s == 0.0 and amx:
            # oneDNN's own AMX conv (what torch runs a bf16 channels-last conv on), input already in its layout:
            # what calling the library for a layer left dense would buy, before any layout conversion
            xo = x.bfloat16().contiguous(memory_format=torch.channels_last)
            wo = weight.bfloat16().contiguous(memory_format=torch.channels_last)
            fns["onednn"] = lambda xo=xo, wo=wo, st=stride: torch.nn.functional.conv2d(xo, wo, None, st, 1)
        t = time_interleaved(fns, warmup=3, repeats=args.repeats, threads=THREADS, statistic="min")
        ho = (hw - 1) // stride + 1
        flops = 2 * float(keep.sum()) * 9 * ho * ho * batch  # the kept work, what the layer must compute
        rows.append((f"{ci}->{co} @{hw}x{hw}{' s2' if stride == 2 else ''}", f"{blk.out}x{blk.inp}", batch, s, flops, t))
        if len(rows) % 10 == 0:
            probe()
    probe()
    lines = []  # shares divided by the best peak of the whole run
    for name, blk_name, batch, s, flops, t in rows:
        cells = [name, blk_name, str(batch), f"{s:.2f}", f"{t['fp32'] * 1e3:.1f}",
                 f"{flops / (t['fp32'] * 1e6) / peaks['fma']:.2f}"]
        if amx:
            cells += [f"{t['bf16 amx'] * 1e3:.1f}", f"{flops / (t['bf16 amx'] * 1e6) / peaks['amx_bf16']:.3f}",
                      f"{t['fp32'] / t['bf16 amx']:.2f}",
                      f"{t['onednn'] * 1e3:.1f} ({flops / (t['onednn'] * 1e6) / peaks['amx_bf16']:.3f})" if "onednn" in t else ""]
        if dot:
            cells += [f"{t['bf16 dot'] * 1e3:.1f}", f"{flops / (t['bf16 dot'] * 1e6) / peaks['bf16_dot']:.2f}",
                      f"{t['fp32'] / t['bf16 dot']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    head = "| conv | block | batch | s | fp32 µs | fp32 share of FMA peak |"
    head += (" bf16 AMX µs | bf16 share of AMX peak | bf16 speedup over fp32 | oneDNN bf16 µs (share), dense only |"
             if amx else "")
    head += " bf16 dot µs | bf16 dot share of VDPBF16PS peak | bf16 dot speedup over fp32 |" if dot else ""
    md = [
        f"Machine: {machine_line()}; kernels {kernels.build_id()}; measured peaks on "
        f"{THREADS} thread(s): " + ", ".join(f"{u} {p:.0f} GFLOP/s" if p else f"{u} n/a" for u, p in peaks.items())
        + f" (best of {2 + len(rows) // 10} probes through the run). Load average at the end: {os.getloadavg()[0]:.1f} "
        "(a shared 2-core machine).",
        f"Command: `{command_line()}`", "",
        "µs = least of interleaved rounds, one call of the kernel (`SparseConv`, float32 in and out; bf16 rounds "
        "weights and activations, accumulates in float32). Blocks out x in channels over the whole 3x3 window, "
        "random states with exactly the share s pruned. Share of peak = the kept work (2 x kept weights x output "
        "pixels x batch) / time / that precision's measured single-core peak. bf16 dot: the VDPBF16PS kernel "
        "(8x4 blocks and dense layers on channel pairs: up to 1.0 of its peak in kept work; 4x1 and 1x1 blocks on "
        "pairs of taps of a kernel row, a 3x3 window in 6 dot products: up to 0.75), "
        "forced here; a plan keeps it only where it times faster than fp32 (on CPUs with avx512_bf16 and no AMX). "
        f"oneDNN: torch {torch.__version__}'s bf16 conv on channels-last bf16 tensors (oneDNN's AMX kernels; torch's "
        "per-call overhead included, the layout conversions a plan would need not), dense layers only.",
        "", head, "|" + " --- |" * (head.count("|") - 1), *lines,
    ]
    write_section(f"kernels_precision_{kernels.isa()}",
                  f"## Kernel table per precision, {kernels.isa()} build (issue 20)\n\n" + "\n".join(md))


def _resnet56(pretrained: bool) -> nn.Module:
    from uniprune.search.models import build_model, load_weights

    model = build_model("cifar-resnet56", num_classes=10)
    ckpt = DATA / "pretrained" / "resnet56-4bfd9763.th"
    if pretrained and ckpt.exists():
        load_weights(model, ckpt)
    return model.eval()


def latency(args: argparse.Namespace) -> None:
    lines = []
    for batch in args.batches:
        model = _resnet56(pretrained=False)
        lm = build_latency_model(model, (3, 32, 32), batch_size=batch, threads=THREADS, statistic=args.statistic,
                                 runtime=args.runtime)
        check = check_latency_model(model, lm, (3, 32, 32), batch_size=batch, threads=THREADS,
                                    policies=args.policies, repeats=args.repeats, statistic=args.statistic)
        rows = check["rows"]
        within = sum(r["ratio_error"] <= 0.10 for r in rows)
        ratios = [r["measured_ratio"] for r in rows]
        lines.append(
            f"| {batch} | {lm.meta['baseline_engine']} ({lm.meta.get('baseline_precision', 'f32')}) | {lm.fixed_ms:.2f} | {lm.dense_ms:.2f} | {statistics.median(r['dense_ms'] for r in rows):.2f} "
            f"| {len(rows)} | {min(ratios):.2f} to {max(ratios):.2f} | {100 * check['median_error']:.1f} % | {100 * check['max_error']:.1f} % "
            f"| {within}/{len(rows)} | {100 * check['median_ms_error']:.1f} % | {100 * check['max_ms_error']:.1f} % |")
    md = [
        f"Machine: {machine_line()}; {THREADS} thread(s); statistic {args.statistic}; runtime {args.runtime}.",
        f"Command: `{command_line()}`", "",
        "ResNet-56; random policies (per layer prune in [0, 0.9], unify in [0, (1 - prune)/2]) with random block "
        "states. Predicted: the latency table (every layer timed in place in whole-model passes at each grid "
        "point; fixed_ms + per-layer bilinear interpolation). Measured: the compiled whole model timed "
        "interleaved with every dense engine. Both ratios divide by the fastest dense engine at its default precision "
        "(torch eager, ONNX Runtime, OpenVINO: bf16 on CPUs with avx512_bf16 or AMX; the table's baseline engine "
        "and its precision are in the second column). Errors relative to the measurement: of the latency ratio "
        "(compressed / fastest dense, what a budget constrains; target max <= 10 %), and of the absolute ms, "
        "which also carries the machine's drift between building the table and the check.",
        "",
        "| batch | baseline engine | fixed ms | table's baseline ms | baseline ms at the check (median) | policies | measured ratios "
        "| median ratio error | max ratio error | ratio within 10 % | median ms error | max ms error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *lines,
    ]
    section = ("latency_table" + ("" if args.statistic == "median" else f"_{args.statistic}") + f"_{kernels.isa()}"
               + ("" if args.runtime == "lean" else f"_{args.runtime}"))
    write_section(section, f"## Latency table: prediction vs measurement ({kernels.isa()} kernels)\n\n" + "\n".join(md))


THREADS = 1


def main(argv: list[str] | None = None) -> int:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=["table", "precision", "latency", "all"])
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and the kernels (default 1)")
    parser.add_argument("--isa", choices=kernels.ISAS, default=None,
                        help="force the kernels' vector ISA for 'table' (default $UNIPRUNE_ISA, else auto); "
                             "an ISA the CPU lacks is refused")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per measurement (default 30)")
    parser.add_argument("--policies", type=int, default=20, help="random policies for 'latency' (default 20)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes for 'latency' (default 1)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="lean",
                        help="how the compressed model runs in 'latency' (default lean; python: the compiled nn.Module)")
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="per-function statistic of the timed rounds (default median; min on a shared machine)")
    args = parser.parse_args(argv)
    THREADS = args.threads
    for what, fn in (("table", table), ("precision", precision_table), ("latency", latency)):
        if args.what in (what, "all"):
            fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
