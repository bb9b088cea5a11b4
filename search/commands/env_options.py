"""The options that build a search environment, shared by ``search`` and ``replay``.

Both verbs walk a :class:`~uniprune.envs.CompressionEnv` over a model: ``search`` to learn a policy,
``replay`` to run a learned agent (or a saved policy) on another model. They take the same model, data,
latency and scoring options, spelled the same way, and build the env with :func:`make_env`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from uniprune.compressors.core.accounting import layer_profile
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.latency.model import LatencyModel
from uniprune.envs import REWARDS, CompressionEnv
from uniprune.search.datasets import load_dataset
from uniprune.search.models import build_model, load_weights

from .common import (
    add_data_arguments,
    add_device_argument,
    add_model_arguments,
    add_precision_argument,
    add_seed_argument,
    resolve_device,
    show_notes,
)

#: A unified block's share of MAC time saved in the FLOPs-style latency model (its inputs are summed
#: with their signs and multiplied once: the multiplications go, the additions stay).
MACS_UNIFY_SAVING = 0.5

#: The options :func:`add_env_arguments` adds that decide what an env is (a run's ``config.json`` keeps them).
ENV_KEYS = (
    "model", "checkpoint", "dataset", "data", "latency_budget", "seed", "latency_model", "latency_statistic", "batch_size", "threads",
    "val_samples", "val_fraction", "bn_recalibrate", "eval_batch_size", "reward", "size_budget", "max_prune", "max_unify",
    "keep_dense", "precision",
)


def add_env_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, data, budget, latency-table and scoring options (see the module docstring)."""
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--latency-budget", type=float, default=0.5, help="compressed/dense latency must be at most this, in (0, 1] (default 0.5)")
    parser.add_argument(
        "--latency-model", choices=("measured", "macs"), default="measured",
        help="measured: per-layer tables timed with the real kernels (cached); macs: time proportional to MACs (instant)",
    )
    parser.add_argument(
        "--latency-statistic", choices=("median", "min"), default="median",
        help="statistic of the repeated timings behind the table: median (default), or min on a shared or virtual "
        "machine whose speed drifts with its neighbours (there the more repeatable figure)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="batch size the latency is measured at (default 1)")
    add_precision_argument(parser, "the latency table times the compressed model in")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads the latency is measured with (default: torch's)")
    parser.add_argument("--val-samples", type=int, default=500, help="validation images scoring each episode, >= 1 (default 500)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the training data held out for validation (default 0.1)")
    parser.add_argument("--bn-recalibrate", type=int, default=0, metavar="N", help="re-estimate BatchNorm statistics on N training batches before scoring (default 0: off)")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="batch size for scoring and BN re-estimation (default 256)")
    parser.add_argument("--reward", choices=REWARDS, default="accuracy", help="accuracy (default), log-latency (AMC's -error*log(latency)), size (accuracy under --size-budget too)")
    parser.add_argument("--size-budget", type=float, default=None, help="storage budget as a fraction of dense storage, in (0, 1] (needed by --reward size)")
    parser.add_argument("--max-prune", type=float, default=0.8, help="cap on a layer's pruned fraction of weights (in whole blocks), in [0, 1] (default 0.8)")
    parser.add_argument("--max-unify", type=float, default=1.0, help="cap on a layer's unified fraction of weights, in [0, 1] (default 1)")
    parser.add_argument(
        "--keep-dense", default="ends", metavar="LAYERS",
        help="layers left out of the search, dense: 'ends' (default: the first and the last compressible layer, i.e. "
        "the stem that reads the image and the classifier: a sliver of the time, and a pruned block there removes "
        "whole input features or classes), 'none', or module names joined by commas",
    )
    add_seed_argument(parser)
    add_device_argument(parser)


def validate_env_arguments(args: argparse.Namespace) -> None:
    """ConfigError naming the first option out of its range."""
    checks = [
        (0 < args.latency_budget <= 1, f"--latency-budget must be in (0, 1] (a fraction of dense latency), got {args.latency_budget}"),
        (args.val_samples >= 1, f"--val-samples must be >= 1, got {args.val_samples}"),
        (0 < args.val_fraction < 1, f"--val-fraction must be in (0, 1): the env scores on a validation split, got {args.val_fraction}"),
        (args.bn_recalibrate >= 0, f"--bn-recalibrate must be >= 0 batches, got {args.bn_recalibrate}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {args.eval_batch_size}"),
        (args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
        (args.size_budget is None or 0 < args.size_budget <= 1, f"--size-budget must be in (0, 1], got {args.size_budget}"),
        (args.reward != "size" or args.size_budget is not None, "--reward size needs --size-budget (a fraction of dense storage in (0, 1])"),
        (0 <= args.max_prune <= 1, f"--max-prune must be in [0, 1], got {args.max_prune}"),
        (0 <= args.max_unify <= 1, f"--max-unify must be in [0, 1], got {args.max_unify}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def take_stored_options(
    args: argparse.Namespace, stored: Mapping[str, Any], add_arguments: Callable[[argparse.ArgumentParser], None],
    *, keys: Collection[str],
) -> list[str]:
    """Options in ``keys`` the user did not type take ``stored`` values (a run's ``config.json``).

    An option the user typed always keeps the user's value, even when it equals the default
    (:func:`typed_options`). ``add_arguments`` is the verb's own. Returns the names of the options taken.
    """
    typed = typed_options(args, add_arguments)
    taken = []
    for key in keys:
        if key in stored and hasattr(args, key) and key not in typed and getattr(args, key) != stored[key]:
            setattr(args, key, stored[key])
            taken.append(key)
    return taken


def typed_options(args: argparse.Namespace, add_arguments: Callable[[argparse.ArgumentParser], None]) -> set[str]:
    """The destinations of the options the user typed on the verb's command line (``args._argv``, which the
    CLI's parser records). For a namespace made without it, options that differ from their defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    argv = getattr(args, "_argv", None)
    if argv is None:
        return {k for k, v in vars(args).items() if parser.get_default(k) != v}
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # only what the command line names comes back
        action.required = False
    for group in parser._mutually_exclusive_groups:
        group.required = False
    seen, _ = parser.parse_known_args(argv)
    return set(vars(seen))


def dense_layers(spec: str, names: list[str]) -> list[str]:
    """The layers ``--keep-dense`` names, given the model's compressible layers ``names`` in order."""
    key = spec.strip().lower()
    if key == "ends":
        return [names[0], names[-1]] if len(names) > 2 else []
    if key in ("none", ""):
        return []
    chosen = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ModelError(f"--keep-dense names {unknown[:5]}, not compressible layers of this model (it has: {shown}); "
                         "use 'ends', 'none' or its layer names")
    if len(chosen) >= len(names):
        raise ConfigError("--keep-dense leaves no layer to search; name fewer layers")
    return chosen


def build_latency_model(args: argparse.Namespace, model: torch.nn.Module, input_shape: tuple[int, int, int]) -> LatencyModel:
    """The env's latency model: measured tables (cached by the latency module) or the MACs proxy."""
    if args.latency_model == "macs":
        profile = layer_profile(model, input_shape)
        return LatencyModel.proportional({n: float(r["macs"]) for n, r in profile.items()}, unify_saving=MACS_UNIFY_SAVING)
    from uniprune.compressors.latency.table import build_latency_model as measure

    return measure(model, input_shape, batch_size=args.batch_size, threads=args.threads, seed=args.seed, progress=True,
                   statistic=args.latency_statistic, precision=getattr(args, "precision", "fp32") or "fp32")


def make_env(args: argparse.Namespace, *, verb: str = "search") -> CompressionEnv:
    """Load data and model, and build the env (the expensive, validating part of a job)."""
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data, val_fraction=args.val_fraction, seed=args.seed)
    show_notes(data)
    if len(data.val) == 0:
        raise ConfigError("the env needs a validation split: pass --val-fraction > 0 (rewards never use the test split)")
    model = build_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    else:
        print(f"uniprune {verb}: warning: no --checkpoint: working on an untrained model", file=sys.stderr)
    model.eval()
    # A seeded random subset: splits may be stored class by class, so the first N could be one class.
    val = list(data.batches("val", args.eval_batch_size, shuffle=True, seed=args.seed, limit=args.val_samples))
    bn = list(itertools.islice(data.batches("train", args.eval_batch_size, shuffle=True, seed=args.seed), args.bn_recalibrate))
    latency = build_latency_model(args, model, data.input_shape)
    skip = dense_layers(args.keep_dense, [s.name for s in compressible_layers(model)])
    return CompressionEnv(
        model.to(device), latency, val, input_shape=data.input_shape, latency_budget=args.latency_budget,
        bn_batches=bn, max_prune=args.max_prune, max_unify=args.max_unify, reward=args.reward,
        size_budget=args.size_budget, model_name=args.model, device=device, skip=skip,
    )
