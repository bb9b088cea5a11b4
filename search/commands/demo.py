"""`uniprune demo`: the whole job on the embedded digits data, in a few minutes on a laptop.

train the small default CNN -> search a policy under a latency budget (DDPG, measured latency table) ->
ADMM fine-tune into it -> export it as a deployable artifact -> time the artifact against every dense
engine -> write the report; then a small table of dense against compressed. Each step is the verb a user
would run, called with the options shown in the log, so the demo doubles as a worked example. Files go to
a new folder (``runs/demo-<time>`` unless ``--out`` names one): ``dense.pt``, ``deploy/`` (the artifact),
and the run directory ``run/`` with the search's files, ``compressed.pt``, ``finetune.json``,
``bench.json``, ``report.md`` and its plots.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.formats.fileio import write_json_atomic

from .common import check_writable

#: The demo's latency budget unless the machine cannot reach it. Measured on the digits CNN at batch 1, one
#: thread, against ONNX Runtime (the fastest dense engine there): the least reachable ratio was 0.74 with
#: the AVX-512 kernel build and 0.60 with the AVX2 build on an AMD EPYC (docs/RESULTS.md, section demo).
DEFAULT_BUDGET = 0.9
#: Room above the least reachable ratio when the default is raised: the search needs some choice left.
REACHABLE_MARGIN = 0.08

NAME = "demo"
STEPS = 6
HELP = "the whole job on the embedded digits data: train, search, ADMM fine-tune, export, bench, report (a few minutes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="a new or empty folder for the demo's files (default runs/demo-<date>-<time>)")
    parser.add_argument("--latency-budget", type=float, default=None,
                        help="compressed latency at most this fraction of the fastest dense engine's (torch, ONNX Runtime, "
                        f"OpenVINO), in (0, 1] (default {DEFAULT_BUDGET:g}, raised to the least ratio reachable on this machine "
                        f"plus {REACHABLE_MARGIN:g} when that is higher: the digits CNN is tiny, and its stem and classifier, "
                        "which the search leaves dense, are a large share of its time)")
    parser.add_argument("--episodes", type=int, default=300, help="search episodes (default 300, as AMC)")
    parser.add_argument("--warmup", type=int, default=100, help="random warm-up episodes of the search (default 100)")
    parser.add_argument("--train-epochs", type=int, default=15, help="epochs training the dense model (default 15)")
    parser.add_argument("--finetune-epochs", type=int, default=12, help="ADMM fine-tuning epochs in all (default 12)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size the latency is measured and benchmarked at (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the latency table and the benchmark (default 1)")
    parser.add_argument("--latency-statistic", choices=("median", "min"), default="min",
                        help="statistic of the latency table and the benchmark (default min: a laptop or a shared VM "
                        "drifts in speed, and the fastest runs repeat best)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _step(number: int, title: str, argv: list[str]) -> dict[str, Any]:
    """Run one verb as the CLI would, logging the command line; returns its result."""
    from uniprune.search.cli import build_parser

    print(f"\n[{number}/{STEPS}] {title}\n      $ uniprune {shlex.join(argv)}", file=sys.stderr, flush=True)
    args = build_parser().parse_args(argv)
    return args._run(args)


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _search_argv(dense: Path, run_dir: Path, budget: float, args: argparse.Namespace) -> list[str]:
    return ["search", "--checkpoint", str(dense), "--run-dir", str(run_dir), "--latency-budget", f"{budget:g}",
            "--episodes", str(args.episodes), "--warmup", str(min(args.warmup, args.episodes)),
            "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--latency-statistic", args.latency_statistic,
            "--bn-recalibrate", "2", "--seed", str(args.seed)]


def _reachable_budget(dense: Path, run_dir: Path, args: argparse.Namespace) -> float:
    """The default budget, raised when this machine cannot reach it: builds the search's env (its latency
    table, cached for the search) at budget 1 and reads the least reachable ratio."""
    from uniprune.search.cli import build_parser

    from .env_options import make_env

    env = make_env(build_parser().parse_args(_search_argv(dense, run_dir, 1.0, args)), verb="demo")
    least = env.least_latency_ratio
    budget = max(DEFAULT_BUDGET, min(1.0, math.ceil((least + REACHABLE_MARGIN) * 100) / 100))
    print(f"      latency budget {budget:g} (the least ratio reachable here is {least:.3f} of "
          f"{env.latency_model.meta.get('baseline_engine', 'the dense model')})", file=sys.stderr)
    return budget


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.latency_budget is not None and not 0 < args.latency_budget <= 1:
        raise ConfigError(f"--latency-budget must be in (0, 1], got {args.latency_budget}")
    for key in ("episodes", "train_epochs", "batch_size", "threads"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0 episodes, got {args.warmup}")
    if args.finetune_epochs < 2:
        raise ConfigError(f"--finetune-epochs must be >= 2 (ADMM, then retraining), got {args.finetune_epochs}")
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not an empty folder; give a new folder")
    check_writable(out, "--out", folder=True)
    out.mkdir(parents=True, exist_ok=True)
    dense, run_dir = out / "dense.pt", out / "run"
    started = time.perf_counter()
    seed = ["--seed", str(args.seed)]

    trained = _step(1, "train the default CNN on digits", ["train", "--epochs", str(args.train_epochs), "--out", str(dense), *seed])
    budget = args.latency_budget if args.latency_budget is not None else _reachable_budget(dense, run_dir, args)
    searched = _step(2, "search a policy under the latency budget (DDPG)", _search_argv(dense, run_dir, budget, args))
    tuned = _step(3, "ADMM fine-tune into the policy", [
        "finetune", "--run-dir", str(run_dir), "--epochs", str(args.finetune_epochs), "--no-latency", *seed,
    ])
    deploy = out / "deploy"
    exported = _step(4, "export the compressed model: one native plan, its C sources and a numpy-only loader", [
        "export", "--compressed", tuned["checkpoint"], "--out", str(deploy), "--batch-size", str(args.batch_size),
        "--threads", str(args.threads),
    ])
    bench = _step(5, "time the exported artifact against every dense engine", [
        "bench", "--compressed", str(deploy), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
        "--statistic", args.latency_statistic, "--latency-budget", f"{budget:g}",
    ])
    write_json_atomic(run_dir / "bench.json", bench)
    report = _step(6, "write the report", ["report", "--run-dir", str(run_dir)])

    seconds = time.perf_counter() - started
    rows = [
        ("", "dense", "compressed"),
        ("test accuracy", f"{trained['accuracy']:.2%}", f"{tuned['accuracy']:.2%}"),
        (f"latency, batch {args.batch_size} (ms; dense: {bench['best_engine']})", f"{bench['best_dense_ms']:.3f}",
         f"{bench['compressed_ms']:.3f}"),
        ("latency ratio (budget)", "1.00", f"{bench['latency_ratio']:.2f} ({bench['budget_verdict']})"),
        ("size ratio", "1.00", f"{tuned['size_ratio']:.2f}"),
    ]
    print(f"\nuniprune demo: done in {seconds:.0f} s; files in {out}, report {report['report']}\n\n{_table(rows)}\n", file=sys.stderr)
    return {
        "dense_accuracy": trained["accuracy"],
        "accuracy": tuned["accuracy"],
        "projected_val_accuracy": tuned["projected_val_accuracy"],
        "search_val_accuracy": searched["val_accuracy"],
        "policy": searched["policy"],
        "predicted_latency_ratio": searched["latency_ratio"],
        "latency_ratio": bench["latency_ratio"],
        "latency_budget": budget,
        "budget_verdict": bench["budget_verdict"],
        "engines": bench["engines"],
        "precisions": bench["precisions"],
        "best_engine": bench["best_engine"],
        "best_dense_ms": bench["best_dense_ms"],
        "compressed_ms": bench["compressed_ms"],
        "speedup": bench["speedup"],
        "predicted_ms": bench["predicted_ms"],
        "size_ratio": tuned["size_ratio"],
        "episodes": searched["episodes"],
        "checkpoint": tuned["checkpoint"],
        "artifact": exported["out"],
        "runtime": bench["runtime"],
        "report": report["report"],
        "out": str(out),
        "seconds": seconds,
    }
