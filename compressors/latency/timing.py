"""The one timing loop: interleaved rounds of wall-clock measurements, and the statistic over them.

A leaf module (it imports nothing of uniprune but its errors), so the runtime's per-layer pick, the
latency table, the dense engines and ``bench`` all time with the same loop and none of them imports
another to do so.

Measurement (DESIGN "Latency"): warm-up calls, then rounds in which every function runs once (the order
rotating each round), a fixed torch thread count, all in one process, so every function sees the same
machine state. The statistic over the rounds is the median or the minimum.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from ..core.errors import ConfigError
from ..core.threads import check_threads as positive_threads
from ..core.threads import torch_threads

STATISTICS = ("median", "min")

#: Default least span, in seconds, of the timed rounds of a latency table and of a whole-model timing. On the
#: shared VMs this was built on, speed drifts in phases lasting from a fraction of a second to minutes (the
#: digits CNN's dense pass: 1.7 ms, then 2.9 ms a second later), and torch's dense passes drift more than the
#: compiled ones. A table timed within one phase (well under a second for a small model) set the demo's
#: latency ratio at 0.60 where `bench` then measured 0.79. Spreading the rounds over a few seconds lets the
#: statistic see more than one phase.
SPREAD_SECONDS = 3.0


def check_threads(threads: int | None) -> int:
    """``threads`` as a positive int (``None``: torch's current thread count); ConfigError otherwise."""
    return torch.get_num_threads() if positive_threads(threads) is None else int(threads)  # type: ignore[arg-type]


def check_counts(warmup: int, repeats: int, min_seconds: float) -> None:
    """ConfigError unless ``repeats >= 1``, ``warmup >= 0`` and ``min_seconds >= 0``."""
    if repeats < 1 or warmup < 0 or not min_seconds >= 0:
        raise ConfigError(f"need repeats >= 1, warmup >= 0 and min_seconds >= 0, got repeats={repeats}, warmup={warmup}, "
                          f"min_seconds={min_seconds}")


def reducer(statistic: str) -> Callable[[Sequence[float]], float]:
    """The function that turns a list of samples into one figure: ``statistics.median`` or ``min``."""
    if statistic not in STATISTICS:
        raise ConfigError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    return statistics.median if statistic == "median" else min


def interleaved_samples(fns: Mapping[str, Callable[[], object]], *, warmup: int = 10, repeats: int = 50,
                        threads: int | None = None, warm: bool = True, min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Wall times in ms of each function over ``repeats`` interleaved rounds: ``out[name][r]`` is round ``r``.

    ``warmup`` (>= 0) calls of each first, then ``repeats`` (>= 1) rounds each calling every function once
    (the order rotating per round), so every function sees the same drift of a shared machine and samples
    of one round are close in time. With ``warm`` (default) each timed call comes right after an untimed
    call of the same function: it finds its own weights in the caches as it would running alone, not
    the other functions'. torch runs on ``threads`` threads (default: as now) during the timing. Rounds go
    on past ``repeats`` until ``min_seconds`` (>= 0) have passed: see :data:`SPREAD_SECONDS`.
    """
    check_counts(warmup, repeats, min_seconds)
    n = check_threads(threads)
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    with torch_threads(n), torch.no_grad():
        for _ in range(warmup):
            for k in names:
                fns[k]()
        start, r = time.perf_counter(), 0
        while r < repeats or time.perf_counter() - start < min_seconds:
            for i in range(len(names)):
                k = names[(i + r) % len(names)]
                if warm:
                    fns[k]()
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(1e3 * (time.perf_counter() - t0))
            r += 1
    return times


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, warmup: int = 10, repeats: int = 50,
                     threads: int | None = None, statistic: str = "median", warm: bool = True,
                     min_seconds: float = 0.0) -> dict[str, float]:
    """Median (or ``statistic="min"``) wall time in ms of each function, from :func:`interleaved_samples`.

    The minimum suits a machine shared with other jobs: a long call is preempted far more often than a
    short one.
    """
    reduce = reducer(statistic)
    samples = interleaved_samples(fns, warmup=warmup, repeats=repeats, threads=threads, warm=warm, min_seconds=min_seconds)
    return {k: reduce(v) for k, v in samples.items()}


def fastest(fns: Mapping[str, Callable[[], object]]) -> str:
    """The name of the fastest function by the least of 7 interleaved timings after 2 warm-up rounds.

    The least, not the median: the runtime makes such a pick once per layer and input shape and keeps it,
    and on a machine shared with other jobs a few preempted calls must not send a layer to an
    implementation several times slower. Cold rounds (``warm=False``): the pick is quick, one call each.
    """
    if len(fns) == 1:
        return next(iter(fns))
    t = time_interleaved(fns, warmup=2, repeats=7, statistic="min", warm=False, threads=torch.get_num_threads())
    return min(t, key=t.__getitem__)


__all__ = ["STATISTICS", "SPREAD_SECONDS", "check_counts", "check_threads", "fastest", "interleaved_samples", "reducer",
           "time_interleaved"]
