"""Fine-tuning to a wall-clock budget: epochs planned from measured epoch time, and a deadline that holds.

A run given ``TimeBudget(minutes)`` first times a few training batches (on a copy of the model, with the
teacher when distilling) and one validation pass; from those it plans the whole run's epochs so that they
fit (:func:`plan_epochs`), and the strategy runs them under one cosine schedule. Machines change speed while
a run goes on (other jobs, thermal limits), so the :class:`Deadline` is checked again before every epoch: an
epoch that would end past the budget, by the pace of the epochs so far, is not started. A resumed run keeps
its plan and the time it had already spent (:meth:`Deadline.state`).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from .distributed import epoch_batches
from .training import Distillation, make_optimizer, train_epoch


@dataclass(frozen=True)
class TimeBudget:
    """A wall-clock budget for a whole fine-tune.

    Attributes:
        minutes: the budget, > 0 (probe, training, validation and projection all count against it).
        max_epochs: at most this many epochs however much time is left (``None``: no cap), >= 1.
        fill: share of the budget the plan fills, in (0, 1]; the rest absorbs a machine that slows down.
        probe_batches: training batches timed before the plan (the first is a warm-up and not counted), >= 2.
    """

    minutes: float
    max_epochs: int | None = None
    fill: float = 0.9
    probe_batches: int = 6

    def __post_init__(self) -> None:
        if isinstance(self.minutes, bool) or not isinstance(self.minutes, (int, float)) or not (
                self.minutes > 0 and math.isfinite(self.minutes)):
            raise ConfigError(f"the time budget must be a positive number of minutes, got {self.minutes!r}; try --time-budget 10")
        if self.max_epochs is not None and (isinstance(self.max_epochs, bool) or int(self.max_epochs) < 1):
            raise ConfigError(f"the most epochs a time budget may plan must be >= 1, got {self.max_epochs!r}")
        if not 0 < self.fill <= 1:
            raise ConfigError(f"the share of the time budget to fill must be in (0, 1], got {self.fill}")
        if int(self.probe_batches) < 2:
            raise ConfigError(f"probe_batches must be >= 2 (the first is a warm-up), got {self.probe_batches}")

    @property
    def seconds(self) -> float:
        """The budget in seconds."""
        return 60.0 * float(self.minutes)


@dataclass(frozen=True)
class EpochCost:
    """Measured cost of one epoch: ``batches`` training batches of ``batch_seconds`` each, and a validation pass
    of ``eval_seconds``."""

    batches: int
    batch_seconds: float
    eval_seconds: float

    @property
    def seconds(self) -> float:
        """One epoch, training and its validation pass, in seconds."""
        return self.batches * self.batch_seconds + self.eval_seconds


def measure_epoch(model: nn.Module, train_batches: Callable[[int], Iterable], evaluate: Callable[[nn.Module], float], *,
                  budget: TimeBudget, device: torch.device, distill: Distillation | None = None) -> EpochCost:
    """Time ``budget.probe_batches`` training steps and one validation pass on a copy of ``model`` (``model`` and
    the data order are left as they were). An epoch without ``len()`` is counted by one pass over it."""
    probe = copy.deepcopy(model).to(device)
    optimizer = make_optimizer(probe, lr=1e-3)
    batches, count = epoch_batches(train_batches, 0)
    if count is None:
        count = sum(1 for _ in epoch_batches(train_batches, 0)[0])
    if count < 1:
        raise ConfigError("the training data gives no batch in an epoch; nothing to fine-tune (check --limit and --batch-size)")
    times = []
    iterator = iter(batches)
    for _ in range(min(int(budget.probe_batches), count)):
        start = time.perf_counter()  # loading the batch (decoding, augmenting) is part of an epoch's cost
        batch = next(iterator, None)
        if batch is None:
            break
        train_epoch(probe, [batch], optimizer, device=device, distill=distill)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    evaluate(probe)
    eval_seconds = time.perf_counter() - start
    per_batch = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return EpochCost(count, per_batch, eval_seconds)


def plan_epochs(budget: TimeBudget, cost: EpochCost, *, spent: float, least: int, extra_evals: int = 2) -> int:
    """The most epochs (at least ``least``) that fit in what is left of ``budget`` after ``spent`` seconds, with
    ``extra_evals`` validation passes besides one per epoch (the checks before and after a projection).

    Raises :class:`ConfigError` naming the budget needed when not even ``least`` epochs fit."""
    room = budget.seconds * budget.fill - spent - extra_evals * cost.eval_seconds
    epochs = math.floor(room / cost.seconds) if cost.seconds > 0 else least
    if budget.max_epochs is not None:
        epochs = min(epochs, int(budget.max_epochs))
    if epochs < least:
        need = (spent + extra_evals * cost.eval_seconds + least * cost.seconds) / budget.fill / 60.0
        raise ConfigError(f"a time budget of {budget.minutes:g} min fits {max(0.0, room / cost.seconds):.1f} epoch(s) of "
                          f"{cost.seconds:.0f} s here, fewer than the {least} this method needs: raise --time-budget to at "
                          f"least {math.ceil(need * 10) / 10:g} (or use fewer training samples with --limit)")
    return epochs


class Deadline:
    """The end of a budget (``seconds`` from now, less ``spent`` already used by an earlier process), and the pace
    of the epochs run under it."""

    def __init__(self, seconds: float, *, spent: float = 0.0, epoch_seconds: float = 0.0) -> None:
        self.seconds = float(seconds)
        self.started = time.monotonic() - float(spent)
        self.estimate = float(epoch_seconds)
        self.durations: list[float] = []
        self.last: float | None = None
        self.refused = False

    def elapsed(self) -> float:
        """Seconds of the budget used so far (earlier processes included)."""
        return time.monotonic() - self.started

    def next_epoch(self, then: int = 0) -> bool:
        """Called before each epoch: True when it (and ``then`` epochs after it) should end within the budget at the
        pace so far (the slower of the measured estimate and the mean of the epochs run), False (and remembered)
        when not."""
        now = time.monotonic()
        if self.last is not None:
            self.durations.append(now - self.last)
        self.last = now
        pace = max(self.estimate, statistics.fmean(self.durations) if self.durations else 0.0)
        if self.seconds - (now - self.started) < pace * (1 + then):
            self.refused = True
            return False
        return True

    def state(self) -> dict[str, float]:
        """What a resumed run needs to go on under the same budget (JSON-able)."""
        return {"seconds": self.seconds, "spent": self.elapsed(), "epoch_seconds": self.estimate}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Deadline:
        """The deadline a :meth:`state` describes, its clock going on from now."""
        return cls(float(state["seconds"]), spent=float(state["spent"]), epoch_seconds=float(state["epoch_seconds"]))
