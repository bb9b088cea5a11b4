"""Parameter, storage, MAC and multiplication accounting against hand-computed figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from uniprune.compressors.core.accounting import layer_profile, model_size
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.structure import KEEP, PRUNE, UNIFY, BlockShape, LayerStructure, block_grid


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16),
    )


def test_layer_profile_shapes_and_macs() -> None:
    profile = layer_profile(_cnn(), (3, 8, 8))
    assert list(profile) == ["0", "2", "6"]
    assert profile["0"]["macs"] == 8 * 3 * 9 * 64
    assert profile["2"]["in_hw"] == [8, 8] and profile["2"]["out_hw"] == [4, 4] and profile["2"]["stride"] == [2, 2]
    assert profile["2"]["macs"] == 16 * 8 * 9 * 16
    assert profile["6"] == {**profile["6"], "kind": "linear", "in_channels": 16, "out_channels": 16, "positions": 1, "macs": 256}
    with pytest.raises(ConfigError):
        layer_profile(_cnn(), (3, 8))  # type: ignore[arg-type]


def test_model_size_hand_computed() -> None:
    model = _cnn()
    grid = block_grid((16, 16), BlockShape(8, 8))  # 2 x 2 blocks of 64 weights
    states = torch.tensor([[KEEP, UNIFY], [PRUNE, KEEP]])
    structure = LayerStructure(grid=grid, states=states, magnitudes=torch.tensor([[0.0, 0.5], [0.0, 0.0]]))
    with torch.no_grad():
        model[6].weight.copy_(torch.randn(16, 16) + 5.0)  # no zeros, so nonzeros == params for the dense view
        model[6].weight[8:, :8] = 0.0
    size = model_size(model, {"6": structure}, input_shape=(3, 8, 8))
    fc = size["layers"]["6"]
    # 2 kept blocks x 64 x 32 bits + unified block (32-bit magnitude + 64 sign bits) + 2-bit index x 4 blocks
    assert fc["storage_bits"] == 2 * 64 * 32 + 32 + 64 + 2 * 4
    assert fc["dense_storage_bits"] == 256 * 32
    assert fc["macs"] == 192 and fc["dense_macs"] == 256
    assert fc["mults"] == 128 + 8  # a unified block: one multiply per output channel of the block
    assert fc["nonzeros"] == 192
    conv_params = 8 * 3 * 9 + 16 * 8 * 9
    total = size["total"]
    assert total["params"] == conv_params + 256 + 16
    assert total["storage_bits"] == conv_params * 32 + fc["storage_bits"] + 16 * 32
    assert total["dense_storage_bits"] == (conv_params + 256 + 16) * 32
    assert total["size_ratio"] == pytest.approx(total["storage_bits"] / total["dense_storage_bits"])
    dense_macs = 8 * 3 * 9 * 64 + 16 * 8 * 9 * 16 + 256
    assert total["dense_macs"] == dense_macs and total["macs"] == dense_macs - 64
    assert total["mac_ratio"] == pytest.approx((dense_macs - 64) / dense_macs)


def test_index_bits_follow_states_used() -> None:
    model = _cnn()
    grid = block_grid((16, 16), BlockShape(8, 8))
    keep_prune = LayerStructure(grid=grid, states=torch.tensor([[KEEP, PRUNE], [PRUNE, KEEP]]))
    all_keep = LayerStructure(grid=grid, states=torch.zeros(2, 2, dtype=torch.int8))
    assert model_size(model, {"6": keep_prune})["layers"]["6"]["storage_bits"] == 2 * 64 * 32 + 4
    assert model_size(model, {"6": all_keep})["layers"]["6"]["storage_bits"] == 256 * 32
    assert model_size(model)["total"]["macs"] is None  # no input shape, no MAC figures
