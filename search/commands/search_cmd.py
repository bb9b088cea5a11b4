"""`uniprune search`: search a per-layer (prune, unify) policy under a latency budget (AMC).

The run directory (:mod:`uniprune.search.run_dir`) receives the best policy so far, one CSV row and
TensorBoard scalars per episode, and the searcher's state, after every episode; Ctrl-C stops after the
episode in progress (a second Ctrl-C stops at once, losing only that episode) and ``--resume`` goes on
from the last finished episode.
"""

from __future__ import annotations

import argparse
import itertools
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from uniprune.compressors.accounting import layer_profile
from uniprune.compressors.errors import ConfigError, RunDirError
from uniprune.compressors.latency_model import LatencyModel
from uniprune.compressors.policy import Policy
from uniprune.envs import REWARDS, CompressionEnv
from uniprune.search.datasets import load_dataset
from uniprune.search.models import build_model, load_weights
from uniprune.search.run_dir import RESUMABLE_CHANGES, RunDir
from uniprune.search.searchers import SEARCHERS, make_searcher
from uniprune.search.tensorboard import TensorBoardLogger

from .common import (
    add_data_arguments,
    add_device_argument,
    add_model_arguments,
    add_seed_argument,
    resolve_device,
    show_notes,
)

NAME = "search"
HELP = "search a per-layer prune/unify policy under a latency budget (AMC-style DDPG, Optuna, random or uniform)"

#: A unified block's share of MAC time saved in the FLOPs-style latency model (its inputs are summed
#: with their signs and multiplied once: the multiplications go, the additions stay).
MACS_UNIFY_SAVING = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--latency-budget", type=float, default=0.5, help="compressed/dense latency must be at most this, in (0, 1] (default 0.5)")
    parser.add_argument("--episodes", type=int, default=300, help="episodes (policies tried), >= 1 (default 300)")
    parser.add_argument("--warmup", type=int, default=100, help="random warm-up episodes (ddpg) / startup trials (optuna) (default 100)")
    parser.add_argument("--searcher", choices=SEARCHERS, default="ddpg", help="search strategy (default ddpg)")
    parser.add_argument("--run-dir", default=None, help="where the run's files go (default runs/<model>-<dataset>-<searcher>)")
    parser.add_argument("--resume", action="store_true", help="go on with the run in --run-dir (episode count, agent, replay buffer, best policy)")
    parser.add_argument("--force", action="store_true", help="delete the run in --run-dir and start over")
    parser.add_argument("--storage", default=None, help="Optuna storage URL shared by workers (default sqlite:///RUN/optuna.db)")
    parser.add_argument(
        "--latency-model", choices=("measured", "macs"), default="measured",
        help="measured: per-layer tables timed with the real kernels (cached); macs: time proportional to MACs (instant)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="batch size the latency is measured at (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads the latency is measured with (default: torch's)")
    parser.add_argument(
        "--score-threads", type=int, default=1,
        help="CPU threads for scoring episodes (default 1: an episode is many small ops, which extra threads slow down on a busy machine)",
    )
    parser.add_argument("--val-samples", type=int, default=500, help="validation images scoring each episode, >= 1 (default 500)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the training data held out for validation (default 0.1)")
    parser.add_argument("--bn-recalibrate", type=int, default=0, metavar="N", help="re-estimate BatchNorm statistics on N training batches before scoring (default 0: off)")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="batch size for scoring and BN re-estimation (default 256)")
    parser.add_argument("--reward", choices=REWARDS, default="accuracy", help="accuracy (default), log-latency (AMC's -error*log(latency)), size (accuracy under --size-budget too)")
    parser.add_argument("--size-budget", type=float, default=None, help="storage budget as a fraction of dense storage, in (0, 1] (needed by --reward size)")
    parser.add_argument("--max-prune", type=float, default=0.8, help="cap on a layer's pruned fraction of blocks, in [0, 1] (default 0.8)")
    parser.add_argument("--max-unify", type=float, default=1.0, help="cap on a layer's unified fraction of blocks, in [0, 1] (default 1)")
    add_seed_argument(parser)
    add_device_argument(parser)


def _validate(args: argparse.Namespace) -> None:
    checks = [
        (args.episodes >= 1, f"--episodes must be >= 1, got {args.episodes}"),
        (args.warmup >= 0, f"--warmup must be >= 0, got {args.warmup}"),
        (0 < args.latency_budget <= 1, f"--latency-budget must be in (0, 1] (a fraction of dense latency), got {args.latency_budget}"),
        (args.val_samples >= 1, f"--val-samples must be >= 1, got {args.val_samples}"),
        (args.bn_recalibrate >= 0, f"--bn-recalibrate must be >= 0 batches, got {args.bn_recalibrate}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {args.eval_batch_size}"),
        (args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
        (args.score_threads >= 1, f"--score-threads must be >= 1, got {args.score_threads}"),
        (args.size_budget is None or 0 < args.size_budget <= 1, f"--size-budget must be in (0, 1], got {args.size_budget}"),
        (args.reward != "size" or args.size_budget is not None, "--reward size needs --size-budget (a fraction of dense storage in (0, 1])"),
        (not (args.resume and args.force), "--resume and --force contradict each other: pass one"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "model", "checkpoint", "dataset", "data", "latency_budget", "episodes", "warmup", "searcher", "seed",
        "latency_model", "batch_size", "threads", "val_samples", "val_fraction", "bn_recalibrate", "eval_batch_size",
        "reward", "size_budget", "max_prune", "max_unify", "storage", "score_threads",
    )
    config = {k: getattr(args, k) for k in keys}
    for k in ("checkpoint", "data"):
        if config[k]:
            config[k] = str(Path(config[k]).expanduser().resolve())
    return config


def default_run_dir(args: argparse.Namespace) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{args.model}-{args.dataset}-{args.searcher}")
    return Path("runs") / safe


def build_latency_model(args: argparse.Namespace, model: torch.nn.Module, input_shape: tuple[int, int, int]) -> LatencyModel:
    """The env's latency model: measured tables (cached by the latency module) or the MACs proxy."""
    if args.latency_model == "macs":
        profile = layer_profile(model, input_shape)
        return LatencyModel.proportional({n: float(r["macs"]) for n, r in profile.items()}, unify_saving=MACS_UNIFY_SAVING)
    from uniprune.compressors.latency import build_latency_model as measure

    return measure(model, input_shape, batch_size=args.batch_size, threads=args.threads, seed=args.seed, progress=True)


def make_env(args: argparse.Namespace) -> CompressionEnv:
    """Load data and model, and build the search env (the expensive, validating part of the job)."""
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data, val_fraction=args.val_fraction, seed=args.seed)
    show_notes(data)
    if len(data.val) == 0:
        raise ConfigError("the search needs a validation split: pass --val-fraction > 0 (rewards never use the test split)")
    model = build_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    else:
        print("uniprune search: warning: no --checkpoint: searching on an untrained model", file=sys.stderr)
    model.eval()
    # A seeded random subset: splits may be stored class by class, so the first N could be one class.
    val = list(data.batches("val", args.eval_batch_size, shuffle=True, seed=args.seed, limit=args.val_samples))
    bn = list(itertools.islice(data.batches("train", args.eval_batch_size, shuffle=True, seed=args.seed), args.bn_recalibrate))
    latency = build_latency_model(args, model, data.input_shape)
    return CompressionEnv(
        model.to(device), latency, val, input_shape=data.input_shape, latency_budget=args.latency_budget,
        bn_batches=bn, max_prune=args.max_prune, max_unify=args.max_unify, reward=args.reward,
        size_budget=args.size_budget, model_name=args.model, device=device,
    )


def _take_stored_options(args: argparse.Namespace, run_path: Path) -> None:
    """On --resume, options left at their defaults take the run's stored values (so they need not be repeated).

    An option given with a value other than the stored one stays, and RunDir refuses the resume naming it.
    """
    import json

    try:
        stored = json.loads((run_path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{run_path / 'config.json'} is unreadable ({exc}); start over with --force") from None
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    for key, value in stored.items():
        if key in defaults and key not in RESUMABLE_CHANGES and getattr(args, key, None) == defaults[key]:
            setattr(args, key, value)


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
    # Refuse an occupied run directory before minutes of loading and latency measurement.
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
        "least_latency_ratio": env.least_latency_ratio,
        "run_dir": str(run_path),
    }
