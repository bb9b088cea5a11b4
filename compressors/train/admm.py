"""ADMM fine-tuning into a policy's structure (Zhang et al. 2018, as used by Lin et al. 2021).

The problem ``min loss(W)  s.t.  W in S`` (``S``: the layers' block structures of the policy) is split as
``min loss(W) + g(Z)  s.t.  W = Z`` and solved by ADMM, one iteration being a few epochs:

1. W-step: train ``loss(W) + sum_l rho/2 ||W_l - Z_l + U_l||^2`` by SGD for ``epochs_per_iteration``;
2. Z-step: ``Z_l = project(W_l + U_l)`` (the exact projection of :mod:`.projection`);
3. U-step: ``U_l = U_l + W_l - Z_l``; then ``rho *= rho_growth`` and ``U /= rho_growth`` (U is the
   scaled dual ``y / rho``; Boyd et al. 2011, 3.4.1).

The primal residual ``||W - Z|| / ||W||`` (over all structured layers) is logged after each iteration.
Then W is projected hard and retrained with pruned blocks frozen at 0 and each unified block tied to one
trainable magnitude (:mod:`.retrain`). ``method="masked"`` skips the ADMM part: project, then retrain
(the baseline ADMM is compared against, sharing the same retraining code). Run through the one driver,
:func:`.finetune.finetune`; under ``torchrun`` Z and U are updated identically on every rank
(:mod:`.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ..core.projection import project_layer, project_model
from ..formats.checkpoint import structure_from_record, structure_record
from .distributed import epoch_batches, evaluate_on_rank0, world, wrap
from .retrain import SCHEDULES, best_epoch, lr_factor, retrain
from .strategy import FinetuneJob, Outcome
from .training import make_optimizer, train_epoch

METHODS = ("admm", "masked")


#: The most ADMM iterations a planned run (a time budget) makes: rho grows x rho_growth at each.
MAX_PLANNED_ITERATIONS = 8


@dataclass
class AdmmConfig:
    """Options of the ADMM and masked strategies (:func:`.finetune.finetune` runs them).

    Attributes:
        method: ``"admm"`` (ADMM, then hard projection and retraining) or ``"masked"`` (projection and
            retraining only).
        iterations: ADMM iterations (Z/U updates), >= 1. Ignored by ``"masked"``.
        epochs_per_iteration: W-step epochs per ADMM iteration, >= 1.
        rho: initial penalty coefficient, > 0 (per squared weight unit; the penalty is summed over all
            structured weights, not averaged).
        rho_growth: factor applied to rho after each iteration, >= 1.
        lr: SGD learning rate of the ADMM phase (held constant there), > 0.
        retrain_lr: initial learning rate of retraining; ``None``: ``lr``.
        schedule: learning-rate schedule, per epoch: ``"cosine"`` (retraining decays from ``retrain_lr``
            towards 0; the ADMM phase keeps ``lr`` constant so that every iteration's W-step is alike),
            ``"constant"``, or ``"run"`` (one cosine from ``lr`` over every epoch of the run, ADMM and
            retraining; ``retrain_lr`` must then be unset).
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 on weights (and shared magnitudes), >= 0.
        retrain_epochs: epochs of masked/tied retraining after the hard projection, >= 0.
        keep_best: end with the retraining epoch of best validation accuracy, not the last one.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        evaluate_every_iteration: evaluate after each ADMM iteration (for ``admm/val_accuracy``).
        progress: show tqdm bars on stderr (rank 0 only).
    """

    method: str = "admm"
    iterations: int = 4
    epochs_per_iteration: int = 1
    rho: float = 0.01
    rho_growth: float = 3.0
    lr: float = 0.01
    retrain_lr: float | None = None
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    retrain_epochs: int = 2
    keep_best: bool = True
    device: str = "cpu"
    evaluate_every_iteration: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        for key in ("iterations", "epochs_per_iteration"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "run" and self.retrain_lr is not None:
            raise ConfigError("schedule 'run' is one cosine from lr over the whole run; leave retrain_lr unset")
        if self.retrain_epochs < 0:
            raise ConfigError(f"retrain_epochs must be >= 0, got {self.retrain_epochs}")
        if not (self.rho > 0 and math.isfinite(self.rho)):
            raise ConfigError(f"rho must be a positive number, got {self.rho}; try --rho 0.01")
        if not self.rho_growth >= 1:
            raise ConfigError(f"rho_growth must be >= 1, got {self.rho_growth}")
        for key in ("lr", "retrain_lr"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be a positive number, got {value}")

    @property
    def admm_epochs(self) -> int:
        """Epochs spent in the ADMM phase (0 for ``"masked"``)."""
        return 0 if self.method == "masked" else self.iterations * self.epochs_per_iteration

    @property
    def total_epochs(self) -> int:
        """Every epoch of the run, ADMM and retraining."""
        return self.admm_epochs + self.retrain_epochs

    @property
    def least_epochs(self) -> int:
        """2 for ``admm`` (one ADMM epoch and one of retraining), 1 for ``masked``."""
        return 1 if self.method == "masked" else 2

    def with_epochs(self, epochs: int) -> AdmmConfig:
        """This config planned for ``epochs`` in all under one cosine (schedule ``run``): ``masked`` retrains for
        all of them; ``admm`` gives ``max(1, round(epochs / 3))`` to retraining and the rest to ADMM iterations
        of one epoch each, at most :data:`MAX_PLANNED_ITERATIONS` of them (longer ones beyond; what is left over
        goes to retraining)."""
        if int(epochs) < self.least_epochs:
            raise ConfigError(f"{self.method} needs at least {self.least_epochs} epochs, got {epochs}; raise --epochs")
        if self.method == "masked":
            return replace(self, retrain_epochs=int(epochs), schedule="run", retrain_lr=None)
        retrain = max(1, round(int(epochs) / 3))
        admm = int(epochs) - retrain
        # rho grows x rho_growth per iteration: a budget that fits hundreds of epochs of a small model must not make
        # hundreds of iterations (rho 0.01 x 3**11 overflowed training), so long runs take longer iterations
        per = -(-admm // MAX_PLANNED_ITERATIONS)
        iterations = admm // per
        return replace(self, iterations=iterations, epochs_per_iteration=per, retrain_epochs=int(epochs) - iterations * per,
                       schedule="run", retrain_lr=None)

    def run(self, job: FinetuneJob) -> Outcome:
        """The strategy: ADMM (unless ``masked``), the hard projection, then retraining in the structure."""
        return _run(job, self)


def _dual_update(weights: list[Tensor], z: list[Tensor], u: list[Tensor], layers: list) -> tuple[list[Tensor], list[Tensor], float]:
    """ADMM's Z and U steps; returns the new Z, U and the primal residual ``||W - Z|| / ||W||``."""
    with torch.no_grad():
        w_now = [w.detach() for w in weights]
        z = [project_layer(w + ui, s.grid, a.prune, a.unify)[1] for w, ui, (s, a) in zip(w_now, u, layers)]
        u = [ui + w - zi for w, zi, ui in zip(w_now, z, u)]
        diff = math.sqrt(sum(float(((w - zi) ** 2).sum()) for w, zi in zip(w_now, z)))
        norm = math.sqrt(sum(float((w**2).sum()) for w in w_now))
    return z, u, diff / norm if norm > 0 else 0.0


def _admm_phase(
    job: FinetuneJob,
    config: AdmmConfig,
    checkpoint: Callable[[dict[str, Any]], None] | None,
    resume: Mapping[str, Any] | None,
) -> list[dict[str, float]]:
    """The ADMM iterations (W, Z, U updates) on ``model`` in place; returns one record per iteration.

    ``checkpoint(state)`` is called after every epoch (after the Z and U updates when the epoch ends an iteration)
    with what ``resume=state`` needs. An epoch the time budget cannot fit (with the retraining after it) ends the
    phase; the iteration it cuts short still updates Z and U."""
    rank = world()[0]
    model, logger, device = job.model, job.logger, job.device
    layers = [(s, job.policy.action(s.name)) for s in job.specs if not job.policy.action(s.name).is_dense]
    if not layers:
        return []
    weights = [s.module.weight for s, _ in layers]
    z, u, rho = [project_layer(w.detach(), s.grid, a.prune, a.unify)[1] for w, (s, a) in zip(weights, layers)], [torch.zeros_like(w) for w in weights], config.rho

    def penalty() -> Tensor:
        return 0.5 * rho * sum(((w - zi + ui) ** 2).sum() for w, zi, ui in zip(weights, z, u))

    optimizer = make_optimizer(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    done = 0
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        z, u = [t.clone() for t in resume["z"]], [t.clone() for t in resume["u"]]
        rho, done, history = float(resume["rho"]), int(resume["done"]), list(resume["history"])
    net = wrap(model, device)

    def save(epochs_done: int) -> None:
        if checkpoint is not None:
            checkpoint({"done": epochs_done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "z": [zi.detach().clone() for zi in z], "u": [ui.detach().clone() for ui in u], "rho": rho,
                        "history": history})

    epoch, out_of_time = 0, False
    for it in range(config.iterations):
        if epoch + config.epochs_per_iteration <= done:  # this iteration, Z and U updates included, is in the state
            epoch += config.epochs_per_iteration
            continue
        ran = 0
        for _ in range(config.epochs_per_iteration):
            if epoch < done:
                epoch, ran = epoch + 1, ran + 1
                continue
            if not job.next_epoch(then=config.retrain_epochs):
                out_of_time = True
                break
            if config.schedule == "run":
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor("run", epoch, config.total_epochs)
            batches, total = epoch_batches(job.train_batches, epoch)
            stats = train_epoch(net, batches, optimizer, penalty=penalty, device=device, total=total, distill=job.distill,
                                desc=f"admm {it + 1}/{config.iterations} rho={rho:.3g}" if config.progress and rank == 0 else None)
            logger("admm/loss", stats["loss"], epoch)
            logger("admm/rho", rho, epoch)
            epoch, ran = epoch + 1, ran + 1
            if epoch % config.epochs_per_iteration:
                save(epoch)
        if ran == 0:
            break
        z, u, residual = _dual_update(weights, z, u, layers)
        logger("admm/residual", residual, epoch - 1)
        record = {"iteration": it, "epoch": epoch - 1, "rho": rho, "loss": stats["loss"], "residual": residual, "epochs": ran}
        if config.evaluate_every_iteration:
            record["val_accuracy"] = evaluate_on_rank0(job.evaluate, model)
            logger("admm/val_accuracy", record["val_accuracy"], epoch - 1)
        history.append(record)
        # U is the scaled dual (y / rho): rescale it with rho so the dual y itself is unchanged
        rho *= config.rho_growth
        u = [ui / config.rho_growth for ui in u]
        save(epoch)
        if out_of_time:
            break
    del net  # drop DDP's hooks before retraining wraps the model again
    return history


def _run(job: FinetuneJob, config: AdmmConfig) -> Outcome:
    checkpoint, resume = job.checkpoint, job.resume
    phase = resume.get("phase") if resume else None
    if phase not in (None, "admm", "retrain"):
        raise ConfigError(f"a fine-tuning state of unknown phase {phase!r}; start over without it")
    admm_history: list[dict[str, float]] = []
    if config.method == "admm" and phase != "retrain":
        admm_history = _admm_phase(job, config,
                                   checkpoint=None if checkpoint is None else (lambda s: checkpoint({"phase": "admm", **s})),
                                   resume=resume if phase == "admm" else None)
    if phase == "retrain":  # the hard projection was made before the state was saved: take it from there
        admm_history, projected = list(resume["admm_history"]), float(resume["projected"])
        before = resume.get("before")
        structures = {name: structure_from_record(rec) for name, rec in resume["structures"].items()}
    else:
        # masked projects the dense model, whose accuracy the caller knows: only ADMM's is measured here
        last = admm_history[-1] if admm_history else {}
        before = last["val_accuracy"] if "val_accuracy" in last else (
            evaluate_on_rank0(job.evaluate, job.model) if admm_history else None)
        structures = project_model(job.model, job.policy, job.shapes, apply=True)
        projected = evaluate_on_rank0(job.evaluate, job.model)
        job.logger("admm/projected_accuracy", projected, config.admm_epochs)
    records = {name: structure_record(s) for name, s in structures.items()}

    def retrain_checkpoint(state: dict[str, Any]) -> None:
        checkpoint({"phase": "retrain", "structures": records, "projected": projected, "before": before,
                    "admm_history": admm_history, **state})

    structures, retrain_history = retrain(
        job.model, structures, job.train_batches, job.evaluate,
        epochs=config.retrain_epochs, lr=config.retrain_lr or config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, device=job.device, log=job.log, first_epoch=config.admm_epochs,
        progress=config.progress, schedule=config.schedule, run_epochs=config.total_epochs, distill=job.distill,
        keep_best=config.keep_best, next_epoch=job.next_epoch,
        checkpoint=None if checkpoint is None else retrain_checkpoint, resume=resume if phase == "retrain" else None,
    )
    final = max((r["val_accuracy"] for r in retrain_history), default=projected) if config.keep_best else \
        (retrain_history[-1]["val_accuracy"] if retrain_history else projected)
    admm_epochs = sum(int(h.get("epochs", config.epochs_per_iteration)) for h in admm_history)
    return Outcome(structures, final, projected, admm_history, retrain_history,
                   residual=admm_history[-1]["residual"] if admm_history else None, admm_epochs=admm_epochs,
                   before_projection=None if before is None else float(before), best_epoch=best_epoch(retrain_history),
                   epochs_run=admm_epochs + len(retrain_history))
