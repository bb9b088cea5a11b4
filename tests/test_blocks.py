"""Which layers are compressible and how they are tiled (compressors/core/blocks.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from uniprune.compressors.core.blocks import (
    DEFAULT_BLOCK_SHAPES,
    compressible_layers,
    layer_kind,
    resolve_block_shapes,
)
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.structure import BlockShape


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # 0: stem, fewer inputs than one block is wide
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # 2: depthwise, skipped
        nn.Conv2d(16, 24, 1, groups=2),  # 3: grouped
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),  # 6
    )


def test_kinds_order_and_depthwise_skipped() -> None:
    specs = compressible_layers(_net())
    assert [s.name for s in specs] == ["0", "3", "6"]
    assert [s.kind for s in specs] == ["conv", "conv", "linear"]
    assert layer_kind(nn.Conv2d(8, 8, 3, groups=8)) is None
    assert layer_kind(nn.Conv2d(8, 8, 3, groups=2)) == "conv"


def test_grids_default_shapes_and_edge_blocks() -> None:
    stem, grouped, fc = compressible_layers(_net())
    conv_shape = DEFAULT_BLOCK_SHAPES["conv"]
    assert stem.grid.block_shape == conv_shape
    # 16 outputs / 8 = 2 block rows; 3 inputs < 4 -> one edge block column of 3 channels x 3x3 window
    assert (stem.grid.n_out, stem.grid.n_in) == (2, 1)
    assert stem.grid.block_sizes().tolist() == [[8 * 3 * 9], [8 * 3 * 9]]
    # grouped: 12 outputs per group -> blocks of 8 and 4 per group, never straddling the groups
    assert (grouped.grid.n_out, grouped.grid.n_in) == (4, 2)
    rows = grouped.grid.out_index
    assert set(rows[:12].tolist()).isdisjoint(set(rows[12:].tolist()))
    assert torch.bincount(rows).tolist() == [8, 4, 8, 4]
    # linear 10x24 with 8x8: 2 x 3 blocks, last row an edge block of 2 outputs
    assert (fc.grid.n_out, fc.grid.n_in) == (2, 3)
    assert fc.grid.block_sizes()[1].tolist() == [16.0, 16.0, 16.0]
    assert float(fc.grid.block_sizes().sum()) == 240


def test_layer_smaller_than_a_block_is_one_block() -> None:
    (spec,) = compressible_layers(nn.Sequential(nn.Linear(3, 5)))
    assert spec.grid.num_blocks == 1
    assert spec.grid.block_sizes().tolist() == [[15.0]]


def test_block_shape_overrides_and_skip() -> None:
    shapes = resolve_block_shapes({"conv": [4, 2]})
    assert shapes["conv"] == BlockShape(4, 2) and shapes["linear"] == DEFAULT_BLOCK_SHAPES["linear"]
    specs = compressible_layers(_net(), shapes, skip=["6"])
    assert [s.name for s in specs] == ["0", "3"]
    assert (specs[0].grid.n_out, specs[0].grid.n_in) == (4, 2)


@pytest.mark.parametrize("bad", [{"conv": [0, 4]}, {"conv": [8]}, {"conv": "8x4"}, {"attention": [8, 8]}, {"linear": [8, True]}])
def test_bad_block_shapes_raise_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError):
        resolve_block_shapes(bad)
