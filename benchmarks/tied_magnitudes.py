"""Do unified blocks' shared magnitudes train at a free weight's learning rate? (issue 13)

A 16->16 3x3 conv whose every 8x4 block (288 weights) is unified learns a teacher of the same structure
(right signs, magnitudes in [0.02, 0.08) against a start of 0.01) by plain MSE regression, SGD at lr 0.1
with momentum 0.9, 300 steps; the free conv of the same shape learns the same teacher's weights as plain
weights at the same settings. ``scaled``: magnitudes stored over 1/sqrt(block size), as
:mod:`uniprune.compressors.core.constraints` stores them; ``plain``: stored as they are (the earlier code; the
step of a magnitude is then the *sum* of its 288 weights' gradients). Reported: the final loss, the
largest error of a trained magnitude and the blocks that collapsed (magnitude <= 0: pruned in effect).

    python benchmarks/tied_magnitudes.py

Writes section ``tied_magnitudes`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.constraints import bake, collapsed_blocks, constrain  # noqa: E402
from uniprune.compressors.core.structure import UNIFY, BlockShape, LayerStructure, block_grid  # noqa: E402


def run(storage: str, lr: float, steps: int, seed: int) -> dict[str, float]:
    """One regression; ``storage`` is ``"scaled"``, ``"plain"`` or ``"free"`` (no tie: plain conv weights)."""
    torch.manual_seed(seed)
    grid = block_grid((16, 16, 3, 3), BlockShape(8, 4))
    target = 0.02 + 0.06 * torch.rand(grid.n_out, grid.n_in)
    signs = torch.where(torch.rand(16, 16, 3, 3) < 0.5, -1.0, 1.0)
    teacher = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(signs * target[grid.out_index][:, grid.in_index][:, :, None, None])
    student = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False))
    with torch.no_grad():
        student[0].weight.copy_(signs * 0.01)
    if storage != "free":
        states = torch.full((grid.n_out, grid.n_in), UNIFY, dtype=torch.int8)
        constrain(student, {"0": LayerStructure(grid, states, torch.full((grid.n_out, grid.n_in), 0.01))})
        if storage == "plain":
            tie = student[0].parametrizations.weight[0]
            with torch.no_grad():
                tie.magnitude.mul_(tie.scale)
                tie.scale.fill_(1.0)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    x = torch.randn(32, 16, 8, 8)
    with torch.no_grad():
        y = teacher(x)
    for _ in range(steps):
        loss = nn.functional.mse_loss(student(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = float(nn.functional.mse_loss(student(x), y).detach())
    if storage == "free":
        err = float((student[0].weight.detach().abs() - teacher.weight.detach().abs()).abs().max())
        return {"loss": final, "max_error": err, "collapsed": 0}
    trained = bake(student)
    return {"loss": final, "max_error": float((trained["0"].magnitudes - target).abs().max()),
            "collapsed": sum(collapsed_blocks(trained).values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lines = []
    for lr in args.lrs:
        for storage in ("free", "plain", "scaled"):
            runs = [run(storage, lr, args.steps, s) for s in args.seeds]
            loss = max(r["loss"] for r in runs)
            err = max(r["max_error"] for r in runs)
            collapsed = sum(r["collapsed"] for r in runs)
            lines.append(f"| {lr:g} | {storage} | {loss:.2e} | {err:.4f} | {collapsed} of {8 * len(runs)} |")
            print(lines[-1], file=sys.stderr, flush=True)
    md = [f"Machine: {machine_line()}; 1 thread.", f"Command: `{command_line()}`", "",
          f"{args.steps} SGD steps (momentum 0.9) per run, seeds {args.seeds}; the worst over the seeds. "
          "free: plain conv weights (no tie); plain: shared magnitudes stored as they are (the earlier code); "
          "scaled: stored over 1/sqrt(block size), as uniprune does. Errors of |w| (free) or of the magnitudes.",
          "", "| lr | storage | final loss (worst) | largest magnitude error | blocks collapsed |",
          "| --- | --- | ---: | ---: | ---: |", *lines]
    write_section("tied_magnitudes", "## Tied magnitudes at a free weight's learning rate (issue 13)\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
