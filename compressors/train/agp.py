"""AGP (Zhu & Gupta 2018): reach a policy's structure gradually instead of by ADMM.

The policy's fractions ramp up as ``f_t = 1 - (1 - t/n)^3`` over ``n`` pruning steps (``prune_steps`` per
ramp epoch, at evenly spaced batches); before each run of batches the weights are projected onto the
policy scaled by ``f_t`` and held there (:mod:`..core.constraints`); then the final structure is retrained,
all under one SGD optimizer. Run through the one driver, :func:`.finetune.finetune`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..core.constraints import bake, constrain, rebind_optimizer, weight_velocities
from ..core.errors import ConfigError
from ..core.policy import Policy
from ..core.projection import project_model
from ..core.structure import LayerStructure
from .baselines import scaled_policy
from .distributed import epoch_batches, evaluate_on_rank0, world, wrap
from .strategy import FinetuneJob, Outcome
from .training import make_optimizer, train_epoch


def agp_fraction(step: int, total_steps: int, final: float = 1.0, initial: float = 0.0) -> float:
    """AGP sparsity at ``step`` of ``total_steps``: ``final + (initial - final) * (1 - t/n)^3``, t clipped to [0, n]."""
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
    t = min(max(step, 0), total_steps) / total_steps
    return final + (initial - final) * (1.0 - t) ** 3


@dataclass
class AgpConfig:
    """Options of the AGP strategy (:func:`.finetune.finetune` runs it).

    ``ramp_epochs`` (>= 1): epochs over which the fractions grow to the policy's; ``retrain_epochs``
    (>= 0): epochs at the final structure; ``lr`` (> 0) decays by a cosine over all epochs (set per
    epoch); ``momentum`` in [0, 1), ``weight_decay`` >= 0; ``device``; ``progress``; ``prune_steps``
    (>= 1): pruning steps (re-projections) per ramp epoch, at evenly spaced batches and at most one per
    batch, so the ramp has ``ramp_epochs * prune_steps`` of them (with the defaults, 48: the first applies
    6 % of the policy's fractions, each later one at most 6 % more).
    """

    ramp_epochs: int = 3
    retrain_epochs: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "cpu"
    progress: bool = True
    prune_steps: int = 16

    def __post_init__(self) -> None:
        if self.ramp_epochs < 1 or self.retrain_epochs < 0:
            raise ConfigError(f"ramp_epochs must be >= 1 and retrain_epochs >= 0, got {self.ramp_epochs}, {self.retrain_epochs}")
        if isinstance(self.prune_steps, bool) or not isinstance(self.prune_steps, int) or self.prune_steps < 1:
            raise ConfigError(f"prune_steps must be a whole number >= 1 of pruning steps per ramp epoch, got {self.prune_steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay}")

    @property
    def method(self) -> str:
        """``"agp"``."""
        return "agp"

    @property
    def total_epochs(self) -> int:
        """Ramp and retraining epochs."""
        return self.ramp_epochs + self.retrain_epochs

    def run(self, job: FinetuneJob) -> Outcome:
        """The strategy: the ramp of pruning steps, then retraining at the policy."""
        if job.checkpoint is not None or job.resume is not None:
            raise ConfigError("AGP fine-tuning keeps no resumable state; use method admm or masked to checkpoint and resume")
        return _run(job, self)


def _slices(batches: int, steps: int) -> list[int]:
    """Sizes of ``min(steps, batches)`` (at least 1) consecutive runs of ``batches`` batches, as equal as can be."""
    n = max(1, min(steps, batches))
    bounds = [j * batches // n for j in range(n + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _mean_loss(stats: list[dict[str, float]]) -> float:
    seen = sum(s["samples"] for s in stats)
    return sum(s["loss"] * s["samples"] for s in stats if s["samples"]) / seen if seen else math.nan


def _run(job: FinetuneJob, config: AgpConfig) -> Outcome:
    """Each ramp epoch is cut into ``min(prune_steps, its batches)`` runs of batches; before run ``k`` of the
    ``n`` in the ramp the weights are projected onto the policy scaled by ``agp_fraction(k, n)``, so the
    fractions start small and the last run trains at the full policy; then ``retrain_epochs`` at the policy.
    ``train_batches(epoch)`` without a ``len()`` is counted once by an extra pass over it.

    Logs ``agp/fraction`` (step: the pruning step, 1..n), ``agp/loss`` (mean cross-entropy, nats) and
    ``agp/val_accuracy`` (step: the epoch).
    """
    model, policy, shapes, device, logger = job.model, job.policy, job.shapes, job.device, job.logger
    train_batches, evaluate = job.train_batches, job.evaluate
    show = config.progress and world()[0] == 0
    total = config.ramp_epochs + config.retrain_epochs
    history: list[dict[str, float]] = []
    optimizer: torch.optim.Optimizer | None = None

    def lr_at(epoch: int) -> float:
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / total))

    def reproject(target: Policy) -> dict[str, LayerStructure]:
        # A new optimizer per structure would reset the momentum at every pruning step. The weights stay the
        # same tensors through bake and constrain, but every constrain makes new magnitude parameters (and the
        # set of unified blocks changes), so the one optimizer is rebound to them and the momentum carried
        # over in weight space, the way the weights themselves are baked and re-projected.
        velocities = weight_velocities(model, optimizer) if optimizer is not None else {}
        bake(model)
        structures = project_model(model, target, shapes, apply=True)
        constrain(model, structures)
        if optimizer is not None:
            rebind_optimizer(model, optimizer, velocities)
        return structures

    def train(opt: torch.optim.Optimizer, batches: Iterable, count: int | None, desc: str) -> dict[str, float]:
        # DDP registers the parameters when it wraps, so it wraps again after every change of structure
        return train_epoch(wrap(model, device), batches, opt, device=device, total=count, distill=job.distill,
                           desc=desc if show else None)

    def finish_epoch(epoch: int, loss: float) -> None:
        acc = evaluate_on_rank0(evaluate, model)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": acc})
        logger("agp/loss", loss, epoch)
        logger("agp/val_accuracy", acc, epoch)

    pruning_step = 0
    counted: int | None = None
    try:
        for epoch in range(config.ramp_epochs):
            batches, count = epoch_batches(train_batches, epoch)
            if count is None and config.prune_steps > 1:
                if counted is None:
                    counted = sum(1 for _ in epoch_batches(train_batches, epoch)[0])
                count = counted  # a later epoch of another length only shifts the runs: the last takes the rest
            sizes = _slices(count or 0, config.prune_steps)
            rest = iter(batches)
            stats = []
            for j, size in enumerate(sizes):
                pruning_step += 1
                fraction = agp_fraction(epoch * len(sizes) + j + 1, config.ramp_epochs * len(sizes))
                reproject(scaled_policy(policy, fraction))
                if optimizer is None:  # after the first constrain, so that it sees the magnitudes
                    optimizer = make_optimizer(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch)
                logger("agp/fraction", fraction, pruning_step)
                last = j == len(sizes) - 1
                stats.append(train(optimizer, rest if last else itertools.islice(rest, size), size or None,
                                   f"agp ramp {epoch + 1}/{config.ramp_epochs} step {j + 1}/{len(sizes)}"))
            finish_epoch(epoch, _mean_loss(stats))
        structures = reproject(policy)
        projected = evaluate_on_rank0(evaluate, model)
        for epoch in range(config.ramp_epochs, total):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
            batches, count = epoch_batches(train_batches, epoch)
            stats = train(optimizer, batches, count, f"agp retrain {epoch - config.ramp_epochs + 1}/{config.retrain_epochs}")
            finish_epoch(epoch, stats["loss"])
    finally:
        trained = bake(model)
    out = dict(structures)
    out.update(trained)
    final = history[-1]["val_accuracy"] if config.retrain_epochs else projected
    return Outcome(out, final, projected, [], history)
