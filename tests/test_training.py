"""The generic training and evaluation loops (compressors.train.training)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.train.training import (
    Distillation,
    cosine_schedule,
    evaluate,
    make_optimizer,
    train_epoch,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _blobs(n: int = 256, seed: int = 0, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three well separated Gaussian blobs in 2-D, as batches."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    x = centres[y] + 0.5 * torch.randn(n, 2, generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_train_epoch_learns_and_reports_mean_loss():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    data = _blobs()
    x_all = torch.cat([b[0] for b in data])
    y_all = torch.cat([b[1] for b in data])
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x_all), y_all).item()
        expected_acc = (model(x_all).argmax(1) == y_all).float().mean().item()
    stats = train_epoch(model, data, frozen)
    # lr 0: nothing changes, so the reported per-sample mean is the loss over the whole set.
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["accuracy"] == pytest.approx(expected_acc)
    assert stats["samples"] == 256

    opt = make_optimizer(model, lr=0.1)
    for _ in range(5):
        last = train_epoch(model, data, opt)
    assert last["loss"] < expected / 3
    assert evaluate(model, _blobs(seed=1)) >= 0.97


def test_penalty_after_step_and_scheduler_are_applied_per_batch():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    data = _blobs(n=128, batch=16)  # 8 batches
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = cosine_schedule(opt, total_steps=16)
    calls = []
    norm_before = model.weight.norm().item()
    stats = train_epoch(
        model, data, opt, scheduler=sched,
        penalty=lambda: 2.0 * model.weight.pow(2).sum(),
        after_step=lambda: calls.append(1),
    )
    assert len(calls) == 8
    # Half of the cosine schedule has passed: lr = base * (1 + cos(pi/2)) / 2.
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert stats["penalty"] > 0
    # A strong L2 penalty shrinks the weights despite the data term.
    assert model.weight.norm().item() < norm_before


def test_evaluate_counts_exactly_and_restores_mode():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # predicts the index of the larger coordinate
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1, 0])  # the third is wrong on purpose
    model.train()
    assert evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])]) == pytest.approx(4 / 5)
    assert model.training
    model.eval()
    evaluate(model, [(x, y)])
    assert not model.training
    assert math.isnan(evaluate(model, []))


def test_make_optimizer_skips_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    opt = make_optimizer(model, lr=0.1, weight_decay=1e-3)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert sum(len(g["params"]) for g in opt.param_groups) == 6
    assert opt.defaults["nesterov"] is True
    for bad in ({"lr": 0.0}, {"lr": -1.0}, {"lr": 0.1, "momentum": 1.0}, {"lr": 0.1, "weight_decay": -1.0}):
        with pytest.raises(ConfigError):
            make_optimizer(model, **bad)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = cosine_schedule(opt, total_steps=10, warmup_steps=2)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[6] == pytest.approx(0.5)  # halfway through the 8 decay steps
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError):
        cosine_schedule(opt, total_steps=0)
    with pytest.raises(ConfigError):
        cosine_schedule(opt, total_steps=5, warmup_steps=5)


def test_distillation_loss_mixes_the_hard_and_soft_terms():
    torch.manual_seed(0)
    student, teacher = nn.Linear(2, 3), nn.Linear(2, 3)
    x, y = _blobs(n=64)[0]
    with torch.no_grad():
        logits = student(x)
        ce = nn.functional.cross_entropy(logits, y)
    # the student as its own teacher: the KL term is 0, only (1 - weight) of the hard loss is left
    assert float(Distillation(student, temperature=3.0, weight=0.4).loss(x, logits, ce)) == pytest.approx(0.6 * float(ce), rel=1e-5)
    assert float(Distillation(teacher, weight=0.0).loss(x, logits, ce)) == pytest.approx(float(ce), rel=1e-6)
    t = 2.0
    with torch.no_grad():
        p_t = torch.softmax(teacher(x) / t, dim=1)
        kl = (p_t * (p_t.log() - torch.log_softmax(logits / t, dim=1))).sum(1).mean()
    assert float(Distillation(teacher, temperature=t, weight=1.0).loss(x, logits, ce)) == pytest.approx(t * t * float(kl), rel=1e-4)
    with pytest.raises(ConfigError, match="temperature"):
        Distillation(teacher, temperature=0.0)
    with pytest.raises(ConfigError, match="weight"):
        Distillation(teacher, weight=1.5)


def test_distilled_training_follows_the_teacher():
    torch.manual_seed(0)
    data = _blobs(n=512)
    teacher = nn.Linear(2, 3)
    for _ in range(20):
        train_epoch(teacher, data, torch.optim.SGD(teacher.parameters(), lr=0.1))
    student = nn.Linear(2, 3)
    # weight 1: the labels are ignored, so what the student learns comes from the teacher alone
    shuffled = [(x, y[torch.randperm(len(y))]) for x, y in data]
    for _ in range(20):
        stats = train_epoch(student, shuffled, torch.optim.SGD(student.parameters(), lr=0.1),
                            distill=Distillation(teacher, temperature=1.0, weight=1.0))
    assert stats["loss"] > 0.5  # the reported loss is still the cross-entropy against the (shuffled) labels
    assert evaluate(student, data) > 0.95
