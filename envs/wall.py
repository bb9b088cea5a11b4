"""AMC's action wall: the latency budget and the size budget, kept reachable layer by layer.

A :class:`Wall` is built from budget objects (:class:`~uniprune.compressors.latency.budget.LatencyBudget`
over the latency model's tables, and :class:`~uniprune.compressors.core.accounting.SizeBudget` over storage
as accounting counts it, alike) and the searched layers. At layer ``t`` it clips a requested (prune, unify)
so that the layers decided so far, plus this one, plus every later layer at its *extreme point* (the
fastest feasible grid point within the caps; with a size budget the maximum compression) stay within
every budget; the applied action is moved along the segment from the request to this layer's extreme
point, as little as needed (bisection). Since the budget was reachable before the layer, the extreme point
itself always satisfies it, so every finished walk meets the budgets by construction. Latency and size are
priced at the whole block counts the projection applies (:meth:`Wall.applied_fractions`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from uniprune.compressors.core.accounting import FLOAT_BITS, SIGN_BITS, SizeBudget
from uniprune.compressors.core.blocks import LayerSpec
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction
from uniprune.compressors.core.projection import BlockClasses
from uniprune.compressors.latency.budget import LatencyBudget, latency_ratio
from uniprune.compressors.latency.model import LatencyModel

_EPS = 1e-9
_BISECTION_STEPS = 40
#: Grid points of one layer within this relative distance of its fastest count as equally fast (timing noise).
_EXTREME_NOISE = 0.02


@dataclass
class Walk:
    """One episode's progress through the wall: layers decided, and their predicted ms and bits."""

    t: int = 0
    spent_ms: float = 0.0
    spent_bits: float = 0.0
    applied: list[tuple[float, float]] = field(default_factory=list)
    requested: list[tuple[float, float]] = field(default_factory=list)


class Wall:
    """The budgets over the searched ``specs`` (in episode order).

    :param latency_model: per-layer tables naming every searched layer; its ``dense_ms`` is the baseline.
    :param budget: the latency budget. :param size_budget: the storage budget (None: no size wall).
    :param max_prune, max_unify: caps in [0, 1] on a layer's pruned and unified fractions of weights.
    :param dense_bits: the dense model's storage bits (accounting's ``dense_storage_bits``).
    """

    def __init__(self, latency_model: LatencyModel, specs: Sequence[LayerSpec], budget: LatencyBudget, *,
                 size_budget: SizeBudget | None = None, max_prune: float = 0.8, max_unify: float = 1.0,
                 dense_bits: float) -> None:
        for key, cap in (("max_prune", max_prune), ("max_unify", max_unify)):
            if not 0 <= cap <= 1:
                raise ConfigError(f"{key} must be in [0, 1], got {cap}")
        self.latency_model, self.budget, self.size_budget = latency_model, budget, size_budget
        self.max_prune, self.max_unify = float(max_prune), float(max_unify)
        self.layer_names = [s.name for s in specs]
        missing = [n for n in self.layer_names if n not in latency_model.tables]
        if missing:
            raise ConfigError(f"the latency model has no table for layer(s) {missing[:5]}: rebuild it for this model "
                              "(delete the latency cache) or use --latency-model macs")
        self.dense_ms = latency_model.dense_ms
        self.dense_layer_ms = np.asarray([float(latency_model.tables[n][0, 0]) for n in self.layer_names])
        # what no action changes: the table's fixed part and the layers left out of the episode, as they run
        # uncompressed in the compiled model
        self.fixed_ms = float(latency_model.fixed_ms) + sum(
            float(t[0, 0]) for n, t in latency_model.tables.items() if n not in self.layer_names)
        self._params = np.asarray([int(s.module.weight.numel()) for s in specs], dtype=np.float64)
        self._blocks = np.asarray([s.grid.num_blocks for s in specs], dtype=np.float64)
        self._classes = [BlockClasses.of(s.grid) for s in specs]
        self.dense_bits = float(dense_bits)
        self.fixed_bits = self.dense_bits - float(self._params.sum()) * FLOAT_BITS
        self._rebuild()

    def _rebuild(self) -> None:
        self.extreme = [self._extreme_point(n) for n in self.layer_names]
        self._extreme_ms = np.asarray([self.layer_ms(i, *e) for i, e in enumerate(self.extreme)])
        self._extreme_bits = np.asarray([self.layer_bits(i, *e) for i, e in enumerate(self.extreme)])
        self.least_latency_ratio = latency_ratio(self.fixed_ms + float(self._extreme_ms.sum()), self.dense_ms)
        self.least_size_ratio = (self.fixed_bits + float(self._extreme_bits.sum())) / self.dense_bits
        self._check_reachable()

    def with_budget(self, budget: LatencyBudget) -> None:
        """Set another latency budget (checked reachable)."""
        self.budget = budget
        self._check_reachable()

    def _check_reachable(self) -> None:
        least = self.least_latency_ratio
        if not self.budget.reachable(least):
            baseline = (self.latency_model.meta or {}).get("baseline_engine", "dense")
            raise ConfigError(
                f"latency budget {self.budget.ratio:g} cannot be met: the least reachable ratio is {least:.4f} of the "
                f"fastest dense engine ({baseline}) (every layer at its fastest point with max_prune={self.max_prune:g}, "
                f"max_unify={self.max_unify:g}); raise --latency-budget to at least {math.ceil(least * 1000) / 1000:g} "
                "or raise the caps")
        if self.size_budget is not None and not self.size_budget.reachable(self.least_size_ratio):
            least = self.least_size_ratio
            raise ConfigError(
                f"size budget {self.size_budget.ratio:g} cannot be met: the least reachable size ratio is {least:.4f}; "
                f"raise --size-budget to at least {math.ceil(least * 1000) / 1000:g} or raise the caps")

    def _extreme_point(self, name: str) -> tuple[float, float]:
        """Where a later layer is assumed to go when checking reachability (see the module docstring)."""
        if self.size_budget is not None:
            return self.max_prune, min(self.max_unify, 1.0 - self.max_prune)
        lm = self.latency_model
        p, u = lm.points()
        ok = (p <= self.max_prune + _EPS) & (u <= self.max_unify + _EPS)
        table = np.where(ok, lm.tables[name], np.inf)
        # Among the points within timing noise of the fastest, the least unification, then the least pruning:
        # a plain argmin over noisy points picked unification for convs, where it buys no time, and so
        # assumed the later layers unified for nothing.
        near = np.argwhere(table <= float(table.min()) * (1 + _EXTREME_NOISE))
        i, j = min(near.tolist(), key=lambda ij: (u[ij[0], ij[1]], p[ij[0], ij[1]]))
        return float(p[i, j]), float(u[i, j])

    def applied_fractions(self, i: int, prune: float, unify: float) -> tuple[float, float]:
        """The fractions of layer ``i``'s weights the projection really prunes and unifies for a requested
        (prune, unify): whole blocks of each size, rounded as :class:`BlockClasses` rounds."""
        return self._classes[i].applied(prune, unify)

    def layer_ms(self, i: int, prune: float, unify: float) -> float:
        """Predicted ms of layer ``i`` at the block counts a (prune, unify) request applies."""
        return self.latency_model.layer_ms(self.layer_names[i], *self.applied_fractions(i, prune, unify))

    def layer_bits(self, i: int, prune: float, unify: float) -> float:
        """Predicted storage bits of layer ``i`` at the block counts the fractions apply, the index counted as
        accounting counts it: ``ceil(log2(states used))`` bits per block."""
        classes = self._classes[i]
        pruned, unified = classes.applied(prune, unify)
        _, n_unified = classes.blocks(prune, unify)
        params, blocks = self._params[i], self._blocks[i]
        keep = max(1.0 - pruned - unified, 0.0)
        used = sum(f > _EPS for f in (keep, pruned, unified))
        index = math.ceil(math.log2(used)) * blocks if used > 1 else 0.0
        return float(params * (keep * FLOAT_BITS + unified * SIGN_BITS) + n_unified * FLOAT_BITS + index)

    def map_action(self, action: np.ndarray) -> tuple[float, float]:
        """The requested (prune, unify) fractions for a raw action in [0, 1]^2 (caps applied)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), 0.0, 1.0)
        prune = float(a[0]) * self.max_prune
        unify = min(float(a[1]) * self.max_unify, 1.0 - prune)
        return prune, max(unify, 0.0)

    def fits(self, walk: Walk, prune: float, unify: float) -> bool:
        """Whether layer ``walk.t`` at (prune, unify) keeps every budget reachable."""
        t = walk.t
        ms = self.fixed_ms + walk.spent_ms + self.layer_ms(t, prune, unify) + float(self._extreme_ms[t + 1:].sum())
        if not self.budget.met_by(ms, self.dense_ms):
            return False
        if self.size_budget is None:
            return True
        bits = self.fixed_bits + walk.spent_bits + self.layer_bits(t, prune, unify) + float(self._extreme_bits[t + 1:].sum())
        return self.size_budget.met_by(bits, self.dense_bits)

    def clip(self, walk: Walk, prune: float, unify: float) -> tuple[float, float]:
        """The action nearest the request (on the segment to the extreme point) that keeps the budgets reachable."""
        if self.fits(walk, prune, unify):
            return prune, unify
        ep, eu = self.extreme[walk.t]
        lo, hi = 0.0, 1.0  # invariant: lam = hi fits (the extreme point does, by reachability)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if self.fits(walk, prune + mid * (ep - prune), unify + mid * (eu - unify)):
                hi = mid
            else:
                lo = mid
        p = prune + hi * (ep - prune)
        u = min(unify + hi * (eu - unify), 1.0 - p)
        return float(p), float(max(u, 0.0))

    def step(self, walk: Walk, action: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
        """Decide layer ``walk.t`` for a raw action: ``(requested, applied)``; ``walk`` moves on to the next layer."""
        requested = self.map_action(action)
        applied = self.clip(walk, *requested)
        walk.requested.append(requested)
        walk.applied.append(applied)
        walk.spent_ms += self.layer_ms(walk.t, *applied)
        walk.spent_bits += self.layer_bits(walk.t, *applied)
        walk.t += 1
        return requested, applied

    def predicted_ms(self, actions: Mapping[str, tuple[float, float]]) -> float:
        """The latency model's whole-model prediction at the block counts ``actions`` apply."""
        index = {n: i for i, n in enumerate(self.layer_names)}
        return self.latency_model.predict({n: LayerAction(*self.applied_fractions(index[n], *a)) for n, a in actions.items()})
