"""ADMM drives the weights towards the structure (residual falls, projection loses less) and ends valid."""

from __future__ import annotations

import copy

import pytest
import torch
from blobs import POLICY, train_batches, trained_cnn, val_accuracy
from torch import nn
from uniprune.compressors.core.errors import ConfigError, PolicyError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import BlockClasses, project_model, structure_error
from uniprune.compressors.train.distributed import shard_batches
from uniprune.compressors.train.finetune import AdmmConfig, finetune


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    return trained_cnn(3)


def _check_structures(model: nn.Module, structures: dict) -> None:
    for name, structure in structures.items():
        action = POLICY.action(name)
        n_p, n_u = BlockClasses.of(structure.grid).blocks(action.prune, action.unify)
        assert structure.counts()["prune"] == n_p and structure.counts()["unify"] == n_u
        err = structure_error(model.get_submodule(name).weight, structure)
        assert err["pruned_max_abs"] == 0.0 and err["unified_spread"] <= 1e-6


def test_admm_converges_and_beats_plain_projection(dense: nn.Module) -> None:
    projected = copy.deepcopy(dense)
    project_model(projected, POLICY)
    plain = val_accuracy(projected)
    model = copy.deepcopy(dense)
    logged: list[tuple[str, float, int]] = []
    config = AdmmConfig(iterations=3, rho=2.0, rho_growth=3.0, retrain_epochs=1, progress=False)
    result = finetune(model, POLICY, train_batches, val_accuracy, config, log=lambda k, v, s: logged.append((k, v, s)))
    residuals = [h["residual"] for h in result["admm_history"]]
    assert len(residuals) == 3 and residuals[-1] < 0.6 * residuals[0] and residuals[-1] < 0.3
    assert [h["rho"] for h in result["admm_history"]] == pytest.approx([2.0, 6.0, 18.0])
    # ADMM moved the weights close to the structure: the hard projection loses much less than on the dense model
    assert result["projected_accuracy"] > plain + 0.05
    assert result["accuracy"] > plain + 0.1 and result["epochs"] == 4
    assert {"admm/loss", "admm/val_accuracy", "admm/residual", "admm/rho"} <= {k for k, _, _ in logged}
    _check_structures(model, result["structures"])
    assert all("parametrizations" not in k for k in model.state_dict())


def test_masked_path_shares_retraining(dense: nn.Module) -> None:
    model = copy.deepcopy(dense)
    result = finetune(model, POLICY, train_batches, val_accuracy, AdmmConfig(method="masked", retrain_epochs=2, progress=False))
    assert result["admm_history"] == [] and len(result["retrain_history"]) == 2 and result["epochs"] == 2
    projected = copy.deepcopy(dense)
    project_model(projected, POLICY)
    assert result["accuracy"] > val_accuracy(projected)  # retraining recovered some of what projection lost
    _check_structures(model, result["structures"])


def test_bad_config_and_policy(dense: nn.Module) -> None:
    for bad in ({"rho": 0.0}, {"rho_growth": 0.5}, {"iterations": 0}, {"method": "sgd"}, {"lr": -1.0}, {"retrain_epochs": -1}, {"schedule": "step"}):
        with pytest.raises(ConfigError):
            AdmmConfig(**bad)
    with pytest.raises(PolicyError):
        finetune(copy.deepcopy(dense), Policy(layers={"missing": LayerAction(0.5)}), train_batches, val_accuracy, AdmmConfig(progress=False))


def test_shard_batches_split_evenly() -> None:
    batches = list(range(7))
    shards = [list(shard_batches(batches, r, 3)) for r in range(3)]
    assert shards == [[0, 3], [1, 4], [2, 5]]  # the incomplete last round (6) is dropped
    assert list(shard_batches(batches, 0, 1)) == batches


@pytest.mark.parametrize("stop", [1, 3, 5])  # inside an ADMM iteration, at an iteration's end, in the retraining
def test_resuming_from_any_epoch_ends_where_an_unbroken_run_ends(dense: nn.Module, stop: int) -> None:
    import io

    config = AdmmConfig(iterations=2, epochs_per_iteration=2, rho=1.0, retrain_epochs=2, progress=False)
    states: list[dict] = []

    def keep(state: dict) -> None:  # as finetune keeps it: through torch.save and a weights-only load
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        states.append(torch.load(buf, weights_only=True))

    unbroken = copy.deepcopy(dense)
    full = finetune(unbroken, POLICY, train_batches, val_accuracy, config, checkpoint=keep)
    assert len(states) == 6 and [s["phase"] for s in states] == ["admm"] * 4 + ["retrain"] * 2
    resumed = copy.deepcopy(dense)  # a new process starts from the dense model again
    again = finetune(resumed, POLICY, train_batches, val_accuracy, config, resume=states[stop - 1])
    for (name, a), b in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert [h["residual"] for h in again["admm_history"]] == pytest.approx([h["residual"] for h in full["admm_history"]])
    assert [h["val_accuracy"] for h in again["retrain_history"]] == pytest.approx(
        [h["val_accuracy"] for h in full["retrain_history"]])


def test_retraining_ends_with_its_best_epoch(dense: nn.Module) -> None:
    scores = iter([0.5, 0.2, 0.9, 0.7])  # right after the projection, then after each retraining epoch
    states: list[dict] = []
    model = copy.deepcopy(dense)
    result = finetune(model, POLICY, train_batches, lambda m: next(scores), AdmmConfig(method="masked", retrain_epochs=3, progress=False),
                      checkpoint=lambda s: states.append(copy.deepcopy(s)))
    assert result["accuracy"] == 0.9 and result["projected_accuracy"] == 0.5
    assert [r.get("best", False) for r in result["retrain_history"]] == [False, True, False]
    # the weights are those saved after the second epoch, not the third's
    assert states[1]["best"]["index"] == 1
    second, third = states[1]["model"], states[2]["model"]
    moved = [k for k in second if not torch.equal(second[k], third[k]) and k.endswith("weight")]
    assert moved  # the third epoch did change the weights
    _check_structures(model, result["structures"])
    kept = dict(model.named_parameters())
    for name in ("0.bias", "4.weight"):  # parameters outside the projected layers are saved as they are
        assert torch.equal(kept[name].detach(), second[name]), name


def test_run_schedule_is_one_cosine_over_admm_and_retraining(dense: nn.Module) -> None:
    import math

    states: list[dict] = []
    config = AdmmConfig(iterations=2, rho=0.5, retrain_epochs=2, lr=0.02, schedule="run", progress=False)
    finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config, checkpoint=lambda s: states.append(copy.deepcopy(s)))
    lrs = [s["optimizer"]["param_groups"][0]["lr"] for s in states]

    def cosine(e: int) -> float:
        return 0.02 * 0.5 * (1 + math.cos(math.pi * e / 4))

    # an ADMM epoch trains at the curve's value of its own epoch; a retraining state holds the next epoch's lr
    assert lrs == pytest.approx([cosine(0), cosine(1), cosine(3), cosine(4)])
    with pytest.raises(ConfigError, match="retrain_lr unset"):
        AdmmConfig(schedule="run", retrain_lr=0.1)
