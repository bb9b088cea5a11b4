"""What :class:`~.lowering._Lowering` emits for tensor functions (mul, cat, chunk, permute, LayerNorm...) and
for layers (conv, linear, BatchNorm, pools, slices, padding): its two mixins."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from . import kernels
from .planops import (
    _CAT_FNS,
    _FLATTEN_FNS,
    _MAX_POOL_FNS,
    _MUL_FNS,
    _PERMUTE_NCHW,
    _PERMUTE_NHWC,
    _POOL_FNS,
    NHWC,
    OP_AFFINE,
    OP_CHCOPY,
    OP_CHMUL,
    OP_CHNORM,
    OP_CONV,
    OP_GAP,
    OP_GCONV,
    OP_GEMV,
    OP_POOL,
    OP_SHUFFLE,
    OP_SLICEPAD,
    PlanOp,
    _conv_kernel,
    _gemv_kernel,
)
from .runtime import CompiledConv2d


class _TensorOps:
    """Functions and methods on tensors, as plan ops (a mixin of :class:`~.lowering._Lowering`)."""

    def tensor_function(self, node: torch.fx.Node) -> bool:
        """A function or method on tensors other than an activation (mul, cat, views, pools, slices...); False
        when the plan has no op for ``node``."""
        t, args, kw = node.target, node.args, node.kwargs
        method = node.op == "call_method"
        if self.token_function(node):
            return True
        if t in _MUL_FNS or (method and t in ("mul", "mul_")):
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
            x = self.tensor_arg(node, args[0])
            if end != -1 or not (start == 1 or (start == 2 and len(self.shape[x]) == 3)):
                raise self.fail(node, "only flatten(x, 1), and flatten(x, 2) of [N, C, H, W] (patches to tokens), "
                                      "keep the batch apart")
            self.alias(node, x)
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
            return False
        return True

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
        tokens = len(self.shape[x]) == 2 and dims == (0, 2, 1)  # [N, E, L] <-> [N, L, E]
        if not tokens and (len(self.shape[x]) != 3 or dims != (_PERMUTE_NCHW if nhwc else _PERMUTE_NHWC)):
            raise self.fail(node, "only permute(0, 2, 3, 1) of [N, C, H, W] and back, or permute(0, 2, 1) of "
                                  "[N, E, L] and back is supported")
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


class _LayerOps:
    """Layers and pools, as plan ops (a mixin of :class:`~.lowering._Lowering`)."""

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
