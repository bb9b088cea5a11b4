"""Build a search environment from an :class:`~uniprune.search.api.specs.EnvSpec`: data, model, latency model, env."""

from __future__ import annotations

import itertools
import sys

import torch
from uniprune.compressors.core.accounting import layer_profile
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.core.threads import resolve_threads
from uniprune.compressors.latency.model import LatencyModel
from uniprune.envs import CompressionEnv
from uniprune.search.datasets import DataBundle, load_dataset
from uniprune.search.models import build_model, load_weights

from .devices import resolve_device, show_notes
from .specs import EnvSpec

#: A unified block's share of MAC time saved in the FLOPs-style latency model (its inputs are summed
#: with their signs and multiplied once: the multiplications go, the additions stay).
MACS_UNIFY_SAVING = 0.5
#: The short-fine-tune reward's batch size and the most distinct batches it cycles through.
REWARD_BATCH, REWARD_POOL = 64, 100


def dense_layers(spec: str, names: list[str]) -> list[str]:
    """The layers ``keep_dense`` names, given the model's compressible layers ``names`` in order."""
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


def latency_model(spec: EnvSpec, model: torch.nn.Module, input_shape: tuple[int, int, int]) -> LatencyModel:
    """The env's latency model: measured tables (cached by the latency module) or the MACs proxy."""
    if spec.latency.latency_model == "macs":
        profile = layer_profile(model, input_shape)
        return LatencyModel.proportional({n: float(r["macs"]) for n, r in profile.items()}, unify_saving=MACS_UNIFY_SAVING)
    from uniprune.compressors.latency.shaped import build_shaped_latency_model
    from uniprune.compressors.latency.table import build_latency_model as measure

    options = dict(batch_size=spec.latency.batch_size, threads=resolve_threads(spec.latency.threads), seed=spec.seed,
                   progress=True, statistic=spec.latency.latency_statistic, precision=spec.latency.precision)
    shapes = spec.budget.block_shapes
    if len(shapes) > 1:
        return build_shaped_latency_model(model, input_shape, shapes, **options)
    return measure(model, input_shape, block_shapes={"conv": shapes[0]}, **options)


def load_data(spec: EnvSpec) -> DataBundle:
    """The env's dataset (notes printed); ConfigError when it has no validation split to score on."""
    data = load_dataset(spec.data.dataset, spec.data.data, val_fraction=spec.data.val_fraction, seed=spec.seed)
    show_notes(data)
    if len(data.val) == 0:
        raise ConfigError("the env needs a validation split: pass --val-fraction > 0 (rewards never use the test split)")
    return data


def build_env(spec: EnvSpec, *, verb: str = "search") -> CompressionEnv:
    """Load data and model, measure (or read) the latency table and build the env: the expensive, validating
    part of a search or replay. ``verb`` names the job in warnings."""
    device = resolve_device(spec.device)
    data = load_data(spec)
    with torch.random.fork_rng(devices=[]):  # an untrained model's weights too are the seed's; the caller's RNG is left alone
        torch.manual_seed(spec.seed)
        model = build_model(spec.model.model, num_classes=data.num_classes, input_shape=data.input_shape)
    if spec.model.checkpoint:
        load_weights(model, spec.model.checkpoint)
    else:
        print(f"uniprune {verb}: warning: no --checkpoint: working on an untrained model", file=sys.stderr)
    model.eval()
    scoring = spec.scoring
    # A seeded random subset: splits may be stored class by class, so the first N could be one class.
    val = list(data.batches("val", scoring.eval_batch_size, shuffle=True, seed=spec.seed, limit=scoring.val_samples))
    bn = list(itertools.islice(data.batches("train", scoring.eval_batch_size, shuffle=True, seed=spec.seed),
                               scoring.bn_recalibrate))
    # the short-fine-tune reward's batches: a fixed pool, cycled (every policy trains on the same images)
    train = list(itertools.islice(data.batches("train", REWARD_BATCH, shuffle=True, seed=spec.seed + 1),
                                  min(scoring.reward_steps, REWARD_POOL)))
    latency = latency_model(spec, model, data.input_shape)
    budget = spec.budget
    skip = dense_layers(budget.keep_dense, [s.name for s in compressible_layers(model)])
    return CompressionEnv.of(
        model.to(device), latency, val, input_shape=data.input_shape, latency_budget=budget.latency_budget,
        bn_batches=bn, max_prune=budget.max_prune, max_unify=budget.max_unify, reward=scoring.reward,
        size_budget=budget.size_budget, model_name=spec.model.model, device=device, skip=skip,
        block_shapes={"conv": budget.block_shapes[0]}, shapes=budget.block_shapes if len(budget.block_shapes) > 1 else (),
        reward_steps=scoring.reward_steps, train_batches=train,
    )
