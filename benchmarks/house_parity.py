"""Issue 19's house against the main it was built on: the same figures before and after, side by side.

    python benchmarks/house_parity.py --before /path/to/main [--rounds 2] [--demo-before LOG --demo-after LOG]

``--before`` is a checkout of the code before the change with its own ``.venv`` (run as it is, never
edited); this checkout is *after*. Measured, the two sides interleaved round by round:

- one engines row through ``uniprune bench`` (the API's bench job after the change): ResNet-56 with the
  shared pretrained weights, every compressible layer at 75 % of its blocks pruned, batch 1, 1 thread,
  statistic min;
- the ResNet-20 search table's uniform row (``benchmarks/search_resnet20.py --searchers uniform``: a few
  episodes, MACs latency model, the measured ratio timed with the real kernels);
- the sizes (``benchmarks/sizes.py``): functions over 80 lines and modules over 450 in each side's packages.

``--demo-before`` / ``--demo-after``: the stderr of ``make demo`` on each side, whose final table is quoted.
Writes section ``house_parity`` of docs/RESULTS.md (``--no-results``: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from sizes import PACKAGES, oversized  # noqa: E402

AFTER = Path(__file__).resolve().parents[1]
SHARED = AFTER.parent / "shared" / "data"
RESNET56 = SHARED / "pretrained" / "resnet56-4bfd9763.th"


def _policy(folder: Path) -> Path:
    """Every compressible layer of ResNet-56 at 75 % of its blocks pruned."""
    from uniprune.compressors.core.blocks import compressible_layers
    from uniprune.compressors.core.policy import LayerAction, Policy
    from uniprune.search.models import build_model

    model = build_model("cifar-resnet56")
    return Policy(layers={s.name: LayerAction(0.75, 0.0) for s in compressible_layers(model)},
                  model="cifar-resnet56").save(folder / "p75.json")


def _bench(root: Path, policy: Path) -> dict[str, Any]:
    argv = [str(root / ".venv" / "bin" / "uniprune"), "bench", "--model", "cifar-resnet56", "--checkpoint", str(RESNET56),
            "--policy", str(policy), "--batch-size", "1", "--threads", "1", "--statistic", "min", "--repeats", "50",
            "--no-table", "--json"]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"load": os.getloadavg()[0], **{k: out[k] for k in ("best_engine", "best_dense_ms", "compressed_ms", "latency_ratio")}}


def _search(root: Path, folder: Path, episodes: int) -> dict[str, Any]:
    argv = [str(root / ".venv" / "bin" / "python"), "benchmarks/search_resnet20.py", "--searchers", "uniform", "--episodes",
            str(episodes), "--warmup", "2", "--latency-model", "macs", "--val-samples", "200", "--out", str(folder),
            "--no-results"]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in done.stderr.splitlines() if line.startswith('{"searcher"')]
    return {"load": os.getloadavg()[0], **rows[-1]}


def _demo_table(log: Path) -> list[str]:
    """The table ``uniprune demo`` prints last (its lines starting with two spaces after the 'done' line)."""
    lines = log.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("uniprune demo: done"))
    return [line for line in lines[start + 1:] if line.strip()]


def _sizes(root: Path) -> str:
    functions, modules = oversized(PACKAGES, root=root)
    return f"{len(functions)} functions over 80 lines, {len(modules)} modules over 450"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="a checkout of the code before the change, with its own .venv")
    p.add_argument("--rounds", type=int, default=2, help="interleaved bench rounds per side (default 2)")
    p.add_argument("--episodes", type=int, default=6, help="uniform search episodes (default 6)")
    p.add_argument("--demo-before", default=None, help="stderr of 'make demo' before the change")
    p.add_argument("--demo-after", default=None, help="stderr of 'make demo' after the change")
    p.add_argument("--no-results", action="store_true", help="do not write docs/RESULTS.md")
    args = p.parse_args(argv)
    sides = {"before": Path(args.before).resolve(), "after": AFTER}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        policy = _policy(folder)
        bench = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, root in sides.items():
                bench[side].append(_bench(root, policy))
                print(side, json.dumps(bench[side][-1]), file=sys.stderr)
        search = {side: _search(root, folder / f"search-{side}", args.episodes) for side, root in sides.items()}
    lines = ["## Issue 19's house: the same figures before and after", "", f"Command: `{command_line()}`  ",
             f"Machine: {machine_line()}  ", f"Before: `{sides['before']}`; after: this checkout.", "",
             "| side | round | load | best dense engine | dense ms | compressed ms | latency ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in range(args.rounds):
        for side in sides:
            b = bench[side][r]
            lines.append(f"| {side} | {r + 1} | {b['load']:.1f} | {b['best_engine']} | {b['best_dense_ms']:.3f} | "
                         f"{b['compressed_ms']:.3f} | {b['latency_ratio']:.3f} |")
    lines += ["", "ResNet-56, 75 % of every compressible layer's blocks pruned, batch 1, 1 thread, statistic min "
              "(`uniprune bench`). ResNet-20's uniform row (`benchmarks/search_resnet20.py --searchers uniform`, "
              f"{args.episodes} episodes, MACs latency model, 200 validation images):", "",
              "| side | load | val acc (no BN re-est.) | val acc (BN re-est.) | predicted ratio | measured ratio | s / episode |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for side, s in search.items():
        lines.append(f"| {side} | {s['load']:.1f} | {100 * s['acc_plain']:.1f} % | {100 * s['acc_bn']:.1f} % | "
                     f"{s['predicted_ratio']:.3f} | {s['measured_ratio']:.3f} | {s['s_per_episode']:.2f} |")
    lines += ["", *(f"- sizes {side} ({', '.join(PACKAGES)}): {_sizes(root)}" for side, root in sides.items())]
    for side, log in (("before", args.demo_before), ("after", args.demo_after)):
        if log:
            lines += ["", f"`make demo` {side}:", "", "```", *_demo_table(Path(log)), "```"]
    md = "\n".join(lines) + "\n"
    if not args.no_results:
        write_section("house_parity", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
