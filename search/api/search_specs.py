"""What a search is asked to do: the env's specs (model, data, latency, budget, scoring) and the search and
replay jobs' specs, each option spelled and range-checked once (see :mod:`.specs`, which re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.structure import BlockShape
from uniprune.compressors.train.short import MAX_REWARD_STEPS
from uniprune.envs import REWARDS
from uniprune.search.searchers import SEARCHERS

from .spec import REQUIRED, Spec, fraction, option, positive_int, threads_option


def precision_option(what: str) -> str:
    """The ``precision`` option, spelled alike in every job (see :data:`PRECISIONS`)."""
    return option("auto", f"precision {what}: auto (bf16 where the CPU has avx512_bf16 or AMX, else fp32), fp32, or "
                  "bf16 (bf16 weights and activations, float32 accumulation; on AMX tiles where present)",
                  choices=PRECISIONS)

#: How the DDPG replay buffer turns an episode's reward into the transitions' rewards (see :class:`SearchSpec`).
REWARD_BASELINES = ("sample", "store")
LATENCY_MODELS = ("measured", "macs")
STATISTICS = ("median", "min")
#: the native kernels' precision: auto (bf16 where the CPU has avx512_bf16 or AMX, else fp32), fp32 or bf16
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_MODEL = "digits-cnn"
#: The most scoring processes a search may fork.
MAX_WORKERS = 64


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
    searcher: str = option("knapsack", "search strategy: knapsack (the default: it beat DDPG, random and Optuna on held-out "
                           "images and after fine-tuning, docs/RESULTS.md section searcher_table_resnet20), ddpg (AMC's "
                           "agent; its run can be replayed on another model), optuna, random or uniform",
                           choices=SEARCHERS)
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
    sensitivity_from: str | None = option(None, "knapsack: reuse the per-layer sensitivity scores of this earlier run "
                                          "(its folder or its sensitivity.json; same model, checkpoint, data and scoring "
                                          "options, any budget), scoring only the options it lacks", kind=str,
                                          shown="none", metavar="RUN")
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
            (self.sensitivity_from is None or self.searcher == "knapsack",
             f"--sensitivity-from reuses the knapsack's scores; the {self.searcher} searcher has none: pass --searcher "
             "knapsack or leave --sensitivity-from out"),
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
