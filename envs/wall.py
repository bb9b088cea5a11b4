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

With several block ``shapes`` a conv layer's action also picks its block shape: an action is then
``(prune, unify, "1x1")`` (a third raw component in [0, 1] picks among the shapes in order), each shape priced
by its own latency table (:meth:`LatencyModel.table <uniprune.compressors.latency.model.LatencyModel.table>`).
A layer's extreme point is its fastest over every shape. Clipping first keeps the requested shape (moving
towards that shape's own extreme point) and switches to the extreme point's shape only where the requested
one cannot meet the budget at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from uniprune.compressors.core.accounting import FLOAT_BITS, SIGN_BITS, SizeBudget
from uniprune.compressors.core.blocks import LayerSpec, layer_grid
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction
from uniprune.compressors.core.projection import BlockClasses
from uniprune.compressors.core.structure import BlockShape
from uniprune.compressors.latency.budget import LatencyBudget, latency_ratio
from uniprune.compressors.latency.model import LatencyModel

_EPS = 1e-9
_BISECTION_STEPS = 40
#: Grid points of one layer within this relative distance of its fastest count as equally fast (timing noise).
_EXTREME_NOISE = 0.02


#: One layer's decision: ``(prune, unify)``, or ``(prune, unify, shape key)`` where the search picks shapes.
Action = tuple


@dataclass(frozen=True)
class ShapeOption:
    """One block shape a layer may take: ``block`` None for the shape its latency table was measured in."""

    key: str
    block: BlockShape | None
    classes: BlockClasses
    blocks: int


@dataclass
class Walk:
    """One episode's progress through the wall: layers decided, and their predicted ms and bits."""

    t: int = 0
    spent_ms: float = 0.0
    spent_bits: float = 0.0
    applied: list[Action] = field(default_factory=list)
    requested: list[Action] = field(default_factory=list)


class Wall:
    """The budgets over the searched ``specs`` (in episode order).

    :param latency_model: per-layer tables naming every searched layer; its ``dense_ms`` is the baseline.
    :param budget: the latency budget. :param size_budget: the storage budget (None: no size wall).
    :param max_prune, max_unify: caps in [0, 1] on a layer's pruned and unified fractions of weights.
    :param dense_bits: the dense model's storage bits (accounting's ``dense_storage_bits``).
    :param shapes: block shapes a conv layer chooses among (more than one: the action picks; see the module
        docstring); the first must be the shape ``specs`` are tiled in.
    """

    def __init__(self, latency_model: LatencyModel, specs: Sequence[LayerSpec], budget: LatencyBudget, *,
                 size_budget: SizeBudget | None = None, max_prune: float = 0.8, max_unify: float = 1.0,
                 dense_bits: float, shapes: Sequence[BlockShape] = ()) -> None:
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
        self.shapes = [s.key for s in shapes] if len(shapes) > 1 else []
        self.options = [self._shape_options(spec, shapes) for spec in specs]
        self.dense_bits = float(dense_bits)
        self.fixed_bits = self.dense_bits - float(self._params.sum()) * FLOAT_BITS
        self._rebuild()

    @property
    def action_dims(self) -> int:
        """Raw action components per layer: prune and unify, and the block shape where the search picks it."""
        return 3 if self.shapes else 2

    def _shape_options(self, spec: LayerSpec, shapes: Sequence[BlockShape]) -> list[ShapeOption]:
        own = ShapeOption(spec.grid.block_shape.key, None, BlockClasses.of(spec.grid), spec.grid.num_blocks)
        if spec.kind != "conv" or len(shapes) < 2:
            return [own]
        if shapes[0] != spec.grid.block_shape:
            raise ConfigError(f"the first block shape searched ({shapes[0].key}) must be the one layer {spec.name!r} is "
                              f"tiled in ({spec.grid.block_shape.key})")
        out = [own]
        for shape in shapes[1:]:
            try:
                self.latency_model.table(spec.name, shape)
            except KeyError as exc:
                raise ConfigError(f"{exc.args[0]} (build the latency model with every searched shape)") from None
            grid = layer_grid(spec.module, {"conv": shape})
            out.append(ShapeOption(shape.key, shape, BlockClasses.of(grid), grid.num_blocks))
        return out

    def option(self, i: int, action: Action) -> int:
        """Index into layer ``i``'s shape options of ``action`` (its third element, a shape key; none: the first)."""
        if len(action) < 3 or action[2] is None:
            return 0
        for k, opt in enumerate(self.options[i]):
            if opt.key == action[2]:
                return k
        raise ConfigError(f"layer {self.layer_names[i]!r} cannot take block shape {action[2]!r}; it may take "
                          f"{[o.key for o in self.options[i]]}")

    def _opt(self, i: int, action: Action) -> ShapeOption:
        return self.options[i][self.option(i, action)]

    def _with_option(self, i: int, prune: float, unify: float, k: int) -> Action:
        return (prune, unify, self.options[i][k].key) if self.shapes else (prune, unify)

    def _rebuild(self) -> None:
        #: per layer and shape option, the point a later layer is assumed to go to; ``extreme``: the best of them
        self.shape_extremes = [[self._extreme_point(i, k) for k in range(len(o))] for i, o in enumerate(self.options)]
        self.extreme = [min(points, key=lambda a, i=i: self._extreme_cost(i, a)) for i, points in enumerate(self.shape_extremes)]
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

    def _extreme_cost(self, i: int, action: Action) -> tuple[float, float]:
        """What an extreme point is chosen by: bits first where there is a size budget, then ms."""
        bits = self.layer_bits(i, *action) if self.size_budget is not None else 0.0
        return bits, self.layer_ms(i, *action)

    def _extreme_point(self, i: int, k: int) -> Action:
        """Where a later layer is assumed to go in shape option ``k`` when checking reachability (see the module
        docstring)."""
        if self.size_budget is not None:
            return self._with_option(i, self.max_prune, min(self.max_unify, 1.0 - self.max_prune), k)
        lm = self.latency_model
        p, u = lm.points()
        ok = (p <= self.max_prune + _EPS) & (u <= self.max_unify + _EPS)
        table = np.where(ok, lm.table(self.layer_names[i], self.options[i][k].block), np.inf)
        # Among the points within timing noise of the fastest, the least unification, then the least pruning:
        # a plain argmin over noisy points picked unification for convs, where it buys no time, and so
        # assumed the later layers unified for nothing.
        near = np.argwhere(table <= float(table.min()) * (1 + _EXTREME_NOISE))
        a, b = min(near.tolist(), key=lambda ij: (u[ij[0], ij[1]], p[ij[0], ij[1]]))
        return self._with_option(i, float(p[a, b]), float(u[a, b]), k)

    def applied_fractions(self, i: int, prune: float, unify: float, shape: str | None = None) -> tuple[float, float]:
        """The fractions of layer ``i``'s weights the projection really prunes and unifies for a requested
        (prune, unify) in block shape ``shape`` (a key; None: the layer's own): whole blocks of each size, rounded
        as :class:`BlockClasses` rounds."""
        return self._opt(i, (prune, unify, shape)).classes.applied(prune, unify)

    def layer_ms(self, i: int, prune: float, unify: float, shape: str | None = None) -> float:
        """Predicted ms of layer ``i`` at the block counts a (prune, unify) request applies in ``shape``."""
        opt = self._opt(i, (prune, unify, shape))
        return self.latency_model.layer_ms(self.layer_names[i], *opt.classes.applied(prune, unify), opt.block)

    def layer_bits(self, i: int, prune: float, unify: float, shape: str | None = None) -> float:
        """Predicted storage bits of layer ``i`` at the block counts the fractions apply in ``shape``, the index
        counted as accounting counts it: ``ceil(log2(states used))`` bits per block."""
        opt = self._opt(i, (prune, unify, shape))
        classes = opt.classes
        pruned, unified = classes.applied(prune, unify)
        _, n_unified = classes.blocks(prune, unify)
        params, blocks = self._params[i], opt.blocks
        keep = max(1.0 - pruned - unified, 0.0)
        used = sum(f > _EPS for f in (keep, pruned, unified))
        index = math.ceil(math.log2(used)) * blocks if used > 1 else 0.0
        return float(params * (keep * FLOAT_BITS + unified * SIGN_BITS) + n_unified * FLOAT_BITS + index)

    def map_action(self, action: np.ndarray, i: int = 0) -> Action:
        """The requested action of layer ``i`` for a raw action in [0, 1]^2 (caps applied), or [0, 1]^3 where the
        search picks block shapes (the third component picks among layer ``i``'s shapes in order)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), 0.0, 1.0)
        prune = float(a[0]) * self.max_prune
        unify = max(min(float(a[1]) * self.max_unify, 1.0 - prune), 0.0)
        if not self.shapes:
            return prune, unify
        n = len(self.options[i])
        k = min(int(float(a[2]) * n), n - 1) if a.size > 2 else 0
        return prune, unify, self.options[i][k].key

    def raw_action(self, i: int, action: Action) -> np.ndarray:
        """A raw action that :meth:`map_action` maps to ``action`` (within the caps) for layer ``i``."""
        prune, unify = float(action[0]), float(action[1])
        raw = [prune / self.max_prune if self.max_prune > 0 else 0.0, unify / self.max_unify if self.max_unify > 0 else 0.0]
        if self.shapes:
            raw.append((self.option(i, action) + 0.5) / len(self.options[i]))
        return np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)

    def layer_action(self, i: int, action: Action) -> LayerAction:
        """``action`` of layer ``i`` as a policy's :class:`LayerAction` (requested fractions, the option's shape)."""
        return LayerAction(float(action[0]), float(action[1]), self._opt(i, action).block)

    def fits(self, walk: Walk, action: Action) -> bool:
        """Whether layer ``walk.t`` at ``action`` keeps every budget reachable."""
        t = walk.t
        ms = self.fixed_ms + walk.spent_ms + self.layer_ms(t, *action) + float(self._extreme_ms[t + 1:].sum())
        if not self.budget.met_by(ms, self.dense_ms):
            return False
        if self.size_budget is None:
            return True
        bits = self.fixed_bits + walk.spent_bits + self.layer_bits(t, *action) + float(self._extreme_bits[t + 1:].sum())
        return self.size_budget.met_by(bits, self.dense_bits)

    def clip(self, walk: Walk, action: Action) -> Action:
        """The action nearest the request that keeps the budgets reachable: on the segment to the requested shape's
        extreme point where that one fits, else to the layer's extreme point (which does, by reachability)."""
        if self.fits(walk, action):
            return action
        k = self.option(walk.t, action)
        target = self.shape_extremes[walk.t][k]
        if not self.fits(walk, target):
            target = self.extreme[walk.t]
        prune, unify = float(action[0]), float(action[1])
        ep, eu, rest = float(target[0]), float(target[1]), tuple(target[2:])
        lo, hi = 0.0, 1.0  # invariant: lam = hi fits (the target does)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if self.fits(walk, (prune + mid * (ep - prune), unify + mid * (eu - unify), *rest)):
                hi = mid
            else:
                lo = mid
        p = prune + hi * (ep - prune)
        u = min(unify + hi * (eu - unify), 1.0 - p)
        return (float(p), float(max(u, 0.0)), *rest)

    def step(self, walk: Walk, action: np.ndarray) -> tuple[Action, Action]:
        """Decide layer ``walk.t`` for a raw action: ``(requested, applied)``; ``walk`` moves on to the next layer."""
        requested = self.map_action(action, walk.t)
        applied = self.clip(walk, requested)
        walk.requested.append(requested)
        walk.applied.append(applied)
        walk.spent_ms += self.layer_ms(walk.t, *applied)
        walk.spent_bits += self.layer_bits(walk.t, *applied)
        walk.t += 1
        return requested, applied

    def predicted_ms(self, actions: Mapping[str, Action]) -> float:
        """The latency model's whole-model prediction at the block counts ``actions`` apply."""
        index = {n: i for i, n in enumerate(self.layer_names)}
        applied = {}
        for n, a in actions.items():
            opt = self._opt(index[n], a)
            applied[n] = LayerAction(*opt.classes.applied(float(a[0]), float(a[1])), opt.block)
        return self.latency_model.predict(applied)
