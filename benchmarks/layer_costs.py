"""Where the accuracy goes: every compressible layer compressed alone, in each block shape and pruned share, scored
on validation images (BatchNorm re-estimated, as every reward), against the dense model (issue 24: "which layers and
block shapes cost the accuracy").

Per layer: its stage, its share of the model's MACs, and the validation points lost with that layer alone pruned
``--fractions`` of its weights in whole blocks of each ``--shapes`` (L2-smallest blocks first, the projection's rule);
then per column the sum over layers (the additive estimate the knapsack plans with) and the costliest layers. The
dense checkpoint is the one the curves start from (``benchmarks/accuracy_curve.py``'s adapted model).

    python benchmarks/layer_costs.py --model cifar-resnet20 --checkpoint /work/runs/curve/cifar_resnet20/dense.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_channel import DATA, _load  # noqa: E402
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.accounting import layer_profile  # noqa: E402
from uniprune.search import api  # noqa: E402
from uniprune.search.api.env import build_env  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar-resnet20", choices=["cifar-resnet20", "cifar-resnet56"])
    p.add_argument("--checkpoint", required=True, help="the dense model (the curves' adapted checkpoint)")
    p.add_argument("--data", default=str(DATA), help="the shared data folder (cifar10-jpeg/ inside)")
    p.add_argument("--shapes", default="8x4,4x1,1x1")
    p.add_argument("--fractions", default="0.5,0.75", help="pruned shares of each layer's weights, in whole blocks")
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--json-out", default=None)
    p.add_argument("--no-write", action="store_true", help="do not touch docs/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started, load = time.time(), _load()
    jpeg = Path(args.data) / "cifar10-jpeg"
    if not jpeg.is_dir():
        sys.exit(f"layer_costs: the shared data is missing ({jpeg}); see ../shared/data/README.md")
    shapes, fractions = args.shapes.split(","), [float(f) for f in args.fractions.split(",")]
    spec = api.EnvSpec(model=api.ModelSpec(model=args.model, checkpoint=args.checkpoint),
                       data=api.DataSpec(dataset="imagefolder",
                                         data=f"{jpeg / 'cifar10-jpeg-train.tar.gz'},{jpeg / 'cifar10-jpeg-test.tar.gz'}"),
                       latency=api.LatencySpec(latency_model="macs"),  # scores only: no table to time
                       budget=api.BudgetSpec(latency_budget=1.0, block_shape=args.shapes, max_prune=1.0),
                       scoring=api.ScoringSpec(val_samples=args.val_samples))
    env = build_env(spec)
    dense = env.scorer.score({})["val_accuracy"]
    macs = {n: float(r["macs"]) for n, r in layer_profile(env.model, (3, 32, 32)).items()}
    total = sum(macs.values())
    columns = [(s, f) for s in shapes for f in fractions]
    rows = []
    for name in tqdm(env.layer_names, desc="layers", file=sys.stderr):
        lost = {f"{s}@{f:g}": dense - env.scorer.score({name: (f, 0.0, s)})["val_accuracy"] for s, f in columns}
        rows.append({"layer": name, "mac_share": macs.get(name, 0.0) / total, "lost": lost})
    figures = {"dense_val": dense, "rows": rows, "columns": [f"{s}@{f:g}" for s, f in columns], "load_before": load,
               "seconds": time.time() - started, "command": command_line(), "args": vars(args)}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1) + "\n")
    if not args.no_write:
        write_section(f"layer_costs_{args.model.replace('-', '_')}", render(figures, args))
    return figures


def render(figures: dict[str, Any], args: argparse.Namespace) -> str:
    cols = figures["columns"]
    lines = [
        f"## Where the accuracy goes: {args.model}'s layers compressed alone (`benchmarks/layer_costs.py`, issue 24)",
        "",
        f"Machine: {machine_line()}; load average at the start {figures['load_before']}; {figures['seconds'] / 60:.0f} min. "
        f"Command: `{figures['command']}`",
        "",
        f"Each layer alone pruned the given share of its weights in whole blocks of the shape (L2-smallest first), every "
        f"other layer dense; validation top-1 on {args.val_samples} held-out training images with BatchNorm re-estimated "
        f"(the search's reward), in points lost against the dense model's {100 * figures['dense_val']:.2f} %. Negative: "
        "noise (a point is 10 images). Sum: the additive estimate the knapsack plans with; the layers' losses together can "
        "be larger.",
        "",
        "| layer | MACs share | " + " | ".join(c.replace("@", " at ") for c in cols) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for r in figures["rows"]:
        lines.append(f"| {r['layer']} | {100 * r['mac_share']:.1f} % | "
                     + " | ".join(f"{100 * r['lost'][c]:.1f}" for c in cols) + " |")
    lines.append("| **sum** | | " + " | ".join(f"**{100 * sum(r['lost'][c] for r in figures['rows']):.1f}**" for c in cols) + " |")
    lines += ["", "The costliest layers per column:", ""]
    for c in cols:
        top = sorted(figures["rows"], key=lambda r: -r["lost"][c])[:3]
        lines.append(f"- {c.replace('@', ' at ')}: " + ", ".join(f"`{r['layer']}` {100 * r['lost'][c]:.1f}" for r in top))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
