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
from dataclasses import dataclass, replace

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

    @property
    def least_epochs(self) -> int:
        """1: a ramp epoch."""
        return 1

    def with_epochs(self, epochs: int) -> AgpConfig:
        """This config planned for ``epochs`` in all (its lr is always one cosine over the run): a third of them
        (at least 1 from 2 epochs on) retrain at the policy, the rest ramp."""
        if int(epochs) < 1:
            raise ConfigError(f"agp needs at least 1 epoch, got {epochs}; raise --epochs")
        retrain = max(1, round(int(epochs) / 3)) if int(epochs) >= 2 else 0
        return replace(self, ramp_epochs=int(epochs) - retrain, retrain_epochs=retrain)

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
    fractions start small and the last run trains at the full policy; then ``retrain_epochs`` at the policy
    (those the time budget fits). ``train_batches(epoch)`` without a ``len()`` is counted once by an extra pass.

    Logs ``agp/fraction`` (step: the pruning step, 1..n), ``agp/loss`` (mean cross-entropy, nats) and
    ``agp/val_accuracy`` (step: the epoch).
    """
    run = _AgpRun(job, config)
    total = config.ramp_epochs + config.retrain_epochs
    try:
        for epoch in range(config.ramp_epochs):  # the ramp is never cut short: it is what reaches the policy
            job.next_epoch()
            run.ramp_epoch(epoch)
        before = run.history[-1]["val_accuracy"]
        structures = run.reproject(job.policy)
        projected = evaluate_on_rank0(job.evaluate, job.model)
        for epoch in range(config.ramp_epochs, total):
            if not job.next_epoch():
                break
            run.set_lr(epoch)
            batches, count = epoch_batches(job.train_batches, epoch)
            stats = run.train(batches, count, f"agp retrain {epoch - config.ramp_epochs + 1}/{config.retrain_epochs}")
            run.finish_epoch(epoch, stats["loss"])
    finally:
        trained = bake(job.model)
    out = dict(structures)
    out.update(trained)
    history = run.history
    retrained = len(history) > config.ramp_epochs
    final = history[-1]["val_accuracy"] if retrained else projected
    return Outcome(out, final, projected, [], history, before_projection=before,
                   best_epoch=int(history[-1]["epoch"]) if retrained else None, epochs_run=len(history))


class _AgpRun:
    """One AGP run's state: one optimizer carried through every re-projection, the pruning steps, the history."""

    def __init__(self, job: FinetuneJob, config: AgpConfig) -> None:
        self.job, self.config = job, config
        self.show = config.progress and world()[0] == 0
        self.total = config.ramp_epochs + config.retrain_epochs
        self.history: list[dict[str, float]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.pruning_step = 0
        self.counted: int | None = None

    def set_lr(self, epoch: int) -> None:
        for group in self.optimizer.param_groups:  # type: ignore[union-attr]
            group["lr"] = self.config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.total))

    def reproject(self, target: Policy) -> dict[str, LayerStructure]:
        # A new optimizer per structure would reset the momentum at every pruning step. The weights stay the
        # same tensors through bake and constrain, but every constrain makes new magnitude parameters (and the
        # set of unified blocks changes), so the one optimizer is rebound to them and the momentum carried
        # over in weight space, the way the weights themselves are baked and re-projected.
        model = self.job.model
        velocities = weight_velocities(model, self.optimizer) if self.optimizer is not None else {}
        bake(model)
        structures = project_model(model, target, self.job.shapes, apply=True)
        constrain(model, structures)
        if self.optimizer is not None:
            rebind_optimizer(model, self.optimizer, velocities)
        return structures

    def train(self, batches: Iterable, count: int | None, desc: str) -> dict[str, float]:
        # DDP registers the parameters when it wraps, so it wraps again after every change of structure
        job = self.job
        return train_epoch(wrap(job.model, job.device), batches, self.optimizer, device=job.device, total=count,
                           distill=job.distill, desc=desc if self.show else None)

    def finish_epoch(self, epoch: int, loss: float) -> None:
        acc = evaluate_on_rank0(self.job.evaluate, self.job.model)
        self.history.append({"epoch": epoch, "loss": loss, "val_accuracy": acc})
        self.job.logger("agp/loss", loss, epoch)
        self.job.logger("agp/val_accuracy", acc, epoch)

    def ramp_epoch(self, epoch: int) -> None:
        config, job = self.config, self.job
        batches, count = epoch_batches(job.train_batches, epoch)
        if count is None and config.prune_steps > 1:
            if self.counted is None:
                self.counted = sum(1 for _ in epoch_batches(job.train_batches, epoch)[0])
            count = self.counted  # a later epoch of another length only shifts the runs: the last takes the rest
        sizes = _slices(count or 0, config.prune_steps)
        rest = iter(batches)
        stats = []
        for j, size in enumerate(sizes):
            self.pruning_step += 1
            fraction = agp_fraction(epoch * len(sizes) + j + 1, config.ramp_epochs * len(sizes))
            self.reproject(scaled_policy(job.policy, fraction))
            if self.optimizer is None:  # after the first constrain, so that it sees the magnitudes
                self.optimizer = make_optimizer(job.model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
            self.set_lr(epoch)
            job.logger("agp/fraction", fraction, self.pruning_step)
            last = j == len(sizes) - 1
            stats.append(self.train(rest if last else itertools.islice(rest, size), size or None,
                                    f"agp ramp {epoch + 1}/{config.ramp_epochs} step {j + 1}/{len(sizes)}"))
        self.finish_epoch(epoch, _mean_loss(stats))
