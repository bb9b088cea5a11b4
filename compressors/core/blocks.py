"""Which layers of a network are compressible, and how each one's weight is tiled into blocks.

Supported layers:

- ``nn.Linear``: weight ``[Co, Ci]``, tiled with the ``"linear"`` block shape.
- ``nn.Conv2d`` with ``groups == 1``: weight ``[Co, Ci, kh, kw]``, tiled with the ``"conv"`` block shape;
  a block spans the whole ``kh x kw`` window (one tile of the im2col GEMM).
- grouped ``nn.Conv2d`` (``1 < groups < Ci``): tiled group by group (see
  :func:`~uniprune.compressors.core.structure.block_grid`), so no block straddles two groups.
- depthwise ``nn.Conv2d`` (``groups == Ci``, one input channel per output channel) is **skipped**: each of
  its output channels sees a single input channel, so a block could only span output channels of one
  ``kh x kw`` window each, and these layers hold a negligible share of weights and MACs. They stay dense.

Channel counts that a block shape does not divide leave smaller edge blocks at the end of each
dimension, and a layer smaller than one block (say a 3-input stem conv with an 8x4 block) is tiled as
one edge block per dimension: it is never skipped for being small.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError, PolicyError
from .policy import Policy
from .structure import BlockGrid, BlockShape, block_grid

#: Default block shape per layer type (output x input channels). The runtime engineer picks these by
#: kernel speed; this dict is the single place they live.
DEFAULT_BLOCK_SHAPES: dict[str, BlockShape] = {"conv": BlockShape(8, 4), "linear": BlockShape(8, 8)}

LAYER_KINDS = ("conv", "linear")


@dataclass(frozen=True)
class LayerSpec:
    """One compressible layer: its module name (as in ``named_modules``), module, kind and block grid."""

    name: str
    module: nn.Module
    kind: str  # "conv" | "linear"
    grid: BlockGrid


def layer_kind(module: nn.Module) -> str | None:
    """``"conv"`` or ``"linear"`` for a compressible module, ``None`` otherwise (depthwise convs included)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return None  # depthwise: stays dense, see the module docstring
        return "conv"
    return None


def resolve_block_shapes(overrides: Mapping[str, Sequence[int] | BlockShape] | None) -> dict[str, BlockShape]:
    """The defaults with ``overrides`` (``{"conv": [bo, bi], ...}``) applied; bad entries raise ConfigError."""
    shapes = dict(DEFAULT_BLOCK_SHAPES)
    for kind, shape in (overrides or {}).items():
        if kind not in LAYER_KINDS:
            raise ConfigError(f"block shape given for unknown layer type {kind!r}; use one of {list(LAYER_KINDS)}")
        if isinstance(shape, BlockShape):
            shapes[kind] = shape
            continue
        if (
            not isinstance(shape, Sequence)
            or isinstance(shape, str)
            or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
        ):
            raise ConfigError(f"block shape for {kind!r} must be two positive integers [out, in], got {shape!r}")
        shapes[kind] = BlockShape(int(shape[0]), int(shape[1]))
    return shapes


def layer_grid(module: nn.Module, block_shapes: Mapping[str, BlockShape]) -> BlockGrid:
    """The block grid of one compressible module; PolicyError for a module that is not compressible."""
    kind = layer_kind(module)
    if kind is None:
        raise PolicyError(f"module of type {type(module).__name__} is not compressible (Linear or non-depthwise Conv2d)")
    groups = module.groups if kind == "conv" else 1
    return block_grid(tuple(module.weight.shape), block_shapes[kind], groups)


def compressible_layers(
    model: nn.Module,
    block_shapes: Mapping[str, BlockShape] | None = None,
    *,
    skip: Collection[str] = (),
    per_layer: Mapping[str, BlockShape] | None = None,
) -> list[LayerSpec]:
    """The compressible layers of ``model`` with their block grids.

    Order is module definition order (``named_modules``), which is the forward order for the
    sequential and ResNet-style models this project names; a model that calls its modules in another
    order gets them listed in definition order.

    Args:
        block_shapes: per layer type (``"conv"``, ``"linear"``); missing types use
            :data:`DEFAULT_BLOCK_SHAPES`.
        skip: module names to leave out (they stay dense).
        per_layer: module name -> its own block shape, winning over ``block_shapes`` for that layer.
    """
    shapes = dict(DEFAULT_BLOCK_SHAPES)
    shapes.update(block_shapes or {})
    per_layer = per_layer or {}
    specs = []
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is None or name in skip:
            continue
        own = {kind: per_layer[name]} if name in per_layer else shapes
        specs.append(LayerSpec(name=name, module=module, kind=kind, grid=layer_grid(module, own)))
    return specs


def policy_layers(model: nn.Module, policy: Policy, block_shapes: Mapping[str, BlockShape] | None = None) -> list[LayerSpec]:
    """The compressible layers of ``model`` tiled as ``policy`` says.

    A layer's own ``block`` in the policy wins (the search chose and priced it); other layers take
    ``block_shapes`` if given, else the policy's ``block_shape`` per kind, else the defaults.
    """
    own = {name: action.block for name, action in policy.layers.items() if action.block is not None}
    return compressible_layers(model, policy_block_shapes(policy.block_shape, block_shapes), per_layer=own)


def policy_block_shapes(policy_shapes: Mapping[str, Sequence[int]] | None, block_shapes: Mapping[str, BlockShape] | None) -> dict[str, BlockShape]:
    """Block shapes to use with a policy: explicit ``block_shapes`` win, then the policy's, then the defaults."""
    if block_shapes is not None:
        shapes = dict(DEFAULT_BLOCK_SHAPES)
        shapes.update(block_shapes)
        return shapes
    try:
        return resolve_block_shapes(policy_shapes)
    except ConfigError as exc:
        raise PolicyError(f"policy field 'block_shape': {exc}") from None
