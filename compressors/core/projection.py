"""Projection of a layer's weight onto a policy: which blocks to prune, which to unify, exactly.

A policy's ``(p, u)`` are fractions of the layer's *weights* (so of its MACs: a conv or linear weight is
used as often as any other of its layer). A layer whose shape is not a multiple of its block shape has
smaller edge blocks; the projection therefore takes the same fraction of every block size (a *size
class*: full blocks, right-edge, bottom-edge, corner): in a class of ``B`` blocks it prunes
``n_p = round(p*B)`` and unifies ``n_u = round(u*B)`` (``n_u`` cut so that ``n_p + n_u <= B``; ``round``
is half-up). Taking fractions of blocks regardless of size let the small edge blocks, cheap to prune,
go first: a 10x64 linear with 8x8 blocks at p = 0.5 lost its eight 2-row edge blocks, 20 % of its
weights. :class:`BlockClasses` holds the classes and gives the applied counts and weight fractions,
which the search's budget walls, the latency table and the reports all use. Per block:

- pruning costs ``P = ||w||^2`` (every weight set to 0);
- unifying costs ``U = sum_i (|w_i| - mean|w|)^2`` (every magnitude set to ``mean|w|``, signs kept: the
  Euclidean projection onto "one magnitude, own signs"); ``U <= P`` always;
- keeping costs 0.

**The choice is exact** within each class (the minimum total cost over all assignments with exactly
``n_p`` pruned and ``n_u`` unified blocks of that class; classes are independent, so the layer's total is
the minimum given every class's counts), by this argument. Order the class's blocks by ``d = P - U``. If in some optimal
assignment a pruned block ``i`` came after a unified block ``j`` (``d_i >= d_j``), swapping their roles
changes the cost by ``d_j - d_i <= 0``; so some optimal assignment prunes only blocks before a split
point ``k`` of that order and unifies only blocks from ``k`` on. For a fixed ``k`` the two sides are
independent: prune the ``n_p`` cheapest-to-prune blocks of the prefix, unify the ``n_u``
cheapest-to-unify blocks of the suffix. Running heaps give every prefix's and suffix's best sum in
``O(B log B)``; the best ``k`` is the optimum. ``tests/test_projection.py`` checks it against brute force.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .blocks import policy_layers
from .errors import ModelError, PolicyError
from .policy import Policy
from .structure import KEEP, PRUNE, UNIFY, BlockGrid, BlockShape, LayerStructure


def block_counts(num_blocks: int, prune: float, unify: float) -> tuple[int, int]:
    """``(n_prune, n_unify)`` for a layer of ``num_blocks`` blocks: half-up rounding, sum capped at the count."""
    n_p = min(num_blocks, int(math.floor(prune * num_blocks + 0.5)))
    n_u = min(num_blocks - n_p, int(math.floor(unify * num_blocks + 0.5)))
    return n_p, n_u


@dataclass(frozen=True)
class BlockClasses:
    """A layer's blocks grouped by size (see the module docstring), largest blocks first.

    ``indices[c]``: flat indices (row-major over ``[n_out, n_in]``) of class ``c``'s blocks;
    ``sizes[c]``: weights per block of class ``c``; ``total``: the layer's weights.
    """

    indices: tuple[np.ndarray, ...]
    sizes: tuple[int, ...]
    total: int

    @classmethod
    def of(cls, grid: BlockGrid) -> BlockClasses:
        """The size classes of ``grid``'s blocks."""
        sizes = grid.block_sizes().flatten().round().to(torch.int64).numpy()
        values = sorted({int(v) for v in sizes.tolist()}, reverse=True)
        return cls(tuple(np.flatnonzero(sizes == v) for v in values), tuple(values), int(sizes.sum()))

    def counts(self, prune: float, unify: float) -> list[tuple[int, int]]:
        """``(n_prune, n_unify)`` of each class for ``prune``, ``unify`` fractions (each in [0, 1])."""
        return [block_counts(len(idx), prune, unify) for idx in self.indices]

    def applied(self, prune: float, unify: float) -> tuple[float, float]:
        """The fractions of the layer's weights the projection really prunes and unifies (whole blocks)."""
        counts = self.counts(prune, unify)
        pruned = sum(n_p * size for (n_p, _), size in zip(counts, self.sizes))
        unified = sum(n_u * size for (_, n_u), size in zip(counts, self.sizes))
        return pruned / self.total, unified / self.total

    def blocks(self, prune: float, unify: float) -> tuple[int, int]:
        """Total ``(n_prune, n_unify)`` blocks over all classes."""
        counts = self.counts(prune, unify)
        return sum(c[0] for c in counts), sum(c[1] for c in counts)


def structure_fractions(structure: LayerStructure) -> tuple[float, float]:
    """The fractions of its layer's weights ``structure`` prunes and unifies (blocks counted by their size), each in [0, 1]."""
    sizes = structure.grid.block_sizes()
    total = float(sizes.sum())
    return float(sizes[structure.states == PRUNE].sum()) / total, float(sizes[structure.states == UNIFY].sum()) / total


def block_costs(weight: Tensor, grid: BlockGrid) -> tuple[Tensor, Tensor, Tensor]:
    """Per-block ``(prune_cost, unify_cost, mean_abs)``, float64 ``[n_out, n_in]`` each."""
    w = weight.detach().double()
    sizes = grid.block_sizes().double().to(w.device)
    sq = grid.block_sum(w * w)
    ab = grid.block_sum(w.abs())
    unify = (sq - ab * ab / sizes).clamp_min(0.0)  # sum (|w|-m)^2 = sum w^2 - (sum|w|)^2/n
    return sq, unify, ab / sizes


def _running_best(costs: np.ndarray, count: int) -> np.ndarray:
    """``out[k]`` = sum of the ``count`` smallest of ``costs[:k]`` (``inf`` while ``k < count``), k = 0..len."""
    out = np.full(len(costs) + 1, np.inf)
    if count == 0:
        out[:] = 0.0
        return out
    heap: list[float] = []  # max-heap (negated) of the current `count` smallest
    total = 0.0
    for k, c in enumerate(costs.tolist(), start=1):
        if len(heap) < count:
            heapq.heappush(heap, -c)
            total += c
        elif c < -heap[0]:
            total += c + heapq.heapreplace(heap, -c)
        if len(heap) == count:
            out[k] = total
    return out


def assign_blocks(prune_cost: np.ndarray, unify_cost: np.ndarray, n_prune: int, n_unify: int) -> np.ndarray:
    """Exact minimum-cost assignment of block states (flat arrays of length B) -> int8 states.

    Keeps cost 0; exactly ``n_prune`` blocks get PRUNE and ``n_unify`` get UNIFY
    (``n_prune + n_unify <= B``). See the module docstring for why this is optimal.
    """
    b = len(prune_cost)
    if n_prune < 0 or n_unify < 0 or n_prune + n_unify > b:
        raise ValueError(f"cannot prune {n_prune} and unify {n_unify} of {b} blocks")
    states = np.full(b, KEEP, dtype=np.int8)
    if n_prune + n_unify == 0:
        return states
    order = np.argsort(prune_cost - unify_cost, kind="stable")
    p_sorted, u_sorted = prune_cost[order], unify_cost[order]
    prefix = _running_best(p_sorted, n_prune)  # prefix[k]: best pruning within order[:k]
    suffix = _running_best(u_sorted[::-1], n_unify)[::-1]  # suffix[k]: best unifying within order[k:]
    k = int(np.argmin(prefix + suffix))
    if n_prune:
        chosen = np.argpartition(p_sorted[:k], n_prune - 1)[:n_prune]
        states[order[chosen]] = PRUNE
    if n_unify:
        chosen = np.argpartition(u_sorted[k:], n_unify - 1)[:n_unify]
        states[order[k + chosen]] = UNIFY
    return states


def signs_of(weight: Tensor) -> Tensor:
    """Sign of each weight with 0 counted as +1 (a zero weight in a unified block takes the + sign)."""
    return torch.where(weight < 0, -torch.ones_like(weight), torch.ones_like(weight))


def structured_weight(weight: Tensor, structure: LayerStructure) -> Tensor:
    """``weight`` with ``structure`` imposed: kept weights as they are, unified ones ``sign*m``, pruned 0."""
    state = structure.state_map().to(weight.device)
    mags = structure.grid.expand(structure.magnitudes.to(weight.device, weight.dtype))
    unified = signs_of(weight) * mags
    return torch.where(state == KEEP, weight, torch.where(state == UNIFY, unified, torch.zeros_like(weight)))


def project_layer(weight: Tensor, grid: BlockGrid, prune: float, unify: float) -> tuple[LayerStructure, Tensor]:
    """Project one weight onto ``prune``/``unify`` fractions (each in [0, 1]) of its weights, the same fraction
    of each block size (:class:`BlockClasses`).

    Returns the chosen structure (unified blocks' magnitude = their mean ``|w|``) and the projected
    weight (same shape, dtype and device as ``weight``; ``weight`` itself is not changed).
    """
    if tuple(weight.shape) != grid.weight_shape:
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match the grid's {grid.weight_shape}")
    prune_cost, unify_cost, mean_abs = block_costs(weight, grid)
    prune_flat, unify_flat = prune_cost.flatten().cpu().numpy(), unify_cost.flatten().cpu().numpy()
    classes = BlockClasses.of(grid)
    states = np.full(grid.num_blocks, KEEP, dtype=np.int8)
    for idx, (n_p, n_u) in zip(classes.indices, classes.counts(prune, unify)):
        states[idx] = assign_blocks(prune_flat[idx], unify_flat[idx], n_p, n_u)
    states_t = torch.from_numpy(states).reshape(grid.n_out, grid.n_in)
    mags = torch.where(states_t == UNIFY, mean_abs.cpu(), torch.zeros_like(mean_abs.cpu())).float()
    structure = LayerStructure(grid=grid, states=states_t, magnitudes=mags)
    return structure, structured_weight(weight.detach(), structure)


def check_policy_model(policy: Policy, model: str) -> None:
    """PolicyError when the policy names another model than ``model`` (a policy without a model name fits any)."""
    if policy.model and policy.model != model:
        raise PolicyError(
            f"the policy was made for {policy.model!r}, not {model!r}; a policy applies to checkpoints of the same "
            "architecture (to transfer to another one, replay the search's agent with 'uniprune replay --agent')"
        )


def check_policy_layers(policy: Policy, names: list[str], model: nn.Module | None = None) -> None:
    """PolicyError when the policy names a layer that is not a compressible layer of the model; with ``model``, a
    depthwise conv named in the policy is reported as such."""
    unknown = [n for n in policy.layers if n not in names]
    modules = dict(model.named_modules()) if model is not None else {}
    depthwise = [n for n in unknown if isinstance(modules.get(n), nn.Conv2d) and modules[n].groups > 1
                 and modules[n].groups == modules[n].in_channels]
    if depthwise:
        raise PolicyError(
            f"policy names depthwise conv(s) {depthwise[:5]}{' ...' if len(depthwise) > 5 else ''}: depthwise convs are "
            "not compressible (they stay dense, see docs/KERNELS.md); remove them from the policy"
        )
    if unknown:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise PolicyError(
            f"policy names layer(s) {unknown[:5]} that are not compressible layers of this model "
            f"(it has: {shown}); was the policy made for another model?"
        )


def project_model(
    model: nn.Module,
    policy: Policy,
    block_shapes: Mapping[str, BlockShape] | None = None,
    *,
    apply: bool = True,
) -> dict[str, LayerStructure]:
    """Project every compressible layer of ``model`` onto ``policy``.

    Block shapes: a layer's own ``block`` in the policy, else ``block_shapes`` if given, else the policy's
    ``block_shape``, else the defaults (:func:`~.blocks.policy_layers`).
    Layers the policy does not name get an all-KEEP structure. With ``apply=True`` the projected
    weights are written into ``model`` in place (callers that must keep the original pass a copy).
    Returns ``{layer name: structure}`` for every compressible layer, in layer order.
    """
    specs = policy_layers(model, policy, block_shapes)
    check_policy_layers(policy, [s.name for s in specs], model)
    structures: dict[str, LayerStructure] = {}
    for spec in specs:
        action = policy.action(spec.name)
        weight = spec.module.weight
        structure, projected = project_layer(weight, spec.grid, action.prune, action.unify)
        structures[spec.name] = structure
        if apply:
            with torch.no_grad():
                weight.copy_(projected)
    return structures


def apply_structures(model: nn.Module, structures: Mapping[str, LayerStructure]) -> None:
    """Set each named layer's weight to its structure (pruned blocks 0, unified blocks ``sign*m``), in place."""
    for name, structure in structures.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"the model has no layer {name!r} that the structures name; wrong model?") from None
        weight = getattr(module, "weight", None)
        if weight is None or tuple(weight.shape) != structure.grid.weight_shape:
            got = None if weight is None else tuple(weight.shape)
            raise ModelError(f"layer {name!r} has weight shape {got}, the structure expects {structure.grid.weight_shape}")
        with torch.no_grad():
            weight.copy_(structured_weight(weight.detach(), structure))


def structure_error(weight: Tensor, structure: LayerStructure) -> dict[str, float]:
    """How far ``weight`` is from obeying ``structure``.

    Returns ``{"pruned_max_abs": max |w| over pruned weights (0 when obeyed),
    "unified_spread": max over unified blocks of (max |w| - min |w|) (0 when tied)}``.
    """
    w = weight.detach().float()
    state = structure.state_map().to(w.device)
    pruned = w[state == PRUNE]
    pruned_max = float(pruned.abs().max()) if pruned.numel() else 0.0
    spread = 0.0
    if bool((structure.states == UNIFY).any()):
        a = w.abs()
        big = torch.finfo(a.dtype).max
        grid = structure.grid
        # per-block max and min of |w| via scatter over a flat block index
        block_id = grid.expand(torch.arange(grid.num_blocks, device=w.device).reshape(grid.n_out, grid.n_in)).reshape(-1)
        flat = a.reshape(-1)
        hi = torch.full((grid.num_blocks,), -big, device=w.device).scatter_reduce(0, block_id, flat, "amax")
        lo = torch.full((grid.num_blocks,), big, device=w.device).scatter_reduce(0, block_id, flat, "amin")
        unified = (structure.states == UNIFY).reshape(-1).to(w.device)
        spread = float((hi - lo)[unified].max())
    return {"pruned_max_abs": pruned_max, "unified_spread": spread}
