"""Masks and ties that hold during training: pruned weights stay 0, unified blocks share one magnitude.

:func:`constrain` re-parametrises each structured layer's ``weight`` (``torch.nn.utils.parametrize``)::

    weight = free * keep_mask + signs * expand(relu(scale * magnitude))

- ``free`` (``parametrizations.weight.original``) is the raw weight; its entries outside KEEP blocks are
  zeroed once when the constraint is set, so their gradient is 0 and SGD with momentum and weight decay
  keeps them exactly 0 (they do not reach ``weight`` anyway).
- ``magnitude`` (``parametrizations.weight.0.magnitude``, ``[n_out, n_in]``) is the trainable shared
  magnitude of each unified block, stored divided by ``scale = 1 / sqrt(weights in the block)``; the
  optimizer sees it, not the tied raw weights. One magnitude stands for up to hundreds of weights, and its
  gradient is the sum of theirs: stored plainly, it took steps hundreds of times a free weight's at the
  same learning rate (at lr 0.1 with momentum tied magnitudes went negative and stayed, loss 0.89 where
  free weights converged). Through ``scale`` an SGD step moves the magnitude by ``lr`` times the *mean*
  of its weights' gradients, as a free weight moves by its own; weight decay stays relative.
  ``signs`` is a fixed buffer (+-1 inside unified blocks, 0 elsewhere), so signs cannot change. A
  magnitude pushed below 0 acts as 0 (the block is then pruned in effect: :func:`bake` counts these as
  collapsed) instead of flipping every sign of its block.
- pruned blocks get neither a free weight nor a magnitude: exactly 0 through any optimizer step.

Because the constraint lives in the forward pass, it holds under DDP as well (every rank computes the
same weight from the same all-reduced parameters). Create the optimizer **after** :func:`constrain`, and
call :func:`bake` after training to turn the layers back into plain weights (and read the trained
magnitudes back into the structures). To change the structure in the middle of training without losing
the optimizer's momentum (gradual pruning): :func:`weight_velocities`, :func:`bake`, re-project,
:func:`constrain`, then :func:`rebind_optimizer`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import ModelError
from .projection import signs_of
from .structure import KEEP, UNIFY, LayerStructure


class TiedWeight(nn.Module):
    """The parametrisation ``free * keep + signs * expand(relu(scale * magnitude))`` of one weight.

    ``keep``: float 0/1 mask shaped like the weight. ``signs``: +-1 in unified weights, 0 elsewhere (or
    ``None`` for masks only). ``out_index``/``in_index``: block row/column of each output/input channel.
    ``magnitude``: initial shared magnitude per block, ``[n_out, n_in]``; ``block_sizes``: weights per
    block, ``[n_out, n_in]`` (the step scale, see the module docstring). :meth:`magnitudes` gives the
    magnitudes themselves.
    """

    def __init__(
        self,
        keep: Tensor,
        signs: Tensor | None = None,
        out_index: Tensor | None = None,
        in_index: Tensor | None = None,
        magnitude: Tensor | None = None,
        block_sizes: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("keep", keep.detach().clone())
        self.tied = signs is not None
        if self.tied:
            self.register_buffer("signs", signs.detach().clone())
            self.register_buffer("out_index", out_index.detach().clone())
            self.register_buffer("in_index", in_index.detach().clone())
            sizes = torch.ones_like(magnitude) if block_sizes is None else block_sizes.detach().to(magnitude)
            self.register_buffer("scale", sizes.clamp_min(1).rsqrt().to(keep.dtype))
            self.magnitude = nn.Parameter((magnitude.detach().to(keep.dtype) / self.scale).clone())

    def magnitudes(self) -> Tensor:
        """The shared magnitude of each block, ``[n_out, n_in]``, before clamping at 0."""
        return self.magnitude * self.scale

    def shared(self) -> Tensor:
        """The unified part ``signs * expand(relu(scale * magnitude))`` (shaped like the weight)."""
        mag = self.magnitudes().clamp_min(0.0)
        per_pair = mag[self.out_index][:, self.in_index]
        per_pair = per_pair.reshape(per_pair.shape + (1,) * (self.signs.dim() - 2))
        return self.signs * per_pair

    def forward(self, free: Tensor) -> Tensor:
        weight = free * self.keep
        return weight + self.shared() if self.tied else weight

    def weight_velocity(self, free_velocity: Tensor, magnitude_velocity: Tensor | None) -> Tensor:
        """The weight's velocity (shaped like it) given the ``free`` and ``magnitude`` parameters' (e.g. SGD
        momentum buffers; ``None``: 0): ``free_velocity * keep + signs * expand(scale * magnitude_velocity)``."""
        velocity = free_velocity * self.keep
        if self.tied and magnitude_velocity is not None:
            per_pair = (self.scale * magnitude_velocity)[self.out_index][:, self.in_index]
            velocity = velocity + self.signs * per_pair.reshape(per_pair.shape + (1,) * (self.signs.dim() - 2))
        return velocity

    def parameter_velocities(self, velocity: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(free, magnitude)`` velocities that move the weight as close to ``velocity`` as the constraint allows.

        The free part is ``velocity * keep`` (0 outside KEEP, so those raw entries stay 0); each unified
        block's magnitude moves by the mean of ``signs * velocity`` over its weights (the Euclidean projection
        onto "one magnitude, own signs"), i.e. the stored magnitude by ``scale * sum(signs * velocity)``.
        :meth:`weight_velocity` of the result gives ``velocity`` back wherever it already obeys the
        constraint (KEEP weights, and unified blocks whose weights have equal ``signs * velocity``).
        """
        free = velocity * self.keep
        if not self.tied:
            return free, None
        per_pair = (self.signs * velocity).flatten(2).sum(2) if velocity.dim() > 2 else self.signs * velocity
        rows = per_pair.new_zeros(self.magnitude.shape[0], per_pair.shape[1]).index_add_(0, self.out_index, per_pair)
        sums = rows.new_zeros(self.magnitude.shape).index_add_(1, self.in_index, rows)
        return free, self.scale * sums


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"the model has no layer {name!r} to constrain; were the structures made for another model?") from None
    if parametrize.is_parametrized(module, "weight"):
        raise ModelError(f"layer {name!r} is already constrained; call bake(model) first")
    return module


def _register(module: nn.Module, tie: TiedWeight) -> None:
    with torch.no_grad():
        module.weight.mul_(tie.keep)  # raw entries outside KEEP start (and so stay) at exactly 0
    parametrize.register_parametrization(module, "weight", tie)


def constrain(model: nn.Module, structures: Mapping[str, LayerStructure]) -> None:
    """Hold each named layer to its structure during training (see the module docstring).

    Layers whose structure is all KEEP are left alone. Unified blocks start at the structure's
    magnitudes and take their signs from the current weights (0 counts as +).
    """
    for name, structure in structures.items():
        if bool((structure.states == KEEP).all()):
            continue
        module = _module(model, name)
        weight = module.weight.detach()
        if tuple(weight.shape) != structure.grid.weight_shape:
            raise ModelError(f"layer {name!r} has weight shape {tuple(weight.shape)}, the structure expects {structure.grid.weight_shape}")
        state = structure.state_map().to(weight.device)
        keep = (state == KEEP).to(weight.dtype)
        signs = signs_of(weight) * (state == UNIFY).to(weight.dtype)
        grid = structure.grid
        tie = TiedWeight(keep, signs, grid.out_index.to(weight.device), grid.in_index.to(weight.device),
                         structure.magnitudes.to(weight.device), grid.block_sizes().to(weight.device))
        tie.structure = structure  # plain attribute: read back by bake()
        _register(module, tie)


def constrain_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Hold each named layer's weight to ``weight * mask`` (0/1 masks shaped like the weights)."""
    for name, mask in masks.items():
        module = _module(model, name)
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ModelError(f"mask for layer {name!r} has shape {tuple(mask.shape)}, the weight {tuple(module.weight.shape)}")
        _register(module, TiedWeight((mask != 0).to(module.weight.dtype).to(module.weight.device)))


def constrained_layers(model: nn.Module) -> list[str]:
    """Names of the layers that currently carry a constraint."""
    return [n for n, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]


def _tie(module: nn.Module) -> TiedWeight:
    return module.parametrizations.weight[0]


def weight_velocities(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The SGD momentum of each constrained layer as a velocity of its (constrained) weight.

    Read it before :func:`bake` and hand it to :func:`rebind_optimizer` after the next :func:`constrain`,
    so that momentum survives a change of structure. Layers whose weight has no ``momentum_buffer`` yet
    (no step taken, or momentum 0) are left out.
    """
    out = {}
    for name in constrained_layers(model):
        module = model.get_submodule(name)
        tie = _tie(module)
        free = optimizer.state.get(module.parametrizations.weight.original, {}).get("momentum_buffer")
        if free is None:
            continue
        magnitude = optimizer.state.get(tie.magnitude, {}).get("momentum_buffer") if tie.tied else None
        with torch.no_grad():
            out[name] = tie.weight_velocity(free, magnitude)
    return out


def rebind_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, velocities: Mapping[str, Tensor]) -> None:
    """Make ``optimizer`` train ``model``'s current parameters after :func:`bake` and :func:`constrain`.

    A weight is the same tensor through both (its raw ``original``), so its place and state in the optimizer
    stay; the magnitudes of baked-away ties leave the optimizer with their state, and each new magnitude
    joins its layer weight's param group. Momentum: each constrained layer's buffers become
    :meth:`TiedWeight.parameter_velocities` of its entry in ``velocities`` (from :func:`weight_velocities`
    before the bake), or of its weight's own buffer when the layer was not constrained before; a layer
    that is no longer constrained gets its velocity as its weight's buffer.

    Raises :class:`ModelError` when a constrained layer's weight is not one of the optimizer's parameters.
    """
    live = {id(p) for p in model.parameters()}
    group_of: dict[int, dict] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in live:
                optimizer.state.pop(p, None)
        group["params"] = [p for p in group["params"] if id(p) in live]
        group_of.update((id(p), group) for p in group["params"])
    constrained = constrained_layers(model)
    with torch.no_grad():
        for name in constrained:
            module = model.get_submodule(name)
            free = module.parametrizations.weight.original
            tie = _tie(module)
            if id(free) not in group_of:
                raise ModelError(f"the optimizer does not train layer {name!r}'s weight; build it with make_optimizer(model) after constrain()")
            if tie.tied and id(tie.magnitude) not in group_of:
                group_of[id(free)]["params"].append(tie.magnitude)
                group_of[id(tie.magnitude)] = group_of[id(free)]
            velocity = velocities.get(name, optimizer.state.get(free, {}).get("momentum_buffer"))
            if velocity is None:
                continue
            free_velocity, magnitude_velocity = tie.parameter_velocities(velocity)
            optimizer.state[free]["momentum_buffer"] = free_velocity
            if magnitude_velocity is not None:
                optimizer.state[tie.magnitude]["momentum_buffer"] = magnitude_velocity
        for name, velocity in velocities.items():
            if name not in constrained:
                weight = model.get_submodule(name).weight
                if id(weight) in group_of:
                    optimizer.state[weight]["momentum_buffer"] = velocity.clone()


def collapsed_blocks(structures: Mapping[str, LayerStructure]) -> dict[str, int]:
    """``{layer: unified blocks whose trained magnitude reached 0}`` (pruned in effect), layers with any only."""
    out = {}
    for name, s in structures.items():
        n = int(((s.states == UNIFY) & (s.magnitudes <= 0)).sum())
        if n:
            out[name] = n
    return out


def bake(model: nn.Module) -> dict[str, LayerStructure]:
    """Remove the constraints, leaving plain weights that obey them; returns the trained structures.

    The returned structures are the ones given to :func:`constrain` with magnitudes updated to the
    trained values (clamped at 0: :func:`collapsed_blocks` counts those that reached it); mask-only
    layers are not in the result.
    """
    trained: dict[str, LayerStructure] = {}
    for name in constrained_layers(model):
        module = model.get_submodule(name)
        tie = module.parametrizations.weight[0]
        if getattr(tie, "tied", False) and hasattr(tie, "structure"):
            old = tie.structure
            mags = torch.where(old.states == UNIFY, tie.magnitudes().detach().clamp_min(0.0).cpu().float(),
                               torch.zeros_like(old.magnitudes))
            trained[name] = LayerStructure(grid=old.grid, states=old.states.clone(), magnitudes=mags)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return trained
