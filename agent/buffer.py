"""A replay buffer that gives every transition of an episode that episode's final reward, minus a baseline
taken when the transition is used.

AMC only knows how good a policy is at the end of an episode (the compressed network's accuracy), so
each transition of the episode is stored with the raw final reward ``R``. To reduce the variance of the
critic's targets, AMC subtracts a moving average ``b`` at *update* time (mit-han-lab/amc, ``DDPG.update_policy``):
for each sampled batch, ``b <- mean(batch R)`` the first time, then ``b <- b + alpha * (mean(batch R) - b)``,
and the batch's rewards become ``R - b``. A baseline frozen into the buffer when an episode is stored
(as an earlier version did) gives the same reward different targets depending on when it was played,
so the critic learns the episode's date rather than its actions' worth. That earlier buffer stays as
``baseline_at="store"``, for comparison only (benchmarks/agent_learning.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from uniprune.compressors.core.errors import ConfigError

#: When the reward baseline is subtracted: per sampled batch (AMC) or when an episode is stored (the earlier buffer).
BASELINE_AT = ("sample", "store")


class EpisodeRewardBuffer(ReplayBuffer):
    """:class:`ReplayBuffer` that holds an episode's transitions until it ends (one env only).

    ``baseline_alpha`` in (0, 1]: the moving-average step of the reward baseline, per sampled batch (AMC: 0.5).
    ``baseline_at``: ``"sample"`` (default): ``rewards`` holds raw final rewards and :meth:`sample` subtracts
    the baseline; ``"store"``: the earlier buffer, ``R - b`` frozen into the stored transitions when an
    episode ends (``b`` then moves per episode), batches returned as stored. All other arguments are
    :class:`ReplayBuffer`'s.
    """

    def __init__(self, *args: Any, baseline_alpha: float = 0.5, baseline_at: str = "sample", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ConfigError(f"EpisodeRewardBuffer needs exactly one environment, got n_envs={self.n_envs}")
        if not 0 < baseline_alpha <= 1:
            raise ConfigError(f"baseline_alpha must be in (0, 1], got {baseline_alpha}")
        if baseline_at not in BASELINE_AT:
            raise ConfigError(f"baseline_at must be one of {', '.join(BASELINE_AT)}, got {baseline_at!r}")
        self.baseline_at = baseline_at
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
        """Hold the transition; when ``done``, store the whole episode with its raw final reward."""
        self._pending.append((np.array(obs), np.array(next_obs), np.array(action), np.array(done), infos))
        if not bool(np.asarray(done).reshape(-1)[0]):
            return
        final = np.array([float(np.asarray(reward).reshape(-1)[0])], dtype=np.float32)
        if self.baseline_at == "store":
            final = np.array([self._move_baseline(float(final[0]))], dtype=np.float32)
        for o, no, a, d, inf in self._pending:
            super().add(o, no, a, final, d, inf)
        self._pending.clear()
        self.episodes_stored += 1

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        """A batch whose rewards are ``R - b``, with ``b`` moved towards this batch's mean raw reward first."""
        batch = super().sample(batch_size, env=env)
        if self.baseline_at == "store":
            return batch
        self._move_baseline(float(batch.rewards.mean()))
        return batch._replace(rewards=batch.rewards - self.baseline)

    def _move_baseline(self, value: float) -> float:
        """``value`` minus the baseline before the move (``"store"`` mode's shaped reward); moves the baseline towards ``value``."""
        if self.baseline is None:
            self.baseline = value
        shaped = value - self.baseline
        self.baseline += self.baseline_alpha * (value - self.baseline)
        return shaped

    def discard_pending(self) -> int:
        """Drop the transitions of an unfinished episode (after an interrupt); returns how many."""
        n = len(self._pending)
        self._pending.clear()
        return n

    @property
    def pending(self) -> int:
        """Transitions held for the episode in progress."""
        return len(self._pending)
