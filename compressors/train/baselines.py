"""Baseline compressors, in the same interface as the ADMM fine-tuner where that makes sense.

- :func:`magnitude_masks` / :func:`magnitude_prune`: unstructured magnitude pruning (Han et al. 2015):
  per layer (or globally) the smallest ``|w|`` are set to 0; retrain with
  ``retrain.retrain(model, {}, ..., masks=masks)``. One shot (then retraining), not Han's iterative loop;
  AGP (:mod:`.agp`) is the gradual alternative.
- :func:`l1_filter_prune`: L1-norm filter pruning (Li et al. 2017) that physically removes filters: a
  conv's filters with the smallest L1 norms are dropped, together with their BatchNorm channels and the
  matching input channels of the one layer that consumes them. Only a conv whose output flows through
  channel-wise ops (BN, activations, pooling, dropout, flatten) into exactly one conv or linear layer is
  prunable. That covers plain sequential conv chains; in a residual network it is only the inner conv of
  each block (``conv1`` of a BasicBlock), because the other convs feed an addition whose channels are
  shared with the shortcut.
- :func:`uniform_policy`: the same (prune, unify) fractions for every layer (a :class:`Policy` factory);
  :func:`scaled_policy`: a policy with every fraction scaled.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.blocks import DEFAULT_BLOCK_SHAPES, compressible_layers
from ..core.errors import ConfigError, ModelError
from ..core.policy import LayerAction, Policy
from ..core.structure import BlockShape


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
        layers={n: LayerAction(a.prune * factor, a.unify * factor, a.block) for n, a in policy.layers.items()},
        model=policy.model, block_shape=dict(policy.block_shape), latency_budget=policy.latency_budget,
    )
