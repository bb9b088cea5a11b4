"""The one fine-tuning driver: a dense model trained into a policy's exact structure.

:func:`finetune` does what every method shares and hands the rest to the strategy its config names:
:class:`.admm.AdmmConfig` (``admm``: ADMM, hard projection, retraining; ``masked``: projection and
retraining) or :class:`.agp.AgpConfig` (``agp``: a gradual ramp). Every method can learn from the dense
teacher's logits (``distill``) and runs under ``torchrun`` as on one process (:mod:`.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from ..core.blocks import policy_block_shapes, policy_layers
from ..core.policy import Policy
from ..core.projection import check_policy_layers
from ..core.structure import BlockShape
from .admm import AdmmConfig
from .agp import AgpConfig
from .distributed import LogFn
from .strategy import FinetuneConfig, FinetuneJob
from .training import Distillation

__all__ = ["AdmmConfig", "AgpConfig", "FinetuneConfig", "finetune"]


def finetune(
    model: nn.Module,
    policy: Policy,
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    config: FinetuneConfig,
    *,
    block_shapes: Mapping[str, BlockShape] | None = None,
    log: LogFn | None = None,
    distill: Distillation | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` (in place) into ``policy``'s structure by the strategy ``config`` names.

    Args:
        model: the trained dense network; on return it holds plain weights that obey the structures.
        policy: per-layer prune/unify fractions of the weights; block shapes from ``block_shapes``, else the
            policy's, else the defaults. A layer the model lacks is refused before any training.
        train_batches: ``epoch -> iterable of (x, y)`` for that epoch (shuffled by the epoch as seed; the
            same sequence on every rank under torchrun).
        evaluate: ``model -> validation accuracy in [0, 1]`` (given the bare module, rank 0 only).
        config: :class:`AdmmConfig` (methods ``admm``, ``masked``) or :class:`AgpConfig` (``agp``).
        log: ``log(key, value, step)`` for the strategy's scalars (``admm/loss``, ``admm/val_accuracy``,
            ``admm/residual``, ``admm/rho``, ``admm/projected_accuracy``; ``agp/fraction``, ``agp/loss``,
            ``agp/val_accuracy``; step = epoch index, or pruning step for ``agp/fraction``).
        distill: learn from a dense teacher's logits as well (:class:`~.training.Distillation`).
        checkpoint: called after every epoch with a state (tensors, numbers, lists and dicts only) from
            which ``resume=state`` goes on, losing nothing of the epochs done (``admm`` and ``masked``).
        resume: a state ``checkpoint`` was given, with ``model`` as it was built for the first run.

    Returns:
        ``{"structures": {layer: LayerStructure}, "method", "accuracy" (final validation accuracy),
        "projected_accuracy" (at the full structure, before retraining), "epochs", "admm_history",
        "retrain_history", "config"}``.
    """
    device = torch.device(config.device)
    model.to(device)
    if distill is not None:
        distill.teacher.to(device)
    shapes = policy_block_shapes(policy.block_shape, block_shapes)
    specs = policy_layers(model, policy, block_shapes)
    check_policy_layers(policy, [s.name for s in specs], model)
    job = FinetuneJob(model, policy, shapes, specs, train_batches, evaluate, device, log=log, distill=distill,
                      checkpoint=checkpoint, resume=resume)
    outcome = config.run(job)
    return {
        "structures": outcome.structures,
        "method": config.method,
        "accuracy": outcome.accuracy,
        "projected_accuracy": outcome.projected_accuracy,
        "epochs": config.total_epochs,
        "admm_history": outcome.admm_history,
        "retrain_history": outcome.retrain_history,
        "config": asdict(config),
    }
