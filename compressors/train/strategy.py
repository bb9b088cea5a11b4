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
from .distributed import LogFn, RankLogger
from .training import Distillation


@dataclass(frozen=True)
class FinetuneJob:
    """What a strategy is handed: the model (moved to ``device``) and policy, checked against each other.

    ``train_batches(epoch)`` gives that epoch's ``(x, y)`` batches (the same sequence on every rank);
    ``evaluate(model)`` the validation accuracy in [0, 1]; ``checkpoint(state)``, when given, is called after
    every epoch with a state from which ``resume=state`` goes on."""

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
    logger: RankLogger = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "logger", RankLogger(self.log))


@dataclass
class Outcome:
    """What a strategy returns: the trained structures and the accuracies on the way (in [0, 1])."""

    structures: dict[str, LayerStructure]
    accuracy: float
    projected_accuracy: float
    admm_history: list[dict[str, float]]
    retrain_history: list[dict[str, float]]


class FinetuneConfig(Protocol):
    """A strategy's options; ``run`` is the strategy itself; ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""

    device: str

    @property
    def method(self) -> str: ...

    @property
    def total_epochs(self) -> int: ...

    def run(self, job: FinetuneJob) -> Outcome: ...
