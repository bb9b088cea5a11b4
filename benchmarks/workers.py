"""Episodes per minute with several scoring processes (issue 23: two workers on two cores, at least 1.6x).

ResNet-20 on CIFAR-10 JPEG (shared data), a random search (its episodes depend on no earlier reward, so
``--workers`` scores them side by side, :mod:`uniprune.search.workers`) of ``--episodes`` episodes at each
worker count, on one env built once (latency table measured or cached first, not timed). Reports episodes
per minute, the speedup over one worker, and whether every episode's reward is the same as one worker's.

    python benchmarks/workers.py --episodes 24 --workers 1 2

Writes section ``search_workers`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.search import api  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--searcher", default="random", choices=("random", "uniform", "knapsack"))
    p.add_argument("--checkpoint", default=str(SHARED / "pretrained" / "resnet20-12fca82f.th"))
    p.add_argument("--data", default=str(SHARED / "cifar10-jpeg" / "cifar10-jpeg-train.tar.gz"))
    p.add_argument("--budget", type=float, default=0.9, help="latency budget (the scoring is what is timed, not the wall)")
    p.add_argument("--out", default="runs/bench-workers")
    args = p.parse_args(argv)
    spec = api.EnvSpec(model=api.ModelSpec(model="cifar-resnet20", checkpoint=args.checkpoint),
                       data=api.DataSpec(dataset="imagefolder", data=args.data),
                       latency=api.LatencySpec(latency_statistic="min", threads=1, batch_size=1),
                       budget=api.BudgetSpec(latency_budget=args.budget))
    env = api.build_env(spec)
    rows, rewards = [], {}
    for workers in args.workers:
        run = Path(args.out) / f"workers-{workers}"
        found = api.search(api.SearchSpec(env=spec, searcher=args.searcher, episodes=args.episodes, workers=workers,
                                          run_dir=str(run), force=True), env=env)
        with (run / "episodes.csv").open() as fh:
            rewards[workers] = [r["reward"] for r in csv.DictReader(fh)]
        per_minute = 60.0 / found.seconds_per_episode
        rows.append((workers, found.episodes_this_run, found.seconds_per_episode, per_minute))
        print(f"workers {workers}: {per_minute:.1f} episodes/min", file=sys.stderr, flush=True)
    base = rows[0][3]
    same = {w: rewards[w] == rewards[args.workers[0]] for w in args.workers}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = ["| workers | episodes | s per episode | episodes per minute | speedup | rewards identical to "
             f"{args.workers[0]} worker(s) |", "| ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {w} | {n} | {s:.3f} | {m:.1f} | {m / base:.2f} | {'yes' if same[w] else 'NO'} |" for w, n, s, m in rows]
    md = [f"Machine: {machine_line()}; load average after the run: {load}.", f"Command: `{command_line()}`", "",
          f"ResNet-20 (shared pretrained weights), CIFAR-10 JPEG, `{args.searcher}` search of {args.episodes} episodes per "
          f"row on one env at latency budget {args.budget} (500 validation images score an episode, BatchNorm re-estimated on 2 batches of 256; the latency "
          "table built before, not timed). Target: 2 workers at least 1.6x the episodes per minute of one.", "", *lines]
    write_section("search_workers", "## Episodes per minute with several scoring processes (issue 23)\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
