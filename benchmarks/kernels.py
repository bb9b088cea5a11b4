"""Kernel and latency benchmarks; each subcommand writes its own section of docs/RESULTS.md.

    python benchmarks/kernels.py table     # the kernel table (issue 4): ours vs torch dense vs torch CSR
    python benchmarks/kernels.py resnet56  # ResNet-56, uniform policy at latency budget 0.5, batch 1 and 32
    python benchmarks/kernels.py latency   # latency-table prediction vs measurement on random policies
    python benchmarks/kernels.py all

Every timing is a median of interleaved rounds in one process (uniprune.compressors.latency).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.blocks import DEFAULT_BLOCK_SHAPES, compressible_layers  # noqa: E402
from uniprune.compressors.kernels import isa  # noqa: E402
from uniprune.compressors.latency import (  # noqa: E402
    build_latency_model,
    check_latency_model,
    measure_model_ms,
    random_structure,
    time_interleaved,
)
from uniprune.compressors.policy import LayerAction, Policy  # noqa: E402
from uniprune.compressors.projection import project_model, structured_weight  # noqa: E402
from uniprune.compressors.runtime import CompiledConv2d, CompiledLinear  # noqa: E402
from uniprune.compressors.structure import block_grid  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONVS = [(16, 32), (32, 16), (64, 8)]  # channels, feature map (ResNet-56 stages)
LINEARS = [(768, 3072), (3072, 768)]  # in, out


def _layer(module: nn.Module, prune: float, unify: float, seed: int) -> nn.Module:
    kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
    grid = block_grid(tuple(module.weight.shape), DEFAULT_BLOCK_SHAPES[kind])
    s = random_structure(grid, prune, unify, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        module.weight.copy_(structured_weight(module.weight, s))
    cls = CompiledConv2d if kind == "conv" else CompiledLinear
    return cls(module, s, threads=THREADS, choose="sparse")


def _csr_fn(module: nn.Module, x: torch.Tensor):
    w = module.weight.detach()
    csr = w.reshape(w.shape[0], -1).to_sparse_csr()
    if isinstance(module, nn.Conv2d):
        def run():
            cols = F.unfold(x, module.kernel_size, padding=module.padding)  # [N, Ci*k*k, L]
            n, kk, length = cols.shape
            y = torch.sparse.mm(csr, cols.permute(1, 0, 2).reshape(kk, n * length))
            return y.reshape(w.shape[0], n, length).permute(1, 0, 2)
        return run
    return lambda: torch.sparse.mm(csr, x.t()).t()


def table(args: argparse.Namespace) -> None:
    rows = []
    cases = [("conv", c, h, b) for c, h in CONVS for b in (1, 32)] + [("linear", i, o, b) for i, o in LINEARS for b in (1, 32)]
    for kind, a, bdim, batch in tqdm(cases, desc="kernel table", file=sys.stderr):
        for s in (0.5, 0.75, 0.9):
            for unify_share in (0.0, 0.5):
                u = unify_share * (1 - s)
                torch.manual_seed(0)
                if kind == "conv":
                    module, x, name = nn.Conv2d(a, a, 3, padding=1, bias=False), torch.randn(batch, a, bdim, bdim), f"conv3x3 {a}ch@{bdim}x{bdim}"
                else:
                    module, x, name = nn.Linear(a, bdim, bias=False), torch.randn(batch, a), f"linear {a}->{bdim}"
                module.eval()
                layer = _layer(module, s, u, seed=1)
                impl = layer.implementation(x)
                fns = {"ours": lambda m=layer, t=x: m(t), "dense": lambda m=module, t=x: m(t), "csr": _csr_fn(module, x)}
                extra = ""
                if kind == "linear" and batch == 1 and u > 0:
                    fns["materialised"] = lambda m=layer, t=x: m.gemv(t, THREADS)
                t = time_interleaved(fns, warmup=5, repeats=args.repeats, threads=THREADS)
                if "materialised" in t:
                    extra = f" (materialised {t['materialised']:.4f})"
                speed = t["dense"] / t["ours"]
                rows.append(f"| {name} | {batch} | {s:.2f} | {u:.3f} | {t['ours']:.4f}{extra} | {impl} | {t['dense']:.4f} "
                            f"| {t['csr']:.4f} | {speed:.2f} | {t['csr'] / t['ours']:.1f} | {speed * (1 - s):.2f} |")
    md = [
        f"Machine: {machine_line()}; kernels built for {isa()}; {THREADS} thread(s) for torch and ours.",
        f"Command: `{command_line()}`",
        "",
        "ms = median of interleaved rounds. `unify` = share of all blocks unified (half of the blocks left after "
        "pruning); conv blocks 8x4 (out x in channels, whole 3x3 window), linear blocks 8x8; block states random. "
        "torch CSR = `torch.sparse.mm` on the CSR weight (convs as unfold + im2col GEMM). Speedup = dense / ours; "
        "fraction of ideal = speedup x (1 - s), ideal being 1/(1-s) from pruning alone.",
        "",
        "| layer | batch | block sparsity s | unify | ours ms | ours runs | torch dense ms | torch CSR ms | speedup | x CSR | fraction of ideal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    write_section("kernels", "## Kernel table (issue 4)\n\n" + "\n".join(md))


def _resnet56(pretrained: bool) -> nn.Module:
    from uniprune.search.models import build_model, load_weights

    model = build_model("cifar-resnet56", num_classes=10)
    ckpt = DATA / "pretrained" / "resnet56-4bfd9763.th"
    if pretrained and ckpt.exists():
        load_weights(model, ckpt)
    return model.eval()


def _uniform_for_budget(lm, names: list[str], budget: float) -> float:
    lo, hi = 0.0, 0.95
    for _ in range(30):
        mid = (lo + hi) / 2
        pred = lm.predict({n: LayerAction(prune=mid) for n in names})
        lo, hi = (lo, mid) if pred <= budget * lm.dense_ms else (mid, hi)
    return hi


def resnet56(args: argparse.Namespace) -> None:
    import copy

    lines = []
    for batch in (1, 32):
        model = _resnet56(pretrained=True)
        names = [s.name for s in compressible_layers(model)]
        lm = build_latency_model(model, (3, 32, 32), batch_size=batch, threads=THREADS, statistic=args.statistic)
        p = _uniform_for_budget(lm, names, 0.5)
        policy = Policy(layers={n: LayerAction(prune=p) for n in names}, model="cifar-resnet56", latency_budget=0.5)
        projected = copy.deepcopy(model)
        structures = project_model(projected, policy)
        r = measure_model_ms(projected, structures, (3, 32, 32), batch_size=batch, threads=THREADS,
                             repeats=args.repeats, statistic=args.statistic)
        # the runtime alone: every layer compiled, nothing pruned
        untouched = project_model(copy.deepcopy(model), Policy(layers={}, model="cifar-resnet56"))
        alone = measure_model_ms(model, untouched, (3, 32, 32), batch_size=batch, threads=THREADS,
                                 repeats=args.repeats, statistic=args.statistic)
        predicted = lm.predict({n: LayerAction(prune=p) for n in names})
        lines.append(f"| {batch} | {p:.3f} | {r['dense_ms']:.3f} | {r['compressed_ms']:.3f} | {r['speedup']:.2f} "
                     f"| {1 / r['speedup']:.3f} | {predicted / lm.dense_ms:.3f} | {1 / alone['speedup']:.3f} |")
    md = [
        f"Machine: {machine_line()}; {THREADS} thread(s); statistic {args.statistic}.", f"Command: `{command_line()}`", "",
        "Pretrained ResNet-56 (shared data) projected onto the uniform prune fraction (unify 0, every layer) "
        "that the latency table predicts to meet latency budget 0.5; dense (PyTorch, BatchNorm folded) and "
        "compressed (uniprune's runtime, BatchNorm folded) timed interleaved. Target: speedup 2. The last "
        "column is the runtime alone: every layer compiled with nothing pruned, against the same dense model.",
        "",
        "| batch | uniform prune | dense ms | compressed ms | measured speedup | measured ratio | predicted ratio | runtime alone, ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *lines,
    ]
    write_section("resnet56", "## ResNet-56 end to end at latency budget 0.5\n\n" + "\n".join(md))


def latency(args: argparse.Namespace) -> None:
    lines = []
    for batch in args.batches:
        model = _resnet56(pretrained=False)
        lm = build_latency_model(model, (3, 32, 32), batch_size=batch, threads=THREADS, statistic=args.statistic)
        check = check_latency_model(model, lm, (3, 32, 32), batch_size=batch, threads=THREADS,
                                    policies=args.policies, repeats=args.repeats, statistic=args.statistic)
        rows = check["rows"]
        within = sum(r["ratio_error"] <= 0.10 for r in rows)
        ratios = [r["measured_ratio"] for r in rows]
        lines.append(
            f"| {batch} | {lm.fixed_ms:.2f} | {lm.dense_ms:.2f} | {statistics.median(r['dense_ms'] for r in rows):.2f} "
            f"| {len(rows)} | {min(ratios):.2f} to {max(ratios):.2f} | {100 * check['median_error']:.1f} % | {100 * check['max_error']:.1f} % "
            f"| {within}/{len(rows)} | {100 * check['median_ms_error']:.1f} % | {100 * check['max_ms_error']:.1f} % |")
    md = [
        f"Machine: {machine_line()}; {THREADS} thread(s); statistic {args.statistic}.", f"Command: `{command_line()}`", "",
        "ResNet-56; random policies (per layer prune in [0, 0.9], unify in [0, (1 - prune)/2]) with random block "
        "states. Predicted: the latency table (every layer timed in place in whole-model passes at each grid "
        "point; fixed_ms + per-layer bilinear interpolation). Measured: the compiled whole model timed "
        "interleaved with the dense one. Errors relative to the measurement: of the latency ratio "
        "(compressed / dense, what a budget constrains; target max <= 10 %), and of the absolute ms, "
        "which also carries the machine's drift between building the table and the check.",
        "",
        "| batch | fixed ms | table's dense ms | dense ms at the check (median) | policies | measured ratios | median ratio error "
        "| max ratio error | ratio within 10 % | median ms error | max ms error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *lines,
    ]
    write_section("latency_table" + ("" if args.statistic == "median" else f"_{args.statistic}"), "## Latency table: prediction vs measurement\n\n" + "\n".join(md))


THREADS = 1


def main(argv: list[str] | None = None) -> int:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=["table", "resnet56", "latency", "all"])
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and the kernels (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per measurement (default 30)")
    parser.add_argument("--policies", type=int, default=20, help="random policies for 'latency' (default 20)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes for 'latency' (default 1)")
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="per-function statistic of the timed rounds (default median; min on a shared machine)")
    args = parser.parse_args(argv)
    THREADS = args.threads
    for what, fn in (("table", table), ("resnet56", resnet56), ("latency", latency)):
        if args.what in (what, "all"):
            fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
