"""An additive latency model: whole-model time = fixed part + sum of each compressible layer's time.

Each layer's time is a table over a grid of (prune, unify-of-the-rest) points, bilinearly interpolated
between them: row ``i`` prunes ``prune_grid[i]`` of the layer's weights, column ``j`` unifies
``unify_grid[j]`` of what is left, ``u = unify_grid[j] * (1 - prune_grid[i])``. On that grid every point is
a feasible policy (``p + u <= 1``) and the last column unifies everything left; a grid of absolute
``(p, u)`` had an infeasible triangle whose points only copied their row's last feasible one, so unify
above 0.9 read 0.9's time and the ``p = 0.9`` row ignored unification altogether.
:mod:`uniprune.compressors.latency.table` fills the tables by measuring the real kernels; the
:meth:`LatencyModel.proportional` stand-in (time proportional to the kept fraction) serves tests and
FLOPs-style baselines. The search environment only sees this interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.policy import LayerAction
from ..core.structure import BlockShape

#: Written into every serialised table; tables of another format are measured again.
LATENCY_FORMAT = "uniprune.latency/2"


@dataclass
class LatencyModel:
    """Per-layer latency tables in milliseconds.

    ``prune_grid``: ascending fractions of the weights pruned, in [0, 1], from 0. ``unify_grid``: ascending
    fractions *of the weights left after pruning* that are unified, in [0, 1], from 0.
    ``tables[name][i, j]``: ms of layer ``name`` at prune ``prune_grid[i]`` and unify
    ``unify_grid[j] * (1 - prune_grid[i])`` (:meth:`points` gives those fractions). ``fixed_ms``: everything
    outside the compressible layers.
    ``baseline_ms``: the uncompressed model's whole time, the denominator of every latency ratio; ``None``:
    ``fixed_ms`` plus every table's ``(0, 0)`` entry. Measured tables set it: their ``(0, 0)`` entries are
    layers run by the compressed model's runtime with nothing pruned, which need not take what the plain
    dense model takes.
    """

    prune_grid: np.ndarray
    unify_grid: np.ndarray
    tables: dict[str, np.ndarray]
    fixed_ms: float
    meta: dict[str, Any] | None = None
    baseline_ms: float | None = None
    shape_tables: dict[str, dict[str, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        self.prune_grid = np.asarray(self.prune_grid, dtype=np.float64)
        self.unify_grid = np.asarray(self.unify_grid, dtype=np.float64)
        for grid, name in ((self.prune_grid, "prune_grid"), (self.unify_grid, "unify_grid")):
            if grid.ndim != 1 or grid[0] != 0.0 or np.any(np.diff(grid) <= 0) or grid[-1] > 1.0:
                raise ValueError(f"{name} must ascend from 0 to at most 1, got {grid.tolist()}")
        shape = (len(self.prune_grid), len(self.unify_grid))
        self.tables = {k: np.asarray(v, dtype=np.float64) for k, v in self.tables.items()}
        for name, table in self.tables.items():
            if table.shape != shape:
                raise ValueError(f"table of layer {name!r} has shape {table.shape}, expected {shape}")
        self.shape_tables = {str(k): {n: np.asarray(t, dtype=np.float64) for n, t in v.items()}
                             for k, v in (self.shape_tables or {}).items()}
        for key, tables in self.shape_tables.items():
            for name, table in tables.items():
                if name not in self.tables or table.shape != shape:
                    raise ValueError(f"{key} table of layer {name!r}: not a layer of this model or not shaped {shape}")

    @property
    def shapes(self) -> list[str]:
        """The block shapes (``"8x4"``) a layer may be priced in besides the tables' own."""
        return sorted(self.shape_tables or {})

    def table(self, name: str, block: BlockShape | None = None) -> np.ndarray:
        """Layer ``name``'s table in ``block`` (``None``: the shape ``tables`` were measured in); KeyError for a
        shape this model has no table of."""
        if block is None:
            return self.tables[name]
        key = block.key
        own = (self.meta or {}).get("block_shapes") or {}
        if key in (self.shape_tables or {}) and name in self.shape_tables[key]:
            return self.shape_tables[key][name]
        if [block.out, block.inp] in own.values() or (self.meta or {}).get("kind") == "proportional":
            return self.tables[name]  # a proportional stand-in prices every shape alike
        raise KeyError(f"no latency table of layer {name!r} in block shape {key}; build the table with that shape")

    @property
    def layer_names(self) -> list[str]:
        return list(self.tables)

    @staticmethod
    def _locate(grid: np.ndarray, x: float) -> tuple[int, float]:
        x = float(np.clip(x, 0.0, grid[-1]))
        i = int(np.searchsorted(grid, x, side="right") - 1)
        i = min(max(i, 0), len(grid) - 2) if len(grid) > 1 else 0
        if len(grid) == 1:
            return 0, 0.0
        t = (x - grid[i]) / (grid[i + 1] - grid[i])
        return i, float(np.clip(t, 0.0, 1.0))

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """``(prune, unify)``: the fractions of the weights each table entry stands for, arrays shaped like a table."""
        p = np.repeat(self.prune_grid[:, None], len(self.unify_grid), axis=1)
        return p, self.unify_grid[None, :] * (1.0 - p)

    def layer_ms(self, name: str, prune: float, unify: float, block: BlockShape | None = None) -> float:
        """Interpolated time of layer ``name`` in ms at the given fractions of its weights (each in [0, 1],
        ``prune + unify <= 1``), in block shape ``block`` (``None``: the tables' own, see :meth:`table`)."""
        table = self.table(name, block)
        prune = float(np.clip(prune, 0.0, 1.0))
        rest = 1.0 - prune
        i, ti = self._locate(self.prune_grid, prune)
        j, tj = self._locate(self.unify_grid, float(unify) / rest if rest > 1e-12 else 0.0)
        i1 = min(i + 1, table.shape[0] - 1)
        j1 = min(j + 1, table.shape[1] - 1)
        top = table[i, j] * (1 - tj) + table[i, j1] * tj
        bottom = table[i1, j] * (1 - tj) + table[i1, j1] * tj
        return float(top * (1 - ti) + bottom * ti)

    def predict(self, actions: Mapping[str, LayerAction]) -> float:
        """Whole-model ms for a policy's actions; layers not named stay dense."""
        total = self.fixed_ms
        for name in self.tables:
            a = actions.get(name)
            total += self.layer_ms(name, a.prune, a.unify, a.block) if a is not None else self.tables[name][0, 0]
        return float(total)

    @property
    def dense_ms(self) -> float:
        """Whole-model ms of the uncompressed model (the denominator of latency ratios)."""
        if self.baseline_ms is not None:
            return float(self.baseline_ms)
        return float(self.fixed_ms + sum(t[0, 0] for t in self.tables.values()))

    def fastest_ms(self, name: str, max_prune: float = 1.0, max_unify: float = 1.0) -> float:
        """The least time of layer ``name`` over feasible grid points within the caps, in any block shape."""
        p, u = self.points()
        ok = (p <= max_prune + 1e-9) & (u <= max_unify + 1e-9)
        tables = [self.tables[name]] + [t[name] for t in (self.shape_tables or {}).values() if name in t]
        return float(min(t[ok].min() for t in tables))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LATENCY_FORMAT,
            "prune_grid": self.prune_grid.tolist(),
            "unify_grid": self.unify_grid.tolist(),
            "tables": {k: v.tolist() for k, v in self.tables.items()},
            "fixed_ms": self.fixed_ms,
            "baseline_ms": self.baseline_ms,
            "meta": self.meta or {},
            "shape_tables": {k: {n: t.tolist() for n, t in v.items()} for k, v in (self.shape_tables or {}).items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyModel:
        """The model :meth:`to_dict` wrote; ValueError for another format (an older table's columns meant
        absolute unify fractions)."""
        if data.get("format") != LATENCY_FORMAT:
            raise ValueError(f"not a {LATENCY_FORMAT} latency table (format {data.get('format')!r})")
        return cls(
            prune_grid=np.asarray(data["prune_grid"]),
            unify_grid=np.asarray(data["unify_grid"]),
            tables={k: np.asarray(v) for k, v in data["tables"].items()},
            fixed_ms=float(data["fixed_ms"]),
            baseline_ms=None if data.get("baseline_ms") is None else float(data["baseline_ms"]),
            meta=dict(data.get("meta") or {}),
            shape_tables={k: {n: np.asarray(t) for n, t in v.items()} for k, v in (data.get("shape_tables") or {}).items()},
        )

    @classmethod
    def proportional(
        cls,
        dense_layer_ms: Mapping[str, float],
        fixed_ms: float = 0.0,
        *,
        unify_saving: float = 0.0,
        grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
    ) -> LatencyModel:
        """A stand-in: a layer's time scales with its kept fraction ``1 - prune - unify_saving*unify``.

        ``dense_layer_ms``: each layer's dense time (ms, or MACs for a FLOPs proxy).
        ``unify_saving`` in [0, 1]: the share of a unified block's time saved (0: unify saves nothing).
        """
        g = np.asarray(grid, dtype=np.float64)
        p, q = np.meshgrid(g, g, indexing="ij")
        scale = np.clip(1.0 - p - unify_saving * q * (1.0 - p), 0.0, 1.0)  # exactly bilinear in (p, q)
        return cls(g, g, {n: ms * scale for n, ms in dense_layer_ms.items()}, float(fixed_ms), {"kind": "proportional"})
