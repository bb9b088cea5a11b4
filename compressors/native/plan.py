"""The lean execution path: a compiled model lowered to one native plan, run in one C call per forward pass.

:func:`~uniprune.compressors.native.runtime.compile_model` gives an ``nn.Module`` whose structured layers call the
native kernels one by one from Python: about 5 µs of Python per layer, i.e. 0.5 ms of a batch-1 ResNet-56
pass. :func:`lower` turns such a model (or a plain one) into a :class:`LeanModel`: the graph is traced with
``torch.fx``, each node becomes an op of ``csrc/uniprune_plan.c`` (conv and linear on the block-sparse
kernels, a layer left dense running there with every block kept; residual adds and activations fused into
the op before them; pooling, flatten, the CIFAR ResNets' option-A shortcut), activations get numbered
buffers that values with disjoint lifetimes share, and a forward pass is one native call.

A graph with a node it cannot lower raises a one-line :class:`~uniprune.compressors.core.errors.ModelError`
naming the node and its op; callers then keep the Python path (``compile_model``'s module).

Serialisable: :func:`lower_spec` gives the plan as a :class:`LeanSpec`, a JSON header plus plain numpy arrays
(the kernels' packed weights among them), and a :class:`LeanModel` is always built from one, by
:mod:`uniprune.compressors.native.uniprune_lean`, the numpy-and-ctypes runtime that ``uniprune export`` copies
into an artifact. So what runs in-process, what is timed and what is deployed come from one code path.

Supported: ``Conv2d`` (any kernel, stride, zero padding, dilation; groups > 1 as a direct dense loop),
``Linear`` on ``[N, F]``, ``BatchNorm2d`` not folded (per-channel affine), ReLU / ReLU6 / Hardtanh / clamp,
``+`` of two same-shaped tensors, adaptive / global average pool, average and max pool (no ceil mode),
flatten / ``view(x.size(0), -1)``, Identity, Dropout (eval), strided slicing of H and W and zero ``F.pad``.
Inference only, float32, CPU; one input tensor, one output tensor.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..core.errors import CheckpointError, ConfigError, KernelBuildError, ModelError
from ..core.structure import LayerStructure
from ..latency.timing import check_threads, fastest
from . import kernels
from . import uniprune_lean as lean_rt
from .runtime import CompiledConv2d, CompiledLinear, compile_model, inference_copy

# Op kinds and activations: the numbers are csrc/uniprune_plan.c's enums.
OP_CONV, OP_GEMV, OP_GCONV, OP_ADD, OP_ACT, OP_AFFINE, OP_GAP, OP_POOL, OP_SLICEPAD, OP_COPY, OP_IM2COL = range(1, 12)
OP_CHMUL, OP_CHCOPY, OP_SHUFFLE, OP_CHNORM = range(12, 16)
OP_NAMES = {OP_CONV: "conv", OP_GEMV: "linear", OP_GCONV: "grouped_conv", OP_ADD: "add", OP_ACT: "act",
            OP_AFFINE: "affine", OP_GAP: "global_avg_pool", OP_POOL: "pool", OP_SLICEPAD: "slice_pad",
            OP_COPY: "copy", OP_IM2COL: "im2col_conv", OP_CHMUL: "channel_mul", OP_CHCOPY: "channel_copy",
            OP_SHUFFLE: "channel_shuffle", OP_CHNORM: "channel_layer_norm"}
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
                 OP_CHNORM)  # take a fused activation
_TAKES_RESIDUAL = (OP_CONV, OP_GEMV, OP_GCONV, OP_IM2COL)  # may take a fused residual add
_IN_PLACE = (OP_ADD, OP_ACT, OP_AFFINE, OP_CHMUL)  # may write over an input that dies with them (CHMUL: its first)

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
    if len(rest) == 1:
        return (rest[0], 1, 1)
    raise ValueError(f"tensors of {len(shape)} dims")


class _Tracer(torch.fx.Tracer):
    """Keeps compiled layers (and torch's own modules) whole, as call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (CompiledConv2d, CompiledLinear)) or super().is_leaf_module(m, qualname)


class _Lowering:
    """Walks one traced graph and emits :class:`PlanOp` s; ``fail`` raises the one-line ModelError."""

    def __init__(self, gm: torch.fx.GraphModule, example: torch.Tensor, precision: str = "fp32") -> None:
        self.precision = precision
        self.gm, self.example = gm, example
        self.modules = dict(gm.named_modules())
        self.value: dict[torch.fx.Node, int] = {}  # tensor node -> value id (aliases share one)
        self.shape: dict[torch.fx.Node, tuple[int, ...]] = {}  # tensor node -> its own per-sample shape
        self.vshape: dict[int, tuple[int, int, int]] = {}  # value id -> per-sample (C, H, W) of its storage
        self.sizes: set[torch.fx.Node] = set()  # nodes holding x.size(0)
        self.size_tuples: set[torch.fx.Node] = set()  # nodes holding x.size() / x.shape
        self.scalars: set[torch.fx.Node] = set()  # Python numbers computed from sizes: no op
        self.consts: dict[torch.fx.Node, torch.Tensor] = {}  # get_attr nodes: parameters and buffers
        self.layout: dict[torch.fx.Node, str] = {}  # tensor node -> NHWC when it is a channels-last view
        self.chunks: dict[torch.fx.Node, tuple[torch.fx.Node, list[tuple[int, int]]]] = {}  # chunk -> (x, (start, n))
        self.ops: list[PlanOp] = []
        self.input_value = -1
        self.output_value = -1

    # ---------------------------------------------------------------------------------------- helpers
    def fail(self, node: torch.fx.Node, why: str) -> ModelError:
        what = node.target if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
        if node.op == "call_module":
            what = f"{what} ({type(self.modules[node.target]).__name__})"
        error = ModelError(f"cannot lower node {node.name!r} ({node.op} {what}) to a lean plan: {why}; "
                           "run the compiled model's Python path instead")
        error.blockers = [f"node {node.name!r} ({node.op} {what}): {why}"]  # type: ignore[attr-defined]
        return error

    def run(self) -> None:
        """Lower every node; a node the plan cannot lower is recorded and the walk goes on (its output standing in
        as a value, so later nodes are judged on their own), then one ModelError names the first and lists every
        one in ``.blockers``. Nodes that fail only because an input did are not counted again."""
        errors: list[ModelError] = []
        failed: set[torch.fx.Node] = set()
        for node in self.gm.graph.nodes:
            if node.op == "output" and errors:
                break
            try:
                self.lower_node(node)
            except ModelError as exc:
                if node.op in ("placeholder", "output"):
                    raise
                if not any(n in failed and n not in self.value for n in node.all_input_nodes):
                    errors.append(exc)
                failed.add(node)
                if node not in self.value and isinstance(node.meta.get("tensor_meta"), TensorMetadata):
                    try:
                        self.new_value(node)
                    except ModelError:
                        pass
        if errors:
            blockers = [b for e in errors for b in getattr(e, "blockers", [str(e)])]
            first = str(errors[0])
            if len(blockers) > 1:
                head, _, tail = first.rpartition("; ")
                more = "; ".join(blockers[1:4]) + ("; ..." if len(blockers) > 4 else "")
                first = f"{head}; and {len(blockers) - 1} more node(s): {more}; {tail}"
            error = ModelError(first)
            error.blockers = blockers  # type: ignore[attr-defined]
            raise error

    def meta_shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.fail(node, "it does not produce one tensor")
        if meta.dtype != torch.float32:
            raise self.fail(node, f"it produces {meta.dtype}, the plan runs float32")
        shape = tuple(int(s) for s in meta.shape)
        if len(shape) not in (2, 4, 5) or shape[0] != self.example.shape[0]:
            raise self.fail(node, f"its output {list(shape)} is not [N, C, H, W] or [N, F] with the input's batch")
        return shape

    def tensor_arg(self, node: torch.fx.Node, arg: Any, nhwc: bool = False) -> torch.fx.Node:
        """``arg`` as a value the plan computes; a channels-last view only where the op says it takes one."""
        if not isinstance(arg, torch.fx.Node) or arg not in self.value:
            raise self.fail(node, f"argument {arg!r} is not a tensor the plan computes")
        if not nhwc and self.layout.get(arg) == NHWC:
            raise self.fail(node, f"it reads {arg.name!r} in channels-last order, which only elementwise ops, "
                                  "LayerNorm, Linear and permute(0, 3, 1, 2) take")
        return arg

    def new_value(self, node: torch.fx.Node, layout: str | None = None) -> int:
        shape = self.meta_shape(node)
        vid = len(self.vshape)
        per = shape[1:]
        self.vshape[vid] = (per[2], per[0], per[1]) if layout == NHWC else _per_sample(shape)
        self.value[node], self.shape[node] = vid, per
        if layout == NHWC:
            self.layout[node] = NHWC
        return vid

    def alias(self, node: torch.fx.Node, src: torch.fx.Node, layout: str | None = "same") -> None:
        """``node`` is ``src``'s storage under another shape (a view); ``layout``: the view's (default: src's)."""
        shape = self.meta_shape(node)
        if int(np.prod(shape[1:])) != int(np.prod(self.shape[src])):
            raise self.fail(node, f"it reshapes {list(self.shape[src])} to {list(shape[1:])} per sample")
        self.value[node], self.shape[node] = self.value[src], shape[1:]
        layout = self.layout.get(src) if layout == "same" else layout
        if layout == NHWC:
            self.layout[node] = NHWC

    def emit(self, node: torch.fx.Node, kind: int, ins: list[torch.fx.Node], layout: str | None = None,
             **kw: Any) -> PlanOp:
        op = PlanOp(kind, node.name, [self.value[s] for s in ins], -1, self.vshape[self.value[ins[0]]], (0, 0, 0), **kw)
        op.out = self.new_value(node, layout)
        op.shape_out = self.vshape[op.out]
        self.ops.append(op)
        return op

    def emit_elementwise(self, node: torch.fx.Node, kind: int, ins: list[torch.fx.Node], **kw: Any) -> PlanOp:
        """An op whose output has its first input's shape and layout (channels-last views included)."""
        return self.emit(node, kind, ins, layout=self.layout.get(ins[0]), **kw)

    def check_inplace(self, node: torch.fx.Node) -> None:
        """An in-place op is its functional twin only when nothing reads its input afterwards."""
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and len(src.users) > 1:
            raise self.fail(node, f"it modifies {src.name!r} in place, which other nodes read too")

    # ------------------------------------------------------------------------------------------ nodes
    def lower_node(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            if self.input_value >= 0:
                raise self.fail(node, "the plan takes one input tensor")
            if self.example.dim() != 4 and self.example.dim() != 2:
                raise self.fail(node, f"the input must be [N, C, H, W] or [N, F], got {list(self.example.shape)}")
            self.input_value = self.new_value(node)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node) or out not in self.value:
                raise self.fail(node, "the plan returns one tensor")
            self.output_value = self.value[out]
            if self.output_value == self.input_value:  # the caller's x is never written: copy it
                op = PlanOp(OP_COPY, node.name, [self.input_value], len(self.vshape),
                            self.vshape[self.input_value], self.vshape[self.input_value])
                self.vshape[op.out] = op.shape_out
                self.ops.append(op)
                self.output_value = op.out
        elif node.op == "call_module":
            self.module(node, self.modules[node.target])
        elif node.op in ("call_function", "call_method"):
            self.function(node)
        elif node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if not isinstance(value, torch.Tensor):
                raise self.fail(node, "it is not a tensor")
            self.consts[node] = value.detach().float()
        else:
            raise self.fail(node, "the plan has no op for it")

    def activation(self, node: torch.fx.Node, src: Any, lo: float | None, hi: float | None) -> None:
        x = self.tensor_arg(node, src, nhwc=True)
        if lo == 0.0 and hi is None:
            self.emit_elementwise(node, OP_ACT, [x], act=ACT_RELU)
        else:
            self.emit_elementwise(node, OP_ACT, [x], act=ACT_CLAMP, lo=float("-inf") if lo is None else float(lo),
                                  hi=float("inf") if hi is None else float(hi))

    def smooth(self, node: torch.fx.Node, src: Any, act: int) -> None:
        self.emit_elementwise(node, OP_ACT, [self.tensor_arg(node, src, nhwc=True)], act=act)

    def module(self, node: torch.fx.Node, m: nn.Module) -> None:
        if len(node.args) != 1 or node.kwargs:
            raise self.fail(node, "modules are called with one tensor")
        takes_nhwc = isinstance(m, (CompiledLinear, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Hardtanh, nn.GELU, nn.Identity,
                                    nn.Dropout, *_ACT_MODULES))
        x = self.tensor_arg(node, node.args[0], nhwc=takes_nhwc)
        if getattr(m, "inplace", False):
            self.check_inplace(node)
        if isinstance(m, (CompiledConv2d, nn.Conv2d)):
            self.conv(node, x, m)
            self.ops[-1].layer = str(node.target)
        elif isinstance(m, (CompiledLinear, nn.Linear)):
            self.linear(node, x, m)
            self.ops[-1].layer = str(node.target)
        elif isinstance(m, nn.ReLU):
            self.activation(node, x, 0.0, None)
        elif isinstance(m, nn.Hardtanh):  # ReLU6 too
            self.activation(node, x, m.min_val, m.max_val)
        elif type(m) in _ACT_MODULES:
            self.smooth(node, x, _ACT_MODULES[type(m)])
        elif isinstance(m, nn.GELU):
            self.smooth(node, x, ACT_GELU if m.approximate == "none" else ACT_GELU_TANH)
        elif isinstance(m, nn.LayerNorm):
            self.layer_norm(node, x, tuple(m.normalized_shape), None if m.weight is None else m.weight.detach(),
                            None if m.bias is None else m.bias.detach(), m.eps)
        elif isinstance(m, (nn.Identity, nn.Dropout)) or (isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1):
            self.alias(node, x)
        elif isinstance(m, nn.BatchNorm2d):
            self.batchnorm(node, x, m)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.adaptive_pool(node, x, m.output_size)
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            is_max = isinstance(m, nn.MaxPool2d)
            self.pool(node, x, is_max, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                      getattr(m, "dilation", 1), getattr(m, "count_include_pad", True),
                      getattr(m, "divisor_override", None), getattr(m, "return_indices", False))
        else:
            raise self.fail(node, "the plan has no op for this module")

    def data(self, arg: Any) -> bool:
        return isinstance(arg, torch.fx.Node) and (arg in self.value or arg in self.consts or arg in self.chunks)

    def function(self, node: torch.fx.Node) -> None:
        t, args, kw = node.target, node.args, node.kwargs
        method = node.op == "call_method"
        if t in _INPLACE_TARGETS or kw.get("inplace"):
            self.check_inplace(node)
        if (method and t == "size") or (t is getattr and len(args) == 2 and args[1] == "shape"):
            dim = None if t is getattr else (args[1] if len(args) > 1 else kw.get("dim"))
            if dim is None:
                self.size_tuples.add(node)
            elif dim == 0:
                self.sizes.add(node)
            else:
                self.scalars.add(node)
        elif t is operator.getitem and args[0] in self.size_tuples:
            (self.sizes if args[1] == 0 else self.scalars).add(node)
        elif t is operator.getitem and args[0] in self.chunks:
            x, parts = self.chunks[args[0]]
            start, count = parts[args[1]]
            self.emit(node, OP_CHCOPY, [x], params=[0, start, count])
        elif not any(self.data(a) for a in node.all_input_nodes) and "tensor_meta" not in node.meta:
            self.scalars.add(node)  # arithmetic on sizes (x.size(1) // groups): a number, no op
        elif t in _RELU_FNS or (method and t in ("relu", "relu_")):
            self.activation(node, args[0], 0.0, None)
        elif t is F.relu6:
            self.activation(node, args[0], 0.0, 6.0)
        elif t is F.hardtanh:
            self.activation(node, args[0], kw.get("min_val", args[1] if len(args) > 1 else -1.0),
                            kw.get("max_val", args[2] if len(args) > 2 else 1.0))
        elif t in _ACT_FUNCTIONS or (method and t in _ACT_METHODS):
            self.smooth(node, args[0], _ACT_FUNCTIONS[t] if not method else _ACT_METHODS[t])
        elif t is F.gelu or (method and t == "gelu"):
            approximate = kw.get("approximate", args[1] if len(args) > 1 else "none")
            self.smooth(node, args[0], ACT_GELU if approximate == "none" else ACT_GELU_TANH)
        elif t is torch.clamp or (method and t in ("clamp", "clamp_")):
            lo, hi = kw.get("min", args[1] if len(args) > 1 else None), kw.get("max", args[2] if len(args) > 2 else None)
            if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
                raise self.fail(node, "clamp bounds must be numbers")
            self.activation(node, args[0], lo, hi)
        elif t in _ADD_FNS or (method and t in ("add", "add_")):
            if len(args) != 2 or set(kw) - {"alpha"} or kw.get("alpha", 1) != 1:
                raise self.fail(node, "only a + b of two tensors is supported")
            a, b = self.tensor_arg(node, args[0], nhwc=True), self.tensor_arg(node, args[1], nhwc=True)
            if self.shape[a] != self.shape[b] or self.layout.get(a) != self.layout.get(b):
                raise self.fail(node, f"it broadcasts {list(self.shape[a])} with {list(self.shape[b])}")
            self.emit_elementwise(node, OP_ADD, [a, b])
        elif t in _MUL_FNS or (method and t in ("mul", "mul_")):
            self.mul(node)
        elif t in _CAT_FNS:
            self.cat(node)
        elif t is torch.chunk or t is torch.split or (method and t in ("chunk", "split")):
            self.chunk(node)
        elif t is torch.permute or (method and t == "permute"):
            self.permute(node)
        elif t is torch.transpose or (method and t == "transpose"):
            self.shuffle(node)
        elif t is F.layer_norm:
            a = dict(zip(["input", "normalized_shape", "weight", "bias", "eps"], args)) | dict(kw)
            weight, bias = (self.consts.get(a.get(k)) if a.get(k) is not None else None for k in ("weight", "bias"))
            if any(a.get(k) is not None and v is None for k, v in (("weight", weight), ("bias", bias))):
                raise self.fail(node, "LayerNorm's weight and bias must be parameters")
            self.layer_norm(node, self.tensor_arg(node, a["input"], nhwc=True), tuple(a["normalized_shape"]), weight,
                            bias, float(a.get("eps", 1e-5)))
        elif getattr(t, "__name__", "") == "stochastic_depth":  # torchvision.ops: the identity in eval
            if kw.get("training", args[3] if len(args) > 3 else True):
                raise self.fail(node, "stochastic depth in training mode")
            self.alias(node, self.tensor_arg(node, args[0], nhwc=True))
        elif t in _FLATTEN_FNS or (method and t == "flatten"):
            start = kw.get("start_dim", args[1] if len(args) > 1 else 0)
            end = kw.get("end_dim", args[2] if len(args) > 2 else -1)
            if start != 1 or end != -1:
                raise self.fail(node, "only flatten(x, 1) keeps the batch apart")
            self.alias(node, self.tensor_arg(node, args[0]))
        elif method and t in ("view", "reshape"):
            x = self.tensor_arg(node, args[0])
            shape = tuple(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list)) else tuple(args[1:])
            # the batch must come from x itself (x.size(0) or -1), never a number fixed at tracing time; the
            # other sizes are per sample (numbers, or computed from x's sizes), checked by the output's shape
            if len(shape) < 2 or not (shape[0] in self.sizes or (shape[0] == -1 and -1 not in shape[1:])):
                raise self.fail(node, "only view/reshape(x.size(0), ...) or (-1, ...) keeping the batch is supported")
            self.alias(node, x)
        elif method and t == "contiguous":
            self.alias(node, self.tensor_arg(node, args[0]))
        elif t is F.dropout:
            if kw.get("training", args[2] if len(args) > 2 else True):
                raise self.fail(node, "dropout in training mode")
            self.alias(node, self.tensor_arg(node, args[0], nhwc=True))
        elif t is F.adaptive_avg_pool2d:
            self.adaptive_pool(node, self.tensor_arg(node, args[0]), kw.get("output_size", args[1] if len(args) > 1 else None))
        elif t is torch.mean or (method and t == "mean"):
            dims = kw.get("dim", args[1] if len(args) > 1 else None)
            dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
            x = self.tensor_arg(node, args[0])
            if len(self.shape[x]) != 3 or sorted(d % 4 for d in dims if isinstance(d, int)) != [2, 3] or kw.get("dtype"):
                raise self.fail(node, "only a mean over H and W of [N, C, H, W] is supported")
            self.emit(node, OP_GAP, [x])
        elif t in _POOL_FNS:
            self.functional_pool(node)
        elif t is operator.getitem:
            self.slice(node)
        elif t is F.pad:
            self.pad(node)
        else:
            raise self.fail(node, "the plan has no op for it")

    def mul(self, node: torch.fx.Node) -> None:
        """``a * b``: squeeze-excitation's gate ``[N, C, 1, 1]`` times ``[N, C, H, W]`` (a channel_mul op), or a
        value times a per-channel parameter (ConvNeXt's layer scale) or a number (an affine op)."""
        if len(node.args) != 2 or node.kwargs:
            raise self.fail(node, "only a * b is supported")
        a, b = node.args
        if self.data(b) and b in self.value and not (self.data(a) and a in self.value):
            a, b = b, a
        x = self.tensor_arg(node, a, nhwc=True)
        c, h, w = self.vshape[self.value[x]]
        if b in self.value:  # two values: a gate and the tensor it scales, either way round
            g = self.tensor_arg(node, b)
            if self.shape[x] == (c, 1, 1) != self.shape[g]:
                x, g = g, x
            c, h, w = self.vshape[self.value[x]]
            if self.layout.get(x) == NHWC or self.shape[g] != (c, 1, 1) or self.shape[x] != (c, h, w):
                raise self.fail(node, f"it multiplies {list(self.shape[x])} by {list(self.shape[g])}; only a "
                                      "[N, C, 1, 1] gate times [N, C, H, W] is supported")
            self.emit(node, OP_CHMUL, [x, g])
            return
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            scale = torch.full((c,), float(b))
        elif b in self.consts:
            k = self.consts[b]
            # a per-channel factor: [C], [C, 1, 1] or [1, C, 1, 1] on NCHW; [C] (any leading 1s) on NHWC / [N, F]
            squeezed = k.reshape(-1)
            channel_last = self.layout.get(x) == NHWC or self.shape[x] == (c,)
            want = (c,) if channel_last else (c, 1, 1)
            if squeezed.numel() != c or tuple(k.shape[-len(want):]) != want or any(s != 1 for s in k.shape[:-len(want)]):
                raise self.fail(node, f"it multiplies {list(self.shape[x])} by a parameter of shape {list(k.shape)}; "
                                      "only a per-channel factor is supported")
            scale = squeezed
        else:
            raise self.fail(node, f"argument {b!r} is not a tensor the plan computes")
        self.emit_elementwise(node, OP_AFFINE, [x], floats=torch.cat([scale, torch.zeros(c)]).float().numpy())

    def cat(self, node: torch.fx.Node) -> None:
        """``torch.cat`` along channels: one channel_copy op per input, all writing one output buffer."""
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        xs = [self.tensor_arg(node, v) for v in tensors] if isinstance(tensors, (list, tuple)) else []
        rank = len(self.shape[xs[0]]) + 1 if xs else 0
        if not xs or rank not in (2, 4) or dim % rank != 1 or len({self.vshape[self.value[v]][1:] for v in xs}) != 1:
            raise self.fail(node, "only a concatenation of [N, C, H, W] (or [N, F]) tensors along dim 1 is supported")
        out, offset = -1, 0
        for v in xs:
            count = self.vshape[self.value[v]][0]
            op = PlanOp(OP_CHCOPY, node.name, [self.value[v]], out, self.vshape[self.value[v]], (0, 0, 0),
                        params=[offset, 0, count])
            out = op.out = self.new_value(node) if out < 0 else out
            op.shape_out = self.vshape[out]
            self.ops.append(op)
            offset += count

    def chunk(self, node: torch.fx.Node) -> None:
        """``x.chunk(k, 1)`` / ``x.split(s, 1)``: the pieces become channel_copy ops where they are taken."""
        t, args, kw = node.target, node.args, node.kwargs
        names = ["input", "chunks" if t in (torch.chunk, "chunk") else "split_size_or_sections", "dim"]
        a = dict(zip(names, args)) | dict(kw)
        x = self.tensor_arg(node, a["input"])
        size = a.get("chunks", a.get("split_size_or_sections", a.get("split_size")))
        rank = len(self.shape[x]) + 1
        if rank not in (2, 4) or a.get("dim", 0) % rank != 1 or isinstance(size, torch.fx.Node):
            raise self.fail(node, "only chunks and splits of [N, C, H, W] (or [N, F]) along dim 1 are supported")
        c = self.vshape[self.value[x]][0]
        pieces = torch.empty(1, c).chunk(size, 1) if "chunks" in a else torch.empty(1, c).split(size, 1)
        starts = np.cumsum([0] + [p.shape[1] for p in pieces])
        self.chunks[node] = (x, [(int(s), int(p.shape[1])) for s, p in zip(starts, pieces)])

    def permute(self, node: torch.fx.Node) -> None:
        """permute(0, 2, 3, 1) makes a channels-last view of NCHW storage (no op: LayerNorm and Linear then act
        across channels); permute(0, 3, 1, 2) turns it back."""
        args = node.args[1:] if node.op == "call_method" else (node.args[1:] or [node.kwargs.get("dims")])
        dims = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)
        x = self.tensor_arg(node, node.args[0], nhwc=True)
        nhwc = self.layout.get(x) == NHWC
        if len(self.shape[x]) != 3 or dims != (_PERMUTE_NCHW if nhwc else _PERMUTE_NHWC):
            raise self.fail(node, "only permute(0, 2, 3, 1) of [N, C, H, W] and back is supported")
        self.alias(node, x, layout=None if nhwc else NHWC)

    def shuffle(self, node: torch.fx.Node) -> None:
        """transpose(1, 2) of a [N, g, C/g, H, W] view: ShuffleNet's channel shuffle."""
        a = dict(zip(["input", "dim0", "dim1"], node.args)) | dict(node.kwargs)
        x = self.tensor_arg(node, a["input"])
        if len(self.shape[x]) != 4 or sorted((a["dim0"] % 5, a["dim1"] % 5)) != [1, 2]:
            raise self.fail(node, "only transpose(1, 2) of a [N, groups, C/groups, H, W] view (a channel shuffle) is "
                                  "supported")
        self.emit(node, OP_SHUFFLE, [x], params=[int(self.shape[x][0])])

    def layer_norm(self, node: torch.fx.Node, x: torch.fx.Node, normalized: tuple[int, ...],
                   weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> None:
        """LayerNorm over the last dim of a channels-last view or of [N, F]: across the channels of each pixel."""
        c = self.vshape[self.value[x]][0]
        if normalized != (c,) or not (self.layout.get(x) == NHWC or self.shape[x] == (c,)):
            raise self.fail(node, f"LayerNorm over {list(normalized)} of {list(self.shape[x])}; only over the channels "
                                  "of a channels-last view or of [N, F] is supported")
        affine = weight is not None or bias is not None
        parts = [torch.tensor([float(eps)])]
        if affine:
            parts += [torch.ones(c) if weight is None else weight.float().reshape(-1),
                      torch.zeros(c) if bias is None else bias.float().reshape(-1)]
        self.emit_elementwise(node, OP_CHNORM, [x], params=[int(affine)], floats=torch.cat(parts).float().numpy())

    # ------------------------------------------------------------------------------------ layer kinds
    def conv(self, node: torch.fx.Node, x: torch.fx.Node, m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            raise self.fail(node, f"padding {m.padding!r}/{m.padding_mode!r}; use numeric zero padding")
        if len(self.shape[x]) != 3:
            raise self.fail(node, "a conv needs an [N, C, H, W] input")
        w = m.weight.detach().float().contiguous()
        b = None if m.bias is None else m.bias.detach().float().contiguous()
        co, cig, kh, kw = (int(s) for s in w.shape)
        stride, padding, dilation = tuple(m.stride), tuple(m.padding), tuple(m.dilation)
        if m.groups == 1 or cig > 1:
            rows = kernels.ROWS
            if isinstance(m, CompiledConv2d) and m.sparse is not None:
                rows = m.sparse.rows
            if m.groups > 1:
                # a grouped conv (RegNet's, ResNeXt's) is a dense conv whose weight is zero off the block
                # diagonal: the block-sparse kernel skips the zero (output panel, input channel) pairs, so it
                # runs as the groups' own GEMMs
                dense = w.new_zeros(co, cig * m.groups, kh, kw)
                cog = co // m.groups
                for g in range(m.groups):
                    dense[g * cog:(g + 1) * cog, g * cig:(g + 1) * cig] = w[g * cog:(g + 1) * cog]
                w, cig = dense, cig * m.groups
            self.conv_op(node, x, w, b, stride, padding, dilation, rows)
            return
        floats = (w.reshape(-1) if b is None else torch.cat([w.reshape(-1), b])).numpy()
        self.emit(node, OP_GCONV, [x], params=[kh, kw, *stride, *padding, *dilation, int(m.groups), int(b is not None)],
                  floats=floats)

    def conv_op(self, node: torch.fx.Node, x: torch.fx.Node, w: torch.Tensor, b: torch.Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], rows: int,
                layout: str | None = None) -> None:
        """A groups=1 conv of weight ``w`` [Co, Ci, kh, kw] on the block-sparse conv kernel, with its im2col twins."""
        co, cig, kh, kw = (int(s) for s in w.shape)
        # kept = any non-zero weight in the window: the structure's pruned blocks are zero in a
        # compiled model, and a layer left dense keeps everything
        keep = w.reshape(co, cig, -1).ne(0).any(-1)
        op = self.emit(node, OP_CONV, [x], layout=layout,
                       kernel=_conv_kernel(w, keep, b, stride, padding, dilation, rows, self.precision))
        geometry = [kh, kw, *stride, *padding, *dilation]
        cols = keep.repeat_interleave(kh * kw, dim=1)  # column ci*taps + t is kept with (co, ci)
        prec = self.precision
        # twins are built only when tried: their packed weights are another copy of the layer's
        op.alt = {"im2col_linear": lambda: (_gemv_kernel(w.reshape(co, -1), cols, b, prec), [*geometry, 0]),
                  "im2col_conv": lambda: (_conv_kernel(w.reshape(co, -1, 1, 1), cols, b, (1, 1), (0, 0), (1, 1),
                                                       rows, prec), [*geometry, 1])}

    def linear(self, node: torch.fx.Node, x: torch.fx.Node, m: nn.Module) -> None:
        if self.layout.get(x) == NHWC:  # a Linear across the channels of every pixel is a 1x1 conv
            w = m.weight.detach().float().contiguous()
            b = None if m.bias is None else m.bias.detach().float().contiguous()
            self.conv_op(node, x, w.reshape(*w.shape, 1, 1), b, (1, 1), (0, 0), (1, 1), kernels.ROWS, layout=NHWC)
            return
        if len(self.shape[x]) != 1:
            raise self.fail(node, f"a linear on a per-sample shape {list(self.shape[x])}; flatten to [N, F] first")
        w = m.weight.detach().float().contiguous()
        b = None if m.bias is None else m.bias.detach().float().contiguous()
        # unified blocks run materialised here (the compact GEMV form needs the structure, which a lowered
        # module no longer carries)
        self.emit(node, OP_GEMV, [x], kernel=_gemv_kernel(w, w.ne(0), b, self.precision))

    def batchnorm(self, node: torch.fx.Node, x: torch.fx.Node, m: nn.BatchNorm2d) -> None:
        if m.training or m.running_mean is None:
            raise self.fail(node, "a BatchNorm2d in training mode or without running statistics")
        inv = torch.rsqrt(m.running_var.float() + m.eps)
        scale = inv * (m.weight.detach().float() if m.affine else 1.0)
        shift = (m.bias.detach().float() if m.affine else 0.0) - m.running_mean.float() * scale
        self.emit(node, OP_AFFINE, [x], floats=torch.cat([scale, shift]).detach().float().numpy())

    def adaptive_pool(self, node: torch.fx.Node, x: torch.fx.Node, size: Any) -> None:
        if len(self.shape[x]) != 3:
            raise self.fail(node, "pooling needs an [N, C, H, W] input")
        _, h, w = self.shape[x]
        oh, ow = (size, size) if not isinstance(size, (tuple, list)) else size
        oh, ow = h if oh is None else oh, w if ow is None else ow
        if (oh, ow) == (1, 1):
            self.emit(node, OP_GAP, [x])
        elif h % oh == 0 and w % ow == 0:  # equal windows: an ordinary average pool
            self.emit(node, OP_POOL, [x], params=[h // oh, w // ow, h // oh, w // ow, 0, 0, 0, 1])
        else:
            raise self.fail(node, f"adaptive pooling of {h}x{w} to {oh}x{ow} has uneven windows")

    def functional_pool(self, node: torch.fx.Node) -> None:
        t, args, kw = node.target, node.args, node.kwargs
        names = ["input", "kernel_size", "stride", "padding"]
        names += ["dilation", "ceil_mode", "return_indices"] if t in _MAX_POOL_FNS else \
            ["ceil_mode", "count_include_pad", "divisor_override"]
        a = dict(zip(names, args)) | dict(kw)
        is_max = t in _MAX_POOL_FNS
        self.pool(node, self.tensor_arg(node, a["input"]), is_max, a["kernel_size"], a.get("stride"), a.get("padding", 0),
                  a.get("ceil_mode", False), a.get("dilation", 1), a.get("count_include_pad", True),
                  a.get("divisor_override"), a.get("return_indices", False))

    def pool(self, node: torch.fx.Node, x: torch.fx.Node, is_max: bool, kernel: Any, stride: Any, padding: Any,
             ceil_mode: bool, dilation: Any, include_pad: bool, divisor: Any, indices: bool) -> None:
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        if indices or divisor is not None or pair(dilation) != (1, 1):
            raise self.fail(node, "pooling with indices, a divisor override or dilation")
        if len(self.shape[x]) != 3:
            raise self.fail(node, "pooling needs an [N, C, H, W] input")
        k = pair(kernel)
        s = pair(stride) if stride not in (None, [], ()) else k
        p = pair(padding)
        self.emit(node, OP_POOL, [x], params=[*k, *s, *p, int(is_max), int(bool(include_pad))])

    def slice(self, node: torch.fx.Node) -> None:
        x, index = node.args
        x = self.tensor_arg(node, x)
        index = index if isinstance(index, tuple) else (index,)
        whole = slice(None, None, None)
        if len(self.shape[x]) != 3 or not 2 <= len(index) <= 4 or index[:2] != (whole, whole) or \
                not all(isinstance(i, slice) and i.start in (None, 0) and i.stop is None
                        and (i.step is None or isinstance(i.step, int) and i.step >= 1) for i in index[2:]):
            raise self.fail(node, "only x[:, :, ::sh, ::sw] slicing is supported")
        steps = [i.step or 1 for i in index[2:]] + [1] * (4 - len(index))
        self.emit(node, OP_SLICEPAD, [x], params=[steps[0], steps[1], 0, 0, 0])

    def pad(self, node: torch.fx.Node) -> None:
        a = dict(zip(["input", "pad", "mode", "value"], node.args)) | dict(node.kwargs)
        x = self.tensor_arg(node, a["input"])
        pads = list(a["pad"]) + [0] * (6 - len(a["pad"]))
        if a.get("mode", "constant") != "constant" or (a.get("value") or 0) != 0 or len(a["pad"]) > 6 or \
                len(self.shape[x]) != 3 or min(pads) < 0 or not all(isinstance(v, int) for v in pads):
            raise self.fail(node, "only zero padding of C, H and W by non-negative amounts is supported")
        left, right, top, bottom, front, back = pads
        del right, bottom, back  # implied by the output shape
        self.emit(node, OP_SLICEPAD, [x], params=[1, 1, front, top, left])


def _fuse(ops: list[PlanOp], input_value: int, output_value: int) -> list[PlanOp]:
    """Fold activations, residual adds and slice-then-pad pairs into the op before them, where that op's
    output feeds nothing else: each fusion saves a pass over an activation and a buffer."""

    def readers() -> Counter:
        c = Counter(v for op in ops for v in op.ins)
        c[output_value] += 1
        return c

    def merge(first: PlanOp, second: PlanOp) -> None:
        first.out, first.shape_out, first.node = second.out, second.shape_out, f"{first.node}+{second.node}"
        ops.remove(second)

    changed = True
    while changed:
        changed = False
        r = readers()
        producer = {op.out: op for op in ops}
        for op in list(ops):
            src = producer.get(op.ins[0])
            if op.kind == OP_ACT and src is not None and src.kind in _HAS_EPILOGUE and src.act == ACT_NONE \
                    and r[op.ins[0]] == 1:
                src.act, src.lo, src.hi = op.act, op.lo, op.hi
                merge(src, op)
                changed = True
                break
            if op.kind == OP_ADD:
                order = {id(o): i for i, o in enumerate(ops)}
                cands = [(order[id(producer[v])], k) for k, v in enumerate(op.ins)
                         if v in producer and producer[v].kind in _TAKES_RESIDUAL and len(producer[v].ins) == 1
                         and producer[v].act == ACT_NONE and r[v] == 1 and op.ins[0] != op.ins[1]]
                if not cands:
                    continue
                k = max(cands)[1]
                conv = producer[op.ins[k]]
                conv.ins.append(op.ins[1 - k])
                conv.act, conv.lo, conv.hi = op.act, op.lo, op.hi
                # the fused op runs where the add ran: the residual exists by then (a downsampling block's
                # shortcut is traced after its conv), and only the add read the conv's output
                ops.remove(conv)
                ops.insert(ops.index(op), conv)
                merge(conv, op)
                changed = True
                break
            if op.kind == OP_SLICEPAD and src is not None and src.kind == OP_SLICEPAD and r[op.ins[0]] == 1 \
                    and src.params[2:] == [0, 0, 0] and op.params[:2] == [1, 1]:
                src.params = src.params[:2] + op.params[2:]
                merge(src, op)
                changed = True
                break
    return ops


def _assign_buffers(ops: list[PlanOp], vshape: Mapping[int, tuple[int, int, int]], input_value: int,
                    output_value: int) -> tuple[dict[int, int], list[int]]:
    """Buffer per value by a linear scan over lifetimes: 0 the input, 1 the output, others shared by values
    that are never live together; elementwise ops write over an input that dies with them."""
    last: dict[int, int] = {}
    for i, op in enumerate(ops):
        for v in op.ins:
            last[v] = i
    numel = {v: s[0] * s[1] * s[2] for v, s in vshape.items()}
    buf = {input_value: 0, output_value: 1}
    sizes = [0, 0]
    free: list[int] = []
    for i, op in enumerate(ops):
        if op.out not in buf:
            chosen = next((buf[v] for v in (op.ins if op.kind == OP_ADD else op.ins[:1]) if op.kind in _IN_PLACE
                           and last[v] == i and buf[v] >= 2 and numel[v] == numel[op.out]), None)
            if chosen is None and free:
                fits = [b for b in free if sizes[b] >= numel[op.out]]
                chosen = min(fits, key=sizes.__getitem__) if fits else max(free, key=sizes.__getitem__)
                free.remove(chosen)
            if chosen is None:
                chosen = len(sizes)
                sizes.append(0)
            buf[op.out] = chosen
            sizes[chosen] = max(sizes[chosen], numel[op.out])
        for v in set(op.ins):
            if last[v] == i and buf[v] >= 2 and buf[v] != buf[op.out]:
                free.append(buf[v])
        if op.out not in last and buf[op.out] >= 2:  # nothing reads it
            free.append(buf[op.out])
    return buf, sizes


def _records(ops: list[PlanOp]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """``ops`` (buffers assigned) as the plan header's op records and their arrays (see uniprune_lean)."""
    records, arrays = [], {}
    for i, op in enumerate(ops):
        head = np.array([op.lo, op.hi], dtype=np.float32)
        arrays[f"op{i}.floats"] = head if op.floats is None else np.concatenate([head, op.floats.reshape(-1)])
        kernel = None
        if op.kernel is not None:
            kernel = {}
            for key, value in op.kernel.items():
                if isinstance(value, np.ndarray):
                    arrays[f"op{i}.{key}"] = value
                    value = f"op{i}.{key}"
                kernel[key] = value
        ints = [op.ins[0], op.ins[1] if len(op.ins) > 1 else -1, op.out, op.act, *op.shape_in, *op.shape_out, *op.params]
        records.append({"kind": op.kind, "node": op.node, "layer": op.layer, "ints": [int(v) for v in ints],
                        "floats": f"op{i}.floats", "kernel": kernel})
    return records, arrays


def _op_from_record(rec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> PlanOp:
    ints = [int(v) for v in rec["ints"]]
    floats = arrays[rec["floats"]]
    return PlanOp(int(rec["kind"]), str(rec.get("node", "")), [ints[0]] + ([ints[1]] if ints[1] >= 0 else []), ints[2],
                  tuple(ints[4:7]), tuple(ints[7:10]), ints[3], float(floats[0]), float(floats[1]), ints[10:],
                  layer=str(rec.get("layer", "")))


def output_tolerance(precision: str) -> float:
    """Largest relative error (of the output's scale) a plan of ``precision`` may show against the float32 model
    it was lowered from: 1e-4 in fp32 (summation order), 5e-2 in bf16 (8-bit mantissas of weights and
    activations: ResNet-56 logits differ by about 1e-2)."""
    return 5e-2 if resolve_precision(precision) == "bf16" else 1e-4


def resolve_precision(precision: str = "auto") -> str:
    """``"fp32"`` or ``"bf16"``: ``auto`` is bf16 where the CPU has avx512_bf16 or amx_bf16, else fp32;
    ConfigError for a name not in ``auto``, ``fp32``, ``bf16``."""
    try:
        return lean_rt.resolve_precision(precision)
    except lean_rt.LeanError as exc:
        raise ConfigError(str(exc)) from None


def _native(lib: Any, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
            verified: bool = False) -> lean_rt.NativePlan:
    """The native plan of ``header`` and ``arrays`` on ``lib``, with the runtime's errors as the project's
    (``verified``: as :class:`~uniprune.compressors.native.uniprune_lean.NativePlan`'s)."""
    try:
        return lean_rt.NativePlan(lib, header, arrays, verified=verified)
    except lean_rt.PlanRefused as exc:
        op = _op_from_record(header["ops"][exc.index], arrays)
        raise ModelError(f"the native plan refused op {op.node!r} ({op.describe()}, {list(op.shape_in)} -> "
                         f"{list(op.shape_out)}, code {exc.code}); run the compiled model's Python path instead") from None
    except lean_rt.BuildError as exc:
        raise KernelBuildError(f"{exc}; rebuild with 'python -m uniprune.compressors.native.kernels --build --force'") from None
    except lean_rt.LeanError as exc:
        raise ModelError(f"the lean plan cannot be built: {exc}") from None


def _choose_convs(lib: Any, ops: list[PlanOp], batch: int, threads: int, choose: str, amx: bool = False) -> None:
    """Run each conv in the implementation of :data:`CONV_IMPLS` that
    :func:`~uniprune.compressors.latency.timing.fastest` finds fastest at ``batch`` samples (im2col forms only up to
    :data:`IM2COL_MAX_PIXELS` output pixels), or as ``choose`` forces (the im2col forms then at any size).
    With ``amx`` (bf16 kernels on a CPU with AMX tiles) the direct conv is also timed on the float32 kernels
    with the same bf16 weights (``"engine": "fp32"``), which win on some sparse layers (docs/KERNELS.md).

    Each candidate is timed as a one-op plan on random input, its activation included, its residual not."""
    for op in ops:
        if op.kind != OP_CONV or op.alt is None:
            continue
        builders, op.alt = op.alt, None
        pixels = op.shape_out[1] * op.shape_out[2]
        small = choose == "measure" and pixels <= IM2COL_MAX_PIXELS
        engines = amx and op.kernel is not None and op.kernel.get("precision") == "bf16" and choose in ("measure", "direct")
        names = [choose] if choose not in ("measure", "direct") else list(builders) if small else []
        if not names and not engines:
            continue
        cands: dict[str, PlanOp] = {"direct": op} if choose in ("measure", "direct") else {}
        if engines:
            cands["direct_fp32"] = PlanOp(OP_CONV, op.node, list(op.ins), op.out, op.shape_in, op.shape_out, op.act,
                                          op.lo, op.hi, list(op.params), None, {**op.kernel, "engine": "fp32"})
        for name in names:
            kernel, params = builders[name]()
            cands[name] = PlanOp(OP_IM2COL, op.node, list(op.ins), op.out, op.shape_in, op.shape_out, op.act,
                                 op.lo, op.hi, params, None, kernel)
        best = next(iter(cands))
        if len(cands) > 1:
            x = torch.randn(batch, *op.shape_in)
            y = torch.empty(batch, *op.shape_out)
            plans = {}
            for name, cand in cands.items():
                alone = PlanOp(cand.kind, cand.node, [0], 1, cand.shape_in, cand.shape_out, cand.act, cand.lo, cand.hi,
                               cand.params, None, cand.kernel)
                records, arrays = _records([alone])
                plans[name] = _native(lib, {"buffers": [0, 0], "ops": records, "input_shape": list(cand.shape_in),
                                            "output_shape": list(cand.shape_out),
                                            "precision": (cand.kernel or {}).get("precision", "fp32")}, arrays)
            xp, yp = x.data_ptr(), y.data_ptr()
            best = fastest({k: (lambda p=p, xp=xp, yp=yp: p.run(xp, yp, batch, threads)) for k, p in plans.items()})
            for p in plans.values():
                p.close()
        if best != "direct":
            op.kind, op.params, op.kernel = cands[best].kind, cands[best].params, cands[best].kernel


@dataclass
class LeanSpec:
    """A lowered plan in plain form: ``header`` (JSON-able: shapes, buffers, op records naming their arrays;
    the format is :mod:`uniprune.compressors.native.uniprune_lean`'s) and ``arrays`` (``{name: numpy array}``,
    float32 / int32 / uint8). What :class:`LeanModel` is built from and what ``uniprune export`` writes."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def save(self, directory: str | Path, **extra: Any) -> list[Path]:
        """Write ``plan.json`` and ``weights.bin`` into ``directory`` (each atomically; see
        :func:`~uniprune.compressors.native.uniprune_lean.write_plan`); ``extra`` JSON-able fields join the header.
        Returns the files written."""
        return lean_rt.write_plan(directory, {**self.header, **extra}, self.arrays)

    @classmethod
    def load(cls, directory: str | Path) -> LeanSpec:
        """The plan :meth:`save` wrote in ``directory``; a one-line CheckpointError for a missing or damaged one."""
        try:
            header, arrays = lean_rt.read_plan(directory)
        except lean_rt.LeanError as exc:
            raise CheckpointError(str(exc)) from None
        return cls(header, arrays)


class LeanModel(nn.Module):
    """A network as one native plan: ``lean(x)`` is one C call for the whole forward pass.

    Built from a :class:`LeanSpec` (:func:`lower`, :func:`compile_lean`, or one loaded from an artifact).
    ``x``: float32 CPU ``[N, *input_shape]`` (any ``N >= 0``; the per-sample shape is the one it was lowered
    for); returns a new float32 tensor ``[N, *output_shape]``. Buffers for the activations are allocated once
    per larger batch size seen. Calls from several threads take turns (one set of buffers). ``threads``
    (>= 1): threads of the native kernels (default: ``torch.get_num_threads()`` at each call). ``ops`` lists
    what runs (buffer numbers in and out), for inspection; ``header`` is the spec's header. The arrays are
    copied into native memory, so the spec may be dropped afterwards.
    """

    def __init__(self, spec: LeanSpec, threads: int | None = None) -> None:
        super().__init__()
        if threads is not None:
            check_threads(threads)
        header = spec.header
        try:  # every field is checked before one is used, once (the native executor checks its indices too)
            lean_rt.verify_plan(header, spec.arrays)
        except lean_rt.LeanError as exc:
            raise ModelError(f"the lean plan cannot be built: {exc}") from None
        self.header = {k: v for k, v in header.items() if k != "arrays"}
        self.input_shape = tuple(int(s) for s in header["input_shape"])
        self.output_shape = tuple(int(s) for s in header["output_shape"])
        self.threads = threads
        self.ops = [_op_from_record(rec, spec.arrays) for rec in header["ops"]]
        self.num_buffers = len(header["buffers"])
        self.precision = str(header.get("precision", "fp32"))
        self.buffer_floats = int(sum(header["buffers"]))  # per sample
        self._native = _native(kernels.load(), header, spec.arrays, verified=True)  # verified above: once per load
        self.amx_convs = self._native.amx_convs  # convs on AMX tiles
        # the executor's own ctypes function and handle: NativePlan.run's Python frame costs ~0.2 µs a call
        self._run, self._handle = self._native.fns.plan_run, self._native.handle
        self._lock = threading.Lock()
        self._out_shapes: dict[tuple, tuple[int, ...]] = {}

    def __deepcopy__(self, memo: dict) -> LeanModel:
        return self  # the native plan is guarded by its lock: share, never double-free

    def _threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the plan on ``x`` float32 ``[N, *input_shape]`` on the CPU; returns ``[N, *output_shape]``."""
        return self._call(x, None)

    def profile(self, x: torch.Tensor) -> list[tuple[str, str, float]]:
        """One pass on ``x`` with each op timed in its place: ``[(node(s), op, ms), ...]`` in run order.

        The clock is read between ops inside the native call, so the figures carry no Python; their sum is
        the pass less the call's own overhead (a few µs).
        """
        ns = torch.zeros(len(self.ops), dtype=torch.int64)
        self._call(x, ns)
        return [(op.node, op.describe(), float(t) / 1e6) for op, t in zip(self.ops, ns.tolist())]

    def layer_ms(self, x: torch.Tensor) -> tuple[float, dict[str, float]]:
        """One pass on ``x`` timed whole (ms, the native call and its Python wrapper) and per compressible layer
        in its place (``{module name: ms}``, a fused ReLU or residual add included): what the latency table
        reads. The whole less the layers is the glue (pools, shortcuts, the call itself)."""
        ns = torch.zeros(len(self.ops), dtype=torch.int64)
        t0 = time.perf_counter()
        self._call(x, ns)
        whole = 1e3 * (time.perf_counter() - t0)
        layers: dict[str, float] = {}
        for op, t in zip(self.ops, ns.tolist()):
            if op.layer:
                layers[op.layer] = layers.get(op.layer, 0.0) + t / 1e6
        return whole, layers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Module.__call__'s hook machinery costs ~2 µs, a tenth of a batch-1 digits CNN pass; a plan has no hooks
        return self._call(x, None)

    def _call(self, x: torch.Tensor, op_ns: torch.Tensor | None) -> torch.Tensor:
        key = (x.shape, x.dtype, x.is_cpu)  # the checks below cost microseconds; once per shape suffices
        out_shape = self._out_shapes.get(key)
        if out_shape is None:
            if x.dtype != torch.float32 or not x.is_cpu or x.dim() < 1 or tuple(x.shape[1:]) != self.input_shape:
                raise ModelError(f"the lean plan takes float32 CPU input [N, {', '.join(map(str, self.input_shape))}], "
                                 f"got {x.dtype} {list(x.shape)} on {x.device}; lower the model again for other shapes")
            out_shape = self._out_shapes[key] = (x.shape[0], *self.output_shape)
        if not x.is_contiguous():
            x = x.contiguous()
        n = out_shape[0]
        y = torch.empty(out_shape)
        if n == 0:
            return y
        with self._lock:
            if op_ns is None:
                rc = self._run(self._handle, x.data_ptr(), y.data_ptr(), n, self._threads())
            else:
                rc = self._native.run(x.data_ptr(), y.data_ptr(), n, self._threads(), op_ns.data_ptr())
        if rc:
            if rc == -1:
                raise MemoryError(f"the lean plan ran out of memory for a batch of {n}")
            op = self.ops[rc // 100 - 1] if rc >= 100 and rc // 100 <= len(self.ops) else None
            where = f" in op {op.node!r} ({op.describe()})" if op else ""
            raise RuntimeError(f"the lean plan failed (code {rc}){where} on input {list(x.shape)}")
        return y

    def summary(self) -> list[str]:
        """One line per op: node(s), op, buffers and per-sample shapes."""
        return [f"{op.node}: {op.describe()} buf{op.ins} -> buf{op.out} {list(op.shape_in)} -> {list(op.shape_out)}"
                for op in self.ops]


def lower_spec(model: nn.Module, example_input: torch.Tensor, *, threads: int | None = None,
               choose: str = "measure", precision: str = "fp32") -> LeanSpec:
    """Lower ``model`` (a :func:`~uniprune.compressors.native.runtime.compile_model` result, or any plain model) to a
    :class:`LeanSpec` for inputs shaped like ``example_input`` per sample (any batch size).

    BatchNorm after a conv is folded (on a copy; ``model`` is not changed). ``threads`` (>= 1; default
    ``torch.get_num_threads()``): the threads the conv choices are timed on, recorded in the header.
    ``choose``: how each groups=1 conv runs: ``"measure"`` (default: the fastest of :data:`CONV_IMPLS`,
    timed once per layer at the example's batch size; the im2col forms only up to :data:`IM2COL_MAX_PIXELS`
    output pixels) or one of :data:`CONV_IMPLS` for every such conv. ``precision``: ``"fp32"``, ``"bf16"``
    (weights stored in bfloat16; convs on AMX tiles where the CPU has them, see
    :mod:`~uniprune.compressors.native.uniprune_lean`) or ``"auto"`` (:func:`resolve_precision`); recorded in
    the header. Raises a one-line ModelError naming the first node it cannot lower; the caller then keeps the
    Python path.
    """
    precision = resolve_precision(precision)
    if threads is not None:
        check_threads(threads)
    if choose not in CONV_CHOICES:
        raise ConfigError(f"choose must be one of {CONV_CHOICES}, got {choose!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.dtype != torch.float32 or example_input.numel() == 0:
        raise ConfigError(f"example_input must be a non-empty float32 tensor, got "
                          f"{getattr(example_input, 'dtype', type(example_input).__name__)}")
    lib = kernels.load()
    dense = inference_copy(model).float().cpu()
    try:
        graph = _Tracer().trace(dense)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "no plan", in one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot lower {type(model).__name__} to a lean plan: torch.fx cannot trace it ({first[:160]}); "
                         "run the compiled model's Python path instead") from None
    gm = torch.fx.GraphModule(dense, graph)
    example = example_input.detach().cpu().contiguous()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    lowering = _Lowering(gm, example, precision)
    lowering.run()
    ops = _fuse(lowering.ops, lowering.input_value, lowering.output_value)
    n_threads = threads or torch.get_num_threads()
    _choose_convs(lib, ops, int(example.shape[0]), n_threads, choose, amx="amx_bf16" in kernels.bf16_units())
    buffers, sizes = _assign_buffers(ops, lowering.vshape, lowering.input_value, lowering.output_value)
    for op in ops:  # from here on an op names buffers, as the native plan does
        op.ins, op.out = [buffers[v] for v in op.ins], buffers[op.out]
    records, arrays = _records(ops)
    out_node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    header = {"format": lean_rt.FORMAT, "input_shape": list(example.shape[1:]),
              "output_shape": list(lowering.shape[out_node]), "buffers": [int(v) for v in sizes],
              "threads": int(n_threads), "batch_size": int(example.shape[0]), "precision": precision, "ops": records}
    return LeanSpec(header, arrays)


def lower(model: nn.Module, example_input: torch.Tensor, *, threads: int | None = None,
          choose: str = "measure", precision: str = "fp32") -> LeanModel:
    """:func:`lower_spec`, built: a :class:`LeanModel` for inputs shaped like ``example_input`` per sample.

    ``threads`` (>= 1): threads of the native kernels (default: ``torch.get_num_threads()`` at each call);
    ``choose`` and ``precision`` as in :func:`lower_spec`. Raises a one-line ModelError naming the first node it
    cannot lower.
    """
    spec = lower_spec(model, example_input, threads=threads, choose=choose, precision=precision)
    return LeanModel(spec, threads=threads)


def compile_lean_spec(model: nn.Module, structures: Mapping[str, LayerStructure], *, example_input: torch.Tensor,
                      threads: int | None = None, choose: str = "measure", precision: str = "fp32") -> LeanSpec:
    """:func:`~uniprune.compressors.native.runtime.compile_model` then :func:`lower_spec`: ``model`` with ``structures``
    (``{module name: LayerStructure}``) imposed, as a plan for inputs shaped like ``example_input``."""
    compiled = compile_model(model, structures, threads=threads, choose="sparse")
    return lower_spec(compiled, example_input, threads=threads, choose=choose, precision=precision)


def compile_lean(model: nn.Module, structures: Mapping[str, LayerStructure], *, example_input: torch.Tensor,
                 threads: int | None = None, choose: str = "measure", precision: str = "fp32") -> LeanModel:
    """:func:`compile_lean_spec`, built: ``model`` with ``structures`` imposed as one native plan.

    Outputs match the masked dense model to relative error <= 1e-4 in fp32 (bf16: the rounding of weights and
    activations, ~1e-2). ``threads``, ``choose`` and ``precision`` as in :func:`lower`.
    """
    spec = compile_lean_spec(model, structures, example_input=example_input, threads=threads, choose=choose,
                             precision=precision)
    return LeanModel(spec, threads=threads)


__all__ = ["LeanModel", "LeanSpec", "PlanOp", "compile_lean", "compile_lean_spec", "lower", "lower_spec", "OP_NAMES",
           "output_tolerance", "resolve_precision"]
