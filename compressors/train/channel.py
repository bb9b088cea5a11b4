"""Channel pruning, the rival every micro-structured result is held against, through Torch-Pruning.

Torch-Pruning (Fang et al. 2023, ``torch-pruning`` on PyPI) finds the groups of coupled channels of any
traceable model (a residual stream, a concat, a depthwise conv and its producer) and removes the channels
of lowest group L1 norm (Li et al. 2017) in place, leaving a smaller dense model that every engine runs.

Two things are added here:

- **A check of the pruned model.** Some models couple channels through an operation Torch-Pruning
  cannot see into: the option-A shortcut of the CIFAR ResNets pads the residual stream with a fixed number
  of zero channels, so pruning that stream breaks the model. :func:`channel_prune` prunes a copy first and
  checks its output; when that fails it prunes only the convs whose channels feed one consumer through
  channel-wise ops (:func:`~.baselines.filter_chains`, the inner convs of a residual block), never the
  stream.
- **A record instead of a pickle.** Torch-Pruning saves a pruned model by pickling its modules, which
  would run code on load; :func:`channel_record` keeps the channel counts of every conv, norm and linear
  layer (JSON-able), and :func:`reshape_like` rebuilds those layers at those counts in a freshly built
  model, whose ``load_state_dict`` then takes the pruned weights (read with ``weights_only``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError, ModelError
from .baselines import filter_chains

#: The version of :func:`channel_record`'s layout.
RECORD_FORMAT = "uniprune.channels/1"


@dataclass(frozen=True)
class ChannelReport:
    """What :func:`channel_prune` did: ``kept[name] = (kept, before)`` output channels of each changed conv,
    the MACs per sample before and after (multiply-accumulates, convs and linears), and ``scope``:
    ``"groups"`` (coupled groups, the residual stream included) or ``"chains"`` (inner convs only)."""

    kept: dict[str, tuple[int, int]]
    macs_before: int
    macs_after: int
    scope: str

    @property
    def mac_ratio(self) -> float:
        """MACs after over before, in (0, 1]."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0


def _macs(model: nn.Module, example: torch.Tensor) -> int:
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def _prune_copy(model: nn.Module, example: torch.Tensor, ratios: Mapping[str, float], only: set[str] | None) -> nn.Module:
    import torch_pruning as tp

    clone = copy.deepcopy(model).eval()
    modules = dict(clone.named_modules())
    prunable = {n for n, m in modules.items() if isinstance(m, nn.Conv2d) and (only is None or n in only)}
    # convs outside the prunable set keep their channels, and linears (the classifier) their classes
    ignored = [m for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in prunable]
    per_module = {modules[n]: float(r) for n, r in ratios.items() if n in prunable and r > 0}
    pruner = tp.pruner.MetaPruner(clone, example[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.0, pruning_ratio_dict=per_module, ignored_layers=ignored)
    pruner.step()
    return clone


def channel_prune(model: nn.Module, ratios: float | Mapping[str, float], example: torch.Tensor) -> tuple[nn.Module, ChannelReport]:
    """A copy of ``model`` with the channels of lowest L1 norm removed (``model`` is left as it was).

    Args:
        model: a traceable network with Conv2d layers (eval-mode output is what is checked).
        ratios: fraction of each conv's output channels to remove, in [0, 1): one number for every conv, or
            ``{conv name: fraction}`` (others kept). Coupled convs share the ratio of the first one named.
        example: an input batch of the model's shape (the first sample is used to trace and check).

    Returns the pruned copy and a :class:`ChannelReport`. Raises :class:`ModelError` when nothing in the
    model can be pruned safely.
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if isinstance(ratios, Mapping):
        unknown = sorted(set(ratios) - set(convs))
        if unknown:
            raise ConfigError(f"channel ratios name {unknown[:5]}, which are not convs of this model (convs: {convs[:6]}...)")
        table = dict(ratios)
    else:
        table = dict.fromkeys(convs, ratios)
    bad = {n: r for n, r in table.items() if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1}
    if bad:
        raise ConfigError(f"a channel ratio must be a fraction in [0, 1), got {dict(list(bad.items())[:3])}")
    was_training = model.training
    with torch.no_grad():
        reference = model.eval()(example[:1])
    model.train(was_training)
    pruned = None
    for scope in ("groups", "chains"):
        only = None if scope == "groups" else {c.conv for c in filter_chains(model)}
        try:
            candidate = _prune_copy(model, example, table, only)
            with torch.no_grad():
                out = candidate(example[:1])
        except (RuntimeError, ValueError, IndexError):  # a coupling Torch-Pruning could not see broke a shape
            continue
        if out.shape == reference.shape:
            pruned = candidate
            break
    if pruned is None:
        raise ModelError("no channels of this model can be removed safely (its couplings are hidden from Torch-Pruning and no conv feeds a single consumer)")
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    kept = {n: (after[n], before[n]) for n in before if after[n] != before[n]}
    pruned.train(was_training)
    return pruned, ChannelReport(kept, _macs(model, example), _macs(pruned, example), scope)


def channel_record(model: nn.Module) -> dict[str, Any]:
    """The channel counts of every Conv2d, BatchNorm2d and Linear layer of ``model`` (JSON-able)."""
    layers: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            layers[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            layers[name] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            layers[name] = {"in": m.in_features, "out": m.out_features}
    return {"format": RECORD_FORMAT, "layers": layers}


def _count(record: Mapping[str, Any], key: str, name: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise ModelError(f"channel record of {name!r}: {key!r} must be a whole number in [1, 2^20], got {value!r}")
    return value


def reshape_like(model: nn.Module, record: Mapping[str, Any]) -> nn.Module:
    """``model`` (freshly built, in place) with its conv, norm and linear layers at ``record``'s channel counts.

    The parameters of a reshaped layer are new and uninitialised: load the pruned state dict next.
    Raises :class:`ModelError` when the record does not fit the model (another architecture)."""
    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT or not isinstance(record.get("layers"), Mapping):
        raise ModelError(f"not a channel record of format {RECORD_FORMAT!r}; was the checkpoint written by uniprune?")
    layers = record["layers"]
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ModelError(f"the channel record names layers this model lacks ({missing[:3]}); was it made for another model?")
    for name, rec in layers.items():
        old = modules[name]
        if isinstance(old, nn.Conv2d):
            cin, cout, groups = _count(rec, "in", name), _count(rec, "out", name), _count(rec, "groups", name)
            if cin % groups or cout % groups:
                raise ModelError(f"channel record of {name!r}: {cin} in and {cout} out channels do not split into {groups} groups")
            new: nn.Module = nn.Conv2d(cin, cout, old.kernel_size, old.stride, old.padding, old.dilation, groups,
                                       old.bias is not None, old.padding_mode)
        elif isinstance(old, nn.BatchNorm2d):
            new = nn.BatchNorm2d(_count(rec, "features", name), old.eps, old.momentum, old.affine, old.track_running_stats)
        elif isinstance(old, nn.Linear):
            new = nn.Linear(_count(rec, "in", name), _count(rec, "out", name), old.bias is not None)
        else:
            raise ModelError(f"channel record names {name!r}, a {type(old).__name__}, not a conv, norm or linear layer")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def rebuild(model: nn.Module, record: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """``model`` (freshly built from the pruned model's name) narrowed to ``record`` and loaded with ``state_dict``,
    in eval mode: the channel-pruned model back from its checkpoint. :class:`ModelError` in one line when the
    weights do not fit the record."""
    reshape_like(model, record)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(f"the pruned weights do not fit the channel record ({first[-1].strip()[:160] if first else exc}); "
                         "the checkpoint is damaged or was made for another model") from None
    return model.eval()
