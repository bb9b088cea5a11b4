"""Does the DDPG agent learn, or only explore? (issue 13)

For each seed, on ResNet-20 and the CIFAR-10 JPEG training set (a validation split carved from it) at a
latency budget against the fastest dense engine:

- ``ddpg``: AMC's DDPG as uniprune runs it (raw rewards stored, the baseline subtracted per sampled batch);
- ``ddpg-store``: the same agent with the earlier buffer, which froze ``R - b`` into each stored transition;
- ``random``: uniform random actions for as many episodes.

Reported per run: the best reward among the warm-up episodes, the best of all episodes, the mean reward
of the last 50 episodes (the noisy actor after warm-up), the deterministic actor's own policy at the end
(no noise; scored as the search scores), and random search's best of its first ``--warmup`` and of all
episodes. With ``--holdout N`` (default 2000) each DDPG run's actor and best episode and random search's best
episode are scored again on N validation images no search scored (the searches' own best figures are the
largest of many noisy scores of the same 500 images). Target of the issue: the trained actor beats the best
of 100 random episodes in every seed.

    python benchmarks/agent_learning.py --seeds 0 1 2 --episodes 300 --warmup 100 --bn-recalibrate 2

Writes section ``agent_learning`` of docs/RESULTS.md and one run directory per run under ``--out`` (with its
``summary.json``). Seeds can run in several processes with the same ``--out`` (``--seeds 3``, ``--seeds 4``), then
``--report-only --seeds 0 1 2 3 4`` reports them all.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from searcher_table import after_validation  # noqa: E402
from uniprune.agent import load_agent  # noqa: E402
from uniprune.compressors.core.policy import Policy  # noqa: E402
from uniprune.search import api  # noqa: E402
from uniprune.search.searchers import agent_policy  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(run: Path) -> list[dict[str, float]]:
    with (run / "episodes.csv").open() as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None) and k != "warmup"} for r in csv.DictReader(fh)]


def _search(run: Path, searcher: str, seed: int, args: argparse.Namespace, *, holdout: int = 0,
            reward_baseline: str = "sample") -> api.SearchSpec:
    """The search of one run (``holdout`` more validation images scored by the env, for re-scoring only)."""
    env = api.EnvSpec(
        model=api.ModelSpec(model="cifar-resnet20", checkpoint=args.checkpoint),
        data=api.DataSpec(dataset="imagefolder", data=args.data),
        latency=api.LatencySpec(latency_statistic="min", threads=1, batch_size=1),
        budget=api.BudgetSpec(latency_budget=args.budget),
        scoring=api.ScoringSpec(val_samples=args.val_samples + holdout, bn_recalibrate=args.bn_recalibrate),
        seed=seed,
    )
    return api.SearchSpec(env=env, searcher=searcher, episodes=args.episodes, warmup=args.warmup, run_dir=str(run),
                          force=True, reward_baseline=reward_baseline)


def summarize(kind: str, seed: int, args: argparse.Namespace, seconds: float | None = None) -> dict[str, Any]:
    """One run's figures from its run directory (``summary.json`` once written); the deterministic actor is
    scored from the saved agent, as the search scores a policy."""
    run = Path(args.out) / f"{kind}-seed{seed}"
    saved = run / "summary.json"
    if saved.exists():
        return json.loads(saved.read_text())
    rewards = [r["reward"] for r in _rows(run)]
    out: dict[str, Any] = {"kind": kind, "seed": seed, "seconds": seconds,
                           "best_warmup": max(rewards[: args.warmup]), "best": max(rewards),
                           "best_first_warmup": max(rewards[: args.warmup]), "last50": statistics.mean(rewards[-50:]),
                           "curve": rewards}
    if kind != "random":
        env = api.build_env(_search(run, "ddpg", seed, args).env)
        actor = agent_policy(load_agent(run), env)
        out["actor"] = float(actor["reward"])
        out["actor_latency_ratio"] = float(actor["latency_ratio"])
    saved.write_text(json.dumps(out))
    return out


def holdout_scores(seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Accuracy on ``--holdout`` validation images the search never scored (those after its ``--val-samples``)
    of: each DDPG run's deterministic actor and best episode, and random search's best episode. The searches'
    own figures are a maximum over many noisy scores of the same 500 images (biased high); these are not."""
    env = after_validation(api.build_env(_search(Path(args.out) / f"random-seed{seed}", "random", seed, args,
                                                 holdout=args.holdout).env), args.val_samples)
    scorer = env.scorer
    out = {}
    for kind in args.kinds:
        run = Path(args.out) / f"{kind}-seed{seed}"
        best = Policy.load(run / "policy.json")
        out[f"{kind}/best"] = float(scorer.score({n: (a.prune, a.unify) for n, a in best.layers.items()})["val_accuracy"])
        if kind != "random":
            out[f"{kind}/actor"] = float(agent_policy(load_agent(run), env)["val_accuracy"])
    return out


def run_one(kind: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.out) / f"{kind}-seed{seed}"
    searcher = "random" if kind == "random" else "ddpg"
    started = time.perf_counter()
    api.search(_search(run, searcher, seed, args, reward_baseline="store" if kind == "ddpg-store" else "sample"))
    (run / "summary.json").unlink(missing_ok=True)
    return summarize(kind, seed, args, seconds=time.perf_counter() - started)


def main_(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--budget", type=float, default=0.5, help="latency budget against the fastest dense engine")
    p.add_argument("--val-samples", type=int, default=500)
    p.add_argument("--bn-recalibrate", type=int, default=2,
                   help="BatchNorm re-estimation batches (of 256) per episode (default 2: at budget 0.5, without it "
                        "random policies scored 0.084 to 0.128 on 500 images, chance level, with it 0.082 to 0.186)")
    p.add_argument("--checkpoint", default=str(SHARED / "pretrained" / "resnet20-12fca82f.th"))
    p.add_argument("--data", default=str(SHARED / "cifar10-jpeg" / "cifar10-jpeg-train.tar.gz"))
    p.add_argument("--kinds", nargs="+", default=["ddpg", "ddpg-store", "random"])
    p.add_argument("--out", default="runs/bench-agent-learning",
                   help="folder of the runs, one per searcher and seed (a run already there is run again)")
    p.add_argument("--holdout", type=int, default=2000,
                   help="validation images the searches never scored, for re-scoring their policies (0: skip)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: report the runs already under --out (e.g. seeds run by several processes)")
    args = p.parse_args(argv)
    results = []
    for seed in args.seeds:
        for kind in args.kinds:
            r = summarize(kind, seed, args) if args.report_only else run_one(kind, seed, args)
            results.append(r)
            took = "" if r["seconds"] is None else f" ({r['seconds']:.0f} s)"
            print(f"{kind} seed {seed}: best warm-up {r['best_warmup']:.4f} best {r['best']:.4f} last-50 mean "
                  f"{r['last50']:.4f} actor {r.get('actor', float('nan')):.4f}{took}", file=sys.stderr, flush=True)
    by = {(r["kind"], r["seed"]): r for r in results}
    lines = [f"| seed | searcher | best of warm-up (first {args.warmup}) | best of all {args.episodes} | mean of last 50 "
             f"| deterministic actor at the end | actor beats random's best of first {args.warmup}? "
             f"| actor beats random's best of all {args.episodes}? |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        rnd = by.get(("random", r["seed"]))
        beats = ["" if "actor" not in r or rnd is None else ("yes" if r["actor"] > rnd[key] else "no")
                 for key in ("best_first_warmup", "best")]
        actor = f"{r['actor']:.4f} (ratio {r['actor_latency_ratio']:.3f})" if "actor" in r else "-"
        lines.append(f"| {r['seed']} | {r['kind']} | {r['best_warmup']:.4f} | {r['best']:.4f} | {r['last50']:.4f} | {actor} "
                     f"| {beats[0]} | {beats[1]} |")
    if args.holdout:
        held = {seed: holdout_scores(seed, args) for seed in args.seeds}
        cols = [f"{k}/{w}" for k in args.kinds for w in (("best",) if k == "random" else ("actor", "best"))]
        lines += ["", f"The same policies re-scored on {args.holdout} validation images that no search scored:", "",
                  "| seed | " + " | ".join(c.replace("/best", " best episode").replace("/actor", " actor") for c in cols) + " |",
                  "| --- |" + " ---: |" * len(cols)]
        lines += [f"| {seed} | " + " | ".join(f"{held[seed][c]:.4f}" for c in cols) + " |" for seed in args.seeds]
        lines.append("| mean | " + " | ".join(f"{statistics.mean(held[s_][c] for s_ in args.seeds):.4f}" for c in cols) + " |")
    curves = []
    for kind in args.kinds:
        runs = [r["curve"] for r in results if r["kind"] == kind]
        n = min(len(c) for c in runs)
        mean = np.mean([c[:n] for c in runs], axis=0)
        bins = [f"{float(np.mean(mean[i:i + 25])):.3f}" for i in range(0, n, 25)]
        curves.append(f"| {kind} | " + " | ".join(bins) + " |")
    head = "| searcher | " + " | ".join(f"ep {i}-{i + 24}" for i in range(0, args.episodes, 25)) + " |"
    md = [f"Machine: {machine_line()}; 1 thread.", f"Command: `{command_line()}`", "",
          f"ResNet-20 (shared pretrained weights), CIFAR-10 JPEG training set with a seeded validation carve "
          f"({args.val_samples} images score an episode), latency budget {args.budget} of the fastest dense engine "
          "(measured table, batch 1), reward = validation accuracy of the projected network (no fine-tuning; "
          f"BatchNorm statistics re-estimated on {args.bn_recalibrate} batches of 256). "
          "ddpg-store is the earlier buffer (baseline frozen at store time).", "", *lines, "",
          "Mean reward per 25 episodes, averaged over seeds:", "", head,
          "|" + " --- |" * (1 + len(range(0, args.episodes, 25))), *curves]
    write_section("agent_learning", "## Does the agent learn? ResNet-20 (issue 13)\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main_())
