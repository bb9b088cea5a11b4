"""How much of an AMX panel does fine-block pruning empty? Trained ResNet-56, blocks pruned by magnitude.

    python benchmarks/panel_occupancy.py                  # 1x1, 4x1, 8x4, 16x2 blocks at 50 and 75 % pruned

The AMX conv (csrc/uniprune_bf16.c) computes panels of 16 output channels and skips an input channel pair only
where all 16 rows of the panel prune it (docs/KERNELS.md). On random patterns 1x1 blocks at 75 % pruned keep
almost every pair; this asks whether a trained network's magnitude pattern is kinder, and whether reordering
helps: output channels grouped greedily into panels whose kept inputs overlap most (each panel seeded with the
row keeping the most, then the row adding the fewest new inputs), and input channels paired by how often they
are kept together. For every 3x3 conv of ResNet-56 (../shared/data), each block shape and share pruned (per
layer, uniprune's own projection: the blocks of least L2 norm), the share of (panel, pair) cells a panel must still compute, averaged over
the layers. Writes section ``panel_occupancy`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.projection import project_layer  # noqa: E402
from uniprune.compressors.core.structure import BlockShape, block_grid  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrained" / "resnet56-4bfd9763.th"
PANEL = 16
SHAPES = ((1, 1), (4, 1), (8, 4), (16, 2))


def keep_mask(w: torch.Tensor, bo: int, bi: int, share: float) -> torch.Tensor:
    """[Co, Ci] channel pairs kept when ``share`` of the weights go in bo x bi blocks, as uniprune projects a layer
    (the blocks of least L2 norm)."""
    structure, _ = project_layer(w, block_grid(w.shape, BlockShape(bo, bi)), share, 0.0)
    return structure.keep_mask().reshape(w.shape[0], w.shape[1], -1).any(-1)


def occupancy(keep: torch.Tensor) -> float:
    """Share of (panel of 16 rows, input pair) cells with any kept weight."""
    co, ci = keep.shape
    pairs = keep.reshape(co, ci // 2, 2).any(-1)
    return float(sum(pairs[p:p + PANEL].any(0).sum() for p in range(0, co, PANEL))) / (-(-co // PANEL) * (ci // 2))


def cluster_rows(keep: torch.Tensor) -> torch.Tensor:
    """Rows reordered into panels whose kept inputs overlap most (greedy)."""
    left, order = list(range(keep.shape[0])), []
    while left:
        seed = max(left, key=lambda r: int(keep[r].sum()))
        left.remove(seed)
        panel, union = [seed], keep[seed].clone()
        while len(panel) < PANEL and left:
            best = min(left, key=lambda r: int((keep[r] & ~union).sum()))
            left.remove(best)
            panel.append(best)
            union |= keep[best]
        order += panel
    return keep[order]


def pair_inputs(keep: torch.Tensor) -> torch.Tensor:
    """Input channels reordered so that each pair is two channels often kept together (greedy)."""
    cols, left, order = keep.t().float(), list(range(keep.shape[1])), []
    while left:
        a = left.pop(0)
        if left:
            b = max(left, key=lambda c: float((cols[a] * cols[c]).sum()))
            left.remove(b)
            order += [a, b]
        else:
            order.append(a)
    return keep[:, order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="ResNet-56 state (default: ../shared/data)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.75], help="shares of blocks pruned")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"panel_occupancy: no checkpoint at {args.checkpoint}; see ../shared/data/README.md", file=sys.stderr)
        return 2
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    convs = [w for k, w in state.items() if k.endswith("weight") and w.dim() == 4 and w.shape[1] >= PANEL]
    rows = []
    for share in args.shares:
        for bo, bi in SHAPES:
            cells = np.array([[occupancy(k), occupancy(cluster_rows(k)), occupancy(pair_inputs(cluster_rows(k)))]
                              for k in (keep_mask(w, bo, bi, share) for w in convs)]).mean(0)
            rows.append(f"| {share:.0%} | {bo}x{bi} | {1 - share:.2f} | {cells[0]:.2f} | {cells[1]:.2f} | {cells[2]:.2f} |")
            print(rows[-1], flush=True)
    md = ["## How much of an AMX panel does fine-block pruning empty? (`benchmarks/panel_occupancy.py`, issue 20)", "",
          machine_line(), f"Command: `{command_line()}`", "",
          f"Trained ResNet-56, its {len(convs)} 3x3 convs of 16 to 64 channels, blocks pruned by L2 norm per layer. "
          "Share of (16-row panel, input pair) cells the AMX conv still computes; the time of a layer on AMX "
          "follows it (a cell costs the same whether one or all of its weights are kept).", "",
          "| pruned | block | weights kept | cells computed | rows clustered | + inputs paired |", "|---|---|---|---|---|---|",
          *rows, "",
          "Reading: blocks shorter than a panel leave panels nearly full: with 1x1 blocks the trained pattern is "
          "as spread as a random one, and reordering rows and pairing inputs moves the share by a few points at "
          "most (down for 1x1 and 4x1; up for 8x4 and 16x2, whose aligned blocks it splits). Only blocks 16 rows "
          "tall empty cells in proportion to what they prune. So on AMX, fine blocks buy accuracy, not "
          "speed (their layers run at about dense AMX speed); their speed is the float32 and dot-product kernels' "
          "business, on CPUs where those beat the engine."]
    write_section("panel_occupancy", "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
