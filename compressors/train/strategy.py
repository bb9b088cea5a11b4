"""The contract between the fine-tuning driver (:mod:`.finetune`) and its strategies (ADMM, masked, AGP).

The driver does what every method shares (device, block shapes, checking the policy against the model,
the result record); a strategy only decides how the weights reach the policy's structure and how they are
retrained in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..core.blocks import LayerSpec
from ..core.policy import Policy
from ..core.structure import BlockShape, LayerStructure
from .distributed import LogFn, RankLogger, broadcast_from_rank0
from .timebudget import Deadline
from .training import Distillation


@dataclass(frozen=True)
class FinetuneJob:
    """What a strategy is handed: the model (moved to ``device``) and policy, checked against each other.

    ``train_batches(epoch)`` gives that epoch's ``(x, y)`` batches (the same sequence on every rank);
    ``evaluate(model)`` the validation accuracy in [0, 1]; ``checkpoint(state)``, when given, is called after
    every epoch with a state from which ``resume=state`` goes on; ``deadline``, when given, is asked before
    every epoch (:meth:`next_epoch`)."""

    model: nn.Module
    policy: Policy
    shapes: dict[str, BlockShape]
    specs: list[LayerSpec]
    train_batches: Callable[[int], Iterable]
    evaluate: Callable[[nn.Module], float]
    device: torch.device
    log: LogFn | None = None
    distill: Distillation | None = None
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    resume: Mapping[str, Any] | None = None
    deadline: Deadline | None = None
    logger: RankLogger = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "logger", RankLogger(self.log))

    def next_epoch(self, then: int = 0) -> bool:
        """Whether the next epoch, and ``then`` epochs after it, fit in the time budget (always True without one).
        Strategies call it before each epoch and skip what does not fit: the rest of an ADMM phase (leaving time
        for the projection and retraining), or the rest of the retraining."""
        return self.deadline is None or bool(broadcast_from_rank0(self.deadline.next_epoch(then)))


@dataclass
class Outcome:
    """What a strategy returns: the trained structures and the accuracies on the way (in [0, 1]).

    The convergence diagnostics (:mod:`.diagnostics` turns them into warnings): ``residual``, ADMM's primal
    residual ``||W - Z|| / ||W||`` at the end of its phase (``None`` without one); ``admm_epochs``, the ADMM
    epochs run; ``before_projection``, the validation accuracy just before the hard projection (``None`` when
    not measured), ``projected_accuracy`` just after it; ``best_epoch``, the epoch (0-based, over the whole run)
    whose weights were kept; ``epochs_run``, every epoch trained; ``channels``: for channel pruning, the pruned
    architecture (:func:`.channel.channel_record`) and its MAC ratio."""

    structures: dict[str, LayerStructure]
    accuracy: float
    projected_accuracy: float
    admm_history: list[dict[str, float]]
    retrain_history: list[dict[str, float]]
    residual: float | None = None
    admm_epochs: int = 0
    before_projection: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    channels: dict[str, Any] | None = None


class FinetuneConfig(Protocol):
    """A strategy's options; ``run`` is the strategy itself; ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""

    device: str

    @property
    def method(self) -> str: ...

    @property
    def total_epochs(self) -> int: ...

    @property
    def least_epochs(self) -> int:
        """The fewest epochs the method can run (what a time budget must fit)."""
        ...

    def with_epochs(self, epochs: int) -> FinetuneConfig:
        """A copy planned for ``epochs`` in all (>= :attr:`least_epochs`) under one cosine over the whole run."""
        ...

    def run(self, job: FinetuneJob) -> Outcome: ...
