"""``nn.MultiheadAttention`` rewritten as four plain ``nn.Linear`` projections around a bare attention core.

Why: torch's ``MultiheadAttention`` keeps the query, key and value projections in one bare parameter
(``in_proj_weight``: a quarter of a transformer's weights that no layer discovery sees), reads
``out_proj.weight`` directly (so a compiled sparse layer put there never runs), and at inference takes the
fused ``aten::_native_multi_head_attention`` path that ONNX export cannot handle. :class:`SplitAttention`
computes the same function from ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (each an ``nn.Linear``,
compressible like any other) and :class:`HeadAttention` (softmax(q kᵀ / √d) v per head, in plain torch ops),
which the native plan lowers as one op. :func:`split_attention` swaps every rewritable module of a model in
place; :func:`split_attention_state` maps a state dict saved with the fused parameter onto the split model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_IN_PROJ = ("in_proj_weight", "in_proj_bias")
_PARTS = ("q_proj", "k_proj", "v_proj")


class HeadAttention(nn.Module):
    """Scaled dot-product attention over ``heads`` heads of projected ``q``, ``k``, ``v`` (each
    ``[N, L, E]``, E divisible by ``heads``): ``softmax(q_h k_hᵀ / sqrt(E / heads)) v_h`` per head, heads
    merged back to ``[N, L, E]``. ``dropout`` (a probability in [0, 1)) on the attention weights in training."""

    def __init__(self, heads: int, embed_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.embed_dim, self.dropout = int(heads), int(embed_dim), float(dropout)
        self.scale = 1.0 / math.sqrt(embed_dim // heads)  # a number fixed here: ONNX export traces no shape into it

    def weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The attention weights ``[N, heads, Lq, Lk]`` (each row sums to 1)."""
        n, lq, e = q.shape
        d = e // self.heads
        qh = q.reshape(n, lq, self.heads, d).transpose(1, 2)
        kh = k.reshape(n, k.shape[1], self.heads, d).transpose(1, 2)
        return torch.softmax((qh * self.scale) @ kh.transpose(-2, -1), dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, lq, e = q.shape
        p = F.dropout(self.weights(q, k), self.dropout, self.training)
        vh = v.reshape(n, v.shape[1], self.heads, e // self.heads).transpose(1, 2)
        return (p @ vh).transpose(1, 2).reshape(n, lq, e)


class SplitAttention(nn.Module):
    """What ``nn.MultiheadAttention`` computes (same call, same ``(output, weights)`` pair), from four
    ``nn.Linear`` layers and a :class:`HeadAttention`. Masks are not supported (``ValueError``); ``need_weights``
    returns the weights averaged over heads (or per head with ``average_attn_weights=False``), as torch does."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e, kdim, vdim = mha.embed_dim, mha.kdim, mha.vdim
        bias = mha.in_proj_bias is not None
        self.batch_first = bool(mha.batch_first)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(e, e, bias), nn.Linear(kdim, e, bias), nn.Linear(vdim, e, bias)
        self.out_proj = nn.Linear(e, e, mha.out_proj.bias is not None)
        self.attention = HeadAttention(mha.num_heads, e, mha.dropout)
        with torch.no_grad():
            if mha.in_proj_weight is not None:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
            for layer, w, b in zip((self.q_proj, self.k_proj, self.v_proj), weights, biases):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("SplitAttention (uniprune's rewrite of nn.MultiheadAttention) takes no attention masks")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        out = self.out_proj(self.attention(q, k, v))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = self.attention.weights(q, k)
        return out, weights.mean(1) if average_attn_weights else weights


def _rewritable(m: nn.Module) -> bool:
    """A MultiheadAttention without extra key/value biases or zero attention, whose heads split E evenly."""
    return (type(m) is nn.MultiheadAttention and m.bias_k is None and m.bias_v is None and not m.add_zero_attn
            and m.embed_dim % m.num_heads == 0)


def split_attention(model: nn.Module) -> nn.Module:
    """Replace every rewritable ``nn.MultiheadAttention`` of ``model`` (in place, same module names) by a
    :class:`SplitAttention` with the same weights and mode; returns ``model``. Outputs agree with the original
    to float32 rounding (relative error ~1e-6)."""
    for name, m in list(model.named_modules()):
        if _rewritable(m):
            parent, _, child = name.rpartition(".")
            split = SplitAttention(m).to(device=m.out_proj.weight.device, dtype=m.out_proj.weight.dtype)
            split.train(m.training)
            setattr(model.get_submodule(parent) if parent else model, child, split)
    return model


def split_attention_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each fused ``<name>.in_proj_weight`` / ``in_proj_bias`` (or ``q_proj_weight``...) of a
    :class:`SplitAttention` ``<name>`` of ``model`` split into its ``q_proj``, ``k_proj`` and ``v_proj`` keys;
    other keys as they are."""
    out = dict(state)
    for name, m in model.named_modules():
        if not isinstance(m, SplitAttention):
            continue
        prefix = f"{name}." if name else ""
        for fused, kind in zip(_IN_PROJ, ("weight", "bias")):
            value = out.pop(prefix + fused, None)
            if value is not None and value.shape[0] % 3 == 0:
                for part, piece in zip(_PARTS, value.chunk(3)):
                    out[f"{prefix}{part}.{kind}"] = piece
            elif value is not None:
                out[prefix + fused] = value  # not three equal parts: left for the key check to name
        for part in _PARTS:
            value = out.pop(f"{prefix}{part}_weight", None)
            if value is not None:
                out[f"{prefix}{part}.weight"] = value
    return out
