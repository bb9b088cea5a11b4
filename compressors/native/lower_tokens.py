"""What :class:`~.lowering._Lowering` emits for a transformer's token tensors: attention, the class token, the
position embedding and picking one token (a mixin).

A token tensor ``[N, L, E]`` is stored as ``[N, E, L]`` (channel-major, the storage a patch embedding's conv
writes): the channels-last view of an ``(E, L, 1)`` plane, so a Linear over E is the block-sparse 1x1 conv over
L pixels (batch x tokens rows), LayerNorm is the channels-across op and GELU, adds and dropout are elementwise.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx

from ..core.attention import HeadAttention
from .planops import _CAT_FNS, NHWC, OP_ADDC, OP_ATTN, OP_CHCOPY, OP_ROWCAT, OP_SLICEPAD, PlanOp


def _storage(const: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """One sample's constant in the order its value is stored: channels first (a channels-last view's last dim
    moved to the front), flat float32."""
    if channels_last:
        const = const.movedim(-1, 0)
    return const.detach().float().contiguous().reshape(-1)


class _TokenOps:
    """Token tensors as plan ops (a mixin of :class:`~.lowering._Lowering`)."""

    def token_function(self, node: torch.fx.Node) -> bool:
        """A function or method on token tensors (the class token's expand and concat, transpose(1, 2) of
        [N, E, L], x[:, k]); False when ``node`` is none of them."""
        t, args = node.target, node.args
        method = node.op == "call_method"
        if t in _CAT_FNS:
            parts = args[0] if args else node.kwargs.get("tensors")
            if not (isinstance(parts, (list, tuple)) and any(p in self.batch_consts for p in parts)):
                return False
            self.token_cat(node, list(parts), node.kwargs.get("dim", args[1] if len(args) > 1 else 0))
        elif method and t == "expand":
            self.expand(node)
        elif (t is torch.transpose or (method and t == "transpose")) and args[0] in self.value and \
                len(self.shape[args[0]]) == 2:
            if sorted(d % 3 for d in args[1:3]) != [1, 2]:
                raise self.fail(node, "only transpose(1, 2) of [N, E, L] tokens is supported")
            x = self.tensor_arg(node, args[0], nhwc=True)  # [N, E, L] <-> [N, L, E]: as permute(0, 2, 1)
            self.alias(node, x, layout=None if self.layout.get(x) == NHWC else NHWC)
        elif t is operator.getitem and isinstance(args[1], tuple) and len(args[1]) == 2 and \
                args[1][0] == slice(None) and isinstance(args[1][1], int):  # x[:, k]: one token
            self.take_token(node, self.tensor_arg(node, args[0], nhwc=True), args[1][1])
        else:
            return False
        return True

    def attention(self, node: torch.fx.Node, m: HeadAttention) -> None:
        """:class:`HeadAttention` on projected ``q, k, v`` (token values of one shape): the three copied into one
        ``[3E, L]`` value, then one attention op."""
        if len(node.args) != 3 or node.kwargs:
            raise self.fail(node, "attention is called with q, k and v")
        q, k, v = (self.tensor_arg(node, a, nhwc=True) for a in node.args)
        if not (self.shape[q] == self.shape[k] == self.shape[v]) or len(self.shape[q]) != 2 or \
                any(self.layout.get(t) != NHWC for t in (q, k, v)) or self.shape[q][1] != m.embed_dim:
            raise self.fail(node, f"attention over {[list(self.shape[t]) for t in (q, k, v)]}; only self-attention over "
                                  f"[N, L, {m.embed_dim}] token tensors of one length is supported")
        e, h, w = self.storage(q)
        joined = len(self.vshape)
        self.vshape[joined] = (3 * e, h, w)
        for i, t in enumerate((q, k, v)):
            self.ops.append(PlanOp(OP_CHCOPY, node.name, [self.value[t]], joined, (e, h, w), (3 * e, h, w),
                                   params=[i * e, 0, e]))
        op = PlanOp(OP_ATTN, node.name, [joined], -1, (3 * e, h, w), (0, 0, 0), params=[m.heads, int(self.precision == "bf16")])
        op.out = self.new_value(node, NHWC)
        op.shape_out = self.vshape[op.out]
        self.ops.append(op)

    def token_plane(self, node: torch.fx.Node, x: torch.fx.Node) -> tuple[int, int]:
        """``(E, L)`` of a token value (channels-last ``[N, L, E]``)."""
        if self.layout.get(x) != NHWC or len(self.shape[x]) != 2:
            raise self.fail(node, f"it reads {list(self.shape[x])} as tokens; only [N, L, E] token tensors (a "
                                  "permute(0, 2, 1) of [N, E, L]) are supported")
        length, e = self.shape[x]
        return e, length

    def expand(self, node: torch.fx.Node) -> None:
        """``param.expand(n, -1, ...)`` with ``n`` the batch: the parameter stands for every sample (no op)."""
        src, sizes = node.args[0], node.args[1:]
        sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else tuple(sizes)
        const = self.consts.get(src)
        if const is None or const.dim() < 2 or const.shape[0] != 1 or len(sizes) != const.dim() or \
                sizes[0] not in self.sizes or any(s not in (-1, d) for s, d in zip(sizes[1:], const.shape[1:])):
            raise self.fail(node, "only a parameter [1, ...] expanded to the batch (expand(n, -1, ...)) is supported")
        self.batch_consts[node] = const[0]

    def token_cat(self, node: torch.fx.Node, parts: list[Any], dim: int) -> None:
        """``torch.cat([class_token.expand(n, -1, -1), x], dim=1)``: constant tokens before a token value."""
        if len(parts) != 2 or parts[0] not in self.batch_consts or dim % 3 != 1:
            raise self.fail(node, "only torch.cat([param.expand(n, -1, -1), tokens], dim=1) is supported")
        x = self.tensor_arg(node, parts[1], nhwc=True)
        e, length = self.token_plane(node, x)
        const = self.batch_consts[parts[0]]
        if const.dim() != 2 or const.shape[1] != e:
            raise self.fail(node, f"it puts tokens {list(const.shape)} before [{length}, {e}]")
        op = PlanOp(OP_ROWCAT, node.name, [self.value[x]], -1, (e, length, 1), (0, 0, 0), params=[int(const.shape[0])],
                    floats=_storage(const, True).numpy())
        op.out = self.new_value(node, NHWC)
        op.shape_out = self.vshape[op.out]
        self.ops.append(op)

    def add_constant(self, node: torch.fx.Node, x: torch.fx.Node, const: torch.Tensor) -> None:
        """A value plus a parameter of one sample's whole shape (``[1, ...]`` or without the 1): a position
        embedding."""
        per = self.shape[x]
        if tuple(const.shape) not in (tuple(per), (1, *per)):
            raise self.fail(node, f"it adds a parameter {list(const.shape)} to {list(per)}; only a parameter of the "
                                  "sample's whole shape is supported")
        self.emit_elementwise(node, OP_ADDC, [x], floats=_storage(const.reshape(per), self.layout.get(x) == NHWC).numpy())

    def take_token(self, node: torch.fx.Node, x: torch.fx.Node, index: int) -> None:
        """``x[:, k]`` of a token value: token ``k``'s E channels, ``[N, E]``."""
        e, length = self.token_plane(node, x)
        if not -length <= index < length:
            raise self.fail(node, f"token {index} of {length}")
        op = PlanOp(OP_SLICEPAD, node.name, [self.value[x]], -1, (e, length, 1), (0, 0, 0),
                    params=[1, 1, 0, -(index % length), 0])
        op.out = self.new_value(node)
        op.shape_out = self.vshape[op.out]
        self.ops.append(op)
