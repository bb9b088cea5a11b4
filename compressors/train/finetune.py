"""The one fine-tuning driver: a dense model trained into a policy's exact structure.

:func:`finetune` does what every method shares and hands the rest to the strategy its config names:
:class:`.admm.AdmmConfig` (``admm``: ADMM, hard projection, retraining; ``masked``: projection and
retraining), :class:`.agp.AgpConfig` (``agp``: a gradual ramp) or :class:`.channel_strategy.ChannelConfig`
(``channel``: Torch-Pruning to a MAC or latency ratio, then the smaller dense model fine-tuned). What every
method shares: learning from the dense teacher's logits (on by default when the teacher is given), a time
budget from which the epochs are planned (:mod:`.timebudget`), checkpoints to resume from, and ``torchrun``
(:mod:`.distributed`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from ..core.blocks import policy_block_shapes, policy_layers
from ..core.errors import ConfigError
from ..core.policy import Policy
from ..core.projection import check_policy_layers
from ..core.structure import BlockShape
from .admm import AdmmConfig
from .agp import AgpConfig
from .channel_strategy import ChannelConfig
from .distributed import LogFn, broadcast_from_rank0
from .strategy import FinetuneConfig, FinetuneJob, Outcome
from .timebudget import Deadline, TimeBudget, measure_epoch, plan_epochs
from .training import Distillation

__all__ = ["AdmmConfig", "AgpConfig", "ChannelConfig", "Distillation", "FinetuneConfig", "TimeBudget", "finetune"]


def resolve_distillation(distill: Distillation | bool | None, teacher: nn.Module | None, student: nn.Module) -> Distillation | None:
    """The distillation a run uses: ``distill=False`` none; ``None`` (the default) Hinton's with default settings
    when ``teacher`` is given, else none; ``True`` or settings without a teacher take ``teacher``. A teacher that
    is the student itself is copied first (the student's weights change, and channel pruning reshapes it)."""
    if distill is False:
        return None
    if distill is None or distill is True:
        if teacher is None:
            if distill:
                raise ConfigError("distillation needs the dense teacher: give the dense checkpoint (finetune's teacher=), "
                                  "or turn distillation off (--no-distill)")
            return None
        distill = Distillation()
    if not isinstance(distill, Distillation):
        raise ConfigError(f"distill must be a Distillation, True, False or None, got {type(distill).__name__}")
    chosen = distill.teacher if distill.teacher is not None else teacher
    if chosen is None:
        raise ConfigError("distillation needs the dense teacher: give the dense checkpoint (finetune's teacher=)")
    if chosen is student:
        chosen = copy.deepcopy(student)
    return replace(distill, teacher=chosen.eval())


def _plan(config: FinetuneConfig, budget: TimeBudget, job_args: dict[str, Any], resume: Mapping[str, Any] | None,
          device: torch.device) -> tuple[FinetuneConfig, Deadline, dict[str, Any]]:
    """The config planned for ``budget`` and the deadline it runs under: from the state a resumed run kept, else
    from the measured cost of an epoch here (rank 0's plan on every rank)."""
    if resume and "budget" in resume:
        kept = resume["budget"]
        return config.with_epochs(int(kept["epochs"])), Deadline.from_state(kept), dict(kept.get("plan", {}))
    deadline = Deadline(budget.seconds)
    cost = measure_epoch(job_args["model"], job_args["train_batches"], job_args["evaluate"], budget=budget, device=device,
                         distill=job_args["distill"])
    epochs = broadcast_from_rank0(plan_epochs(budget, cost, spent=deadline.elapsed(), least=config.least_epochs))
    deadline.estimate = cost.seconds
    plan = {"minutes": float(budget.minutes), "epoch_seconds": cost.seconds, "batch_seconds": cost.batch_seconds,
            "eval_seconds": cost.eval_seconds, "batches": cost.batches, "planned_epochs": epochs}
    return config.with_epochs(epochs), deadline, plan


def finetune(
    model: nn.Module,
    policy: Policy,
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    config: FinetuneConfig,
    *,
    block_shapes: Mapping[str, BlockShape] | None = None,
    log: LogFn | None = None,
    distill: Distillation | bool | None = None,
    teacher: nn.Module | None = None,
    time_budget: TimeBudget | float | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` (in place) into ``policy``'s structure by the strategy ``config`` names.

    Args:
        model: the trained dense network; on return it holds plain weights that obey the structures (for
            ``channel``: its conv, norm and linear layers replaced by smaller ones).
        policy: per-layer prune/unify fractions of the weights; block shapes from ``block_shapes``, else the
            policy's, else the defaults. A layer the model lacks is refused before any training.
        train_batches: ``epoch -> iterable of (x, y)`` for that epoch (shuffled by the epoch as seed; the
            same sequence on every rank under torchrun).
        evaluate: ``model -> validation accuracy in [0, 1]`` (given the bare module, rank 0 only).
        config: :class:`AdmmConfig` (``admm``, ``masked``), :class:`AgpConfig` (``agp``) or :class:`ChannelConfig`.
        log: ``log(key, value, step)`` for the strategy's scalars (``admm/loss``, ``admm/val_accuracy``,
            ``admm/residual``, ``admm/rho``, ``admm/projected_accuracy``; ``agp/*``; ``channel/*``; step = epoch).
        distill: :func:`resolve_distillation`: on by default when ``teacher`` is given; ``False`` turns it off;
            a :class:`Distillation` sets the temperature and weight.
        teacher: the dense network the student learns from (may be ``model`` itself: it is copied first).
        time_budget: minutes (or a :class:`TimeBudget`) for the whole run: the epochs are planned from the
            measured cost of one (``config``'s own counts are replaced; one cosine over the run), and an epoch
            that would end past the budget is not started.
        checkpoint: called after every epoch with a state (tensors, numbers, lists and dicts only) from
            which ``resume=state`` goes on, losing nothing of the epochs done (not ``agp``).
        resume: a state ``checkpoint`` was given, with ``model`` as it was built for the first run.

    Returns:
        ``{"structures": {layer: LayerStructure}, "method", "accuracy" (final validation accuracy),
        "projected_accuracy" (at the full structure, before retraining), "epochs" (planned), "epochs_run",
        "admm_history", "retrain_history", "config", "residual", "admm_epochs", "before_projection",
        "best_epoch" (the diagnostics of :class:`.strategy.Outcome`), "distill" (its settings or None),
        "time_budget" (the plan, seconds used, ``met`` and ``stopped_early``; None without one), "channels"}``.
    """
    device = torch.device(config.device)
    chosen = resolve_distillation(distill, teacher, model)
    model.to(device)
    if chosen is not None:
        chosen.teacher.to(device)
    shapes = policy_block_shapes(policy.block_shape, block_shapes)
    specs = policy_layers(model, policy, block_shapes)
    check_policy_layers(policy, [s.name for s in specs], model)
    deadline, plan = None, None
    if time_budget is not None:
        budget = time_budget if isinstance(time_budget, TimeBudget) else TimeBudget(time_budget)
        config, deadline, plan = _plan(config, budget, {"model": model, "train_batches": train_batches, "evaluate": evaluate,
                                                        "distill": chosen}, resume, device)
        if checkpoint is not None:
            keep = checkpoint
            checkpoint = lambda state: keep({**state, "budget": {**deadline.state(), "epochs": config.total_epochs, "plan": plan}})  # noqa: E731
    job = FinetuneJob(model, policy, shapes, specs, train_batches, evaluate, device, log=log, distill=chosen,
                      checkpoint=checkpoint, resume=resume, deadline=deadline)
    outcome = config.run(job)
    return _result(outcome, config, chosen, deadline, plan)


def _result(outcome: Outcome, config: FinetuneConfig, distill: Distillation | None, deadline: Deadline | None,
            plan: dict[str, Any] | None) -> dict[str, Any]:
    budget = None
    if deadline is not None:
        used = deadline.elapsed()
        budget = {**(plan or {}), "seconds_used": used, "met": used <= deadline.seconds, "stopped_early": deadline.refused}
    return {
        "structures": outcome.structures,
        "method": config.method,
        "accuracy": outcome.accuracy,
        "projected_accuracy": outcome.projected_accuracy,
        "epochs": config.total_epochs,
        "epochs_run": outcome.epochs_run,
        "admm_history": outcome.admm_history,
        "retrain_history": outcome.retrain_history,
        "config": asdict(config),
        "residual": outcome.residual,
        "admm_epochs": outcome.admm_epochs,
        "before_projection": outcome.before_projection,
        "best_epoch": outcome.best_epoch,
        "distill": None if distill is None else distill.settings(),
        "time_budget": budget,
        "channels": outcome.channels,
    }
