"""ResNet-20 at a latency budget: DDPG (AMC) against Optuna, random and uniform, as in issue 5.

For each searcher this runs ``uniprune search`` into its own run directory, then re-scores the best
policy on the same validation subset with and without BatchNorm re-estimation, times the compressed
network against the dense one with the real kernels (when the latency module is available), and
writes a table to docs/RESULTS.md (section ``search_resnet20``).

The full comparison of the issue (300 episodes each, 100 warm-up, measured latency)::

    python benchmarks/search_resnet20.py --checkpoint RESNET20_JPEG.pt

takes hours on 2 cores; ``--episodes 20 --warmup 8 --latency-model macs`` is a quick look. The
default checkpoint is the original CIFAR-10 ResNet-20 from ../shared/data; a copy fine-tuned on the
JPEG training set (``uniprune train --model cifar-resnet20 --checkpoint ... --dataset imagefolder
--data ...``) is what the issue asks for. Search rewards use a validation split carved from the
training data, never the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.policy import Policy  # noqa: E402
from uniprune.search import api  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CHECKPOINT = SHARED / "pretrained" / "resnet20-12fca82f.th"
DEFAULT_DATA = SHARED / "cifar10-jpeg" / "cifar10-jpeg-train.tar.gz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="ResNet-20 weights (default: the shared pretrained one)")
    p.add_argument("--dataset", default="imagefolder", help="dataset kind (default imagefolder)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="dataset path (default: the shared CIFAR-10 JPEG training tarball)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation carve of the training data (default 0.1)")
    p.add_argument("--episodes", type=int, default=300, help="episodes per searcher (default 300)")
    p.add_argument("--warmup", type=int, default=100, help="DDPG warm-up episodes / Optuna startup trials (default 100)")
    p.add_argument("--searchers", default="ddpg,optuna,random,uniform", help="comma-separated searchers (default all four)")
    p.add_argument("--latency-model", choices=("measured", "macs"), default="measured", help="latency model (default measured)")
    add_scoring_arguments(p)
    p.add_argument("--out", default="runs/bench-search-resnet20", help="folder for the run directories (replaced)")
    p.add_argument("--no-results", action="store_true", help="do not write docs/RESULTS.md")
    p.add_argument("--section", default="search_resnet20", help="docs/RESULTS.md section to write (default search_resnet20)")
    return p.parse_args(argv)


def add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    """The env options the ResNet benchmarks pass to every verb: the budget, how the latency table is
    measured and how a policy is scored (:func:`env_spec` turns them into the API's env spec)."""
    p.add_argument("--latency-budget", type=float, default=0.5, help="latency budget (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="threads the latency tables and timings use (default 1)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the latency tables and timings (default 1)")
    p.add_argument("--latency-statistic", choices=("median", "min"), default="median", help="statistic of the latency timings")
    p.add_argument("--val-samples", type=int, default=500, help="validation images per episode (default 500)")
    p.add_argument("--bn-recalibrate", type=int, default=2, help="BN re-estimation batches during the search (default 2; 0: off)")
    p.add_argument("--eval-batch-size", type=int, default=128, help="scoring / BN batch size (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")


#: The env options :func:`add_scoring_arguments` sets (a replay takes the others from the agent's run).
SCORING_KEYS = ("latency_budget", "threads", "batch_size", "latency_statistic", "val_samples", "bn_recalibrate",
                "eval_batch_size", "seed")


def env_spec(args: argparse.Namespace, *, model: str = "cifar-resnet20", checkpoint: str | None = None,
             dataset: str | None = None, data: str | None = None) -> api.EnvSpec:
    """The env the options of :func:`add_scoring_arguments` (and the model and data given) describe."""
    return api.EnvSpec(
        model=api.ModelSpec(model=model, checkpoint=checkpoint or args.checkpoint),
        data=api.DataSpec(dataset=dataset or args.dataset, data=data or args.data,
                          val_fraction=getattr(args, "val_fraction", 0.1)),
        latency=api.LatencySpec(latency_model=getattr(args, "latency_model", "measured"), batch_size=args.batch_size,
                                threads=args.threads or None, latency_statistic=args.latency_statistic),
        budget=api.BudgetSpec(latency_budget=args.latency_budget),
        scoring=api.ScoringSpec(val_samples=args.val_samples, bn_recalibrate=args.bn_recalibrate,
                                eval_batch_size=args.eval_batch_size),
        seed=args.seed,
    )


def search_spec(args: argparse.Namespace, searcher: str, run_dir: Path) -> api.SearchSpec:
    return api.SearchSpec(env=env_spec(args), episodes=args.episodes, warmup=args.warmup, searcher=searcher,
                          run_dir=str(run_dir))


def rescore(env: Any, policy: Policy, bn_batches: int, *, threads: int | None = None, batch_size: int = 1,
            statistic: str = "median") -> dict[str, float]:
    """Validation accuracy of ``policy`` with and without BN re-estimation, and its measured latency
    (dense and compressed interleaved, ``batch_size`` samples, ``threads`` threads: default torch's)."""
    scorer = env.scorer
    out: dict[str, float] = {}
    actions = {n: (a.prune, a.unify) for n, a in policy.layers.items()}
    out["acc_plain"] = scorer.score(actions, bn_batches=[])["val_accuracy"]
    out["acc_bn"] = scorer.score(actions)["val_accuracy"] if scorer.bn_batches else float("nan")
    out["predicted_ratio"] = env.wall.predicted_ms(actions) / env.wall.dense_ms
    try:
        from uniprune.compressors.latency.table import measure_model_ms
    except ImportError:
        out["measured_ratio"] = float("nan")
        return out
    model, structures = scorer.projected(actions)
    timing = measure_model_ms(model, structures, env.input_shape, batch_size=batch_size, threads=threads, statistic=statistic)
    out["measured_ratio"] = 1.0 / float(timing["speedup"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    rows = []
    env = None
    for searcher in [s.strip() for s in args.searchers.split(",") if s.strip()]:
        run_dir = out / searcher
        spec = search_spec(args, searcher, run_dir)
        started = time.perf_counter()
        result = api.search(spec)
        wall = time.perf_counter() - started
        if env is None:
            env = api.build_env(spec.env)
        scores = rescore(env, Policy.load(result.policy), args.bn_recalibrate, threads=args.threads,
                         batch_size=args.batch_size, statistic=args.latency_statistic)
        row = {
            "searcher": searcher, "episodes": result.episodes, "best_episode": result.best_episode,
            "wall_s": wall, "s_per_episode": result.seconds_per_episode, **scores,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    dense = env.score({n: (0.0, 0.0) for n in env.layer_names}) if env is not None else {"val_accuracy": float("nan")}
    md = report(args, rows, dense["val_accuracy"])
    print(md)
    if not args.no_results:
        write_section(args.section, md)
    return 0


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f} %"


def _ratio(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def report(args: argparse.Namespace, rows: list[dict[str, Any]], dense_acc: float) -> str:
    lines = [
        f"## Search on ResNet-20 at latency budget {args.latency_budget}",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}; load average at the end {os.getloadavg()[0]:.1f} "
        "(timings, measured latency ratios above all, are only as good as the machine was quiet)  ",
        f"Data: {args.dataset} `{Path(args.data).name}` (validation carve {args.val_fraction}, {args.val_samples} images per episode); "
        f"checkpoint `{Path(args.checkpoint).name}`; latency model `{args.latency_model}` (batch {args.batch_size}, "
        f"{args.threads} thread(s), statistic {args.latency_statistic}); "
        f"BN re-estimation during search: {args.bn_recalibrate} batches; dense validation accuracy {_pct(dense_acc)}.",
        "",
        "| searcher | episodes | best at | val acc (no BN re-est.) | val acc (BN re-est.) | predicted latency ratio | measured latency ratio | search wall time | s / episode |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        spe = r["s_per_episode"]
        lines.append(
            f"| {r['searcher']} | {r['episodes']} | {r['best_episode']} | {_pct(r['acc_plain'])} | {_pct(r['acc_bn'])} | "
            f"{_ratio(r['predicted_ratio'])} | {_ratio(r['measured_ratio'])} | "
            f"{r['wall_s']:.0f} s | {'n/a' if spe is None else f'{spe:.2f}'} |"
        )
    by = {r["searcher"]: r for r in rows}
    key = "acc_bn" if args.bn_recalibrate else "acc_plain"
    lines.append("")
    if "ddpg" in by and "uniform" in by:
        gap = 100 * (by["ddpg"][key] - by["uniform"][key])
        lines.append(f"- DDPG vs uniform: {gap:+.1f} points (AMC's claim: at least +2): {'met' if gap >= 2 else 'not met'}.")
    if "ddpg" in by and "optuna" in by:
        gap = 100 * (by["ddpg"][key] - by["optuna"][key])
        lines.append(f"- DDPG vs Optuna at equal episodes: {gap:+.1f} points: {'at least as good' if gap >= 0 else 'worse'}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
