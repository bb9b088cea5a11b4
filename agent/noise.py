"""AMC's exploration: uniform warm-up, then truncated-normal noise around the actor's action.

AMC (He et al. 2018) explores with ``a ~ TruncatedNormal(mu=actor(s), sigma, [low, high])`` where
``sigma = sigma0 * decay ** (episode - warmup)``: 0.5 at the first episode after warm-up, x0.95 per
episode after that. During warm-up the actions are uniform in ``[low, high]`` and carry no noise. An
optional floor (``sigma_min``, 0 in AMC) keeps the search exploring in long runs: at x0.95 the noise is
below 0.01 some 76 episodes after warm-up, and the actor then replays one policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import truncnorm
from uniprune.compressors.core.errors import ConfigError


@dataclass(frozen=True)
class TruncatedNormalSchedule:
    """The exploration schedule in action units (the env's actions are fractions in [0, 1]).

    ``sigma0`` (> 0): the noise scale at the first episode after warm-up. ``decay`` in (0, 1]: the
    factor per episode after that. ``warmup_episodes`` (>= 0): episodes of uniform random actions.
    ``low``/``high``: the action bounds the noise is truncated to. ``sigma_min`` in [0, sigma0]: the
    least noise scale after warm-up (0: AMC's pure decay).
    """

    sigma0: float = 0.5
    decay: float = 0.95
    warmup_episodes: int = 100
    low: float = 0.0
    high: float = 1.0
    sigma_min: float = 0.0

    def __post_init__(self) -> None:
        if not self.sigma0 > 0:
            raise ConfigError(f"noise sigma must be > 0, got {self.sigma0}")
        if not 0 < self.decay <= 1:
            raise ConfigError(f"noise decay must be in (0, 1], got {self.decay}")
        if self.warmup_episodes < 0:
            raise ConfigError(f"warm-up episodes must be >= 0, got {self.warmup_episodes}")
        if not 0 <= self.sigma_min <= self.sigma0:
            raise ConfigError(f"the noise floor must be in [0, sigma0 = {self.sigma0}], got {self.sigma_min}")
        if not self.low < self.high:
            raise ConfigError(f"action bounds must satisfy low < high, got [{self.low}, {self.high}]")

    def in_warmup(self, episode: int) -> bool:
        """Whether 0-based ``episode`` is a warm-up episode (uniform actions, no noise)."""
        return episode < self.warmup_episodes

    def sigma(self, episode: int) -> float:
        """The noise scale for 0-based ``episode``: 0 during warm-up, then ``max(sigma0 * decay**k, sigma_min)``."""
        if self.in_warmup(episode):
            return 0.0
        return float(max(self.sigma0 * self.decay ** (episode - self.warmup_episodes), self.sigma_min))

    def sample(self, mean: np.ndarray, episode: int, rng: np.random.Generator) -> np.ndarray:
        """One exploratory action for ``episode``: uniform in warm-up, else truncated normal around ``mean``."""
        mean = np.clip(np.asarray(mean, dtype=np.float64), self.low, self.high)
        if self.in_warmup(episode):
            return rng.uniform(self.low, self.high, size=mean.shape)
        sigma = self.sigma(episode)
        a, b = (self.low - mean) / sigma, (self.high - mean) / sigma
        return np.asarray(truncnorm.rvs(a, b, loc=mean, scale=sigma, size=mean.shape, random_state=rng), dtype=np.float64)
