"""Baseline compressors, in the same interface as the ADMM fine-tuner where that makes sense.

- :func:`magnitude_masks` / :func:`magnitude_prune`: unstructured magnitude pruning (Han et al. 2015):
  per layer (or globally) the smallest ``|w|`` are set to 0; retrain with
  ``admm.retrain(model, {}, ..., masks=masks)``. One shot (then retraining), not Han's iterative loop;
  :func:`agp_finetune` is the gradual alternative.
- :func:`l1_filter_prune`: L1-norm filter pruning (Li et al. 2017) that physically removes filters: a
  conv's filters with the smallest L1 norms are dropped, together with their BatchNorm channels and the
  matching input channels of the one layer that consumes them. Only a conv whose output flows through
  channel-wise ops (BN, activations, pooling, dropout, flatten) into exactly one conv or linear layer is
  prunable. That covers plain sequential conv chains; in a residual network it is only the inner conv of
  each block (``conv1`` of a BasicBlock), because the other convs feed an addition whose channels are
  shared with the shortcut.
- :func:`uniform_policy`: the same (prune, unify) fractions for every layer (a :class:`Policy` factory).
- :func:`agp_finetune`: the gradual schedule of Zhu & Gupta (2018) instead of ADMM: the policy's
  fractions ramp up as ``f_t = 1 - (1 - t/n)^3`` over ``n`` pruning steps (``prune_steps`` per ramp
  epoch, at evenly spaced batches), then the final structure is retrained, all under one optimizer.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.blocks import DEFAULT_BLOCK_SHAPES, compressible_layers, policy_block_shapes
from ..core.constraints import bake, constrain, rebind_optimizer, weight_velocities
from ..core.errors import ConfigError, ModelError
from ..core.policy import LayerAction, Policy
from ..core.projection import project_model
from ..core.structure import BlockShape, LayerStructure
from .admm import LogFn, _epoch, _evaluate, _Logger, _wrap, world
from .training import make_optimizer, train_epoch


def _fraction(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{what} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _per_layer(ratios: float | Mapping[str, float], names: list[str], what: str) -> dict[str, float]:
    """A fraction per layer from one number or a ``{layer: fraction}`` mapping (unnamed layers: 0)."""
    if isinstance(ratios, Mapping):
        unknown = [n for n in ratios if n not in names]
        if unknown:
            raise ConfigError(f"{what} names layers {unknown[:5]} that are not prunable here (prunable: {names[:8]})")
        return {n: _fraction(ratios.get(n, 0.0), f"{what} of {n!r}") for n in names}
    return {n: _fraction(ratios, what) for n in names}


# ----------------------------------------------------------------------------- unstructured (Han 2015)


def magnitude_masks(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layer",
    skip: Collection[str] = (),
) -> dict[str, Tensor]:
    """0/1 masks keeping the largest ``|w|`` of each compressible layer's weight.

    Args:
        sparsity: fraction of weights to zero, in [0, 1]; one number or ``{layer: fraction}``.
        scope: ``"layer"`` (each layer loses its own fraction) or ``"global"`` (one threshold over all
            layers, ``sparsity`` then a single number).
        skip: layers left dense.
    """
    specs = compressible_layers(model, skip=skip)
    names = [s.name for s in specs]
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise ConfigError("global magnitude pruning takes one sparsity number, not a per-layer mapping")
        s = _fraction(sparsity, "sparsity")
        all_abs = torch.cat([spec.module.weight.detach().abs().flatten() for spec in specs])
        k = int(math.floor(s * all_abs.numel() + 0.5))
        threshold = all_abs.kthvalue(k).values if k > 0 else all_abs.new_tensor(-1.0)
        masks = {}
        for spec in specs:
            w = spec.module.weight.detach()
            masks[spec.name] = (w.abs() > threshold).to(w.dtype)
        return masks
    if scope != "layer":
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    fractions = _per_layer(sparsity, names, "sparsity")
    masks = {}
    for spec in specs:
        w = spec.module.weight.detach()
        k = int(math.floor(fractions[spec.name] * w.numel() + 0.5))
        mask = torch.ones_like(w)
        if k > 0:
            mask.view(-1)[w.abs().flatten().argsort()[:k]] = 0.0
        masks[spec.name] = mask
    return masks


def magnitude_prune(model: nn.Module, sparsity: float | Mapping[str, float], *, scope: str = "layer", skip: Collection[str] = ()) -> dict[str, Tensor]:
    """Zero the smallest weights in place (see :func:`magnitude_masks`); returns the masks."""
    masks = magnitude_masks(model, sparsity, scope=scope, skip=skip)
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_submodule(name).weight.mul_(mask)
    return masks


# ----------------------------------------------------------------------------- L1 filter pruning (Li 2017)

_CHANNELWISE_MODULES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.dropout,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh"}
_FLATTEN = {torch.flatten, "flatten"}


@dataclass(frozen=True)
class FilterChain:
    """A prunable conv: its BatchNorm layers, and the one conv or linear layer consuming its output."""

    conv: str
    norms: tuple[str, ...]
    consumer: str
    flattened: bool  # the consumer is a Linear after a flatten


def filter_chains(model: nn.Module) -> list[FilterChain]:
    """The convs :func:`l1_filter_prune` can shrink (see the module docstring), found by FX tracing."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # FX raises many kinds for untraceable control flow
        raise ModelError(f"L1 filter pruning needs an FX-traceable model ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    modules = dict(model.named_modules())
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d) or modules[node.target].groups != 1:
            continue
        norms: list[str] = []
        flattened = False
        current = node
        consumer = None
        while len(current.users) == 1:
            nxt = next(iter(current.users))
            if nxt.args[:1] != (current,):
                break  # our tensor is not the op's main input (e.g. the second operand of an add)
            if nxt.op == "call_module":
                mod = modules[nxt.target]
                if isinstance(mod, nn.Conv2d) and mod.groups == 1 and not flattened:
                    consumer = nxt.target
                    break
                if isinstance(mod, nn.Linear) and flattened:
                    consumer = nxt.target
                    break
                if isinstance(mod, nn.Flatten):
                    flattened = True
                elif isinstance(mod, _CHANNELWISE_MODULES) and not flattened:
                    if isinstance(mod, nn.BatchNorm2d):
                        norms.append(nxt.target)
                else:
                    break
            elif nxt.op == "call_function" and nxt.target in _CHANNELWISE_FUNCTIONS and not flattened:
                pass
            elif nxt.op == "call_method" and nxt.target in _CHANNELWISE_METHODS and not flattened:
                pass
            elif (nxt.op == "call_function" and nxt.target in _FLATTEN) or (nxt.op == "call_method" and nxt.target in _FLATTEN):
                flattened = True
            elif nxt.op == "call_function" and nxt.target in (operator.getitem,):
                break
            else:
                break
            current = nxt
        if consumer is not None:
            chains.append(FilterChain(node.target, tuple(norms), consumer, flattened))
    return chains


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def _shrink_conv(conv: nn.Conv2d, out_keep: Tensor | None, in_keep: Tensor | None) -> nn.Conv2d:
    w = conv.weight.detach()
    if out_keep is not None:
        w = w[out_keep]
    if in_keep is not None:
        w = w[:, in_keep]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation, 1,
                    conv.bias is not None, conv.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[out_keep] if out_keep is not None else conv.bias.detach())
    return new


def _shrink_norm(bn: nn.BatchNorm2d, keep: Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device if bn.affine else None)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[keep])
            new.bias.copy_(bn.bias.detach()[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _shrink_linear_inputs(linear: nn.Linear, columns: Tensor) -> nn.Linear:
    new = nn.Linear(len(columns), linear.out_features, linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight.detach()[:, columns])
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
    return new


def l1_filter_prune(model: nn.Module, ratios: float | Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Physically remove the filters with the smallest L1 norms, in place (Li et al. 2017).

    Args:
        ratios: fraction of filters to remove per prunable conv, in [0, 1); one number for every
            prunable conv or ``{conv name: fraction}`` (others untouched). At least one filter stays.

    Returns ``{conv name: {"kept": int, "removed": int, "consumer": name}}``; the conv, its BN layers
    and its consumer's input channels are replaced by smaller modules. A Linear consumer after a flatten
    loses the ``in_features / Co`` columns of each removed channel (C x H x W flatten order).
    """
    chains = filter_chains(model)
    if not chains:
        raise ModelError("no conv in this model can have filters removed (each must feed exactly one conv/linear through channel-wise ops)")
    fractions = _per_layer(ratios, [c.conv for c in chains], "filter pruning ratio")
    report: dict[str, dict[str, Any]] = {}
    for chain in chains:
        conv = model.get_submodule(chain.conv)
        co = conv.out_channels
        n_remove = min(co - 1, int(math.floor(fractions[chain.conv] * co + 0.5)))
        if n_remove <= 0:
            continue
        l1 = conv.weight.detach().abs().reshape(co, -1).sum(1)
        keep = l1.argsort(descending=True)[: co - n_remove].sort().values
        _set_module(model, chain.conv, _shrink_conv(conv, keep, None))
        for name in chain.norms:
            _set_module(model, name, _shrink_norm(model.get_submodule(name), keep))
        consumer = model.get_submodule(chain.consumer)
        if chain.flattened:
            if consumer.in_features % co:
                raise ModelError(f"cannot map {co} channels of {chain.conv!r} onto the {consumer.in_features} inputs of {chain.consumer!r}")
            per = consumer.in_features // co
            columns = (keep[:, None] * per + torch.arange(per, device=keep.device)[None, :]).reshape(-1)
            _set_module(model, chain.consumer, _shrink_linear_inputs(consumer, columns))
        else:
            _set_module(model, chain.consumer, _shrink_conv(consumer, None, keep))
        report[chain.conv] = {"kept": co - n_remove, "removed": n_remove, "consumer": chain.consumer}
    return report


# ----------------------------------------------------------------------------- uniform policy


def uniform_policy(
    model: nn.Module,
    prune: float,
    unify: float = 0.0,
    *,
    overrides: Mapping[str, LayerAction] | None = None,
    skip: Collection[str] = (),
    block_shapes: Mapping[str, BlockShape] | None = None,
    model_name: str = "",
) -> Policy:
    """A policy with the same ``prune``/``unify`` fractions (each in [0, 1], sum <= 1) for every layer.

    ``overrides`` give some layers their own action; ``skip`` layers stay dense (not named).
    """
    default = LayerAction(_fraction(prune, "prune"), _fraction(unify, "unify"))
    shapes = dict(DEFAULT_BLOCK_SHAPES)
    shapes.update(block_shapes or {})
    names = [s.name for s in compressible_layers(model, shapes, skip=skip)]
    overrides = dict(overrides or {})
    unknown = [n for n in overrides if n not in names]
    if unknown:
        raise ConfigError(f"overrides name layers {unknown[:5]} that are not compressible layers here")
    return Policy(
        layers={n: overrides.get(n, default) for n in names},
        model=model_name,
        block_shape={k: (v.out, v.inp) for k, v in shapes.items()},
    )


def scaled_policy(policy: Policy, factor: float) -> Policy:
    """``policy`` with every fraction multiplied by ``factor`` in [0, 1]."""
    return Policy(
        layers={n: LayerAction(a.prune * factor, a.unify * factor) for n, a in policy.layers.items()},
        model=policy.model, block_shape=dict(policy.block_shape), latency_budget=policy.latency_budget,
    )


# ----------------------------------------------------------------------------- AGP (Zhu & Gupta 2018)


def agp_fraction(step: int, total_steps: int, final: float = 1.0, initial: float = 0.0) -> float:
    """AGP sparsity at ``step`` of ``total_steps``: ``final + (initial - final) * (1 - t/n)^3``, t clipped to [0, n]."""
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
    t = min(max(step, 0), total_steps) / total_steps
    return final + (initial - final) * (1.0 - t) ** 3


@dataclass
class AgpConfig:
    """Options of :func:`agp_finetune`.

    ``ramp_epochs`` (>= 1): epochs over which the fractions grow to the policy's; ``retrain_epochs``
    (>= 0): epochs at the final structure; ``lr`` (> 0) decays by a cosine over all epochs (set per
    epoch); ``momentum`` in [0, 1), ``weight_decay`` >= 0; ``device``; ``progress``; ``prune_steps``
    (>= 1): pruning steps (re-projections) per ramp epoch, at evenly spaced batches and at most one per
    batch, so the ramp has ``ramp_epochs * prune_steps`` of them (with the defaults, 48: the first applies
    6 % of the policy's fractions, each later one at most 6 % more).
    """

    ramp_epochs: int = 3
    retrain_epochs: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "cpu"
    progress: bool = True
    prune_steps: int = 16

    def __post_init__(self) -> None:
        if self.ramp_epochs < 1 or self.retrain_epochs < 0:
            raise ConfigError(f"ramp_epochs must be >= 1 and retrain_epochs >= 0, got {self.ramp_epochs}, {self.retrain_epochs}")
        if isinstance(self.prune_steps, bool) or not isinstance(self.prune_steps, int) or self.prune_steps < 1:
            raise ConfigError(f"prune_steps must be a whole number >= 1 of pruning steps per ramp epoch, got {self.prune_steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay}")


def _slices(batches: int, steps: int) -> list[int]:
    """Sizes of ``min(steps, batches)`` (at least 1) consecutive runs of ``batches`` batches, as equal as can be."""
    n = max(1, min(steps, batches))
    bounds = [j * batches // n for j in range(n + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _mean_loss(stats: list[dict[str, float]]) -> float:
    seen = sum(s["samples"] for s in stats)
    return sum(s["loss"] * s["samples"] for s in stats if s["samples"]) / seen if seen else math.nan


def agp_finetune(
    model: nn.Module,
    policy: Policy,
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    config: AgpConfig,
    *,
    block_shapes: Mapping[str, BlockShape] | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Reach ``policy``'s structure gradually (AGP) instead of by ADMM; same arguments and result keys
    as :func:`~uniprune.compressors.train.admm.admm_finetune` (``method`` is ``"agp"``).

    Each ramp epoch is cut into ``min(prune_steps, its batches)`` runs of batches; before run ``k`` of the
    ``n`` in the ramp the weights are projected onto the policy scaled by ``agp_fraction(k, n)`` and held
    there (:mod:`.constraints`), so the fractions start small and the last run trains at the full policy;
    then ``retrain_epochs`` at the policy. One SGD optimizer, with one momentum state, serves the whole
    run. ``train_batches(epoch)`` without a ``len()`` is counted once by an extra pass over it.

    Logs ``agp/fraction`` (step: the pruning step, 1..n), ``agp/loss`` (mean cross-entropy, nats) and
    ``agp/val_accuracy`` (step: the epoch).
    """
    device = torch.device(config.device)
    model.to(device)
    shapes = policy_block_shapes(policy.block_shape, block_shapes)
    logger = _Logger(log)
    show = config.progress and world()[0] == 0
    total = config.ramp_epochs + config.retrain_epochs
    history: list[dict[str, float]] = []
    optimizer: torch.optim.Optimizer | None = None

    def lr_at(epoch: int) -> float:
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / total))

    def reproject(target: Policy) -> dict[str, LayerStructure]:
        # A new optimizer per structure would reset the momentum at every pruning step. The weights stay the
        # same tensors through bake and constrain, but every constrain makes new magnitude parameters (and the
        # set of unified blocks changes), so the one optimizer is rebound to them and the momentum carried
        # over in weight space, the way the weights themselves are baked and re-projected.
        velocities = weight_velocities(model, optimizer) if optimizer is not None else {}
        bake(model)
        structures = project_model(model, target, shapes, apply=True)
        constrain(model, structures)
        if optimizer is not None:
            rebind_optimizer(model, optimizer, velocities)
        return structures

    def train(opt: torch.optim.Optimizer, batches: Iterable, count: int | None, desc: str) -> dict[str, float]:
        # DDP registers the parameters when it wraps, so it wraps again after every change of structure
        return train_epoch(_wrap(model, device), batches, opt, device=device, total=count, desc=desc if show else None)

    def finish_epoch(epoch: int, loss: float) -> None:
        acc = _evaluate(evaluate, model)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": acc})
        logger("agp/loss", loss, epoch)
        logger("agp/val_accuracy", acc, epoch)

    pruning_step = 0
    counted: int | None = None
    try:
        for epoch in range(config.ramp_epochs):
            batches, count = _epoch(train_batches, epoch)
            if count is None and config.prune_steps > 1:
                if counted is None:
                    counted = sum(1 for _ in _epoch(train_batches, epoch)[0])
                count = counted  # a later epoch of another length only shifts the runs: the last takes the rest
            sizes = _slices(count or 0, config.prune_steps)
            rest = iter(batches)
            stats = []
            for j, size in enumerate(sizes):
                pruning_step += 1
                fraction = agp_fraction(epoch * len(sizes) + j + 1, config.ramp_epochs * len(sizes))
                reproject(scaled_policy(policy, fraction))
                if optimizer is None:  # after the first constrain, so that it sees the magnitudes
                    optimizer = make_optimizer(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch)
                logger("agp/fraction", fraction, pruning_step)
                last = j == len(sizes) - 1
                stats.append(train(optimizer, rest if last else itertools.islice(rest, size), size or None,
                                   f"agp ramp {epoch + 1}/{config.ramp_epochs} step {j + 1}/{len(sizes)}"))
            finish_epoch(epoch, _mean_loss(stats))
        structures = reproject(policy)
        projected = _evaluate(evaluate, model)
        for epoch in range(config.ramp_epochs, total):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
            batches, count = _epoch(train_batches, epoch)
            stats = train(optimizer, batches, count, f"agp retrain {epoch - config.ramp_epochs + 1}/{config.retrain_epochs}")
            finish_epoch(epoch, stats["loss"])
    finally:
        trained = bake(model)
    out = dict(structures)
    out.update(trained)
    return {
        "structures": out,
        "method": "agp",
        "accuracy": history[-1]["val_accuracy"] if config.retrain_epochs else projected,
        "projected_accuracy": projected,
        "epochs": total,
        "admm_history": [],
        "retrain_history": history,
        "config": asdict(config),
    }
