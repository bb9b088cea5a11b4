"""Latency tables for a search that picks each layer's block shape: one measured table per candidate shape.

:func:`build_shaped_latency_model` measures the model's table once per shape of ``kind`` layers (each table
through :func:`~.table.build_latency_model`, so each is cached on its own) and merges them into one
:class:`~.model.LatencyModel`: the first shape's tables are its ``tables`` (with its fixed part and baseline),
the others go into ``shape_tables``, so that ``predict`` prices a policy whose layers carry different ``block``
shapes by the table of each layer's own shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..core.blocks import LAYER_KINDS, compressible_layers
from ..core.errors import ConfigError
from ..core.structure import BlockShape
from .model import LatencyModel
from .table import build_latency_model

__all__ = ["build_shaped_latency_model"]


def build_shaped_latency_model(model: nn.Module, input_shape: tuple[int, int, int], shapes: Sequence[BlockShape], *,
                               kind: str = "conv", **options: Any) -> LatencyModel:
    """The latency tables of ``model`` with ``kind`` layers measured in each of ``shapes`` (at least one, no repeats).

    ``options`` go to :func:`~.table.build_latency_model` unchanged (batch, threads, grid, cache, precision, ...);
    ``block_shapes`` among them fixes the other kind's shape. The first shape is the tables' own; the merged
    model's ``meta["shapes"]`` lists every shape priced.
    """
    if kind not in LAYER_KINDS:
        raise ConfigError(f"unknown layer kind {kind!r}; use one of {list(LAYER_KINDS)}")
    shapes = list(shapes)
    if not shapes or len({s.key for s in shapes}) != len(shapes):
        raise ConfigError(f"block shapes to price must be one or more distinct shapes, got {[s.key for s in shapes]}")
    fixed = dict(options.pop("block_shapes", None) or {})
    names = [s.name for s in compressible_layers(model) if s.kind == kind]
    first = build_latency_model(model, input_shape, block_shapes={**fixed, kind: shapes[0]}, **options)
    extra = {}
    for shape in shapes[1:]:
        other = build_latency_model(model, input_shape, block_shapes={**fixed, kind: shape}, **options)
        extra[shape.key] = {n: other.tables[n] for n in names}
    meta = dict(first.meta or {}, shapes=[s.key for s in shapes], shape_kind=kind)
    return dataclasses.replace(first, shape_tables=extra, meta=meta)
