"""One search loop for every searcher, with callbacks for what an episode leaves behind.

:class:`SearchLoop` plays episodes ``first .. total - 1`` with a :class:`~uniprune.search.searchers.Searcher`,
keeps the best policy, and hands each finished episode (:class:`Episode`) to its callbacks in order:
the CSV row and state in the run directory (:class:`RunDirCallback`), TensorBoard (:class:`TensorBoardCallback`),
a progress bar (:class:`ProgressCallback`) and Ctrl-C (:class:`StopOnInterrupt`: the first finishes the
episode in progress, the second stops at once). A callback may ask the loop to stop after the episode.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.formats.run_dir import RunDir
from uniprune.envs import CompressionEnv
from uniprune.search.searchers import Searcher
from uniprune.search.tensorboard import TensorBoardLogger

#: The per-episode figures every searcher's episode row holds, besides the episode number.
ROW_KEYS = ("reward", "val_accuracy", "latency_ratio", "size_ratio", "noise_sigma")


@dataclass
class Episode:
    """One finished episode: its number, the env's result, its seconds, and the best so far after it."""

    episode: int
    result: dict[str, Any]
    seconds: float
    noise_sigma: float
    warmup: bool
    best_reward: float
    improved: bool

    def row(self) -> dict[str, Any]:
        """The episode's ``episodes.csv`` row."""
        r = self.result
        return {"episode": self.episode, "reward": float(r["reward"]), "val_accuracy": r["val_accuracy"],
                "latency_ratio": r["latency_ratio"], "size_ratio": r["size_ratio"], "noise_sigma": self.noise_sigma,
                "warmup": int(self.warmup), "best_reward": self.best_reward, "seconds": round(self.seconds, 4)}


class Callback:
    """What happens around the loop; every hook is optional. ``stop`` set to True ends the loop after the episode."""

    stop = False

    def on_start(self, loop: SearchLoop) -> None:
        """Before the first episode of this process."""

    def on_episode(self, loop: SearchLoop, episode: Episode) -> None:
        """After each finished episode (the loop's best already updated)."""

    def on_end(self, loop: SearchLoop) -> None:
        """After the last episode, unless the loop was interrupted by an exception."""

    def close(self) -> None:
        """Always, last: release what on_start took."""


@dataclass
class SearchLoop:
    """Episodes ``first .. total - 1`` of ``searcher`` on ``env``; ``best``/``best_reward`` carry a resumed run's."""

    env: CompressionEnv
    searcher: Searcher
    total: int
    first: int = 0
    best: Policy | None = None
    best_reward: float = -math.inf
    #: what every best policy's ``search`` record says besides the episode (searcher, seed, reward kind, ...)
    describe: Mapping[str, Any] = field(default_factory=dict)
    callbacks: Sequence[Callback] = ()
    #: processes scoring episodes side by side (searchers that :attr:`~Searcher.plans_ahead`)
    workers: int = 1
    stopped: bool = False
    played: int = 0
    seconds: float = 0.0

    def run(self) -> SearchLoop:
        """Play the episodes; returns the loop (its ``best``, ``best_reward``, ``stopped``, ``played``, ``seconds``)."""
        started = time.perf_counter()
        pool = None
        ready: dict[int, tuple[dict[str, Any], float]] = {}
        try:
            # before any plan: the knapsack's sensitivities, scored by its first plan, then go through the pool too
            if self.workers > 1 and self.first < self.total and self.searcher.plans_ahead:
                from .workers import ScorePool

                pool = self.searcher.pool = ScorePool(self.env, self.workers)
            for cb in self.callbacks:
                cb.on_start(self)
            for number in range(self.first, self.total):
                if pool is not None and number not in ready:
                    ready = self._score_ahead(pool, number)
                episode = self._play(number, ready.pop(number, None))
                self.played += 1
                self.seconds = time.perf_counter() - started
                for cb in self.callbacks:
                    cb.on_episode(self, episode)
                if any(cb.stop for cb in self.callbacks):
                    self.stopped = True
                    break
            for cb in self.callbacks:
                cb.on_end(self)
        finally:
            for cb in reversed(self.callbacks):
                cb.close()
            self.searcher.close()
            if pool is not None:
                pool.close()
                self.searcher.pool = None
        return self

    def _score_ahead(self, pool: Any, number: int) -> dict[int, tuple[dict[str, Any], float]]:
        """Episodes ``number ..`` (as many as there are workers, all planned) scored side by side, with the
        seconds each took on average."""
        t0 = time.perf_counter()
        numbers = range(number, min(number + pool.workers, self.total))
        results = pool.episodes([self.searcher.plan(n) for n in numbers])
        each = (time.perf_counter() - t0) / len(results)
        return {n: (r, each) for n, r in zip(numbers, results)}

    def _play(self, number: int, scored: tuple[dict[str, Any], float] | None = None) -> Episode:
        t0 = time.perf_counter()
        result = self.searcher.run_episode(number) if scored is None else scored[0]
        seconds = time.perf_counter() - t0 if scored is None else scored[1]
        reward = float(result["reward"])
        improved = reward > self.best_reward
        if improved:
            self.best_reward = reward
            self.best = self.env.policy(result["actions"])
            self.best.predicted = {k: result[k] for k in ("latency_ratio", "size_ratio", "val_accuracy", "reward")}
            self.best.search = {**self.describe, "episode": number}
        return Episode(number, result, seconds, self.searcher.noise_sigma(number), self.searcher.in_warmup(number),
                       self.best_reward, improved)


class RunDirCallback(Callback):
    """The run directory: the best policy when it improves, the episode's CSV row, the searcher's state, and
    ``state.json`` last (so it never claims an episode whose other files are missing)."""

    def __init__(self, run_dir: RunDir, *, seconds_before: float = 0.0) -> None:
        self.run_dir = run_dir
        self.seconds_before = seconds_before

    def on_episode(self, loop: SearchLoop, episode: Episode) -> None:
        assert loop.best is not None and loop.best.search  # the first episode always improves on -inf
        if episode.improved:
            loop.best.save(self.run_dir.policy_path)
        self.run_dir.record_episode(episode.row())
        loop.searcher.save()
        self.run_dir.save_state(episodes=episode.episode + 1, best_reward=loop.best_reward,
                                best_episode=loop.best.search["episode"], seconds=self.seconds_before + loop.seconds)


class TensorBoardCallback(Callback):
    """``search/*`` scalars per episode, the best policy's table, the run's hparams at the end; the searcher's
    own training scalars (DDPG: ``train/*``) go to the same writer."""

    def __init__(self, tb: TensorBoardLogger, hparams: Mapping[str, Any]) -> None:
        self.tb = tb
        self.hparams = hparams

    def on_start(self, loop: SearchLoop) -> None:
        loop.searcher.log_to(self.tb)

    def on_episode(self, loop: SearchLoop, episode: Episode) -> None:
        row = episode.row()
        if episode.improved:
            self.tb.layer_actions(episode.result["actions"], episode.episode)
        self.tb.log_many({f"search/{k}": row[k] for k in ROW_KEYS}, episode.episode)
        self.tb.log("search/best_reward", loop.best_reward, episode.episode)

    def on_end(self, loop: SearchLoop) -> None:
        best = loop.best
        if best is None:
            return
        self.tb.layer_actions({n: a.as_action() for n, a in best.layers.items()},
                              int(best.search.get("episode", 0)), curves=True)
        self.tb.hparams(self.hparams, {"search/best_reward": loop.best_reward,
                                       "search/best_val_accuracy": best.predicted.get("val_accuracy", math.nan)})

    def close(self) -> None:
        self.tb.close()


class ProgressCallback(Callback):
    """A tqdm bar on stderr with the best reward and the last episode's accuracy and latency ratio."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def on_start(self, loop: SearchLoop) -> None:
        self.bar = tqdm(total=loop.total, initial=min(loop.first, loop.total), desc=self.desc, unit="ep", file=sys.stderr,
                        dynamic_ncols=True)

    def on_episode(self, loop: SearchLoop, episode: Episode) -> None:
        r = episode.result
        self.bar.set_postfix(best=f"{loop.best_reward:.4f}", acc=f"{r['val_accuracy']:.3f}", lat=f"{r['latency_ratio']:.3f}")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnInterrupt(Callback):
    """First Ctrl-C: finish the episode in progress, save, stop. Second: stop at once (KeyboardInterrupt)."""

    def __init__(self, verb: str = "search") -> None:
        self.verb = verb
        self._previous: Any = None

    def on_start(self, loop: SearchLoop) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        print(f"\nuniprune {self.verb}: stopping after this episode (Ctrl-C again to stop now)", file=sys.stderr)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
