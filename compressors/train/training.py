"""Generic supervised training and evaluation loops, shared by ``train``, the ADMM fine-tuner and search.

Nothing here knows about datasets or model names: a loop takes a model and an iterable of
``(inputs, labels)`` batches (normalised float inputs, int64 class labels) and does plain cross-entropy
training with SGD. The ADMM fine-tuner plugs its proximal term in through ``penalty`` and its
mask/tie re-application through ``after_step``; every fine-tuning method can learn from the dense network's
logits through ``distill`` (:class:`Distillation`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm import tqdm

from ..core.errors import ConfigError, NonFiniteError
from ..formats.fileio import first_non_finite

__all__ = ["Distillation", "train_epoch", "evaluate", "make_optimizer", "cosine_schedule"]


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation (Hinton et al. 2015): the dense teacher's softened logits join the labels.

    The training loss becomes ``(1 - weight) * CE(student, y) + weight * T^2 * KL(p_T(teacher) || p_T(student))``
    with ``p_T = softmax(logits / T)``; the ``T^2`` keeps the soft term's gradients on the scale of the hard one.

    Attributes:
        teacher: the dense network, on the student's device; run in eval mode without gradients. ``None``:
            the settings alone, to which :func:`.finetune.finetune` adds the dense teacher it is given.
        temperature: ``T`` > 0 (Hinton et al. use 2 to 20; 4 is common for CIFAR-sized models).
        weight: share of the soft term in [0, 1] (0: plain cross-entropy; 1: the teacher alone).
    """

    teacher: nn.Module | None = None
    temperature: float = 4.0
    weight: float = 0.7

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"distillation temperature must be a positive number, got {self.temperature}; try 4")
        if not 0 <= self.weight <= 1:
            raise ConfigError(f"distillation weight must be in [0, 1], got {self.weight}; try 0.7")

    def settings(self) -> dict[str, float]:
        """``{"temperature", "weight"}`` (JSON-able, for records of a run)."""
        return {"temperature": float(self.temperature), "weight": float(self.weight)}

    def loss(self, x: Tensor, logits: Tensor, ce: Tensor) -> Tensor:
        """The distilled loss for inputs ``x`` whose student logits are ``logits`` and hard loss ``ce``."""
        if self.teacher is None:
            raise ConfigError("distillation has no teacher: give the dense model (finetune's teacher=)")
        was_training = self.teacher.training
        self.teacher.eval()
        with torch.no_grad():
            soft = nn.functional.log_softmax(self.teacher(x) / self.temperature, dim=1)
        self.teacher.train(was_training)
        student = nn.functional.log_softmax(logits / self.temperature, dim=1)
        kl = nn.functional.kl_div(student, soft, reduction="batchmean", log_target=True)
        return (1.0 - self.weight) * ce + self.weight * self.temperature**2 * kl


def _progress(batches: Iterable, desc: str | None, total: int | None) -> Iterable:
    if desc is None:
        return batches
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    return tqdm(batches, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: LRScheduler | None = None,
    penalty: Callable[[], Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    distill: Distillation | None = None,
    device: str | torch.device = "cpu",
    desc: str | None = None,
    total: int | None = None,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``batches`` with cross-entropy loss.

    Args:
        model: the network; it is put in train mode (and left there).
        batches: ``(x, y)`` pairs; ``x`` float inputs, ``y`` int64 class indices. Moved to ``device``.
        optimizer: steps once per batch.
        scheduler: when given, stepped once per batch (a per-step schedule such as :func:`cosine_schedule`).
        penalty: returns an extra scalar loss added to the cross-entropy each step (e.g. the ADMM term
            ``rho/2 * ||W - Z + U||^2``); it is differentiated with the rest of the loss.
        after_step: called after each ``optimizer.step()`` (e.g. to re-apply masks or ties).
        distill: when given, the loss learns from the teacher's logits too (:class:`Distillation`); the
            reported ``loss`` stays the plain cross-entropy, comparable with or without it.
        device: where the model lives and batches are moved to.
        desc: when given, a tqdm progress bar with this label is shown on stderr.
        total: number of batches, for the progress bar when ``batches`` has no ``len``.

    Returns:
        ``{"loss": mean cross-entropy per sample (nats, >= 0), "accuracy": training top-1 in [0, 1],
        "penalty": mean penalty per batch (0 when none), "samples": number of samples seen}``.
        An empty ``batches`` gives loss and accuracy ``nan``.

    Raises :class:`NonFiniteError` as soon as the loss is NaN or inf, or when the epoch leaves a weight or a
    BatchNorm statistic non-finite (the step was too large); the caller decides what to keep.
    """
    model.train()
    device = torch.device(device)
    loss_sum = 0.0
    penalty_sum = 0.0
    correct = 0
    seen = 0
    steps = 0
    bar = _progress(batches, desc, total)
    for x, y in bar:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        logits = model(x)
        ce = nn.functional.cross_entropy(logits, y)
        loss = ce if distill is None else distill.loss(x, logits, ce)
        if penalty is not None:
            extra = penalty()
            loss = loss + extra
            penalty_sum += float(extra.detach())
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteError(f"the training loss became {float(loss.detach())} at step {steps + 1} of the epoch")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        if scheduler is not None:
            scheduler.step()
        n = y.shape[0]
        loss_sum += float(ce.detach()) * n
        correct += int((logits.detach().argmax(dim=1) == y).sum())
        seen += n
        steps += 1
        if desc is not None and steps % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")  # type: ignore[union-attr]
    return _epoch_stats(model, loss_sum, correct, penalty_sum, seen, steps)


def _epoch_stats(model: nn.Module, loss_sum: float, correct: int, penalty_sum: float, seen: int, steps: int) -> dict[str, float]:
    # the loss can stay finite while a step leaves a weight or a BatchNorm statistic at inf
    bad = first_non_finite(dict(model.state_dict()))
    if bad:
        raise NonFiniteError(f"{bad} became NaN or inf during the epoch")
    if seen == 0:
        return {"loss": math.nan, "accuracy": math.nan, "penalty": 0.0, "samples": 0.0}
    return {"loss": loss_sum / seen, "accuracy": correct / seen, "penalty": penalty_sum / steps, "samples": float(seen)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: str | torch.device = "cpu",
    desc: str | None = None,
    total: int | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``batches``, in [0, 1] (``nan`` when there are no samples).

    The model is put in eval mode for the pass and restored to its previous mode afterwards, so
    callers in the middle of training need not remember to switch back.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    correct = 0
    seen = 0
    try:
        for x, y in _progress(batches, desc, total):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            correct += int((model(x).argmax(dim=1) == y).sum())
            seen += y.shape[0]
    finally:
        model.train(was_training)
    return correct / seen if seen else math.nan


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """SGD over the model's trainable parameters; no weight decay on biases and norm-layer parameters.

    Args:
        lr: learning rate, > 0 (typically 0.01-0.1 from scratch, 1e-3-1e-2 to fine-tune).
        momentum: in [0, 1).
        weight_decay: L2 coefficient >= 0, applied to weights of dimension >= 2 only (decaying BN scales
            and biases only hurts).
        nesterov: Nesterov momentum (ignored, i.e. off, when ``momentum`` is 0).
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"learning rate must be a positive number, got {lr}; try --lr 0.05")
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise ConfigError(f"weight decay must be >= 0, got {weight_decay}")
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters to optimise")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LRScheduler:
    """Per-step learning-rate schedule: linear warm-up, then cosine decay to 0 at ``total_steps``.

    Args:
        total_steps: number of ``scheduler.step()`` calls over the whole run (batches x epochs), >= 1.
        warmup_steps: steps of linear warm-up from ~0 to the optimiser's base lr, in [0, total_steps).
    """
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(f"warmup_steps must be in [0, {total_steps}), got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
