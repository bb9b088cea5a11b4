"""What every fine-tuning strategy needs to run the same on one process or under ``torchrun``.

When ``torch.distributed`` is initialised with more than one process (gloo on CPU, NCCL on GPU), training
runs under DistributedDataParallel and each rank takes every ``world_size``-th batch of the sequence
``train_batches(epoch)`` gives (which must be the same on every rank: seed it by the epoch). Evaluation and
logging run on rank 0 only and the accuracy is broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

#: ``log(key, value, step)``: one scalar (TensorBoard-style key such as ``admm/loss``) at a step.
LogFn = Callable[[str, float, int], None]


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batches(batches: Iterable, rank: int, world_size: int) -> Iterator:
    """Every ``world_size``-th batch of ``batches`` starting at ``rank``; an incomplete last round is
    dropped so that all ranks step the same number of times (DDP needs that)."""
    if world_size == 1:
        yield from batches
        return
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == world_size:
            yield group[rank]
            group = []


def epoch_batches(train_batches: Callable[[int], Iterable], epoch: int) -> tuple[Iterator, int | None]:
    """This rank's batches of ``epoch`` and their number when known (for the progress bar)."""
    rank, size = world()
    batches = train_batches(epoch)
    total = len(batches) // size if hasattr(batches, "__len__") else None
    return shard_batches(batches, rank, size), total


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel when there is more than one process, else itself.

    DDP registers the parameters when it wraps: a caller whose parameters change (new tied magnitudes)
    wraps again."""
    if world()[1] == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast_from_rank0(value: T) -> T:
    """Rank 0's ``value`` on every rank (itself on one process): decisions every rank must take alike, such as
    whether a time budget fits another epoch."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def evaluate_on_rank0(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float:
    """``evaluate(model)`` computed on rank 0 and broadcast to every rank."""
    return float(broadcast_from_rank0(float(evaluate(model)) if world()[0] == 0 else 0.0))


class RankLogger:
    """``log`` on rank 0, nothing elsewhere (``log=None``: nothing anywhere)."""

    def __init__(self, log: LogFn | None) -> None:
        self.log = log if world()[0] == 0 else None

    def __call__(self, key: str, value: float, step: int) -> None:
        if self.log is not None:
            self.log(key, float(value), step)
