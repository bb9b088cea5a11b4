"""``search``: a per-layer (prune, unify) policy under a latency budget, written into a run directory."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniprune.compressors.core.errors import RunDirError
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.core.threads import resolve_threads, torch_threads
from uniprune.compressors.formats.run_dir import RunDir
from uniprune.compressors.latency.budget import budget_verdict
from uniprune.envs import CompressionEnv
from uniprune.search import sensitivity
from uniprune.search.loop import (
    ProgressCallback,
    RunDirCallback,
    SearchLoop,
    StopOnInterrupt,
    TensorBoardCallback,
)
from uniprune.search.searchers import make_searcher
from uniprune.search.tensorboard import TensorBoardLogger

from .env import build_env
from .paths import check_writable
from .result import Result
from .specs import SearchSpec


@dataclass(frozen=True)
class SearchResult(Result):
    """What a search found: the best policy (file and figures) and how the run went."""

    policy: str
    val_accuracy: float | None
    latency_ratio: float | None
    size_ratio: float | None
    reward: float
    best_episode: int | None
    episodes: int
    episodes_this_run: int
    seconds: float
    seconds_per_episode: float | None
    search_seconds_total: float
    searcher: str
    latency_budget: float
    budget_verdict: str
    least_latency_ratio: float
    dense_val_accuracy: float
    baseline_engine: str
    baseline_ms: float
    run_dir: str
    #: what the user should know before fine-tuning (printed as they are found)
    warnings: list[str] | None = None


def default_run_dir(spec: SearchSpec) -> Path:
    """``runs/<model>-<dataset>-<searcher>`` made file-safe."""
    name = f"{spec.env.model.model}-{spec.env.data.dataset}-{spec.searcher}"
    return Path("runs") / "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def run_config(spec: SearchSpec) -> dict[str, Any]:
    """The options a run's ``config.json`` keeps (paths made absolute)."""
    flat = spec.flat()
    config = {k: flat[k] for k in SearchSpec.CONFIG_KEYS}
    for k in ("checkpoint", "data"):
        if config[k]:
            config[k] = str(Path(config[k]).expanduser().resolve())
    return config


def check_run_path(spec: SearchSpec) -> Path:
    """The run directory, refused at once when occupied (without resume/force) or unwritable: before minutes of loading."""
    path = Path(spec.run_dir).expanduser() if spec.run_dir else default_run_dir(spec)
    check_writable(path, "--run-dir", folder=True)
    if not spec.resume and not spec.force and path.is_dir() and any(path.iterdir()):
        raise RunDirError(f"run directory {path} already holds a run; pass --resume to go on with it or --force to start over")
    if spec.resume and not RunDir(path).config_path.is_file():
        raise RunDirError(f"nothing to resume in {path}: it has no config.json; start the search without --resume")
    return path


def search(spec: SearchSpec, *, env: CompressionEnv | None = None) -> SearchResult:
    """Search a policy as ``spec`` says; every episode leaves the run directory resumable (``spec.resume``).

    ``env`` (optional): an env already built from ``spec.env`` (its latency table measured), used as is.
    Latency is measured on ``spec.env.latency.threads`` threads (automatic: the cores idle now, fixed for
    the run in its ``config.json``); episodes are scored on ``spec.score_threads``. Ctrl-C stops after the
    episode in progress and raises KeyboardInterrupt with the run saved.
    """
    started = time.perf_counter()
    spec = spec.replace(threads=resolve_threads(spec.env.latency.threads))
    path = check_run_path(spec)  # a bad --run-dir is the one line, before any note
    spec = scaled_warmup(spec)
    known = sensitivity.costs_from(spec.sensitivity_from, run_config(spec)) if spec.sensitivity_from else None
    with torch_threads(spec.score_threads):
        env = env or build_env(spec.env)
        run_dir = RunDir.start(path, run_config(spec), resume=spec.resume, force=spec.force)
        loop = _loop(spec, env, run_dir, known).run()
    if loop.stopped:
        raise KeyboardInterrupt
    best = loop.best
    if best is None:
        raise RunDirError(f"{path} records {loop.first} episodes but no policy.json; start over with --force")
    dense_val = float(env.scorer.score({})["val_accuracy"])
    warnings = plan_warnings(best.predicted.get("val_accuracy"), dense_val, spec.env.budget.latency_budget,
                             env.least_latency_ratio)
    for w in warnings:
        print(f"uniprune search: warning: {w}", file=sys.stderr)
    return SearchResult(
        policy=str(run_dir.policy_path), val_accuracy=best.predicted.get("val_accuracy"),
        latency_ratio=best.predicted.get("latency_ratio"), size_ratio=best.predicted.get("size_ratio"),
        reward=loop.best_reward, best_episode=best.search.get("episode"), episodes=run_dir.episodes_done,
        episodes_this_run=loop.played, seconds=time.perf_counter() - started,
        seconds_per_episode=loop.seconds / loop.played if loop.played else None,
        search_seconds_total=float(run_dir.state.get("seconds", 0.0)), searcher=spec.searcher,
        latency_budget=spec.env.budget.latency_budget,
        budget_verdict=budget_verdict(best.predicted.get("latency_ratio"), spec.env.budget.latency_budget),
        least_latency_ratio=env.least_latency_ratio, dense_val_accuracy=dense_val,
        baseline_engine=_baseline_name(env), baseline_ms=float(env.wall.dense_ms), run_dir=str(path), warnings=warnings,
    )


#: Validation points (a fraction) the best plan may lose before fine-tuning without a warning. ResNet-20 at budget
#: 0.75 of OpenVINO's bf16 on an Intel Xeon with AMX (2026-12-05): the plan kept 27.6 % against 87.9 % dense; after
#: two short fine-tuning epochs, uniform 8x4 blocks at 50 to 90 % pruned ended 13.6 to 46 points below the dense
#: model (docs/RESULTS.md, section curve_cifar_resnet20).
PLAN_LOSS_WARNING = 0.10


def plan_warnings(val_accuracy: float | None, dense_val: float, budget: float, least: float) -> list[str]:
    """A warning when the best plan loses over :data:`PLAN_LOSS_WARNING` of validation accuracy before fine-tuning
    (fractions in [0, 1]; ``budget`` and ``least``: the latency budget and least reachable ratio)."""
    if val_accuracy is None or dense_val - val_accuracy <= PLAN_LOSS_WARNING:
        return []
    return [f"the best plan keeps {val_accuracy:.1%} validation top-1 against {dense_val:.1%} dense before fine-tuning "
            f"({100 * (dense_val - val_accuracy):.1f} points lost): budget {budget:g} needs heavy compression here (the "
            f"least reachable ratio is {least:.3f}). Fine-tuning recovers part of such a loss, more with more epochs: "
            "raise --latency-budget, or give finetune more --epochs or --time-budget"]


def scaled_warmup(spec: SearchSpec) -> SearchSpec:
    """``spec`` with DDPG's warm-up cut to a third of the episodes where it would leave no DDPG episode (a note says so)."""
    if spec.searcher != "ddpg" or spec.resume or spec.warmup < spec.episodes:
        return spec
    warmup = spec.episodes // 3
    print(f"uniprune search: note: --warmup {spec.warmup} would leave no DDPG episode of --episodes {spec.episodes}: "
          f"warming up for {warmup} instead (pass --warmup below --episodes to choose)", file=sys.stderr)
    return spec.replace(warmup=warmup)


def _baseline_name(env: CompressionEnv) -> str:
    meta = env.latency_model.meta or {}
    engine = meta.get("baseline_engine")
    if not engine:
        return "MACs (no engine timed)"
    precision = meta.get("baseline_precision")
    return f"{engine} ({precision})" if precision else str(engine)


def _loop(spec: SearchSpec, env: CompressionEnv, run_dir: RunDir, known: dict[str, float] | None = None) -> SearchLoop:
    searcher = make_searcher(spec.searcher, env, seed=spec.env.seed, warmup=spec.warmup, run_dir=run_dir.path,
                             resume=spec.resume, episodes=spec.episodes, storage=spec.storage,
                             reward_baseline=spec.reward_baseline, known=known,
                             noise={"sigma0": spec.noise_sigma, "sigma_decay": spec.noise_decay, "sigma_min": spec.noise_floor})
    first = run_dir.episodes_done
    best_reward = run_dir.state.get("best_reward")
    best = Policy.load(run_dir.policy_path) if spec.resume and run_dir.policy_path.is_file() else None
    e = spec.env
    describe = {"searcher": spec.searcher, "seed": e.seed, "reward_kind": e.scoring.reward,
                "latency_model": e.latency.latency_model, "val_samples": e.scoring.val_samples,
                "bn_recalibrate": e.scoring.bn_recalibrate}
    hparams = {k: v for k, v in run_config(spec).items() if k not in ("checkpoint", "data", "storage")}
    tb = TensorBoardLogger(run_dir.tb_dir, purge_step=first if spec.resume else None)
    callbacks = [RunDirCallback(run_dir, seconds_before=float(run_dir.state.get("seconds", 0.0))),
                 TensorBoardCallback(tb, hparams), ProgressCallback(f"search {spec.searcher}"), StopOnInterrupt()]
    return SearchLoop(env, searcher, total=searcher.max_episodes(spec.episodes), first=first, best=best,
                      best_reward=-float("inf") if best_reward is None else float(best_reward), describe=describe,
                      callbacks=callbacks, workers=spec.workers)
