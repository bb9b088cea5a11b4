"""The lean plan's ops as the lowering builds them: op kinds and activations (csrc/uniprune_plan.c's
numbers), :class:`PlanOp`, and the packed arrays of the kernels an op runs."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from . import kernels

# Op kinds and activations: the numbers are csrc/uniprune_plan.c's enums.
OP_CONV, OP_GEMV, OP_GCONV, OP_ADD, OP_ACT, OP_AFFINE, OP_GAP, OP_POOL, OP_SLICEPAD, OP_COPY, OP_IM2COL = range(1, 12)
OP_CHMUL, OP_CHCOPY, OP_SHUFFLE, OP_CHNORM, OP_ATTN, OP_ROWCAT, OP_ADDC = range(12, 19)
OP_NAMES = {OP_CONV: "conv", OP_GEMV: "linear", OP_GCONV: "grouped_conv", OP_ADD: "add", OP_ACT: "act",
            OP_AFFINE: "affine", OP_GAP: "global_avg_pool", OP_POOL: "pool", OP_SLICEPAD: "slice_pad",
            OP_COPY: "copy", OP_IM2COL: "im2col_conv", OP_CHMUL: "channel_mul", OP_CHCOPY: "channel_copy",
            OP_SHUFFLE: "channel_shuffle", OP_CHNORM: "channel_layer_norm", OP_ATTN: "attention",
            OP_ROWCAT: "row_concat", OP_ADDC: "add_constant"}
#: How a groups=1 conv runs: the direct block-sparse conv, or im2col over the whole batch followed by the
#: block-sparse linear kernel (vectorised over output channels) or by the conv kernel as a 1x1 conv
#: (vectorised over the pixels of all images at once); see run_im2col in csrc/uniprune_plan.c.
CONV_IMPLS = ("direct", "im2col_linear", "im2col_conv")
CONV_CHOICES = ("measure", *CONV_IMPLS)
#: Output pixels (Ho*Wo) up to which the im2col forms are tried. The direct conv vectorises over one image's
#: output pixels, so a 1x1 or 2x2 output fills 1 or 4 of a vector's 16 lanes (digits CNN, batch 32:
#: 5.6 GFLOP/s); beyond 8x8 its vectors are full and im2col's 9x copy of the input only costs.
IM2COL_MAX_PIXELS = 64
ACT_NONE, ACT_RELU, ACT_CLAMP, ACT_HARDSWISH, ACT_HARDSIGMOID, ACT_SILU, ACT_GELU, ACT_SIGMOID, ACT_GELU_TANH = range(9)
_ACT_NAMES = {ACT_NONE: "", ACT_RELU: "relu", ACT_CLAMP: "clamp", ACT_HARDSWISH: "hardswish",
              ACT_HARDSIGMOID: "hardsigmoid", ACT_SILU: "silu", ACT_GELU: "gelu", ACT_SIGMOID: "sigmoid",
              ACT_GELU_TANH: "gelu_tanh"}
_HAS_EPILOGUE = (OP_CONV, OP_GEMV, OP_GCONV, OP_ADD, OP_AFFINE, OP_GAP, OP_POOL, OP_IM2COL, OP_CHMUL,
                 OP_CHNORM, OP_ADDC)  # take a fused activation
_TAKES_RESIDUAL = (OP_CONV, OP_GEMV, OP_GCONV, OP_IM2COL)  # may take a fused residual add
_IN_PLACE = (OP_ADD, OP_ACT, OP_AFFINE, OP_CHMUL, OP_ADDC)  # may write over an input that dies with them (CHMUL: its first)

# activations by module type and by function: (act code, whether the module/function has an inplace flag)
_ACT_MODULES = {nn.Hardswish: ACT_HARDSWISH, nn.Hardsigmoid: ACT_HARDSIGMOID, nn.SiLU: ACT_SILU,
                nn.Sigmoid: ACT_SIGMOID}
_ACT_FUNCTIONS = {F.hardswish: ACT_HARDSWISH, F.hardsigmoid: ACT_HARDSIGMOID, F.silu: ACT_SILU,
                  torch.sigmoid: ACT_SIGMOID, F.sigmoid: ACT_SIGMOID}
_ACT_METHODS = {"sigmoid": ACT_SIGMOID, "sigmoid_": ACT_SIGMOID}
_MUL_FNS = {operator.mul, operator.imul, torch.mul}
_CAT_FNS = {torch.cat, torch.concat}
_PERMUTE_NHWC, _PERMUTE_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
NHWC = "nhwc"  # a value whose logical shape is [N, H, W, C] (after permute(0, 2, 3, 1)), stored as NCHW

_RELU_FNS = {F.relu, torch.relu, torch.relu_}
_ADD_FNS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FNS = {torch.flatten}
_MAX_POOL_FNS = {F.max_pool2d, torch.max_pool2d}
_POOL_FNS = _MAX_POOL_FNS | {F.avg_pool2d}
_INPLACE_TARGETS = {operator.iadd, torch.relu_, "relu_", "add_", "clamp_"}  # mutate their first argument


@dataclass
class PlanOp:
    """One op of a plan: value ids in and out while lowering; buffer numbers once buffers are assigned (the
    ops of a :class:`LeanModel`).

    ``shape_in``/``shape_out``: per-sample ``(C, H, W)`` (a flat ``[N, F]`` value is ``(F, 1, 1)``).
    """

    kind: int
    node: str
    ins: list[int]
    out: int
    shape_in: tuple[int, int, int]
    shape_out: tuple[int, int, int]
    act: int = ACT_NONE
    lo: float = 0.0
    hi: float = 0.0
    params: list[int] = field(default_factory=list)
    floats: np.ndarray | None = None  # float32: the op's own data (weights of a grouped conv, an affine's scale/shift)
    kernel: dict[str, Any] | None = None  # the kernel the op runs: :func:`_conv_kernel` / :func:`_gemv_kernel`
    alt: Any = None  # for a conv: {implementation: zero-argument builder of (kernel, params)} of its im2col twins
    layer: str = ""  # the conv or linear module this op runs (its qualified name), "" for the glue between them

    def describe(self) -> str:
        name = OP_NAMES[self.kind] if self.kind != OP_IM2COL else CONV_IMPLS[1 + self.params[8]]
        name += ("+add" if len(self.ins) > 1 and self.kind in _TAKES_RESIDUAL else "")
        act = _ACT_NAMES.get(self.act, str(self.act)) if self.act != ACT_CLAMP else f"clamp({self.lo:g},{self.hi:g})"
        return f"{name}{'+' + act if act else ''}"


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().contiguous().numpy()


def _weights(w: torch.Tensor, precision: str) -> dict[str, Any]:
    """A kernel's packed weights in ``precision``: float32, or bfloat16 bit patterns (uint16) marked bf16."""
    if precision == "bf16":
        return {"w": kernels.bf16_bits(w).numpy().view(np.uint16), "precision": "bf16"}
    return {"w": _np(w)}


def _conv_kernel(w: torch.Tensor, keep: torch.Tensor, b: torch.Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], rows: int, precision: str = "fp32") -> dict[str, Any]:
    """The arrays of the kernels' block-sparse conv (``up_conv_create``, or ``up_conv_create_bf16`` in bf16) for
    weight ``w`` ``[Co, Ci, kh, kw]`` with the (output, input) channel pairs where ``keep`` packed in panels of
    ``rows`` (1, 2, 4, 8) outputs."""
    co, ci, kh, kw = (int(s) for s in w.shape)
    packed = kernels.pack_panels(w, keep, rows)
    return {"type": "conv", "geom": [co, ci, kh, kw, *map(int, stride), *map(int, padding), *map(int, dilation)],
            "rows": int(rows), "panel_ptr": packed.panel_ptr.numpy(), "ch": packed.ch.numpy(),
            **_weights(packed.w, precision), "bias": _np(b)}


def _gemv_kernel(w: torch.Tensor, keep: torch.Tensor, b: torch.Tensor | None, precision: str = "fp32") -> dict[str, Any]:
    """The arrays of the kernels' block-sparse linear (``up_gemv_create``) for ``w`` ``[Co, Ci]`` where ``keep``."""
    packed = kernels.pack_panels(w, keep)  # the GEMV's panels are always kernels.ROWS tall
    return {"type": "gemv", "out": int(w.shape[0]), "in": int(w.shape[1]), "panel_ptr": packed.panel_ptr.numpy(),
            "ch": packed.ch.numpy(), **_weights(packed.w, precision), "bias": _np(b)}


def _per_sample(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    """The (C, H, W) storage of one sample of a C-contiguous ``[N, ...]`` tensor: dims before the last two
    merge into channels (a channel shuffle's ``[N, g, C/g, H, W]`` is ``(C, H, W)``)."""
    rest = tuple(int(s) for s in shape[1:])
    if len(rest) >= 3:
        return (int(np.prod(rest[:-2])), rest[-2], rest[-1])
    if len(rest) == 2:  # [N, A, B]: A planes of B (tokens [N, E, L] as the patch embedding's conv wrote them)
        return (rest[0], rest[1], 1)
    if len(rest) == 1:
        return (rest[0], 1, 1)
    raise ValueError(f"tensors of {len(shape)} dims")


