"""Baselines: magnitude masks, L1 filter removal (exact when the removed filters are dead), uniform, AGP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.core.policy import LayerAction
from uniprune.compressors.core.projection import BlockClasses, structure_error
from uniprune.compressors.train import agp
from uniprune.compressors.train.agp import AgpConfig, agp_fraction
from uniprune.compressors.train.baselines import (
    filter_chains,
    l1_filter_prune,
    magnitude_masks,
    magnitude_prune,
    uniform_policy,
)
from uniprune.compressors.train.finetune import finetune
from uniprune.compressors.train.retrain import retrain
from uniprune.compressors.train.training import evaluate


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
    result = finetune(model, policy, lambda e: data, lambda m: evaluate(m, data[:1]),
                          AgpConfig(ramp_epochs=3, retrain_epochs=1, progress=False), log=lambda k, v, s: logged.append((k, v, s)))
    fractions = [v for k, v, _ in logged if k == "agp/fraction"]
    # 3 batches an epoch: 3 pruning steps an epoch (at most one per batch), 9 over the ramp
    assert fractions == pytest.approx([agp_fraction(k, 9) for k in range(1, 10)])
    assert result["epochs"] == 4 and len(result["retrain_history"]) == 4
    for name, structure in result["structures"].items():
        action = policy.action(name)
        n_p, n_u = BlockClasses.of(structure.grid).blocks(action.prune, action.unify)
        assert structure.counts()["prune"] == n_p and structure.counts()["unify"] == n_u
        err = structure_error(model.get_submodule(name).weight, structure)
        assert err["pruned_max_abs"] == 0.0 and err["unified_spread"] <= 1e-6


def _agp_data(batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(batches)]


def test_agp_default_ramp_is_gradual() -> None:
    torch.manual_seed(0)
    model = _ResNet()
    data = _agp_data(20)
    policy = uniform_policy(model, 0.5, 0.25)
    logged: list[tuple[str, float, int]] = []
    # a generator has no len(): the AGP strategy counts the batches by an extra pass
    result = finetune(model, policy, lambda e: iter(data), lambda m: evaluate(m, data[:1]),
                          AgpConfig(retrain_epochs=0, progress=False), log=lambda k, v, s: logged.append((k, v, s)))
    steps = [(s, v) for k, v, s in logged if k == "agp/fraction"]
    fractions = [v for _, v in steps]
    defaults = AgpConfig()
    n = defaults.ramp_epochs * defaults.prune_steps
    assert defaults.prune_steps >= 10 and len(fractions) == n
    assert [s for s, _ in steps] == list(range(1, n + 1))
    assert fractions == pytest.approx([agp_fraction(k, n) for k in range(1, n + 1)])
    assert fractions[0] < 0.3 and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:])) and len(set(fractions)) == n
    assert [k for k, _, _ in logged].count("agp/loss") == defaults.ramp_epochs == len(result["retrain_history"])


def test_agp_keeps_one_optimizer_and_its_momentum(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _ResNet()
    data = _agp_data(4)
    made: list[torch.optim.Optimizer] = []
    rebinds: list[dict[str, object]] = []
    make_optimizer = agp.make_optimizer
    rebind_optimizer = agp.rebind_optimizer

    def counting_make_optimizer(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(make_optimizer(*args, **kwargs))
        return made[-1]

    def checked_rebind(model_, optimizer, velocities):  # type: ignore[no-untyped-def]
        live = {id(p) for p in model_.parameters()}
        moving = [p for g in optimizer.param_groups for p in g["params"] if id(p) in live and "momentum_buffer" in optimizer.state[p]]
        rebind_optimizer(model_, optimizer, velocities)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        rebinds.append({
            "optimizer": optimizer,
            "covers_model": {id(p) for p in params} == live and len(params) == len(live),
            "kept": bool(moving) and all("momentum_buffer" in optimizer.state[p] for p in moving),
            "all_have_momentum": all("momentum_buffer" in optimizer.state[p] for p in params),
            "magnitudes": sum(1 for n, _ in model_.named_parameters() if n.endswith("magnitude")),
        })

    monkeypatch.setattr(agp, "make_optimizer", counting_make_optimizer)
    monkeypatch.setattr(agp, "rebind_optimizer", checked_rebind)
    finetune(model, uniform_policy(model, 0.5, 0.25), lambda e: data, lambda m: evaluate(m, data[:1]),
                 AgpConfig(ramp_epochs=2, retrain_epochs=1, prune_steps=2, progress=False))
    assert len(made) == 1
    # 2 x 2 pruning steps, the first before the optimizer exists, then the final projection
    assert len(rebinds) == 4 and all(r["optimizer"] is made[0] for r in rebinds)
    assert all(r["covers_model"] and r["kept"] and r["all_have_momentum"] for r in rebinds)
    assert rebinds[-1]["magnitudes"] > 0  # unified blocks brought new parameters, and the optimizer took them in


@pytest.mark.parametrize("options", [{"prune_steps": 0}, {"prune_steps": 2.5}, {"prune_steps": True}, {"ramp_epochs": 0},
                                     {"retrain_epochs": -1}, {"lr": 0.0}, {"momentum": 1.0}, {"weight_decay": -1e-4}])
def test_agp_config_refuses_bad_values(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        AgpConfig(**options)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and next(iter(options)) in message


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
