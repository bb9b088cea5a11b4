"""Episodes scored on several cores: a pool of forked processes, each with the search's env.

Scoring (projection, BatchNorm re-estimation, validation accuracy) is an episode's cost; walking the wall
is not. Searchers whose actions do not depend on earlier rewards (``random``, ``uniform``, ``knapsack``:
:meth:`~uniprune.search.searchers.Searcher.plan`) have their episodes walked in the parent and scored here,
``workers`` at a time, and the knapsack's per-layer sensitivities likewise. DDPG and Optuna choose each
episode from the rewards before it, so their episodes stay one at a time. Each worker runs torch on one
thread with the same data and weights as the parent, so results are identical to one worker's.

The processes are forked (the env, its model and its data are shared copy-on-write, nothing is pickled but
the actions and the results), which needs a platform with ``fork`` (Linux, macOS).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from uniprune.compressors.core.errors import ConfigError
from uniprune.envs import CompressionEnv

#: The env the forked workers score with (set in the parent just before the fork).
_ENV: CompressionEnv | None = None


def _init_worker() -> None:
    torch.set_num_threads(1)


def _episode(raws: Sequence[np.ndarray]) -> dict[str, Any]:
    assert _ENV is not None
    return _ENV.episode_result(raws)


def _accuracy(actions: Mapping[str, tuple]) -> float:
    assert _ENV is not None
    return float(_ENV.scorer.score(actions)["val_accuracy"])


class ScorePool:
    """``workers`` forked processes (>= 2) scoring ``env``'s episodes and policies; close it when done."""

    def __init__(self, env: CompressionEnv, workers: int) -> None:
        global _ENV
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigError("--workers above 1 needs a platform that can fork processes (Linux, macOS); use --workers 1")
        _ENV = env
        self.workers = int(workers)
        self._pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=_init_worker)

    def episodes(self, raws: Sequence[Sequence[np.ndarray]]) -> list[dict[str, Any]]:
        """The env's end-of-episode result of each episode's raw actions, in order."""
        return self._pool.map(_episode, list(raws), chunksize=1)

    def accuracies(self, actions: Sequence[Mapping[str, tuple]]) -> list[float]:
        """The scorer's validation accuracy of each ``{layer: action}``, in order."""
        return self._pool.map(_accuracy, list(actions), chunksize=1)

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
