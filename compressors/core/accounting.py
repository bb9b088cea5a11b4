"""Size and compute accounting, per compressible layer and for the whole model.

Storage (bits), per compressible layer with a structure:

- a KEEP block stores each weight as a 32-bit float;
- a UNIFY block stores one 32-bit magnitude plus one sign bit per weight;
- a PRUNE block stores nothing but its place in the block-state index;
- the index: ``ceil(log2(s))`` bits per block, ``s`` the number of distinct states the layer uses
  (0 bits for an all-KEEP layer, 1 bit per block for keep/prune only, 2 bits per block for all three).

A layer without a structure (and every parameter outside compressible layers: biases, BN, depthwise
convs) costs 32 bits per parameter, zeros included: it is stored dense.

Compute, per layer, at batch 1 on ``input_shape`` (BN, activations, pooling and adds are not counted):

- ``dense_macs``: weights x output positions (``Co * Ci/groups * kh * kw * Ho * Wo`` for a conv);
- ``macs``: the same over the weights of non-pruned blocks only (what block-sparse kernels execute);
- ``mults``: multiplications: one per kept weight per output position, plus for each unified block
  one per output channel of the block per output position (its inputs are summed with their signs and
  multiplied by the shared magnitude once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .blocks import compressible_layers
from .errors import ConfigError, ModelError
from .structure import KEEP, PRUNE, UNIFY, LayerStructure

FLOAT_BITS = 32
SIGN_BITS = 1


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value), int(value)]


def layer_profile(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, dict[str, Any]]:
    """Shape facts of every compressible layer for one ``input_shape`` ``(C, H, W)`` sample (batch 1).

    Per layer: ``kind``, ``in_channels``, ``out_channels``, ``kernel`` [kh, kw], ``stride`` [sh, sw],
    ``groups``, ``in_hw``/``out_hw`` (feature-map H, W; [1, 1] for a linear layer on flat input),
    ``positions`` (output positions per sample: Ho*Wo, or the number of rows a linear layer sees),
    ``params`` (weight elements), ``macs`` (dense multiply-accumulates per sample).
    """
    if len(input_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in input_shape):
        raise ConfigError(f"input shape must be three positive integers (C, H, W), got {input_shape!r}")
    specs = compressible_layers(model)
    seen: dict[str, dict[str, Any]] = {}
    handles = []

    def hook(name: str, spec_kind: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            if spec_kind == "conv":
                in_hw, out_hw = list(x.shape[-2:]), list(output.shape[-2:])
                positions = out_hw[0] * out_hw[1]
            else:
                positions = x.numel() // (x.shape[-1] * x.shape[0])
                in_hw = out_hw = [1, 1] if x.dim() == 2 else list(x.shape[1:-1])
            seen[name] = {"in_hw": [int(v) for v in in_hw], "out_hw": [int(v) for v in out_hw], "positions": int(positions)}

        return record

    for spec in specs:
        handles.append(spec.module.register_forward_hook(hook(spec.name, spec.kind)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    except RuntimeError as exc:
        raise ModelError(f"the model does not run on input shape {tuple(input_shape)}: {str(exc).splitlines()[0]}") from None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    profile: dict[str, dict[str, Any]] = {}
    for spec in specs:
        m = spec.module
        shape = seen.get(spec.name)
        if shape is None:  # defined but not called in forward: it costs nothing per sample
            shape = {"in_hw": [0, 0], "out_hw": [0, 0], "positions": 0}
        conv = spec.kind == "conv"
        params = int(m.weight.numel())
        profile[spec.name] = {
            "kind": spec.kind,
            "in_channels": int(m.in_channels if conv else m.in_features),
            "out_channels": int(m.out_channels if conv else m.out_features),
            "kernel": _pair(m.kernel_size) if conv else [1, 1],
            "stride": _pair(m.stride) if conv else [1, 1],
            "groups": int(m.groups) if conv else 1,
            **shape,
            "params": params,
            "macs": params * shape["positions"],
        }
    return profile


def structure_size(structure: LayerStructure, positions: int) -> dict[str, int]:
    """Storage bits, MACs and multiplications of one structured layer at ``positions`` output positions."""
    grid = structure.grid
    sizes = grid.block_sizes()
    states = structure.states
    rows = torch.bincount(grid.out_index, minlength=grid.n_out).float()[:, None].expand(grid.n_out, grid.n_in)
    keep_w = float(sizes[states == KEEP].sum())
    unify_w = float(sizes[states == UNIFY].sum())
    n_unify = int((states == UNIFY).sum())
    used = int(sum(bool((states == s).any()) for s in (KEEP, UNIFY, PRUNE)))
    index_bits = math.ceil(math.log2(used)) * grid.num_blocks if used > 1 else 0
    return {
        "storage_bits": int(keep_w * FLOAT_BITS + unify_w * SIGN_BITS + n_unify * FLOAT_BITS + index_bits),
        "index_bits": int(index_bits),
        "macs": int((keep_w + unify_w) * positions),
        "mults": int((keep_w + float(rows[states == UNIFY].sum())) * positions),
    }


def model_size(
    model: nn.Module,
    structures: Mapping[str, LayerStructure] | None = None,
    *,
    input_shape: tuple[int, int, int] | None = None,
    profile: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Parameters, non-zeros, storage bits, MACs and multiplications, per layer and in total.

    Args:
        structures: the layers' structures (layers not named are dense).
        input_shape: ``(C, H, W)``, needed for MACs unless ``profile`` (from :func:`layer_profile`) is
            given; without either, MAC and mult figures are ``None``.

    Returns ``{"layers": {name: {...}}, "total": {...}}``. Every entry has ``params``, ``nonzeros``,
    ``storage_bits``, ``dense_storage_bits``, ``macs``, ``mults``, ``dense_macs``; ``total`` adds
    ``size_ratio`` (storage / dense storage) and ``mac_ratio`` (macs / dense macs) and counts every
    parameter of the model (biases and BN at 32 bits each).
    """
    structures = structures or {}
    if profile is None and input_shape is not None:
        profile = layer_profile(model, input_shape)
    specs = compressible_layers(model)
    names = {s.name for s in specs}
    missing = [n for n in structures if n not in names]
    if missing:
        raise ModelError(f"structures name layers {missing[:5]} that are not compressible layers of this model")
    layers: dict[str, dict[str, Any]] = {}
    for spec in specs:
        weight = spec.module.weight.detach()
        params = int(weight.numel())
        positions = None if profile is None else int(profile[spec.name]["positions"])
        entry: dict[str, Any] = {
            "params": params,
            "nonzeros": int(torch.count_nonzero(weight)),
            "dense_storage_bits": params * FLOAT_BITS,
            "dense_macs": None if positions is None else params * positions,
        }
        structure = structures.get(spec.name)
        if structure is not None:
            if structure.grid.weight_shape != tuple(weight.shape):
                raise ModelError(f"structure of layer {spec.name!r} is for weight shape {structure.grid.weight_shape}, the model's is {tuple(weight.shape)}")
            sized = structure_size(structure, positions or 0)
            entry.update(storage_bits=sized["storage_bits"], index_bits=sized["index_bits"])
            entry.update(macs=None if positions is None else sized["macs"], mults=None if positions is None else sized["mults"])
        else:
            entry.update(storage_bits=params * FLOAT_BITS, index_bits=0, macs=entry["dense_macs"], mults=entry["dense_macs"])
        layers[spec.name] = entry
    layer_weights = {id(s.module.weight) for s in specs}
    other = [p for p in model.parameters() if id(p) not in layer_weights]
    other_params = sum(int(p.numel()) for p in other)
    total: dict[str, Any] = {
        "params": sum(e["params"] for e in layers.values()) + other_params,
        "nonzeros": sum(e["nonzeros"] for e in layers.values()) + sum(int(torch.count_nonzero(p)) for p in other),
        "storage_bits": sum(e["storage_bits"] for e in layers.values()) + other_params * FLOAT_BITS,
        "dense_storage_bits": sum(e["dense_storage_bits"] for e in layers.values()) + other_params * FLOAT_BITS,
    }
    for key in ("macs", "mults", "dense_macs"):
        total[key] = None if profile is None else sum(e[key] for e in layers.values())
    total["size_ratio"] = total["storage_bits"] / total["dense_storage_bits"] if total["dense_storage_bits"] else 1.0
    total["mac_ratio"] = None if not total["dense_macs"] else total["macs"] / total["dense_macs"]
    return {"layers": layers, "total": total}


@dataclass(frozen=True)
class SizeBudget:
    """At most ``ratio`` (in (0, 1]) of the dense model's storage bits: the size wall's budget, shaped as
    :class:`~uniprune.compressors.latency.budget.LatencyBudget` is for latency."""

    ratio: float
    #: relative slack when predicted bits are compared with the budget (sums of floats)
    tolerance: float = 1e-9

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 1:
            raise ConfigError(f"size budget must be in (0, 1] (a fraction of dense storage), got {self.ratio!r}")
        object.__setattr__(self, "ratio", float(self.ratio))

    def limit_bits(self, dense_bits: float) -> float:
        """The most a compressed model may store, in bits, against ``dense_bits``, slack included."""
        return self.ratio * dense_bits * (1 + self.tolerance)

    def met_by(self, bits: float, dense_bits: float) -> bool:
        """Whether ``bits`` is within the budget against ``dense_bits``."""
        return bits <= self.limit_bits(dense_bits)

    def reachable(self, least_ratio: float) -> bool:
        """Whether a least reachable size ratio of ``least_ratio`` lets a policy meet the budget."""
        return least_ratio <= self.ratio + self.tolerance
