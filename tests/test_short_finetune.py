"""The short-fine-tune reward's training: it keeps the structure exactly and lowers the training loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import project_model, structure_error
from uniprune.compressors.train.short import short_finetune


def _data(n: int = 256, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(dim=1) > 0).long() + 2 * (x[:, 4:8].sum(dim=1) > 0).long()
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def _loss(model: nn.Module, batches) -> float:
    with torch.no_grad():
        return float(sum(nn.functional.cross_entropy(model(x), y) for x, y in batches) / len(batches))


def test_short_finetune_keeps_the_structure_and_learns() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    policy = Policy(layers={"0": LayerAction(0.5, 0.25), "2": LayerAction(0.25, 0.25)}, block_shape={"linear": (2, 2)})
    structures = project_model(model, policy)
    batches = _data()
    before = _loss(model, batches)
    trained = short_finetune(model, structures, batches, 60, lr=0.05)
    assert _loss(model, batches) < before
    for name in ("0", "2"):
        error = structure_error(model.get_submodule(name).weight.detach(), trained[name])
        assert error["pruned_max_abs"] == 0.0 and error["unified_spread"] < 1e-6
        assert torch.equal(trained[name].states, structures[name].states)


@pytest.mark.parametrize("steps", [-1, 1.5, True, 10**6])
def test_bad_reward_steps_are_one_config_error(steps: object) -> None:
    model = nn.Sequential(nn.Linear(16, 4))
    structures = project_model(model, Policy(layers={"0": LayerAction(0.5, 0.0)}, block_shape={"linear": (2, 2)}))
    with pytest.raises(ConfigError, match="reward steps"):
        short_finetune(model, structures, _data(), steps)  # type: ignore[arg-type]
