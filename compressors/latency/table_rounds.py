"""The latency table's measuring rounds: every grid point's compiled model, each layer timed in its place.

The grid points' models take turns round by round; each round times a bare whole pass of a model and then
its layers in a clocked pass right after it (the plan's own clock between ops on the lean runtime, a
wrapper per layer, :class:`LayerClock`, on the Python path). Rounds go on past ``repeats`` until
``min_seconds`` have passed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..core.threads import torch_threads
from .engines import DenseEngines, race

Point = tuple[int, int]


class _Timed(nn.Module):
    """Wraps a layer and records its wall time (s) per call (it is in the model only for clocked passes)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.times: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = self.inner(x)
        self.times.append(time.perf_counter() - t0)
        return y


class LayerClock:
    """Per-layer wall times inside whole-model forward passes: while :meth:`installed`, each named layer of
    ``model`` is replaced, in place, by a :class:`_Timed` wrapper (``model`` is a throwaway copy).

    Timing a layer in its place, right after the layer before it wrote its input, sees the caches as
    inference does; timed in isolation, the per-layer sums missed the whole-model timings by 25 to 60 %.
    A wrapper, not forward hooks: hooks send every call through torch's slow path, about 10 µs a layer
    that a short sparse layer at batch 1 does not pay in a real pass. The wrapper still costs a few µs a
    layer, so whole passes (the fixed part) are timed with it removed.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.layers: dict[str, _Timed] = {}
        self._slots: list[tuple[nn.Module, str, nn.Module, _Timed]] = []
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            inner = getattr(owner, child)
            self.layers[name] = _Timed(inner)
            self._slots.append((owner, child, inner, self.layers[name]))

    def installed(self, on: bool) -> None:
        """Put the wrappers in (``on``) or take them out, leaving the model as it was."""
        for owner, child, inner, timed in self._slots:
            setattr(owner, child, timed if on else inner)

    def times(self, name: str) -> list[float]:
        return self.layers[name].times


def baseline_rounds(dense: DenseEngines, compiled: Any, x: torch.Tensor, n: int, *, repeats: int,
                    min_seconds: float, statistic: str) -> dict[str, Any]:
    """The dense engines timed against the nothing-compressed compiled model alone, as ``bench`` times them
    (:func:`~uniprune.compressors.latency.engines.race`)."""
    return race(dense, lambda: compiled(x), threads=n, warmup=1, repeats=repeats, min_seconds=min_seconds,
                statistic=statistic)


def _layer_pass(models: Mapping[Point, Any], names: Sequence[str], x: torch.Tensor,
                runtime: str) -> Callable[[Point], dict[str, float]]:
    """A function giving each layer's ms (by name) in one clocked pass of a grid point's model."""
    if runtime == "lean":
        def lean_pass(pt: Point) -> dict[str, float]:
            _, layers = models[pt].layer_ms(x)
            return {name: layers.get(name, 0.0) for name in names}
        return lean_pass
    clocks = {pt: LayerClock(m, names) for pt, m in models.items()}

    def clocked_pass(pt: Point) -> dict[str, float]:
        clocks[pt].installed(True)
        try:
            models[pt](x)
        finally:
            clocks[pt].installed(False)
        return {name: 1e3 * clocks[pt].times(name)[-1] for name in names}
    return clocked_pass


def measure_rounds(models: Mapping[Point, Any], names: Sequence[str], x: torch.Tensor, threads: int, runtime: str, *,
                   warmup: int, repeats: int, min_seconds: float, progress: bool
                   ) -> tuple[dict[Point, dict[str, list[float]]], dict[Point, list[float]]]:
    """``(samples, wholes)``: per grid point, each layer's ms in every round, and the bare whole passes' ms.

    ``runtime``: what the models were compiled for (``lean`` reads the plan's clock; else wrappers).
    """
    points = list(models)
    layer_pass = _layer_pass(models, names, x, runtime)
    samples: dict[Point, dict[str, list[float]]] = {pt: {name: [] for name in names} for pt in points}
    wholes: dict[Point, list[float]] = {pt: [] for pt in points}

    def timed_pass(pt: Point) -> None:
        # The whole pass is timed bare, as it runs for a user; the layers in a clocked pass right after it. A
        # whole pass timed with the clock in it carried the clock's cost into the fixed part (the Python
        # path's wrappers: about 3.4 µs a layer, 0.2 ms on ResNet-56 at batch 1).
        t0 = time.perf_counter()
        models[pt](x)
        whole = 1e3 * (time.perf_counter() - t0)
        layers = layer_pass(pt)
        for name in names:
            samples[pt][name].append(layers[name])
        wholes[pt].append(whole)

    with torch_threads(threads), torch.no_grad():
        for m in models.values():
            for _ in range(max(warmup, 1)):
                m(x)
        bar = tqdm(total=repeats, desc="latency table", disable=not progress, file=sys.stderr)
        start, r = time.perf_counter(), 0
        while r < repeats or time.perf_counter() - start < min_seconds:
            order = points[r % len(points):] + points[:r % len(points)]
            for pt in order:
                models[pt](x)
                timed_pass(pt)
            r += 1
            if r <= repeats:  # rounds past repeats only fill the time span
                bar.update()
        bar.close()
    return samples, wholes
