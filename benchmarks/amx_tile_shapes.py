"""Does a smaller AMX tile cost less? ns per TDPBF16PS for every tile shape a block-sparse kernel could use.

    python benchmarks/amx_tile_shapes.py             # rows of A and C 16, 8, 4, 1; bf16 products per row 32 .. 2
    python benchmarks/amx_tile_shapes.py --seconds 0.5

A block-sparse conv on AMX tiles (csrc/uniprune_bf16.c) copies ("gathers") the input rows of the blocks a panel
of 16 output channels keeps into full tiles; on ViT-B's Linears 75 % of 8x8 blocks pruned then ran only 1.15 to
1.65x faster than dense. Skipping a pruned block without that copy would need tiles of fewer rows (fewer output
channels, M) or fewer products per row (fewer input channels, K): worth it only if TDPBF16PS takes less time on
them. One thread, the library's probe (``up_amx_tile_ns``: four independent accumulators, operands resident, the
best of 8 windows). Writes section ``amx_tile_shapes`` of docs/RESULTS.md. Needs a CPU with AMX.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.native import kernels  # noqa: E402

ROWS = (16, 8, 4, 1)
PRODUCTS = (32, 16, 8, 4, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.2, help="probe time per shape, s (default 0.2)")
    args = parser.parse_args(argv)
    if "amx_bf16" not in kernels.bf16_units():
        print("amx_tile_shapes: this CPU (or build) has no AMX bf16 tiles; run it on one that has", file=sys.stderr)
        return 2
    lib = kernels.load()
    ns = {(m, k): lib.up_amx_tile_ns(m, k, args.seconds) for m in ROWS for k in PRODUCTS}
    full = ns[(16, 32)]
    lines = ["| rows of A and C (M) | " + " | ".join(f"K = {k}" for k in PRODUCTS) + " |",
             "|---|" + "---|" * len(PRODUCTS)]
    for m in ROWS:
        lines.append(f"| {m} | " + " | ".join(f"{ns[(m, k)]:.2f} ns ({m * k / (16 * 32) * full / ns[(m, k)]:.2f})"
                                                 for k in PRODUCTS) + " |")
    text = "\n".join(lines)
    print(text)
    share = {(m, k): m * k / (16 * 32) * full / v for (m, k), v in ns.items()}
    best = max((key for key in share if key != (16, 32)), key=share.__getitem__)
    md = ["## Does a smaller AMX tile cost less? (`benchmarks/amx_tile_shapes.py`, issue 20)", "",
          machine_line(), f"Command: `{command_line()}`", "",
          "ns per TDPBF16PS, one thread, four independent accumulators, operands resident; in brackets the useful "
          "multiply-adds per ns (M x K x 16) as a share of the full 16 x 32 tile's.", "", text, "",
          f"Reading: a smaller tile is at most {full / min(ns.values()):.2f}x quicker than a full one while doing up to "
          f"{16 * 32 // (min(ROWS) * min(PRODUCTS))}x less work; the best of them, M = {best[0]} and K = {best[1]}, does {share[best]:.2f} of the "
          "full tile's useful work per ns. Skipping a pruned 8x8 or 8x4 block with tiles of its own size would run at "
          "that share or less, so csrc/uniprune_bf16.c fills full tiles by copying each panel's kept inputs "
          "together; only blocks 16 output channels tall over runs of 32 input channels skip without a copy."]
    write_section("amx_tile_shapes", "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
