"""The fine-tuning driver's shared features: a time budget, distillation by default, convergence diagnostics, and
channel pruning as a method with its checkpoint (compressors/train/{finetune,timebudget,diagnostics,channel_strategy})."""

from __future__ import annotations

import copy
import io
import time

import pytest
import torch
from blobs import CLASSES, POLICY, VAL, small_cnn, train_batches, trained_cnn, val_accuracy
from torch import nn
from uniprune.compressors.core.errors import CheckpointError, ConfigError
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.formats.channel_checkpoint import (
    checkpoint_format,
    load_channel_pruned,
    save_channel_pruned,
)
from uniprune.compressors.train.channel import rebuild
from uniprune.compressors.train.channel_strategy import prune_to_ratio
from uniprune.compressors.train.diagnostics import convergence_warnings
from uniprune.compressors.train.finetune import (
    AdmmConfig,
    AgpConfig,
    ChannelConfig,
    Distillation,
    TimeBudget,
    finetune,
)
from uniprune.compressors.train.timebudget import EpochCost, plan_epochs

pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.fixture(scope="module")
def dense() -> nn.Module:
    return trained_cnn(4)


class _Slow:
    """An epoch's batches, each taking ``delay()`` seconds to arrive (a machine of known, changeable speed)."""

    def __init__(self, epoch: int, delay) -> None:
        self.batches, self.delay = train_batches(epoch), delay

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            time.sleep(self.delay())
            yield batch


def test_a_time_budget_plans_the_epochs_and_the_run_ends_within_it(dense: nn.Module) -> None:
    started = time.monotonic()
    result = finetune(copy.deepcopy(dense), POLICY, lambda e: _Slow(e, lambda: 0.03), val_accuracy,
                      AdmmConfig(progress=False), time_budget=TimeBudget(0.06))  # 3.6 s; an epoch of 8 batches ~0.25 s
    took = time.monotonic() - started
    budget = result["time_budget"]
    assert took <= 3.6 + 0.5 and budget["met"]
    # a busy machine may cost the last planned epoch (the deadline refuses it), never more
    assert budget["planned_epochs"] == result["epochs"] >= 4 and result["epochs_run"] >= result["epochs"] - 1
    # planned as one cosine over the whole run: one ADMM iteration per epoch, a third of the epochs retraining
    assert result["config"]["schedule"] == "run" and result["config"]["epochs_per_iteration"] == 1
    assert result["config"]["retrain_epochs"] == max(1, round(result["epochs"] / 3))
    assert result["epochs"] * budget["epoch_seconds"] <= 3.6


def test_a_machine_that_slows_down_is_stopped_before_the_budget_ends(dense: nn.Module) -> None:
    calls = {"n": 0}

    def delay() -> float:  # the probe and the first epochs see 0.04 s per batch, then the machine gets 4x slower
        calls["n"] += 1
        return 0.04 if calls["n"] <= 40 else 0.16

    started = time.monotonic()
    result = finetune(copy.deepcopy(dense), POLICY, lambda e: _Slow(e, delay), val_accuracy,
                      AdmmConfig(method="masked", progress=False), time_budget=TimeBudget(0.1))
    took = time.monotonic() - started
    assert result["time_budget"]["stopped_early"] and result["epochs_run"] < result["epochs"]
    # the epoch in progress when the machine slowed may run past the plan's pace, but no epoch starts that cannot end
    assert took <= 6.0 + 1.5
    assert any("--time-budget" in w for w in convergence_warnings(result))


def test_a_budget_too_small_and_bad_budgets_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"fits 0\.4 epoch\(s\) of 105 s here, fewer than the 2 .* at least 4"):
        plan_epochs(TimeBudget(1), EpochCost(100, 1.0, 5.0), spent=0.0, least=2)
    assert plan_epochs(TimeBudget(10, max_epochs=3), EpochCost(10, 1.0, 1.0), spent=0.0, least=1) == 3
    for bad in (-1, 0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ConfigError, match="positive number of minutes"):
            TimeBudget(bad)
    with pytest.raises(ConfigError, match="at least 2 epochs"):
        AdmmConfig().with_epochs(1)


def test_a_budgeted_run_resumes_with_its_plan_and_the_time_it_had_spent(dense: nn.Module) -> None:
    states: list[dict] = []

    def keep(state: dict) -> None:  # as the CLI keeps it: through torch.save and a weights-only load
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        states.append(torch.load(buf, weights_only=True))

    config = AdmmConfig(method="masked", progress=False)
    full = finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config, time_budget=TimeBudget(2.0, max_epochs=4), checkpoint=keep)
    planned = full["epochs"]
    assert planned == 4
    assert len(states) == planned and all(s["budget"]["epochs"] == planned for s in states)
    assert states[1]["budget"]["spent"] > states[0]["budget"]["spent"] > 0
    again = finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config, time_budget=TimeBudget(2.0, max_epochs=4), resume=states[1])
    assert again["epochs"] == planned and again["epochs_run"] == planned  # nothing re-planned, nothing lost
    assert len(again["retrain_history"]) == planned


def test_distillation_is_on_when_the_teacher_is_given(dense: nn.Module) -> None:
    config = AdmmConfig(method="masked", retrain_epochs=1, progress=False)
    model = copy.deepcopy(dense)
    on = finetune(model, POLICY, train_batches, val_accuracy, config, teacher=model)  # the student itself: copied first
    assert on["distill"] == {"temperature": 4.0, "weight": 0.7}
    off = finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config, teacher=dense, distill=False)
    assert off["distill"] is None
    assert finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config)["distill"] is None  # no teacher
    set_ = finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config, teacher=dense,
                    distill=Distillation(temperature=2.0, weight=0.5))
    assert set_["distill"] == {"temperature": 2.0, "weight": 0.5}
    with pytest.raises(ConfigError, match="needs the dense teacher"):
        finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config, distill=True)


@pytest.mark.parametrize("config", [AdmmConfig(method="masked", retrain_epochs=2, lr=0.05, progress=False),
                                    AgpConfig(ramp_epochs=1, retrain_epochs=1, lr=0.05, progress=False),
                                    ChannelConfig(target=0.5, epochs=2, lr=0.05, progress=False)],
                         ids=["masked", "agp", "channel"])
def test_every_method_learns_from_the_teacher(dense: nn.Module, config) -> None:
    """Every label wrong (class 0): what the student keeps beyond chance comes from the teacher's logits alone."""
    def noise(epoch: int) -> list:
        return [(x, torch.zeros_like(y)) for x, y in train_batches(epoch)]

    taught = copy.deepcopy(dense)
    finetune(taught, POLICY, noise, val_accuracy, config, teacher=dense, distill=Distillation(temperature=1.0, weight=1.0))
    alone = copy.deepcopy(dense)
    finetune(alone, POLICY, noise, val_accuracy, config, teacher=dense, distill=False)
    assert val_accuracy(taught) > val_accuracy(alone) + 0.3


def test_diagnostics_name_what_to_raise() -> None:
    # the run: one ADMM epoch, residual 0.52, projection 90.2 % -> 10.4 %, retraining to 65.5 %
    result = {"method": "admm", "residual": 0.52, "admm_epochs": 1, "before_projection": 0.902, "projected_accuracy": 0.104,
              "accuracy": 0.655, "retrain_history": [{"epoch": 1, "val_accuracy": 0.655}], "epochs": 2, "epochs_run": 2}
    warnings = convergence_warnings(result)
    assert warnings[0] == "ADMM's primal residual is 0.52 after 1 ADMM epoch (want < 0.05): raise --epochs or --rho-growth"
    assert "from 90.2 % to 10.4 %" in warnings[1] and warnings[1].endswith("raise --epochs or --rho")
    assert "24.7 points below the dense model's 90.2 %" in warnings[2] and len(warnings) == 3
    budgeted = convergence_warnings({**result, "time_budget": {"stopped_early": False}}, dense_accuracy=0.91)
    assert all("--time-budget" in w for w in budgeted) and "25.5 points below the dense model's 91.0 %" in budgeted[2]
    rising = {"method": "masked", "accuracy": 0.9, "retrain_history": [{"val_accuracy": 0.85}, {"val_accuracy": 0.9}]}
    assert convergence_warnings(rising) == ["validation accuracy was still rising at the end (+5.0 points in the last "
                                            "epoch): raise --epochs"]
    converged = {**result, "residual": 0.01, "projected_accuracy": 0.89, "accuracy": 0.9}
    assert convergence_warnings(converged, flags={"epochs": "epochs="}) == []


def test_admm_reports_its_residual_and_the_projection(dense: nn.Module) -> None:
    config = AdmmConfig(iterations=2, rho=1.0, retrain_epochs=1, progress=False)
    result = finetune(copy.deepcopy(dense), POLICY, train_batches, val_accuracy, config)
    assert result["residual"] == result["admm_history"][-1]["residual"] and result["admm_epochs"] == 2
    assert result["before_projection"] == result["admm_history"][-1]["val_accuracy"]
    assert result["best_epoch"] == 2 and result["epochs_run"] == 3


def test_channel_method_prunes_to_the_mac_ratio_in_place_and_its_checkpoint_rebuilds_it(dense: nn.Module, tmp_path) -> None:
    model = copy.deepcopy(dense)
    result = finetune(model, Policy(layers={}), train_batches, val_accuracy, ChannelConfig(target=0.5, epochs=2, progress=False),
                      teacher=dense)
    channels = result["channels"]
    assert 0.35 < channels["mac_ratio"] <= 0.5 and channels["ratio"] == channels["mac_ratio"]
    assert model[0].out_channels < 16 and model[3].in_channels == model[0].out_channels  # the caller's model is pruned
    assert result["structures"] == {} and result["accuracy"] > result["projected_accuracy"] + 0.1
    assert len(result["retrain_history"]) == 2
    path = save_channel_pruned(tmp_path / "pruned.pt", model, channels["record"], model_name="cnn", num_classes=CLASSES,
                               input_shape=(3, 8, 8), meta={"accuracy": result["accuracy"]})
    assert checkpoint_format(path) == "uniprune.channel-pruned/1"
    loaded = load_channel_pruned(path)
    back = rebuild(small_cnn(), loaded.channels, loaded.state_dict)
    x = VAL[0][:8]
    assert torch.allclose(back(x), model.eval()(x)) and loaded.meta["num_classes"] == CLASSES
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        load_channel_pruned(tmp_path / "other.pt")
    torch.save({"format": "uniprune.compressed/1"}, tmp_path / "compressed.pt")
    with pytest.raises(CheckpointError, match="not a uniprune channel-pruned checkpoint"):
        load_channel_pruned(tmp_path / "compressed.pt")


def test_channel_method_resumes_from_any_epoch(dense: nn.Module) -> None:
    states: list[dict] = []
    config = ChannelConfig(target=0.6, epochs=3, progress=False)
    unbroken = copy.deepcopy(dense)
    full = finetune(unbroken, Policy(layers={}), train_batches, val_accuracy, config, checkpoint=lambda s: states.append(copy.deepcopy(s)))
    resumed = copy.deepcopy(dense)  # a new process builds the dense model again; the state reshapes it
    again = finetune(resumed, Policy(layers={}), train_batches, val_accuracy, config, resume=states[0])
    assert [h["val_accuracy"] for h in again["retrain_history"]] == pytest.approx([h["val_accuracy"] for h in full["retrain_history"]])
    for (name, a), b in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_channel_targets_are_checked_and_bisection_meets_any_measure(dense: nn.Module) -> None:
    for bad in (0.0, 1.0, 1.5, True):
        with pytest.raises(ConfigError, match=r"ratio in \(0, 1\)"):
            ChannelConfig(target=bad)
    with pytest.raises(ConfigError, match="needs a target ratio"):
        finetune(copy.deepcopy(dense), Policy(layers={}), train_batches, val_accuracy, ChannelConfig(progress=False))
    x = VAL[0][:2]
    _, report, ratio = prune_to_ratio(dense, x, 0.7, lambda _m, rep: rep.mac_ratio ** 0.5)  # a made-up latency curve
    assert ratio <= 0.7 and ratio == pytest.approx(report.mac_ratio ** 0.5) and ratio > 0.6
    with pytest.raises(ConfigError, match="reaches at best"):
        prune_to_ratio(dense, x, 0.001)


@pytest.mark.slow  # builds every engine twice (ONNX export, OpenVINO compile)
def test_the_pruned_model_races_the_dense_engines_on_its_fastest_engine(dense: nn.Module) -> None:
    from uniprune.compressors.train.channel_strategy import time_pruned

    x = VAL[0][:1]
    pruned, _, _ = prune_to_ratio(dense, x, 0.5)
    timing = time_pruned(dense, pruned, x, threads=1, repeats=5)
    defaults = [m for m in timing["engines"] if ":" not in m]
    assert timing["compressed_engine"] in defaults and timing["best_engine"] in defaults
    assert timing["compressed_ms"] > 0 and timing["speedup"] == pytest.approx(1 / timing["latency_ratio"])
    assert timing["best_dense_ms"] == min(timing["engines"][m] for m in defaults)


def test_a_planned_admm_run_makes_a_bounded_number_of_iterations() -> None:
    from uniprune.compressors.train.admm import MAX_PLANNED_ITERATIONS, AdmmConfig

    for epochs in (2, 3, 9, 12, 30, 257):
        planned = AdmmConfig().with_epochs(epochs)
        assert planned.total_epochs == epochs and 1 <= planned.iterations <= MAX_PLANNED_ITERATIONS
        assert planned.retrain_epochs >= 1
    assert AdmmConfig().with_epochs(257).epochs_per_iteration == 22  # 171 ADMM epochs in 7 iterations of 22
