"""Channel pruning through Torch-Pruning, and its pickle-free record (compressors/train/channel.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.train.channel import channel_prune, channel_record, reshape_like
from uniprune.search.models import build_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _plain_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_option_a_resnet_keeps_its_stream_and_halves_the_inner_convs() -> None:
    torch.manual_seed(0)
    model = build_model("cifar-resnet20")
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = channel_prune(model, 0.5, x)
    # the option-A shortcut pads the stream by a fixed count: only each block's inner conv can shrink
    assert report.scope == "chains"
    assert len(report.kept) == 9 and all(kept == before // 2 for kept, before in report.kept.values())
    assert all(name.endswith("conv1") and name != "conv1" for name in report.kept)
    assert 0.45 < report.mac_ratio < 0.56
    assert pruned(x).shape == (2, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched


def test_plain_cnn_prunes_the_coupled_group_by_l1_norm() -> None:
    torch.manual_seed(0)
    model = _plain_cnn()
    with torch.no_grad():
        model[0].weight[:4] *= 100.0  # the four largest filters by L1 norm must survive
    pruned, report = channel_prune(model, {"0": 0.75}, torch.randn(2, 3, 8, 8))
    assert report.scope == "groups" and report.kept == {"0": (4, 16)}
    assert torch.allclose(pruned[0].weight, model[0].weight[:4])
    assert pruned[1].num_features == 4 and pruned[3].in_channels == 4


def test_a_record_rebuilds_the_pruned_model_exactly() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    pruned, _ = channel_prune(build_model("cifar-resnet20"), 0.5, x)
    record = channel_record(pruned)
    assert record["layers"]["layer2.0.conv1"] == {"in": 16, "out": 16, "groups": 1}
    fresh = reshape_like(build_model("cifar-resnet20"), record)
    fresh.load_state_dict(pruned.state_dict())
    assert torch.allclose(fresh.eval()(x), pruned.eval()(x))


def test_bad_ratios_and_records_are_one_line_errors() -> None:
    model, x = _plain_cnn(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"fraction in \[0, 1\)"):
        channel_prune(model, 1.0, x)
    with pytest.raises(ConfigError, match="not convs of this model"):
        channel_prune(model, {"classifier": 0.5}, x)
    record = channel_record(model)
    with pytest.raises(ModelError, match="another model"):
        reshape_like(build_model("cifar-resnet20"), record)
    record["layers"]["0"]["out"] = 0
    with pytest.raises(ModelError, match="whole number"):
        reshape_like(_plain_cnn(), record)
    with pytest.raises(ModelError, match="format"):
        reshape_like(_plain_cnn(), {"layers": {}})
