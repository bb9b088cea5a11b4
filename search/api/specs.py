"""What a job is asked to do: frozen dataclass specs, each option spelled and range-checked once.

Every option of a verb is a field of a spec here, with its default, its help and its range check; the
CLI (:mod:`uniprune.search.commands.flags`) turns the fields into flags (``latency_budget`` is
``--latency-budget``) and only maps what the user typed onto a spec, which checks it on construction. A
spec out of range raises :class:`~uniprune.compressors.core.errors.ConfigError` naming the flag and the
range, so the same one line reaches a CLI user and a Python caller.

Specs nest (:class:`EnvSpec` holds a :class:`ModelSpec`, a :class:`DataSpec`, ...); their leaf fields have
distinct names, so a spec maps to and from one flat mapping (:meth:`Spec.flat`, :meth:`Spec.from_flat`),
which is what a run's ``config.json`` stores. The env's and the search's specs live in :mod:`.search_specs`
and are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from uniprune.compressors.latency.engines import BASELINES
from uniprune.compressors.latency.table import RUNTIMES

from .search_specs import (  # noqa: F401  (re-exported: every spec is importable from here)
    DEFAULT_MODEL,
    LATENCY_MODELS,
    MAX_WORKERS,
    PRECISIONS,
    REWARD_BASELINES,
    STATISTICS,
    BudgetSpec,
    DataSpec,
    EnvSpec,
    LatencySpec,
    ModelSpec,
    ReplaySpec,
    ScoringSpec,
    SearchSpec,
    parse_block_shapes,
    parse_engines,
    precision_option,
)
from .spec import REQUIRED, Spec, fraction, option, positive_float, positive_int, threads_option


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``C,H,W`` as three positive integers (argparse type: a usage error naming what came)."""
    import argparse

    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W as three positive integers like 3,32,32, got {text!r}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class TrainSpec(Spec):
    """Train a zoo model from scratch, or go on training a checkpoint."""

    model: str | None = option(None, "model name: cifar-resnet20|32|44|56, tv:<torchvision name>, digits-cnn, or "
                               "package.module:factory", kind=str, shown="the checkpoint's model, else digits-cnn")
    checkpoint: str | None = option(None, "checkpoint to go on training", kind=str, shown="none: from scratch")
    data: DataSpec = field(default_factory=DataSpec)
    epochs: int = option(15, "passes over the training split, >= 1")
    out: str | None = option(None, "checkpoint to write; an existing file is only replaced with --force", kind=str,
                             shown="checkpoints/<model>-<dataset>.pt")
    force: bool = option(False, "replace --out when it already exists")
    lr: float = option(0.05, "peak SGD learning rate, cosine-decayed per step, > 0")
    batch_size: int = option(64, "training batch size, >= 1")
    weight_decay: float = option(5e-4, "L2 on weights, not on biases/BN, >= 0")
    augment: bool = option(True, "random crop + flip on training batches", negatable=True)
    seed: int = option(0, "random seed")
    device: str = option("cpu", "cpu, cuda, or auto (cuda when available)")
    threads: int | None = threads_option("CPU threads")

    def checks(self) -> list[tuple[bool, str]]:
        return [(positive_int(self.epochs), f"--epochs must be >= 1, got {self.epochs}"),
                (positive_int(self.batch_size), f"--batch-size must be >= 1, got {self.batch_size}"),
                (positive_float(self.lr), f"--lr: the learning rate must be a positive number, got {self.lr}"),
                (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
                 f"--weight-decay must be >= 0, got {self.weight_decay}")]


@dataclass(frozen=True, kw_only=True)
class EvalSpec(Spec):
    """Top-1 accuracy of a checkpoint (plain or compressed) on one split of a dataset."""

    model: str | None = option(None, "model name", kind=str, shown="the checkpoint's model, else digits-cnn")
    checkpoint: str | None = option(None, "the checkpoint to score (written by 'uniprune train' or 'finetune', or a state dict)",
                                    kind=str, shown="none")
    data: DataSpec = field(default_factory=DataSpec)
    split: str = option("test", "which split to score", choices=("train", "val", "test"))
    batch_size: int = option(256, "evaluation batch size, >= 1")
    limit: int | None = option(None, "score only the first N samples of the split", kind=int, shown="all")
    seed: int = option(0, "random seed (of the validation carve)")
    device: str = option("cpu", "cpu, cuda, or auto (cuda when available)")
    threads: int | None = threads_option("CPU threads")

    def checks(self) -> list[tuple[bool, str]]:
        return [(positive_int(self.batch_size), f"--batch-size must be >= 1, got {self.batch_size}"),
                (self.limit is None or positive_int(self.limit), f"--limit must be >= 1, got {self.limit}")]


@dataclass(frozen=True, kw_only=True)
class ExportSpec(Spec):
    """Write a compressed checkpoint, or a model projected onto a policy without fine-tuning, as a deployable artifact
    (one native plan, its C sources, a numpy-only loader)."""

    compressed: str | None = option(None, "the compressed checkpoint ('uniprune finetune --out')", kind=str, shown="none")
    policy: str | None = option(None, "policy.json to project --model (with --checkpoint's weights) onto, exported as it "
                                "is, without fine-tuning", kind=str, shown="none")
    model: str | None = option(None, "model name: cifar-resnet20|32|44|56, tv:<torchvision name>, digits-cnn, or "
                               "package.module:factory (with --policy)", kind=str, shown="none")
    checkpoint: str | None = option(None, "checkpoint to load (a state dict, {'state_dict': ...}, or a uniprune "
                                    "checkpoint; with --policy)", kind=str, shown="none: an untrained model")
    input_shape: tuple[int, int, int] | None = option(None, "C,H,W of one sample (with --policy)", kind=parse_input_shape,
                                                      shown="the checkpoint's, else 3,32,32; 1,8,8 for digits-cnn")
    num_classes: int | None = option(None, "output classes, >= 1 (with --policy)", kind=int, shown="the checkpoint's, else 10")
    out: str = option(REQUIRED, "artifact directory to write (must not exist unless --force)")
    batch_size: int = option(1, "batch the conv implementations are timed and chosen at (any batch runs), >= 1")
    threads: int | None = threads_option("kernel threads the conv choices are timed on (the loader runs on every core of "
                                         "the machine it runs on unless told otherwise)", shown="every core")
    force: bool = option(False, "replace --out if it is an earlier artifact (or empty)")
    precision: str = precision_option("the artifact is written in (recorded in it; its loader checks the CPU)")

    def checks(self) -> list[tuple[bool, str]]:
        return [((self.policy is None) != (self.compressed is None), "pass one of --compressed or --policy"),
                (positive_int(self.batch_size), f"--batch-size must be a positive integer, got {self.batch_size}"),
                (self.num_classes is None or positive_int(self.num_classes),
                 f"--num-classes must be a positive integer, got {self.num_classes}")]


@dataclass(frozen=True, kw_only=True)
class BenchSpec(Spec):
    """Time the dense engines against a compressed model (a policy projected onto a checkpoint, a compressed
    checkpoint, or an exported artifact) on the real kernels, interleaved in one process."""

    model: ModelSpec = field(default_factory=ModelSpec)
    policy: str | None = option(None, "policy.json to project the model onto (structure chosen from the weights)", kind=str,
                                shown="none")
    compressed: str | None = option(None, "a compressed checkpoint ('uniprune finetune --out'; needs no policy), or an artifact "
                                    "directory ('uniprune export --out'), whose plan.json and weights.bin are verified and run on "
                                    "uniprune's own kernels (its Python and C files are never run); the dense engines then run "
                                    "the checkpoint it was exported from (recorded in it, or --checkpoint); or a channel-pruned "
                                    "checkpoint ('finetune --method channel'), run on its fastest engine at default precision "
                                    "against the dense model it came from", kind=str, shown="none")
    batch_size: int = option(1, "samples per forward pass, >= 1")
    input_shape: tuple[int, int, int] | None = option(None, "C,H,W of one sample", kind=parse_input_shape,
                                                      shown="the checkpoint's, else 3,32,32; 1,8,8 for digits-cnn")
    num_classes: int | None = option(None, "output classes, >= 1", kind=int, shown="the checkpoint's, else 10")
    threads: int | None = threads_option("CPU threads for torch, the other engines and the kernels", shown="every core")
    repeats: int = option(50, "timed rounds, at least (they go on until a few seconds have passed, so the timing sees "
                          "more than one speed phase of a shared machine), >= 1")
    statistic: str = option("median", "statistic of the timed rounds (min suits a machine shared with other jobs)",
                            choices=STATISTICS)
    engines: tuple[str, ...] | None = option(None, "dense engine modes to time, joined by commas: torch, onnxruntime, "
                                             "openvino at their default precision (OpenVINO's is bf16 on CPUs with "
                                             "avx512_bf16 or AMX), NAME:f32 pinned to float32, onnxruntime:int8 and "
                                             "openvino:int8 (with --int8)", kind=parse_engines,
                                             shown="every installed engine, openvino:f32 too, and the int8 modes with --int8")
    baseline: str = option("default", "what speedup, latency_ratio and the budget divide by: the fastest engine at its "
                           "default precision (what a user runs), the fastest f32 mode, or the fastest int8 mode (needs "
                           "--int8). The others are reported beside it", choices=BASELINES)
    int8: bool = option(False, "also time and score the dense model quantized by ONNX Runtime's static quantization (QDQ, "
                        "per-channel, calibrated on --calibration training images of --dataset) on ONNX Runtime and "
                        "OpenVINO: a reported rival, not the denominator of speedup unless --baseline int8")
    calibration: int = option(256, "training images to calibrate --int8 on, >= 1; test images among them are left out "
                              "of every mode's top-1")
    latency_budget: float | None = option(None, "the latency budget to judge the ratio by, in (0, 1]", kind=float,
                                          shown="the policy's, when it has one")
    dataset: str | None = option(None, "score every engine mode and the compressed model on this dataset's test split "
                                 "(digits, fashion-mnist, cifar10, imagefolder, npz: as in 'uniprune train')", kind=str,
                                 shown="none: timing only")
    data: str | None = option(None, "the dataset's folder or file, as in 'uniprune train'", kind=str, shown="none")
    runtime: str = option("lean", "how the compressed model runs: lean (one native plan per pass, what 'uniprune export' "
                          "deploys; falls back to python for a model it cannot lower) or python (layer by layer)",
                          choices=RUNTIMES)
    precision: str = precision_option("the compressed model is timed in (an artifact runs in its own)")
    no_table: bool = option(False, "skip the latency table (predicted_ms is then null)")
    cache_dir: str | None = option(None, "latency table cache", kind=str, shown="$UNIPRUNE_CACHE/latency")

    def checks(self) -> list[tuple[bool, str]]:
        return [((self.policy is None) != (self.compressed is None), "pass one of --policy or --compressed"),
                (positive_int(self.batch_size), f"--batch-size must be a positive integer, got {self.batch_size}"),
                (self.num_classes is None or positive_int(self.num_classes),
                 f"--num-classes must be a positive integer, got {self.num_classes}"),
                (positive_int(self.repeats), f"--repeats must be a positive integer, got {self.repeats}"),
                (positive_int(self.calibration), f"--calibration must be a positive integer, got {self.calibration}"),
                (self.latency_budget is None or fraction(self.latency_budget),
                 f"--latency-budget must be in (0, 1] like 0.5, got {self.latency_budget}")]


@dataclass(frozen=True, kw_only=True)
class DemoSpec(Spec):
    """The whole job on the embedded digits data: train, search, fine-tune, export, bench, report."""

    out: str | None = option(None, "a new or empty folder for the demo's files", kind=str, shown="runs/demo-<date>-<time>")
    latency_budget: float | None = option(None, "compressed latency at most this fraction of the fastest dense engine's "
                                          "(torch, ONNX Runtime, OpenVINO), in (0, 1]", kind=float,
                                          shown="0.6, raised to the least ratio reachable on this machine plus 0.08 when "
                                          "that is higher: the digits CNN is tiny, and its stem and classifier, which the "
                                          "search leaves dense, are a large share of its time")
    episodes: int = option(300, "search episodes, >= 1 (AMC: 300)")
    warmup: int = option(100, "random warm-up episodes of the search, >= 0")
    train_epochs: int = option(15, "epochs training the dense model, >= 1")
    finetune_epochs: int = option(12, "ADMM fine-tuning epochs in all, >= 2")
    batch_size: int = option(1, "batch size the latency is measured and benchmarked at, >= 1")
    threads: int | None = threads_option("CPU threads for the latency table, the export and the benchmark")
    latency_statistic: str = option("min", "statistic of the latency table and the benchmark (a laptop or a shared VM "
                                    "drifts in speed, and the fastest runs repeat best)", choices=STATISTICS)
    seed: int = option(0, "random seed")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.latency_budget is None or fraction(self.latency_budget), f"--latency-budget must be in (0, 1], got {self.latency_budget}"),
            (positive_int(self.episodes), f"--episodes must be >= 1, got {self.episodes}"),
            (positive_int(self.train_epochs), f"--train-epochs must be >= 1, got {self.train_epochs}"),
            (positive_int(self.batch_size), f"--batch-size must be >= 1, got {self.batch_size}"),
            (isinstance(self.warmup, int) and self.warmup >= 0, f"--warmup must be >= 0 episodes, got {self.warmup}"),
            (isinstance(self.finetune_epochs, int) and self.finetune_epochs >= 2,
             f"--finetune-epochs must be >= 2 (ADMM, then retraining), got {self.finetune_epochs}"),
        ]


