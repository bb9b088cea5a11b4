"""Channel pruning as a fine-tuning method: Torch-Pruning to a MAC or latency ratio, then the smaller dense model
fine-tuned (with the dense teacher's logits when the driver has them), through :func:`.finetune.finetune`.

The uniform share of channels removed from every prunable conv (:func:`.channel.channel_prune`) is found by
bisection: the least share whose pruned model is at or under the target ratio of the dense model's MACs (or
of its latency on the fastest dense engine, timed). The model handed to the driver is reshaped in place
(:func:`.channel.reshape_like`), so the caller's object is the pruned model afterwards; its architecture is
in the outcome (``channels["record"]``), which is what a checkpoint keeps to rebuild it without pickles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from .channel import ChannelReport, channel_prune, channel_record, reshape_like
from .distributed import epoch_batches, evaluate_on_rank0
from .retrain import SCHEDULES, best_epoch, train_epochs
from .strategy import FinetuneJob, Outcome

#: What the target ratio divides: the MACs (convs and linears) or the latency on the fastest dense engine.
MEASURES = ("macs", "latency")

#: ``ratio_of(pruned, report)``: the pruned model's MACs or latency over the dense model's.
RatioFn = Callable[[nn.Module, ChannelReport], float]


@dataclass
class ChannelConfig:
    """Options of the channel-pruning strategy (:func:`.finetune.finetune` runs it).

    Attributes:
        target: the pruned model's share of the dense model's ``measure``, in (0, 1); ``None``: the policy's
            latency budget.
        measure: ``"macs"`` (exact, instant) or ``"latency"`` (batch 1 on the fastest dense engine at its default
            precision, ``threads`` threads; each bisection step exports and times a candidate).
        epochs: fine-tuning epochs of the pruned model, >= 1.
        lr: initial SGD learning rate, > 0; ``schedule`` as :data:`.retrain.SCHEDULES` (default ``run``: one cosine).
        momentum: in [0, 1); ``weight_decay``: >= 0.
        keep_best: end with the epoch of best validation accuracy.
        device, progress, threads: where it trains, tqdm bars, threads of the latency timing (>= 1).
    """

    target: float | None = None
    measure: str = "macs"
    epochs: int = 2
    lr: float = 0.01
    schedule: str = "run"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    keep_best: bool = True
    device: str = "cpu"
    progress: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        if self.target is not None and (isinstance(self.target, bool) or not 0 < float(self.target) < 1):
            raise ConfigError(f"the channel-pruning target must be a ratio in (0, 1) of the dense model, got {self.target!r}; try 0.5")
        if self.measure not in MEASURES:
            raise ConfigError(f"measure must be one of {list(MEASURES)}, got {self.measure!r}")
        if isinstance(self.epochs, bool) or int(self.epochs) < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if int(self.threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    @property
    def method(self) -> str:
        """``"channel"``."""
        return "channel"

    @property
    def total_epochs(self) -> int:
        """The fine-tuning epochs."""
        return int(self.epochs)

    @property
    def least_epochs(self) -> int:
        """1."""
        return 1

    def with_epochs(self, epochs: int) -> ChannelConfig:
        """This config for ``epochs`` epochs under one cosine."""
        return replace(self, epochs=int(epochs), schedule="run")

    def run(self, job: FinetuneJob) -> Outcome:
        """The strategy: prune to the target, reshape the job's model in place, fine-tune it."""
        return _run(job, self)


def prune_to_ratio(model: nn.Module, example: torch.Tensor, target: float, ratio_of: RatioFn | None = None, *,
                   steps: int = 9) -> tuple[nn.Module, ChannelReport, float]:
    """The pruned copy of ``model`` at the least uniform channel share whose ``ratio_of`` is at most ``target``.

    ``ratio_of`` defaults to the MAC ratio. Bisection over the share in [0, 0.95] (``steps`` halvings: channel
    counts are whole, so the ratio reached is at or a little under ``target``). Returns the pruned copy, its
    report and its ratio; :class:`ConfigError` when even the largest share stays above ``target``."""
    measure = ratio_of or (lambda _pruned, report: report.mac_ratio)
    lo, hi = 0.0, 0.95
    pruned, report = channel_prune(model, hi, example)
    reached = measure(pruned, report)
    if reached > target:
        raise ConfigError(f"channel pruning reaches at best {reached:.2f} of the dense model here (scope {report.scope}), "
                          f"above the target {target:g}; raise the target (--channel-target)")
    best = (pruned, report, reached)
    for _ in range(steps):
        mid = (lo + hi) / 2
        pruned, report = channel_prune(model, mid, example)
        ratio = measure(pruned, report)
        if ratio <= target:
            best, hi = (pruned, report, ratio), mid
        else:
            lo = mid
    return best


def time_pruned(dense: nn.Module | Any, pruned: nn.Module, example: torch.Tensor, *, threads: int = 1, repeats: int = 50,
                statistic: str = "median", min_seconds: float = 0.0, baseline: str = "default") -> dict[str, Any]:
    """The channel-pruned model on its fastest dense engine at default precision, raced against every dense engine
    mode of the unpruned model in the same interleaved rounds (:func:`~uniprune.compressors.latency.engines.race`).

    ``dense``: the unpruned model, or its engines already built (:func:`~uniprune.compressors.latency.engines.dense_engines`
    on ``example``). The pruned model's engine is picked by a short interleaved timing of its default modes. Returns
    ``race``'s fields (``compressed_ms`` is the pruned model's) and ``compressed_engine``, ``compressed_precision``."""
    from ..latency.engines import DenseEngines, dense_engines, race
    from ..latency.timing import time_interleaved

    x = example.detach().float().cpu()
    engines = dense if isinstance(dense, DenseEngines) else dense_engines(dense, x, threads=threads)
    defaults = [m for m in engines.runners if ":" not in m]
    mine = dense_engines(pruned, x, threads=threads, engines=defaults)
    ms = time_interleaved(mine.runners, warmup=3, repeats=max(5, repeats // 5), threads=threads, statistic="min")
    best = min(ms, key=ms.__getitem__)
    result = race(engines, mine.runners[best], threads=threads, repeats=repeats, min_seconds=min_seconds,
                  statistic=statistic, baseline=baseline)
    return {**result, "compressed_engine": best, "compressed_precision": mine.precisions.get(best, "f32"),
            "notes": result["notes"] + mine.notes}


def latency_ratio_of(dense: nn.Module, example: torch.Tensor, *, threads: int = 1, repeats: int = 20) -> RatioFn:
    """``ratio_of`` for :func:`prune_to_ratio`: a candidate's time on its fastest dense engine (default precision,
    batch ``len(example)``) over the dense model's on its fastest, in the same rounds (:func:`time_pruned`)."""
    from ..latency.engines import dense_engines

    base = dense_engines(dense, example.detach().float().cpu(), threads=threads)
    return lambda pruned, _report: float(time_pruned(base, pruned, example, threads=threads, repeats=repeats)["latency_ratio"])


def _example(job: FinetuneJob) -> torch.Tensor:
    batches, _ = epoch_batches(job.train_batches, 0)
    for x, _y in batches:
        return x[:1].to(job.device)
    raise ConfigError("the training data gives no batch; nothing to prune or fine-tune (check --limit and --batch-size)")


def _prune_in_place(job: FinetuneJob, config: ChannelConfig) -> dict[str, Any]:
    target = config.target if config.target is not None else job.policy.latency_budget
    if target is None or not 0 < float(target) < 1:
        raise ConfigError(f"channel pruning needs a target ratio in (0, 1), got {target!r}: set ChannelConfig.target "
                          "(--channel-target) or use a policy with a latency budget")
    example = _example(job)
    ratio_of = latency_ratio_of(job.model, example, threads=config.threads) if config.measure == "latency" else None
    pruned, report, reached = prune_to_ratio(job.model, example, float(target), ratio_of)
    record = channel_record(pruned)
    reshape_like(job.model, record).load_state_dict(pruned.state_dict())
    job.model.to(job.device)
    return {"record": record, "measure": config.measure, "target": float(target), "ratio": reached,
            "mac_ratio": report.mac_ratio, "macs_before": report.macs_before, "macs_after": report.macs_after,
            "scope": report.scope, "kept": {name: list(pair) for name, pair in report.kept.items()}}


def _run(job: FinetuneJob, config: ChannelConfig) -> Outcome:
    resume = job.resume
    if resume and resume.get("phase") != "channel":
        raise ConfigError(f"a fine-tuning state of phase {resume.get('phase')!r} cannot resume a channel-pruning run; "
                          "start over without it")
    if resume:  # the pruned architecture is in the state: rebuild it before loading its weights
        channels, projected = dict(resume["channels"]), float(resume["projected"])
        reshape_like(job.model, channels["record"]).to(job.device)
    else:
        channels = _prune_in_place(job, config)
        projected = evaluate_on_rank0(job.evaluate, job.model)
        job.logger("channel/pruned_accuracy", projected, 0)

    def keep(state: dict[str, Any]) -> None:
        job.checkpoint({"phase": "channel", "channels": channels, "projected": projected, **state})  # type: ignore[misc]

    history = train_epochs(job.model, job.train_batches, job.evaluate, epochs=config.total_epochs, lr=config.lr,
                           momentum=config.momentum, weight_decay=config.weight_decay, device=job.device, log=job.log,
                           progress=config.progress, prefix="channel", schedule=config.schedule,
                           run_epochs=config.total_epochs, distill=job.distill, keep_best=config.keep_best,
                           checkpoint=keep if job.checkpoint is not None else None, resume=resume,
                           next_epoch=job.next_epoch)
    final = max((r["val_accuracy"] for r in history), default=projected) if config.keep_best else \
        (history[-1]["val_accuracy"] if history else projected)
    return Outcome({}, final, projected, [], history, best_epoch=best_epoch(history), epochs_run=len(history),
                   channels=channels)
