"""`uniprune search`: search a per-layer (prune, unify) policy under a latency budget (AMC).

The run directory (:mod:`uniprune.search.run_dir`) receives the best policy so far, one CSV row and
TensorBoard scalars per episode, and the searcher's state, after every episode; Ctrl-C stops after the
episode in progress (a second Ctrl-C stops at once, losing only that episode) and ``--resume`` goes on
from the last finished episode.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from uniprune.compressors.core.errors import ConfigError, RunDirError
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.latency.budget import budget_verdict
from uniprune.search.run_dir import RESUMABLE_CHANGES, RunDir, read_json_object
from uniprune.search.searchers import SEARCHERS, make_searcher
from uniprune.search.tensorboard import TensorBoardLogger

from .common import check_writable
from .env_options import ENV_KEYS, add_env_arguments, make_env, take_stored_options, validate_env_arguments

NAME = "search"
HELP = "search a per-layer prune/unify policy under a latency budget (AMC-style DDPG, Optuna, random or uniform)"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_arguments(parser)
    parser.add_argument("--episodes", type=int, default=300, help="episodes (policies tried), >= 1 (default 300)")
    parser.add_argument("--warmup", type=int, default=100, help="random warm-up episodes (ddpg) / startup trials (optuna) (default 100)")
    parser.add_argument("--searcher", choices=SEARCHERS, default="ddpg", help="search strategy (default ddpg)")
    parser.add_argument("--run-dir", default=None, help="where the run's files go (default runs/<model>-<dataset>-<searcher>)")
    parser.add_argument("--resume", action="store_true", help="go on with the run in --run-dir (episode count, agent, replay buffer, best policy)")
    parser.add_argument("--force", action="store_true", help="delete the run in --run-dir and start over")
    parser.add_argument("--storage", default=None, help="Optuna storage URL shared by workers (default sqlite:///RUN/optuna.db)")
    parser.add_argument(
        "--score-threads", type=int, default=1,
        help="CPU threads for scoring episodes (default 1: an episode is many small ops, which extra threads slow down on a busy machine)",
    )


def _validate(args: argparse.Namespace) -> None:
    validate_env_arguments(args)
    checks = [
        (args.episodes >= 1, f"--episodes must be >= 1, got {args.episodes}"),
        (args.warmup >= 0, f"--warmup must be >= 0, got {args.warmup}"),
        (args.score_threads >= 1, f"--score-threads must be >= 1, got {args.score_threads}"),
        (not (args.resume and args.force), "--resume and --force contradict each other: pass one"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (*ENV_KEYS, "episodes", "warmup", "searcher", "storage", "score_threads")
    config = {k: getattr(args, k) for k in keys}
    for k in ("checkpoint", "data"):
        if config[k]:
            config[k] = str(Path(config[k]).expanduser().resolve())
    return config


def default_run_dir(args: argparse.Namespace) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{args.model}-{args.dataset}-{args.searcher}")
    return Path("runs") / safe


def _take_stored_options(args: argparse.Namespace, run_path: Path) -> None:
    """On --resume, options the user did not type take the run's stored values (so they need not be repeated),
    the episode target included: a resume without --episodes goes on to the run's own target.

    An option typed with a value other than the stored one stays, and RunDir refuses the resume naming it
    (except those in RESUMABLE_CHANGES, such as a new --episodes target).
    """
    stored = read_json_object(run_path / "config.json", fix="start over with --force")
    keys = [k for k in stored if k not in RESUMABLE_CHANGES or k == "episodes"]
    take_stored_options(args, stored, add_arguments, keys=keys)


class _StopAfterEpisode:
    """First Ctrl-C: finish the episode in progress, save, stop. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopAfterEpisode:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nuniprune search: stopping after this episode (Ctrl-C again to stop now)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run(args: argparse.Namespace) -> dict[str, Any]:
    _validate(args)
    previous_threads = torch.get_num_threads()
    if args.threads is None:  # latency is measured with the threads the process had, not the scoring threads
        args.threads = previous_threads
    torch.set_num_threads(args.score_threads)
    try:
        return _search(args)
    finally:
        torch.set_num_threads(previous_threads)


def _search(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    run_path = Path(args.run_dir).expanduser() if args.run_dir else default_run_dir(args)
    # Refuse an occupied or unwritable run directory before minutes of loading and latency measurement.
    check_writable(run_path, "--run-dir", folder=True)
    if not args.resume and not args.force and run_path.is_dir() and any(run_path.iterdir()):
        raise RunDirError(f"run directory {run_path} already holds a run; pass --resume to go on with it or --force to start over")
    if args.resume and not (run_path / "config.json").is_file():
        raise RunDirError(f"nothing to resume in {run_path}: it has no config.json; start the search without --resume")
    if args.resume:
        _take_stored_options(args, run_path)
    config = _config(args)
    env = make_env(args)
    run_dir = RunDir.start(run_path, config, resume=args.resume, force=args.force)
    searcher = make_searcher(
        args.searcher, env, seed=args.seed, warmup=args.warmup, run_dir=run_path, resume=args.resume,
        episodes=args.episodes, storage=args.storage,
    )
    total = searcher.max_episodes(args.episodes)
    first = run_dir.episodes_done
    tb = TensorBoardLogger(run_dir.tb_dir, purge_step=first if args.resume else None)
    best_reward = run_dir.state.get("best_reward")
    best_reward = -math.inf if best_reward is None else float(best_reward)
    best = Policy.load(run_dir.policy_path) if args.resume and run_dir.policy_path.is_file() else None
    seconds_before = float(run_dir.state.get("seconds", 0.0))
    loop_started = time.perf_counter()
    stopped = False
    try:
        with _StopAfterEpisode() as stop, tqdm(
            total=total, initial=min(first, total), desc=f"search {args.searcher}", unit="ep", file=sys.stderr, dynamic_ncols=True
        ) as bar:
            for episode in range(first, total):
                t0 = time.perf_counter()
                result = searcher.run_episode(episode)
                seconds = time.perf_counter() - t0
                reward = float(result["reward"])
                if reward > best_reward:
                    best_reward = reward
                    best = env.policy(result["actions"])
                    best.predicted = {k: result[k] for k in ("latency_ratio", "size_ratio", "val_accuracy", "reward")}
                    best.search = {
                        "searcher": args.searcher, "episode": episode, "seed": args.seed, "reward_kind": args.reward,
                        "latency_model": args.latency_model, "val_samples": args.val_samples, "bn_recalibrate": args.bn_recalibrate,
                    }
                    best.save(run_dir.policy_path)
                    tb.layer_actions(result["actions"], episode)
                sigma = searcher.noise_sigma(episode)
                row = {
                    "episode": episode, "reward": reward, "val_accuracy": result["val_accuracy"],
                    "latency_ratio": result["latency_ratio"], "size_ratio": result["size_ratio"], "noise_sigma": sigma,
                    "warmup": int(searcher.in_warmup(episode)), "best_reward": best_reward, "seconds": round(seconds, 4),
                }
                run_dir.record_episode(row)
                tb.log_many({f"search/{k}": row[k] for k in ("reward", "val_accuracy", "latency_ratio", "size_ratio", "noise_sigma")}, episode)
                tb.log("search/best_reward", best_reward, episode)
                searcher.save()
                assert best is not None and best.search  # the first episode always improves on -inf
                run_dir.save_state(
                    episodes=episode + 1, best_reward=best_reward, best_episode=best.search["episode"],
                    seconds=seconds_before + time.perf_counter() - loop_started,
                )
                bar.set_postfix(best=f"{best_reward:.4f}", acc=f"{result['val_accuracy']:.3f}", lat=f"{result['latency_ratio']:.3f}")
                bar.update(1)
                if stop.requested:
                    stopped = True
                    break
        if best is not None:
            tb.layer_actions({n: (a.prune, a.unify) for n, a in best.layers.items()}, int(best.search.get("episode", 0)), curves=True)
            tb.hparams(
                {k: v for k, v in config.items() if k not in ("checkpoint", "data", "storage")},
                {"search/best_reward": best_reward, "search/best_val_accuracy": best.predicted.get("val_accuracy", math.nan)},
            )
    finally:
        tb.close()
        searcher.close()
    if stopped:
        raise KeyboardInterrupt
    if best is None:
        raise RunDirError(f"{run_path} records {first} episodes but no policy.json; start over with --force")
    loop_seconds = time.perf_counter() - loop_started
    played = run_dir.episodes_done - first
    return {
        "policy": str(run_dir.policy_path),
        "val_accuracy": best.predicted.get("val_accuracy"),
        "latency_ratio": best.predicted.get("latency_ratio"),
        "size_ratio": best.predicted.get("size_ratio"),
        "reward": best_reward,
        "best_episode": best.search.get("episode"),
        "episodes": run_dir.episodes_done,
        "episodes_this_run": played,
        "seconds": time.perf_counter() - started,
        "seconds_per_episode": loop_seconds / played if played else None,
        "search_seconds_total": float(run_dir.state.get("seconds", 0.0)),
        "searcher": args.searcher,
        "latency_budget": args.latency_budget,
        "budget_verdict": budget_verdict(best.predicted.get("latency_ratio"), args.latency_budget),
        "least_latency_ratio": env.least_latency_ratio,
        "run_dir": str(run_path),
    }
