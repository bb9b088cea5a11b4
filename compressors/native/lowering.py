"""Lowering a traced graph to plan ops: :class:`_Lowering` walks the nodes of a ``torch.fx`` graph and emits
:class:`~.planops.PlanOp` s (the ops per tensor function and per layer: :mod:`.lower_ops`)."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..core.attention import HeadAttention
from ..core.errors import ModelError
from .lower_ops import _LayerOps, _TensorOps
from .lower_tokens import _TokenOps
from .planops import (
    _ACT_FUNCTIONS,
    _ACT_METHODS,
    _ACT_MODULES,
    _ADD_FNS,
    _INPLACE_TARGETS,
    _RELU_FNS,
    ACT_CLAMP,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_RELU,
    NHWC,
    OP_ACT,
    OP_ADD,
    OP_CHCOPY,
    OP_COPY,
    PlanOp,
    _per_sample,
)
from .runtime import CompiledConv2d, CompiledLinear


class _Tracer(torch.fx.Tracer):
    """Keeps compiled layers, attention cores (and torch's own modules) whole, as call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (CompiledConv2d, CompiledLinear, HeadAttention)) or super().is_leaf_module(m, qualname)


class _Lowering(_TensorOps, _LayerOps, _TokenOps):
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
        self.batch_consts: dict[torch.fx.Node, torch.Tensor] = {}  # param.expand(n, ...) -> one sample's tensor
        self.layout: dict[torch.fx.Node, str] = {}  # tensor node -> NHWC when it is a channels-last view
        self.chunks: dict[torch.fx.Node, tuple[torch.fx.Node, list[tuple[int, int]]]] = {}  # chunk -> (x, (start, n))
        self.ops: list[PlanOp] = []
        self.input_value = -1
        self.output_value = -1

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
            # every node that did not lower (those that failed only through an input too): what a segmented plan
            # runs on ONNX Runtime (segments.py), and the values stored in another order than torch's, which a
            # segment's boundary must not cross
            error.failed = [n.name for n in self.gm.graph.nodes if n in failed]  # type: ignore[attr-defined]
            error.reordered = [n.name for n in self.layout]  # type: ignore[attr-defined]
            raise error

    def meta_shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.fail(node, "it does not produce one tensor")
        if meta.dtype != torch.float32:
            raise self.fail(node, f"it produces {meta.dtype}, the plan runs float32")
        shape = tuple(int(s) for s in meta.shape)
        if len(shape) not in (2, 3, 4, 5) or shape[0] != self.example.shape[0]:
            raise self.fail(node, f"its output {list(shape)} is not [N, C, H, W], [N, L, E] or [N, F] with the input's "
                                  "batch")
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
        # a channels-last view [H, W, C] or [L, C] is stored channels first: (C, H, W) or (C, L, 1)
        self.vshape[vid] = (per[-1], per[0], per[1] if len(per) == 3 else 1) if layout == NHWC else _per_sample(shape)
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

    def storage(self, x: torch.fx.Node) -> tuple[int, int, int]:
        """The per-sample (C, H, W) an op reads ``x`` as: its value's, except that a token view ``[N, L, E]`` is
        read as (E, L, 1) whatever plane the value was written as (the same floats: a patch embedding's
        (E, h, w) is (E, h * w, 1))."""
        if self.layout.get(x) == NHWC and len(self.shape[x]) == 2:
            return (self.shape[x][1], self.shape[x][0], 1)
        return self.vshape[self.value[x]]

    def emit(self, node: torch.fx.Node, kind: int, ins: list[torch.fx.Node], layout: str | None = None,
             **kw: Any) -> PlanOp:
        op = PlanOp(kind, node.name, [self.value[s] for s in ins], -1, self.storage(ins[0]), (0, 0, 0), **kw)
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
        if isinstance(m, HeadAttention):
            self.attention(node, m)
            return
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
        return isinstance(arg, torch.fx.Node) and (arg in self.value or arg in self.consts or arg in self.chunks
                                                   or arg in self.batch_consts)

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
        elif (method and t == "dim") or (t is getattr and len(args) == 2 and args[1] == "ndim"):
            self.scalars.add(node)  # a tensor's rank, fixed when traced (torchvision's asserts read it)
        elif t is operator.getitem and args[0] in self.size_tuples:
            (self.sizes if args[1] == 0 else self.scalars).add(node)
        elif t is operator.getitem and args[0] in self.chunks:
            x, parts = self.chunks[args[0]]
            start, count = parts[args[1]]
            self.emit(node, OP_CHCOPY, [x], params=[0, start, count])
        elif not any(self.data(a) for a in node.all_input_nodes) and "tensor_meta" not in node.meta:
            self.scalars.add(node)  # arithmetic on sizes (x.size(1) // groups): a number, no op
        elif not (self.act_function(node) or self.tensor_function(node)):
            raise self.fail(node, "the plan has no op for it")

    def act_function(self, node: torch.fx.Node) -> bool:
        """An activation or an add as a function or method; False when ``node`` is neither."""
        t, args, kw = node.target, node.args, node.kwargs
        method = node.op == "call_method"
        if t in _RELU_FNS or (method and t in ("relu", "relu_")):
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
            if args[0] in self.consts or args[1] in self.consts:  # a position embedding
                a, b = (args[1], args[0]) if args[0] in self.consts else args
                self.add_constant(node, self.tensor_arg(node, a, nhwc=True), self.consts[b])
                return True
            a, b = self.tensor_arg(node, args[0], nhwc=True), self.tensor_arg(node, args[1], nhwc=True)
            if self.shape[a] != self.shape[b] or self.layout.get(a) != self.layout.get(b):
                raise self.fail(node, f"it broadcasts {list(self.shape[a])} with {list(self.shape[b])}")
            self.emit_elementwise(node, OP_ADD, [a, b])
        else:
            return False
        return True
