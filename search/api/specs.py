"""What a job is asked to do: frozen dataclass specs, each option spelled and range-checked once.

Every option of a verb is a field of a spec here, with its default, its help and its range check; the
CLI (:mod:`uniprune.search.commands.flags`) turns the fields into flags (``latency_budget`` is
``--latency-budget``) and only maps what the user typed onto a spec, which checks it on construction. A
spec out of range raises :class:`~uniprune.compressors.core.errors.ConfigError` naming the flag and the
range, so the same one line reaches a CLI user and a Python caller.

Specs nest (:class:`EnvSpec` holds a :class:`ModelSpec`, a :class:`DataSpec`, ...); their leaf fields have
distinct names, so a spec maps to and from one flat mapping (:meth:`Spec.flat`, :meth:`Spec.from_flat`),
which is what a run's ``config.json`` stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.structure import BlockShape
from uniprune.compressors.latency.engines import BASELINES
from uniprune.compressors.latency.table import RUNTIMES
from uniprune.compressors.train.retrain import SCHEDULES
from uniprune.compressors.train.short import MAX_REWARD_STEPS
from uniprune.envs import REWARDS
from uniprune.search.searchers import SEARCHERS

from .spec import REQUIRED, Spec, fraction, option, positive_float, positive_int, threads_option


def precision_option(what: str) -> str:
    """The ``precision`` option, spelled alike in every job (see :data:`PRECISIONS`)."""
    return option("auto", f"precision {what}: auto (bf16 where the CPU has avx512_bf16 or AMX, else fp32), fp32, or "
                  "bf16 (bf16 weights and activations, float32 accumulation; on AMX tiles where present)",
                  choices=PRECISIONS)

#: How the DDPG replay buffer turns an episode's reward into the transitions' rewards (see :class:`SearchSpec`).
REWARD_BASELINES = ("sample", "store")
LATENCY_MODELS = ("measured", "macs")
STATISTICS = ("median", "min")
METHODS = ("admm", "masked")
#: the native kernels' precision: auto (bf16 where the CPU has avx512_bf16 or AMX, else fp32), fp32 or bf16
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_MODEL = "digits-cnn"
#: The most scoring processes a search may fork.
MAX_WORKERS = 64


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


def parse_block_shapes(text: str) -> tuple[BlockShape, ...]:
    """``8x4`` or several joined by commas (``8x4,4x1,1x1``): the conv block shape(s) the search may give a layer."""
    try:
        shapes = tuple(BlockShape.parse(t) for t in str(text).split(","))
    except ValueError as exc:
        raise ConfigError(f"--block-shape: {exc}; for example 8x4, or 8x4,4x1,1x1 to choose per layer") from None
    if len({s.key for s in shapes}) != len(shapes):
        raise ConfigError(f"--block-shape names a shape twice: {text!r}")
    return shapes


def parse_engines(text: str) -> tuple[str, ...]:
    """Dense engine modes joined by commas, each an engine with an optional ``:f32`` or ``:int8`` (argparse type)."""
    import argparse

    from uniprune.compressors.latency.engines import ENGINES, MODE_PRECISIONS

    names = tuple(e.strip() for e in text.split(",") if e.strip())
    unknown = [e for e in names if e.partition(":")[0] not in ENGINES or e.partition(":")[2] not in ("", *MODE_PRECISIONS)]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected engine modes from {','.join(ENGINES)} (optionally :f32 or :int8, "
                                         f"e.g. openvino:f32) joined by commas, got {text!r}")
    return names


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Spec):
    """The network: a zoo name (or ``package.module:factory``) and the trained weights."""

    model: str = option(DEFAULT_MODEL, "model name: cifar-resnet20|32|44|56, tv:<torchvision name>, digits-cnn, or "
                        "package.module:factory")
    checkpoint: str | None = option(None, "checkpoint to load (a state dict, {'state_dict': ...}, or a uniprune checkpoint)",
                                    kind=str, shown="none: an untrained model")


@dataclass(frozen=True, kw_only=True)
class DataSpec(Spec):
    """The data: a dataset kind, its folder or file, and the validation share carved from its training split."""

    dataset: str = option("digits", "digits (embedded), fashion-mnist, cifar10, imagefolder, npz")
    data: str | None = option(None, "the dataset's folder or file: none for digits; fashion-mnist: the idx folder (default "
                              "/usr/share/datasets/fashion-mnist); cifar10: the cifar-10-batches-py folder; imagefolder: a "
                              "folder with train/ [val/] test/ class folders, a .tar.gz of one, or several joined by commas, "
                              "decoded once into a cache ($UNIPRUNE_CACHE or ~/.cache/uniprune); npz: a file with images "
                              "(uint8 NxCxHxW) and labels", kind=str, shown="none")
    val_fraction: float = option(0.1, "fraction of the training data held out for validation, in (0, 1)")

    def checks(self) -> list[tuple[bool, str]]:
        return [(fraction(self.val_fraction, one=False),
                 f"--val-fraction must be in (0, 1): the env scores on a validation split, got {self.val_fraction}")]


@dataclass(frozen=True, kw_only=True)
class LatencySpec(Spec):
    """How latency is measured: the latency model, its statistic, batch and threads."""

    latency_model: str = option("measured", "measured: per-layer tables timed with the real kernels (cached); macs: time "
                                "proportional to MACs (instant)", choices=LATENCY_MODELS)
    latency_statistic: str = option("median", "statistic of the repeated timings behind the table: median, or min on a "
                                    "shared or virtual machine whose speed drifts with its neighbours", choices=STATISTICS)
    batch_size: int = option(1, "batch size the latency is measured at, >= 1")
    precision: str = precision_option("the latency table times the compressed model in")
    threads: int | None = threads_option("CPU threads")

    def checks(self) -> list[tuple[bool, str]]:
        return [(positive_int(self.batch_size), f"--batch-size must be a positive integer, got {self.batch_size}")]




@dataclass(frozen=True, kw_only=True)
class BudgetSpec(Spec):
    """The walls: the latency budget (a fraction of the fastest dense engine), the size budget, the caps."""

    latency_budget: float = option(0.5, "compressed/dense latency must be at most this, in (0, 1]")
    size_budget: float | None = option(None, "storage budget as a fraction of dense storage, in (0, 1] (needed by --reward size)",
                                       kind=float, shown="none")
    max_prune: float = option(0.8, "cap on a layer's pruned fraction of weights (in whole blocks), in [0, 1]")
    max_unify: float = option(1.0, "cap on a layer's unified fraction of weights, in [0, 1]")
    keep_dense: str = option("ends", "layers left out of the search, dense: 'ends' (the first and the last compressible "
                             "layer: the stem that reads the image and the classifier), 'none', or module names joined by "
                             "commas", metavar="LAYERS")
    block_shape: str = option("8x4", "conv block shape, OUTxIN channels (8x4, 4x1, 1x1: a whole kernel per channel pair), or "
                              "several joined by commas for the search to choose per layer (8x4,4x1,1x1: one latency table "
                              "measured per shape)", metavar="SHAPES")

    @property
    def block_shapes(self) -> tuple[BlockShape, ...]:
        """The conv block shapes searched, the first one every layer starts in."""
        return parse_block_shapes(self.block_shape)

    def checks(self) -> list[tuple[bool, str]]:
        self.block_shapes  # noqa: B018  (raises the one-line error for a bad --block-shape)
        return [
            (fraction(self.latency_budget), f"--latency-budget must be in (0, 1] (a fraction of dense latency), got {self.latency_budget}"),
            (self.size_budget is None or fraction(self.size_budget), f"--size-budget must be in (0, 1], got {self.size_budget}"),
            (fraction(self.max_prune, zero=True), f"--max-prune must be in [0, 1], got {self.max_prune}"),
            (fraction(self.max_unify, zero=True), f"--max-unify must be in [0, 1], got {self.max_unify}"),
        ]


@dataclass(frozen=True, kw_only=True)
class ScoringSpec(Spec):
    """How an episode's policy is scored: validation images, BatchNorm re-estimation, the reward."""

    val_samples: int = option(500, "validation images scoring each episode, >= 1")
    eval_batch_size: int = option(256, "batch size for scoring and BN re-estimation, >= 1")
    bn_recalibrate: int = option(2, "re-estimate BatchNorm statistics on N training batches before scoring (0: off; "
                                 "without it a heavily pruned network scores near chance whatever its policy)", metavar="N")
    reward_steps: int = option(0, "a short fine-tune before scoring: N SGD steps on training batches inside the policy's "
                               "structure (0: off; for budgets where even BN-re-estimated accuracy is near chance)",
                               metavar="N")
    reward: str = option("accuracy", "accuracy, log-latency (AMC's -error*log(latency)), size (accuracy under "
                         "--size-budget too)", choices=REWARDS)

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (positive_int(self.val_samples), f"--val-samples must be >= 1, got {self.val_samples}"),
            (positive_int(self.eval_batch_size), f"--eval-batch-size must be >= 1, got {self.eval_batch_size}"),
            (isinstance(self.bn_recalibrate, int) and self.bn_recalibrate >= 0,
             f"--bn-recalibrate must be >= 0 batches, got {self.bn_recalibrate}"),
            (isinstance(self.reward_steps, int) and 0 <= self.reward_steps <= MAX_REWARD_STEPS,
             f"--reward-steps must be in [0, {MAX_REWARD_STEPS}], got {self.reward_steps}"),
        ]


@dataclass(frozen=True, kw_only=True)
class EnvSpec(Spec):
    """Everything that decides a search environment (a run's ``config.json`` keeps it)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    seed: int = option(0, "random seed")
    device: str = option("cpu", "cpu, cuda, or auto (cuda when available)")

    def checks(self) -> list[tuple[bool, str]]:
        return [(self.scoring.reward != "size" or self.budget.size_budget is not None,
                 "--reward size needs --size-budget (a fraction of dense storage in (0, 1])")]


@dataclass(frozen=True, kw_only=True)
class SearchSpec(Spec):
    """A search: its env, the searcher and episodes, and the run directory it writes."""

    env: EnvSpec = field(default_factory=EnvSpec)
    searcher: str = option("ddpg", "search strategy", choices=SEARCHERS)
    episodes: int = option(300, "episodes (policies tried), >= 1")
    warmup: int = option(100, "random warm-up episodes (ddpg) / startup trials (optuna), >= 0")
    run_dir: str | None = option(None, "where the run's files go", kind=str, shown="runs/<model>-<dataset>-<searcher>")
    resume: bool = option(False, "go on with the run in --run-dir (episode count, agent, replay buffer, best policy)")
    force: bool = option(False, "delete the run in --run-dir and start over")
    storage: str | None = option(None, "Optuna storage URL shared by workers", kind=str, shown="sqlite:///RUN/optuna.db")
    score_threads: int = option(1, "CPU threads for scoring episodes (an episode is many small ops, which extra threads "
                                "slow down on a busy machine), >= 1")
    workers: int = option(1, "processes scoring episodes side by side (random, uniform and knapsack searches, whose "
                          "episodes depend on no earlier reward; DDPG and Optuna play one at a time), >= 1")
    noise_sigma: float = option(0.5, "ddpg: exploration noise scale at the first episode after warm-up, in (0, 1] "
                                "(AMC's 0.5)")
    noise_decay: float = option(0.95, "ddpg: the noise scale's factor per episode after warm-up, in (0, 1] (AMC's 0.95)")
    noise_floor: float = option(0.0, "ddpg: the least noise scale, in [0, --noise-sigma] (0: AMC's pure decay, below 0.01 "
                                "some 76 episodes after warm-up)")
    reward_baseline: str = option("sample", "ddpg: the moving-average reward baseline is subtracted per sampled batch "
                                  "(sample) or frozen into each transition when its episode ends (store, the earlier "
                                  "buffer, kept for comparison)", choices=REWARD_BASELINES)

    #: the options a run's ``config.json`` keeps (the env's, less the device, and the searcher's)
    CONFIG_KEYS: ClassVar[tuple[str, ...]] = ("model", "checkpoint", "dataset", "data", "latency_budget", "seed",
                                              "latency_model", "latency_statistic", "batch_size", "threads", "val_samples",
                                              "val_fraction", "bn_recalibrate", "eval_batch_size", "reward", "size_budget",
                                              "max_prune", "max_unify", "keep_dense", "precision", "episodes", "warmup",
                                              "searcher", "storage", "score_threads", "block_shape", "reward_steps",
                                              "noise_sigma", "noise_decay", "noise_floor")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (positive_int(self.episodes), f"--episodes must be >= 1, got {self.episodes}"),
            (isinstance(self.warmup, int) and self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (positive_int(self.score_threads), f"--score-threads must be >= 1, got {self.score_threads}"),
            (positive_int(self.workers) and self.workers <= MAX_WORKERS, f"--workers must be in [1, {MAX_WORKERS}], got {self.workers}"),
            (fraction(self.noise_sigma), f"--noise-sigma must be in (0, 1], got {self.noise_sigma}"),
            (fraction(self.noise_decay), f"--noise-decay must be in (0, 1], got {self.noise_decay}"),
            (isinstance(self.noise_floor, (int, float)) and 0 <= self.noise_floor <= self.noise_sigma,
             f"--noise-floor must be in [0, --noise-sigma = {self.noise_sigma}], got {self.noise_floor}"),
            (not (self.resume and self.force), "--resume and --force contradict each other: pass one"),
        ]


@dataclass(frozen=True, kw_only=True)
class ReplaySpec(Spec):
    """A replay: a learned agent (a DDPG run directory or its agent.json) or a saved policy, walked on ``env``'s model."""

    env: EnvSpec = field(default_factory=EnvSpec)
    agent: str | None = option(None, "the run directory of a DDPG search (or its agent.json)", kind=str, shown="none")
    policy: str | None = option(None, "policy.json to apply to another checkpoint of the same architecture", kind=str,
                                shown="none")
    out: str = option(REQUIRED, "where to write the policy (policy.json); an existing file needs --force")
    force: bool = option(False, "overwrite --out if it exists")
    trust_pickle: bool = option(False, "also read a stable-baselines3 agent.zip (pickled code: it runs on load; only for "
                                "files you made)")

    def checks(self) -> list[tuple[bool, str]]:
        return [((self.agent is None) != (self.policy is None), "pass one of --agent (a run directory) or --policy (a policy.json)")]




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
class FinetuneSpec(Spec):
    """Fine-tune a model into a policy's structure (ADMM, or masked retraining) and save the compressed model.

    ``epochs`` is the whole budget; ``admm`` spends ``retrain_epochs`` (default ``max(1, round(E/3))``) on
    retraining after the hard projection and the rest on ADMM, in ``iterations`` iterations (default one per epoch).
    """

    run_dir: str | None = option(None, "a search run directory: reads its policy.json and config.json (model, checkpoint, "
                                 "dataset, data) and writes compressed.pt, finetune.json and admm/* curves in tb/ there",
                                 kind=str, shown="none")
    policy: str | None = option(None, "policy.json to fine-tune into", kind=str, shown="RUN/policy.json")
    model: str | None = option(None, "model name", kind=str, shown="from the run's config.json or the policy")
    checkpoint: str | None = option(None, "the trained dense model's checkpoint", kind=str, shown="the run's")
    dataset: str | None = option(None, "digits, fashion-mnist, cifar10, imagefolder, npz", kind=str, shown="the run's, else digits")
    data: str | None = option(None, "the dataset's folder or file", kind=str, shown="the run's")
    method: str = option("admm", "admm, or masked retraining only", choices=METHODS)
    epochs: int = option(3, "total training epochs, >= 1 (>= 2 for admm)")
    retrain_epochs: int | None = option(None, "admm: epochs of masked/tied retraining after projection", kind=int,
                                        shown="max(1, round(E/3))")
    iterations: int | None = option(None, "admm: ADMM iterations", kind=int, shown="one per ADMM epoch")
    rho: float = option(0.01, "admm: initial penalty, > 0")
    rho_growth: float = option(3.0, "admm: rho factor per iteration, >= 1")
    lr: float = option(0.01, "SGD learning rate, > 0")
    schedule: str = option("cosine", "learning-rate schedule of the retraining epochs (the ADMM epochs keep --lr)",
                           choices=SCHEDULES)
    batch_size: int = option(128, "samples per batch and process, >= 1")
    limit: int | None = option(None, "use at most this many training samples per epoch (quick runs)", kind=int, shown="all")
    val_fraction: float = option(0.1, "fraction of the training data held out for validation, in (0, 1)")
    augment: bool | None = option(None, "random crop + flip on training batches", negatable=True,
                                  shown="on for cifar10/imagefolder")
    latency: bool = option(True, "time dense against compressed with the real kernels for latency_ratio", negatable=True)
    precision: str = precision_option("latency_ratio times the compressed model in")
    out: str | None = option(None, "where to write the compressed checkpoint; an existing file needs --force", kind=str,
                             shown="RUN/compressed.pt")
    force: bool = option(False, "replace --out (or RUN/compressed.pt) when it already exists")
    resume: bool = option(False, "go on from the last finished epoch of an interrupted fine-tune into the same --out (its "
                          "state is kept next to it as <out>.partial after every epoch), with the same options")
    seed: int = option(0, "random seed")
    device: str = option("cpu", "cpu, cuda, or auto (cuda when available)")

    #: options that must match for ``resume`` to go on with a run (besides the policy, model, checkpoint and data)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("method", "epochs", "retrain_epochs", "iterations", "rho", "rho_growth", "lr",
                                              "schedule", "batch_size", "limit", "val_fraction", "augment", "seed")

    def checks(self) -> list[tuple[bool, str]]:
        return [(positive_int(self.epochs), f"--epochs must be >= 1, got {self.epochs}"),
                (positive_int(self.batch_size), f"--batch-size must be >= 1, got {self.batch_size}"),
                (positive_float(self.lr), f"--lr: the learning rate must be a positive number, got {self.lr}"),
                (positive_float(self.rho), f"--rho must be > 0, got {self.rho}"),
                (positive_float(self.rho_growth) and self.rho_growth >= 1, f"--rho-growth must be >= 1, got {self.rho_growth}"),
                (fraction(self.val_fraction, zero=True, one=False), f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
                (self.limit is None or positive_int(self.limit), f"--limit must be >= 1 samples, got {self.limit}")]


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
                                    "the checkpoint it was exported from (recorded in it, or --checkpoint)", kind=str, shown="none")
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
                                          shown="0.9, raised to the least ratio reachable on this machine plus 0.08 when "
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


