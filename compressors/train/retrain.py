"""Training inside a fixed structure: pruned blocks frozen at 0, each unified block tied to one magnitude.

The last phase of every fine-tuning method (after ADMM's hard projection, or alone for ``masked``), and
how unstructured baselines are retrained (``masks``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ..core.constraints import bake, constrain, constrain_masks
from ..core.errors import ConfigError
from ..core.structure import LayerStructure
from .distributed import LogFn, RankLogger, epoch_batches, evaluate_on_rank0, world, wrap
from .training import Distillation, make_optimizer, train_epoch

#: ``cosine``: retraining's own cosine from its base lr; ``constant``; ``run``: one cosine over the whole
#: run, ADMM epochs included, that retraining continues (its base lr is the run's).
SCHEDULES = ("cosine", "constant", "run")


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The base lr's factor at ``epoch`` (0-based) of ``epochs``: cosine towards 0 (the last epoch keeps a
    little) for ``cosine`` and ``run``, 1 for ``constant``."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / max(1, epochs)))


def epoch_schedule(optimizer: torch.optim.Optimizer, epochs: int, schedule: str, *, offset: int = 0, span: int | None = None) -> LambdaLR:
    """Stepped once per epoch: :func:`lr_factor` over ``epochs``, or for ``run`` over ``span`` epochs of
    which retraining's first is ``offset``."""
    if schedule == "run":
        return LambdaLR(optimizer, lambda e: lr_factor("run", offset + e, span or epochs))
    lr_factor(schedule, 0, epochs)
    return LambdaLR(optimizer, lambda e: lr_factor(schedule, e, epochs))


def retrain(
    model: nn.Module,
    structures: Mapping[str, LayerStructure],
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    *,
    masks: Mapping[str, Tensor] | None = None,
    **options: Any,
) -> tuple[dict[str, LayerStructure], list[dict[str, float]]]:
    """Train ``model`` with every layer held to its structure (:func:`train_epochs`, whose keyword options it
    takes), then bake the weights.

    ``masks`` (0/1 per weight, for unstructured baselines) are held as well, for layers without a structure.
    Returns the structures with trained magnitudes and one ``{"epoch", "loss", "val_accuracy"}`` record per
    epoch (accuracy of the constrained model).
    """
    constrain(model, structures)
    try:
        if masks:
            constrain_masks(model, masks)
        history = train_epochs(model, train_batches, evaluate, **options)
    finally:
        trained = bake(model)
    out = dict(structures)
    out.update(trained)
    return out, history


def train_epochs(
    model: nn.Module,
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: str | torch.device = "cpu",
    log: LogFn | None = None,
    first_epoch: int = 0,
    progress: bool = True,
    prefix: str = "admm",
    schedule: str = "cosine",
    run_epochs: int | None = None,
    distill: Distillation | None = None,
    keep_best: bool = True,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
    next_epoch: Callable[[], bool] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` (as it is: constrained or plain) for ``epochs``, validating after each.

    ``train_batches(epoch)`` is called with ``first_epoch + i``; the learning rate follows ``schedule``
    (``"cosine"`` per epoch from ``lr``, ``"constant"``, or ``"run"``: the cosine of a run of ``run_epochs``
    epochs, from its epoch ``first_epoch`` on). Scalars are logged as ``<prefix>/loss`` and
    ``<prefix>/val_accuracy``. With ``keep_best``, the model ends with the weights of its best epoch by
    validation accuracy (the first of equals wins, so a flat accuracy keeps the earliest) and that epoch's
    record has ``"best": True``. ``checkpoint(state)``, when given, is called after every epoch with what
    ``resume=state`` needs to go on from there (the model's and the optimizer's state, epochs done, history).
    ``next_epoch()``, when given, is asked before each epoch; False ends the training there (a time budget).
    Returns one ``{"epoch", "loss", "val_accuracy"}`` record per epoch run.
    """
    history: list[dict[str, float]] = list(resume["history"]) if resume else []
    if epochs <= 0:
        return history
    device = torch.device(device)
    logger = RankLogger(log)
    best: dict[str, Any] | None = resume.get("best") if resume else None
    optimizer = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = epoch_schedule(optimizer, epochs, schedule, offset=first_epoch, span=run_epochs)
    done = 0
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        done = int(resume["done"])
        scheduler.last_epoch = done  # the optimizer's state holds the lr of that epoch already
    net = wrap(model, device)
    show = progress and world()[0] == 0
    for i in range(done, epochs):
        if next_epoch is not None and not next_epoch():
            break
        epoch = first_epoch + i
        batches, total = epoch_batches(train_batches, epoch)
        stats = train_epoch(net, batches, optimizer, device=device, total=total, distill=distill,
                            desc=f"{prefix} retrain {i + 1}/{epochs}" if show else None)
        scheduler.step()
        acc = evaluate_on_rank0(evaluate, model)
        history.append({"epoch": epoch, "loss": stats["loss"], "val_accuracy": acc})
        logger(f"{prefix}/loss", stats["loss"], epoch)
        logger(f"{prefix}/val_accuracy", acc, epoch)
        if keep_best and (best is None or acc > best["val_accuracy"]):
            best = {"val_accuracy": acc, "index": len(history) - 1,
                    "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if checkpoint is not None:
            checkpoint({"done": i + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "history": history, **({"best": best} if best is not None else {})})
    del net
    if best is not None and best["index"] != len(history) - 1:
        model.load_state_dict(best["model"])
    if best is not None:
        history[int(best["index"])] = history[int(best["index"])] | {"best": True}
    return history


def best_epoch(history: list[dict[str, float]]) -> int | None:
    """The epoch of the record marked ``best`` (else the last record's), ``None`` for no record."""
    marked = [r for r in history if r.get("best")]
    chosen = marked[0] if marked else (history[-1] if history else None)
    return None if chosen is None else int(chosen["epoch"])
