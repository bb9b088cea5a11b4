"""The latency budget and the latency ratio: defined here once, read by every verb, the env and the benchmarks.

The **latency ratio** is the compressed model's time over the *baseline*: the fastest dense engine a user
could run without uniprune (torch eager, ONNX Runtime, OpenVINO when installed; see
:mod:`uniprune.compressors.latency.engines`) for the same model, batch and threads, timed the same way and side by
side. A ratio of 0.5 is twice as fast as the best the user had.

A :class:`LatencyBudget` is a bound on that ratio, validated once, turned into milliseconds once against
a baseline, with one tolerance for floating-point slack.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.errors import ConfigError
from .timing import reducer

#: Relative slack when a predicted time is compared with the budget: interpolation and sums of floats must
#: not turn a policy that meets the budget exactly into one over it.
TOLERANCE = 1e-6


def latency_ratio(compressed_ms: float, baseline_ms: float) -> float:
    """Compressed time over the baseline's (both ms, > 0): 0.5 means twice as fast as the fastest dense engine."""
    if not (baseline_ms > 0 and math.isfinite(baseline_ms)) or not (compressed_ms >= 0 and math.isfinite(compressed_ms)):
        raise ConfigError(f"a latency ratio needs a positive baseline and a finite compressed time, got "
                          f"{compressed_ms!r} ms over {baseline_ms!r} ms")
    return float(compressed_ms / baseline_ms)


def paired_ratio(compressed: Sequence[float], baseline: Sequence[float], statistic: str) -> float:
    """The latency ratio from samples timed in the same interleaved rounds (``x[r]``: round ``r``, ms).

    ``"median"``: the median over rounds of each round's own ratio, not a ratio of two medians: the speed
    of a shared machine drifts in phases (on the dev VMs up to 1.6x within a second), and times taken a
    moment apart share the phase. ``"min"``: the ratio of the two fastest runs, each the machine at its
    quietest, on such a machine the more repeatable figure.
    """
    if len(compressed) != len(baseline) or not compressed:
        raise ConfigError(f"paired samples must be non-empty and of one length, got {len(compressed)} and {len(baseline)}")
    if statistic == "median":
        return float(statistics.median(latency_ratio(c, b) for c, b in zip(compressed, baseline)))
    reduce = reducer(statistic)
    return latency_ratio(reduce(compressed), reduce(baseline))


@dataclass(frozen=True)
class LatencyBudget:
    """At most ``ratio`` (in (0, 1]) of the fastest dense engine's latency.

    ``ratio`` 1 asks for no slowdown against the best dense engine; 0.5 for twice its speed.
    """

    ratio: float

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 1:
            raise ConfigError(f"latency budget must be in (0, 1] (a fraction of the fastest dense engine's latency), "
                              f"got {self.ratio!r}; 0.5 means twice as fast")
        object.__setattr__(self, "ratio", float(self.ratio))

    def limit_ms(self, baseline_ms: float) -> float:
        """The most a compressed model may take, in ms, against a baseline of ``baseline_ms`` (> 0), slack included."""
        if not baseline_ms > 0:
            raise ConfigError(f"the baseline latency must be positive, got {baseline_ms!r} ms")
        return self.ratio * baseline_ms * (1 + TOLERANCE)

    def met_by(self, compressed_ms: float, baseline_ms: float) -> bool:
        """Whether ``compressed_ms`` is within the budget against ``baseline_ms``."""
        return compressed_ms <= self.limit_ms(baseline_ms)

    def reachable(self, least_ratio: float) -> bool:
        """Whether a least reachable latency ratio of ``least_ratio`` lets a policy meet the budget."""
        return least_ratio <= self.ratio * (1 + TOLERANCE)

    def verdict(self, ratio: float) -> str:
        """What a latency ratio (> 0) means for this budget, in words: ``"meets the budget 0.5"`` or ``"misses
        the budget 0.5 by 4.4 %"`` (how far the ratio is above the budget, relative to it)."""
        if ratio <= self.ratio * (1 + TOLERANCE):
            return f"meets the budget {self.ratio:g}"
        return f"misses the budget {self.ratio:g} by {100 * (ratio / self.ratio - 1):.1f} %"


def budget_verdict(ratio: float | None, budget: float | None) -> str:
    """``LatencyBudget(budget).verdict(ratio)``, or ``"no budget"`` / ``"not measured"`` when one is missing:
    what every verb prints beside a latency ratio."""
    if budget is None:
        return "no budget"
    if ratio is None:
        return "not measured"
    return LatencyBudget(budget).verdict(ratio)


__all__ = ["TOLERANCE", "LatencyBudget", "budget_verdict", "latency_ratio", "paired_ratio"]
