"""How a layer's weight is tiled into micro-structured blocks, and what was decided for each block.

A Conv2d weight ``[Co, Ci/groups, kh, kw]`` or a Linear weight ``[Co, Ci]`` is tiled into blocks of
``bo`` output x ``bi`` input channels; a conv block spans the whole kernel window, so one block is one
tile of the im2col GEMM. Output channels are tiled group by group, so a block never straddles two
groups of a grouped conv. Channel counts that do not divide evenly leave smaller edge blocks; a layer
smaller than one block is one (edge) block.

Each block is in one state: :data:`KEEP` (free weights), :data:`UNIFY` (every weight is
``sign_i * m`` with one magnitude ``m`` per block and fixed signs) or :data:`PRUNE` (all zero, which is
unification with ``m = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

KEEP, UNIFY, PRUNE = 0, 1, 2


@dataclass(frozen=True)
class BlockShape:
    """Block size in channels: ``out`` output channels x ``inp`` input channels (both >= 1)."""

    out: int
    inp: int

    def __post_init__(self) -> None:
        if self.out < 1 or self.inp < 1:
            raise ValueError(f"block shape must be positive, got {self.out}x{self.inp}")

    @property
    def key(self) -> str:
        """``"8x4"``: how a shape is spelled in files, tables and on the command line."""
        return f"{self.out}x{self.inp}"

    @classmethod
    def parse(cls, text: str) -> BlockShape:
        """``"8x4"`` -> ``BlockShape(8, 4)``; ValueError naming the text for anything else."""
        parts = str(text).strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 4096 for p in parts):
            raise ValueError(f"a block shape is OUTxIN channels such as 8x4 or 1x1 (each 1 to 4096), got {str(text)[:40]!r}")
        return cls(int(parts[0]), int(parts[1]))


@dataclass(frozen=True)
class BlockGrid:
    """The tiling of one weight tensor. ``out_index[c]``/``in_index[c]``: block row/column of channel c."""

    weight_shape: tuple[int, ...]
    groups: int
    block_shape: BlockShape
    out_index: torch.Tensor  # int64 [Co]
    in_index: torch.Tensor  # int64 [Ci/groups]
    n_out: int
    n_in: int

    @property
    def num_blocks(self) -> int:
        return self.n_out * self.n_in

    @property
    def window(self) -> int:
        """Weights per (output, input) channel pair: kh*kw for a conv, 1 for a linear layer."""
        return math.prod(self.weight_shape[2:]) if len(self.weight_shape) > 2 else 1

    def block_sizes(self) -> torch.Tensor:
        """Number of weights in each block, float32 ``[n_out, n_in]`` (edge blocks are smaller)."""
        rows = torch.bincount(self.out_index, minlength=self.n_out).float()
        cols = torch.bincount(self.in_index, minlength=self.n_in).float()
        return rows[:, None] * cols[None, :] * self.window

    def block_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` (shaped like the weight) over each block -> ``[n_out, n_in]``."""
        per_pair = values.reshape(values.shape[0], values.shape[1], -1).sum(-1)
        rows = torch.zeros(self.n_out, per_pair.shape[1], dtype=per_pair.dtype, device=per_pair.device)
        rows.index_add_(0, self.out_index.to(per_pair.device), per_pair)
        out = torch.zeros(self.n_out, self.n_in, dtype=per_pair.dtype, device=per_pair.device)
        out.index_add_(1, self.in_index.to(per_pair.device), rows)
        return out

    def expand(self, per_block: torch.Tensor) -> torch.Tensor:
        """Broadcast a ``[n_out, n_in]`` tensor back to the weight's shape."""
        oi = self.out_index.to(per_block.device)
        ii = self.in_index.to(per_block.device)
        pair = per_block[oi][:, ii]
        return pair.reshape(pair.shape + (1,) * (len(self.weight_shape) - 2)).expand(self.weight_shape)


def block_grid(weight_shape: tuple[int, ...] | torch.Size, block_shape: BlockShape, groups: int = 1) -> BlockGrid:
    """Tile a weight of ``weight_shape`` (``[Co, Ci/groups, ...]``) into blocks of ``block_shape``.

    Output channels are tiled within each group (``Co/groups`` channels per group), input channels
    across the stored ``Ci/groups`` dimension.
    """
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) < 2:
        raise ValueError(f"expected a weight of at least 2 dimensions, got shape {shape}")
    co, cig = shape[0], shape[1]
    if groups < 1 or co % groups:
        raise ValueError(f"output channels {co} are not divisible by groups={groups}")
    per_group = co // groups
    blocks_per_group = math.ceil(per_group / block_shape.out)
    local = torch.arange(per_group) // block_shape.out
    out_index = (torch.arange(groups)[:, None] * blocks_per_group + local[None, :]).reshape(-1)
    in_index = torch.arange(cig) // block_shape.inp
    return BlockGrid(
        weight_shape=shape,
        groups=groups,
        block_shape=block_shape,
        out_index=out_index,
        in_index=in_index,
        n_out=groups * blocks_per_group,
        n_in=math.ceil(cig / block_shape.inp),
    )


@dataclass
class LayerStructure:
    """The decided structure of one layer: a state per block and the magnitude of each unified block.

    ``states``: int8 ``[n_out, n_in]`` of KEEP/UNIFY/PRUNE. ``magnitudes``: float32 ``[n_out, n_in]``,
    the shared magnitude of UNIFY blocks (0 for PRUNE blocks, unused for KEEP blocks).
    """

    grid: BlockGrid
    states: torch.Tensor
    magnitudes: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        expected = (self.grid.n_out, self.grid.n_in)
        if tuple(self.states.shape) != expected:
            raise ValueError(f"states must have shape {expected}, got {tuple(self.states.shape)}")
        self.states = self.states.to(torch.int8)
        if self.magnitudes is None:
            self.magnitudes = torch.zeros(expected)
        self.magnitudes = self.magnitudes.float()

    def counts(self) -> dict[str, int]:
        """Number of blocks per state: ``{"keep": .., "unify": .., "prune": ..}``."""
        return {
            "keep": int((self.states == KEEP).sum()),
            "unify": int((self.states == UNIFY).sum()),
            "prune": int((self.states == PRUNE).sum()),
        }

    def keep_mask(self) -> torch.Tensor:
        """Float mask shaped like the weight: 1 where the weight is not pruned."""
        return self.grid.expand((self.states != PRUNE).float())

    def state_map(self) -> torch.Tensor:
        """The block state of every weight, int8 shaped like the weight."""
        return self.grid.expand(self.states)
