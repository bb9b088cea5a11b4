"""The fine-tune job's options (:class:`FinetuneSpec`): methods, epochs or a time budget, distillation, ADMM and
channel-pruning settings, data and outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from uniprune.compressors.train.channel_strategy import MEASURES
from uniprune.compressors.train.retrain import SCHEDULES

from .spec import Spec, fraction, option, positive_float, positive_int, threads_option
from .specs import precision_option

#: ``admm``: ADMM, hard projection, retraining; ``masked``: projection and retraining; ``channel``: Torch-Pruning of
#: whole channels, then the smaller dense model fine-tuned.
METHODS = ("admm", "masked", "channel")


@dataclass(frozen=True, kw_only=True)
class FinetuneSpec(Spec):
    """Fine-tune a model into a policy's structure (ADMM, masked retraining, or channel pruning) and save it.

    ``epochs`` is the whole budget (or ``time_budget`` minutes, from which the epochs are planned); ``admm`` spends
    ``retrain_epochs`` (default ``max(1, round(E/3))``) on retraining after the hard projection and the rest on
    ADMM, in ``iterations`` iterations (default one per epoch). The dense model is the teacher of every method
    (knowledge distillation) whenever its checkpoint is known, unless ``distill`` is False.
    """

    run_dir: str | None = option(None, "a search run directory: reads its policy.json and config.json (model, checkpoint, "
                                 "dataset, data) and writes compressed.pt, finetune.json and admm/* curves in tb/ there",
                                 kind=str, shown="none")
    policy: str | None = option(None, "policy.json to fine-tune into", kind=str, shown="RUN/policy.json")
    model: str | None = option(None, "model name", kind=str, shown="from the run's config.json or the policy")
    checkpoint: str | None = option(None, "the trained dense model's checkpoint", kind=str, shown="the run's")
    dataset: str | None = option(None, "digits, fashion-mnist, cifar10, imagefolder, npz", kind=str, shown="the run's, else digits")
    data: str | None = option(None, "the dataset's folder or file", kind=str, shown="the run's")
    method: str = option("admm", "admm (ADMM, hard projection, retraining), masked (projection and retraining), or channel "
                         "(Torch-Pruning of whole channels to --channel-target, then the smaller dense model fine-tuned; "
                         "bench times it on the dense engines)", choices=METHODS)
    epochs: int = option(3, "total training epochs, >= 1 (>= 2 for admm)")
    time_budget: float | None = option(None, "minutes for the whole fine-tune, > 0: the epochs are planned from the measured "
                                       "time of one (instead of --epochs; one cosine over the run, a third of them "
                                       "retraining for admm) and an epoch that would end past the budget is not started",
                                       kind=float, shown="none: --epochs")
    distill: bool | None = option(None, "learn from the dense model's logits as well as the labels (Hinton et al. 2015)",
                                  negatable=True, shown="on when the dense checkpoint is known")
    distill_temperature: float = option(4.0, "distillation temperature T, > 0")
    distill_weight: float = option(0.7, "share of the distillation term in the loss, in [0, 1]")
    channel_target: float | None = option(None, "channel: the pruned model's share of the dense model's MACs (or latency, "
                                          "with --channel-measure latency), in (0, 1)", kind=float,
                                          shown="the policy's latency budget")
    channel_measure: str = option("macs", "channel: what --channel-target divides: macs, or latency (batch 1, the fastest "
                                  "engine at its default precision, timed per candidate)", choices=MEASURES)
    retrain_epochs: int | None = option(None, "admm: epochs of masked/tied retraining after projection", kind=int,
                                        shown="max(1, round(E/3))")
    iterations: int | None = option(None, "admm: ADMM iterations", kind=int, shown="one per ADMM epoch")
    rho: float = option(0.01, "admm: initial penalty, > 0")
    rho_growth: float = option(3.0, "admm: rho factor per iteration, >= 1")
    lr: float = option(0.01, "SGD learning rate, > 0")
    schedule: str = option("cosine", "learning-rate schedule of the retraining epochs (the ADMM epochs keep --lr); run: one "
                           "cosine over every epoch (what --time-budget uses)", choices=SCHEDULES)
    batch_size: int = option(128, "samples per batch and process, >= 1")
    limit: int | None = option(None, "use at most this many training samples per epoch (quick runs)", kind=int, shown="all")
    val_fraction: float = option(0.1, "fraction of the training data held out for validation, in (0, 1)")
    augment: bool | None = option(None, "random crop + flip on training batches", negatable=True,
                                  shown="on for cifar10/imagefolder")
    latency: bool = option(True, "time dense against compressed (every engine, and the real kernels or the pruned model's "
                           "fastest engine) for latency_ratio and the table", negatable=True)
    precision: str = precision_option("latency_ratio times the compressed model in")
    out: str | None = option(None, "where to write the compressed checkpoint; an existing file needs --force", kind=str,
                             shown="RUN/compressed.pt")
    force: bool = option(False, "replace --out (or RUN/compressed.pt) when it already exists")
    resume: bool = option(False, "go on from the last finished epoch of an interrupted fine-tune into the same --out (its "
                          "state is kept next to it as <out>.partial after every epoch), with the same options")
    seed: int = option(0, "random seed")
    device: str = option("cpu", "cpu, cuda, or auto (cuda when available)")
    threads: int | None = threads_option("CPU threads of training and timing (torch on every core beside other jobs "
                                         "ran 10x slower than on one)")

    #: options that must match for ``resume`` to go on with a run (besides the policy, model, checkpoint and data)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("method", "epochs", "time_budget", "distill", "distill_temperature",
                                              "distill_weight", "channel_target", "channel_measure", "retrain_epochs",
                                              "iterations", "rho", "rho_growth", "lr", "schedule", "batch_size", "limit",
                                              "val_fraction", "augment", "seed")

    def checks(self) -> list[tuple[bool, str]]:
        return [(positive_int(self.epochs), f"--epochs must be >= 1, got {self.epochs}"),
                (self.time_budget is None or positive_float(self.time_budget),
                 f"--time-budget must be a positive number of minutes, got {self.time_budget}"),
                (positive_float(self.distill_temperature),
                 f"--distill-temperature must be a positive number, got {self.distill_temperature}; try 4"),
                (fraction(self.distill_weight, zero=True), f"--distill-weight must be in [0, 1], got {self.distill_weight}"),
                (self.channel_target is None or fraction(self.channel_target, one=False),
                 f"--channel-target must be a ratio in (0, 1) of the dense model, got {self.channel_target}; try 0.5"),
                (positive_int(self.batch_size), f"--batch-size must be >= 1, got {self.batch_size}"),
                (positive_float(self.lr), f"--lr: the learning rate must be a positive number, got {self.lr}"),
                (positive_float(self.rho), f"--rho must be > 0, got {self.rho}"),
                (positive_float(self.rho_growth) and self.rho_growth >= 1, f"--rho-growth must be >= 1, got {self.rho_growth}"),
                (fraction(self.val_fraction, zero=True, one=False), f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
                (self.limit is None or positive_int(self.limit), f"--limit must be >= 1 samples, got {self.limit}")]
