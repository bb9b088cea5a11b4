"""Which block shapes does the bf16 conv turn into speed? Each shape at 75 % pruned against the dense layer.

    python benchmarks/block_shapes_bf16.py                # ViT-B's Linears at 197 tokens, ResNet convs, batch 1
    python benchmarks/block_shapes_bf16.py --threads 2

For each layer (random weights, random block placement), the bf16 conv (``SparseConv(precision="bf16")``: AMX tiles
where the CPU has them, else the bf16 dot product, else float32) with every block kept and with 75 % of the
blocks pruned for each shape, interleaved in the same rounds (least of the rounds); the speedup of each pruned
layer over the dense one. 16x2 and 16x4 span a whole AMX panel of 16 output channels (section
``panel_occupancy``). Writes section ``block_shapes_bf16_<isa>`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.structure import BlockShape, block_grid  # noqa: E402
from uniprune.compressors.latency.table import random_structure  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples  # noqa: E402
from uniprune.compressors.native import kernels  # noqa: E402

# (in, out, H, W, kernel): ViT-B's attention projection, MLP up and down at 197 tokens; ResNet convs at batch 1
LAYERS = [(768, 768, 197, 1, 1), (768, 3072, 197, 1, 1), (3072, 768, 197, 1, 1), (32, 32, 16, 16, 3),
          (64, 64, 16, 16, 3), (128, 128, 8, 8, 3), (256, 256, 4, 4, 3)]
SHAPES = ((8, 4), (8, 8), (16, 2), (16, 4), (4, 1), (1, 1))
SHARE = 0.75


def _runner(weight: torch.Tensor, x: torch.Tensor, bo: int, bi: int, share: float, g: torch.Generator,
            threads: int):
    """A call of the bf16 conv of ``weight`` on ``x`` with ``share`` of its bo x bi blocks pruned at random."""
    co, ci, k = weight.shape[0], weight.shape[1], weight.shape[2]
    keep = random_structure(block_grid(weight.shape, BlockShape(bo, bi)), share, 0.0, g).keep_mask()
    keep = keep.reshape(co, ci, -1).any(-1)
    conv = kernels.SparseConv(weight, keep, None, (1, 1), (k // 2, k // 2), (1, 1), rows=kernels.panel_height(bo),
                              precision="bf16")
    return lambda: conv(x, threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="threads of every conv (default 1)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds at least (default 20)")
    args = parser.parse_args(argv)
    engine = ("amx_bf16" if "amx_bf16" in kernels.bf16_units() else "bf16_dot" if "bf16_dot" in kernels.bf16_units()
              else "fp32")
    rows = []
    for ci, co, h, w, k in LAYERS:
        g = torch.Generator().manual_seed(0)
        weight = torch.randn(co, ci, k, k, generator=g)
        x = torch.randn(1, ci, h, w, generator=g)
        fns = {"dense": _runner(weight, x, 1, 1, 0.0, g, args.threads),
               **{f"{bo}x{bi}": _runner(weight, x, bo, bi, SHARE, g, args.threads) for bo, bi in SHAPES}}
        t = interleaved_samples(fns, warmup=3, repeats=args.repeats, threads=args.threads, min_seconds=1.0)
        dense = min(t["dense"])
        name = f"{ci}->{co} {'@' + str(h) + ' tokens' if w == 1 else f'{k}x{k} @{h}x{w}'}"
        rows.append(f"| {name} | {dense * 1e3:.0f} | " + " | ".join(f"{dense / min(t[f'{bo}x{bi}']):.2f}x"
                                                                    for bo, bi in SHAPES) + " |")
        print(rows[-1], flush=True)
    head = "| layer | dense µs | " + " | ".join(f"{bo}x{bi}" for bo, bi in SHAPES) + " |"
    md = [f"## Block shapes in bf16: speedup over the dense layer at {SHARE:.0%} pruned (`benchmarks/block_shapes_bf16.py`, "
          f"{kernels.isa()} build, issue 20)", "", machine_line(), f"Command: `{command_line()}`", "",
          f"The bf16 conv ({engine}), batch 1, {args.threads} thread(s), random weights and block placement, least of "
          f"at least {args.repeats} interleaved rounds.", "", head, "|---|---|" + "---|" * len(SHAPES), *rows]
    write_section(f"block_shapes_bf16_{kernels.isa()}", "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
