"""Baselines: magnitude masks, L1 filter removal (exact when the removed filters are dead), uniform, AGP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from uniprune.compressors.admm import retrain
from uniprune.compressors.baselines import (
    AgpConfig,
    agp_finetune,
    agp_fraction,
    filter_chains,
    l1_filter_prune,
    magnitude_masks,
    magnitude_prune,
    uniform_policy,
)
from uniprune.compressors.errors import ConfigError, ModelError
from uniprune.compressors.policy import LayerAction
from uniprune.compressors.projection import block_counts, structure_error
from uniprune.compressors.training import evaluate


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = _Block(8)
        self.block2 = _Block(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(F.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def test_magnitude_masks_layer_and_global() -> None:
    model = _chain()
    masks = magnitude_masks(model, 0.75)
    for name, mask in masks.items():
        w = model.get_submodule(name).weight.detach()
        n_zero = int((mask == 0).sum())
        assert n_zero == int(0.75 * w.numel() + 0.5)
        assert float(w.abs()[mask == 1].min()) >= float(w.abs()[mask == 0].max())
    glob = magnitude_masks(model, 0.5, scope="global")
    zeros = sum(int((m == 0).sum()) for m in glob.values())
    total = sum(m.numel() for m in glob.values())
    assert abs(zeros - total // 2) <= 1
    magnitude_prune(model, {"0": 0.5})
    assert int((model[0].weight == 0).sum()) == 108
    with pytest.raises(ConfigError):
        magnitude_masks(model, 1.5)
    with pytest.raises(ConfigError):
        magnitude_masks(model, {"nope": 0.5})


def test_l1_filter_prune_removes_dead_filters_exactly() -> None:
    model = _chain()
    with torch.no_grad():
        model[0].weight[[1, 4, 6]] = 0.0  # dead filters: smallest L1, and removing them changes nothing
        model[2].weight[[0, 5, 9, 11]] *= 1e-3
    x = torch.randn(4, 3, 8, 8)
    before = model(x)
    chains = filter_chains(model)
    assert [(c.conv, c.consumer, c.flattened) for c in chains] == [("0", "2", False), ("2", "5", True)]
    report = l1_filter_prune(model, {"0": 3 / 8})
    assert report == {"0": {"kept": 5, "removed": 3, "consumer": "2"}}
    assert model[0].out_channels == 5 and model[2].in_channels == 5
    assert torch.allclose(model(x), before, atol=1e-6)
    l1_filter_prune(model, {"2": 0.25})
    assert model[2].out_channels == 12 and model[5].in_features == 12 * 16
    assert model(x).shape == (4, 10)


def test_l1_filter_prune_residual_net_only_inner_convs() -> None:
    model = _ResNet()
    assert [(c.conv, c.norms, c.consumer) for c in filter_chains(model)] == [
        ("block1.conv1", ("block1.bn1",), "block1.conv2"),
        ("block2.conv1", ("block2.bn1",), "block2.conv2"),
    ]
    l1_filter_prune(model, 0.5)
    assert model.block1.conv1.out_channels == 4 and model.block1.bn1.num_features == 4 and model.block1.conv2.in_channels == 4
    assert model.block1.conv2.out_channels == 8  # feeds the addition: untouched
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_uniform_policy() -> None:
    model = _ResNet()
    policy = uniform_policy(model, 0.5, 0.25, skip=["conv"], overrides={"fc": LayerAction(0.1, 0.0)}, model_name="toy")
    assert "conv" not in policy.layers and len(policy.layers) == 5
    assert policy.layers["block1.conv1"] == LayerAction(0.5, 0.25) and policy.layers["fc"] == LayerAction(0.1, 0.0)
    assert policy.block_shape["conv"] == (8, 4) and policy.model == "toy"
    with pytest.raises(ConfigError):
        uniform_policy(model, 0.5, overrides={"nope": LayerAction(0.1)})


def test_agp_fraction_schedule() -> None:
    values = [agp_fraction(t, 10, final=0.8) for t in range(11)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert agp_fraction(5, 10) == pytest.approx(1 - 0.5**3)
    assert agp_fraction(20, 10) == pytest.approx(1.0)


def test_agp_finetune_reaches_the_policy() -> None:
    torch.manual_seed(0)
    model = _ResNet()
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(3)]
    policy = uniform_policy(model, 0.5, 0.25)
    logged: list[tuple[str, float, int]] = []
    result = agp_finetune(model, policy, lambda e: data, lambda m: evaluate(m, data[:1]),
                          AgpConfig(ramp_epochs=3, retrain_epochs=1, progress=False), log=lambda k, v, s: logged.append((k, v, s)))
    fractions = [v for k, v, _ in logged if k == "agp/fraction"]
    assert fractions == pytest.approx([1 - (2 / 3) ** 3, 1 - (1 / 3) ** 3, 1.0])
    assert result["epochs"] == 4 and len(result["retrain_history"]) == 4
    for name, structure in result["structures"].items():
        action = policy.action(name)
        n_p, n_u = block_counts(structure.grid.num_blocks, action.prune, action.unify)
        assert structure.counts()["prune"] == n_p and structure.counts()["unify"] == n_u
        err = structure_error(model.get_submodule(name).weight, structure)
        assert err["pruned_max_abs"] == 0.0 and err["unified_spread"] <= 1e-6


def test_untraceable_model_is_a_model_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ModelError, match="FX-traceable"):
        l1_filter_prune(Branchy(), 0.5)


def test_magnitude_masks_hold_through_retraining() -> None:
    model = _chain()
    masks = magnitude_prune(model, 0.6)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)]
    before = model[5].weight.detach().clone()
    _, history = retrain(model, {}, lambda e: data, lambda m: evaluate(m, data), epochs=2, lr=0.05, masks=masks, progress=False)
    assert len(history) == 2
    for name, mask in masks.items():
        w = model.get_submodule(name).weight.detach()
        assert bool((w[mask == 0] == 0).all()) and int((w != 0).sum()) <= int(mask.sum())
    assert not torch.equal(model[5].weight.detach(), before)  # the kept weights did train
