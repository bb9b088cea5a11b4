"""A replay buffer that gives every transition of an episode that episode's final reward, minus a baseline.

AMC only knows how good a policy is at the end of an episode (the compressed network's accuracy), so
each transition of the episode is stored with the final reward ``R``. To reduce the variance of the
critic's targets, AMC subtracts an exponential moving average ``b`` of past final rewards. Here
``b`` starts at the first episode's reward; every episode stores ``R - b`` (``b`` as it was before the
episode) and then moves ``b <- b + alpha * (R - b)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer
from uniprune.compressors.errors import ConfigError


class EpisodeRewardBuffer(ReplayBuffer):
    """:class:`ReplayBuffer` that holds an episode's transitions until it ends (one env only).

    ``baseline_alpha`` in (0, 1]: the moving-average step (AMC uses 0.5). All other arguments are
    :class:`ReplayBuffer`'s.
    """

    def __init__(self, *args: Any, baseline_alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ConfigError(f"EpisodeRewardBuffer needs exactly one environment, got n_envs={self.n_envs}")
        if not 0 < baseline_alpha <= 1:
            raise ConfigError(f"baseline_alpha must be in (0, 1], got {baseline_alpha}")
        self.baseline_alpha = float(baseline_alpha)
        self.baseline: float | None = None
        self.episodes_stored = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]] = []

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Hold the transition; when ``done``, store the whole episode with ``final reward - baseline``."""
        self._pending.append((np.array(obs), np.array(next_obs), np.array(action), np.array(done), infos))
        if not bool(np.asarray(done).reshape(-1)[0]):
            return
        final = float(np.asarray(reward).reshape(-1)[0])
        shaped = self.shaped_reward(final)
        for o, no, a, d, inf in self._pending:
            super().add(o, no, a, np.array([shaped], dtype=np.float32), d, inf)
        self._pending.clear()
        self.episodes_stored += 1

    def shaped_reward(self, final: float) -> float:
        """Return ``final - baseline`` and move the baseline (the first episode sets it, giving 0)."""
        if self.baseline is None:
            self.baseline = final
        shaped = final - self.baseline
        self.baseline += self.baseline_alpha * (final - self.baseline)
        return float(shaped)

    def discard_pending(self) -> int:
        """Drop the transitions of an unfinished episode (after an interrupt); returns how many."""
        n = len(self._pending)
        self._pending.clear()
        return n

    @property
    def pending(self) -> int:
        """Transitions held for the episode in progress."""
        return len(self._pending)
