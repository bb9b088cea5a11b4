"""The op kinds of ``csrc/uniprune_plan.c`` as a table: each kind's parameters, kernel, buffer rules, floats and
geometry check. What both verifiers (:mod:`.verify`, the reference that names the op and field, and
:mod:`.fastcheck`, its vectorised twin) read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .common import (
    _ACT,
    _C,
    _CO,
    _H,
    _HEADER_NAMES,
    _HO,
    _PARAM_RANGES,
    _W,
    _WINDOW,
    _WO,
    ATTN_MAX_TOKENS,
    MAX_DIM,
)


def _extent(n: int, k: int, s: int, p: int, d: int) -> int:
    """Output extent of a conv or pool window along one axis, as torch computes it (< 1: the window does not fit)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _window_out(v: list[int], kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int) -> str | None:
    ho, wo = _extent(v[_H], kh, sh, ph, dh), _extent(v[_W], kw, sw, pw, dw)
    if ho != v[_HO] or wo != v[_WO]:
        return f"ints Ho/Wo: the op says {v[_HO]}x{v[_WO]}, its {kh}x{kw} window on {v[_H]}x{v[_W]} gives {ho}x{wo}"
    return None


def _same_shape(v: list[int], k: Any) -> str | None:
    if v[_C] != v[_CO] or v[_H] != v[_HO] or v[_W] != v[_WO]:
        return f"ints Co/Ho/Wo: an elementwise op keeps its shape, got {v[_C:_W + 1]} -> {v[_CO:_WO + 1]}"
    return None


def _geom_conv(v: list[int], k: tuple[int, ...]) -> str | None:
    if k[0] != v[_CO] or k[1] != v[_C]:
        return f"kernel.geom: the kernel maps {k[1]} -> {k[0]} channels, the op {v[_C]} -> {v[_CO]}"
    return _window_out(v, *k[2:])


def _geom_gemv(v: list[int], k: tuple[int, ...]) -> str | None:
    if k[0] != v[_CO] * v[_HO] * v[_WO] or k[1] != v[_C] * v[_H] * v[_W]:
        return f"kernel out/in: the kernel maps {k[1]} -> {k[0]} features, the op {v[_C] * v[_H] * v[_W]} -> " \
               f"{v[_CO] * v[_HO] * v[_WO]}"
    return None


def _geom_gconv(v: list[int], k: None) -> str | None:
    groups = v[18]
    if v[_C] % groups or v[_CO] % groups:
        return f"ints groups: {groups} does not divide {v[_C]} input and {v[_CO]} output channels"
    return _window_out(v, *v[10:18])


def _ceil_extent(n: int, k: int, s: int, p: int) -> int:
    """Output extent of a pool in ceil mode, as torch computes it (the last window starts inside the input or its
    left padding)."""
    out = -(-(n + 2 * p - k) // s) + 1
    return out - 1 if (out - 1) * s >= n + p else out


def _geom_pool(v: list[int], k: None) -> str | None:
    if v[_CO] != v[_C]:
        return f"ints Co: a pool keeps its {v[_C]} channels, got {v[_CO]}"
    kh, kw, sh, sw, ph, pw = v[10:16]
    if (v[_HO], v[_WO]) == (_ceil_extent(v[_H], kh, sh, ph), _ceil_extent(v[_W], kw, sw, pw)):
        return None  # ceil mode
    return _window_out(v, *v[10:16], 1, 1)


def _geom_chcopy(v: list[int], k: None) -> str | None:
    ooff, ioff, cnt = v[10:13]
    if ooff + cnt > v[_CO] or ioff + cnt > v[_C] or v[_H] != v[_HO] or v[_W] != v[_WO] or v[_ACT] != 0:
        return f"ints: channels {ioff}..{ioff + cnt} of {v[_C]} to {ooff}..{ooff + cnt} of {v[_CO]} " \
               f"({v[_H]}x{v[_W]} -> {v[_HO]}x{v[_WO]}, act {v[_ACT]}) do not fit"
    return None


def _geom_shuffle(v: list[int], k: None) -> str | None:
    if v[_C] % v[10] or v[_ACT] != 0:
        return f"ints g: {v[10]} groups must divide {v[_C]} channels, with act 0 (got {v[_ACT]})"
    return _same_shape(v, k)


def _geom_gap(v: list[int], k: None) -> str | None:
    if v[_CO] != v[_C] or v[_HO] != 1 or v[_WO] != 1:
        return f"ints Co/Ho/Wo: a global pool gives [{v[_C]}, 1, 1], got {v[_CO:_WO + 1]}"
    return None


def _geom_im2col(v: list[int], k: tuple[int, ...]) -> str | None:
    patch, mode = v[_C] * v[10] * v[11], v[18]
    want = (v[_CO], patch) if mode == 0 else (v[_CO], patch, 1, 1, 1, 1, 0, 0, 1, 1)
    if tuple(k) != want:
        return f"kernel: an im2col conv in mode {mode} needs a kernel {list(want)}, got {list(k)}"
    return _window_out(v, *v[10:18])


def _geom_attn(v: list[int], k: None) -> str | None:
    heads = v[10]
    if v[_C] != 3 * v[_CO] or v[_CO] % heads or v[_H] * v[_W] > ATTN_MAX_TOKENS or v[_ACT] != 0:
        return f"ints C/Co/heads: attention reads queries, keys and values ({v[_C]} = 3 x {v[_CO]} channels) split " \
               f"in {heads} heads, at most {ATTN_MAX_TOKENS} tokens ({v[_H]}x{v[_W]}), act 0 (got {v[_ACT]})"
    return _same_plane(v)


def _same_plane(v: list[int]) -> str | None:
    if v[_H] != v[_HO] or v[_W] != v[_WO]:
        return f"ints Ho/Wo: the op keeps its {v[_H]}x{v[_W]} plane, got {v[_HO]}x{v[_WO]}"
    return None


def _geom_rowcat(v: list[int], k: None) -> str | None:
    if v[_CO] != v[_C] or v[_WO] != v[_W] or v[_HO] != v[_H] + v[10] or v[_ACT] != 0:
        return f"ints Co/Ho/Wo: {v[10]} rows before {v[_C]}x{v[_H]}x{v[_W]} give {v[_C]}x{v[_H] + v[10]}x{v[_W]}, " \
               f"got {v[_CO]}x{v[_HO]}x{v[_WO]} (act {v[_ACT]})"
    return None


def _geom_none(v: list[int], k: Any) -> str | None:
    return None


def _floats_none(v: list[int]) -> int:
    return 0


class _Kind(NamedTuple):
    """One op kind of csrc/uniprune_plan.c: its parameters (after the header ints), the kernel it runs
    (``"conv"``, ``"gemv"``, ``"mode"``: by its ``mode`` parameter, or None), whether it may read a fused
    residual (in1) or write over its input, its floats after lo and hi, and its geometry check."""
    name: str
    params: tuple[str, ...]
    kernel: str | None
    residual: bool
    in_place: bool
    floats: Callable[[list[int]], int]
    geometry: Callable[[list[int], Any], str | None]


_OPS: dict[int, _Kind] = {  # the numbers are csrc/uniprune_plan.c's op kinds
    1: _Kind("conv", (), "conv", True, False, _floats_none, _geom_conv),
    2: _Kind("linear", (), "gemv", True, False, _floats_none, _geom_gemv),
    3: _Kind("grouped_conv", (*_WINDOW, "groups", "has_bias"), None, True, False,
             lambda v: v[_CO] * (v[_C] // v[18]) * v[10] * v[11] + v[_CO] * v[19], _geom_gconv),
    4: _Kind("add", (), None, True, True, _floats_none, _same_shape),
    5: _Kind("act", (), None, False, True, _floats_none, _same_shape),
    6: _Kind("affine", (), None, False, True, lambda v: 2 * v[_C], _same_shape),
    7: _Kind("global_avg_pool", (), None, False, False, _floats_none, _geom_gap),
    8: _Kind("pool", ("kh", "kw", "sh", "sw", "ph", "pw", "is_max", "count_include_pad"), None, False, False,
             _floats_none, _geom_pool),
    9: _Kind("slice_pad", ("sh", "sw", "clo", "pt", "pl"), None, False, False, _floats_none, _geom_none),
    10: _Kind("copy", (), None, False, True, _floats_none, _same_shape),
    11: _Kind("im2col_conv", (*_WINDOW, "mode"), "mode", True, False, _floats_none, _geom_im2col),
    12: _Kind("channel_mul", (), None, True, True, _floats_none, _same_shape),  # in1: the gate, C floats a sample
    13: _Kind("channel_copy", ("ooff", "ioff", "cnt"), None, False, False, _floats_none, _geom_chcopy),
    14: _Kind("channel_shuffle", ("g",), None, False, False, _floats_none, _geom_shuffle),
    15: _Kind("channel_layer_norm", ("has_affine",), None, False, False, lambda v: 1 + 2 * v[_C] * v[10], _same_shape),
    16: _Kind("attention", ("heads", "bf16"), None, False, False, _floats_none, _geom_attn),
    17: _Kind("row_concat", ("rows",), None, False, False, lambda v: v[_C] * v[10] * v[_W], _geom_rowcat),
    18: _Kind("add_constant", (), None, False, True, lambda v: v[_C] * v[_H] * v[_W], _same_shape),
}
#: per kind: (name, lo, hi) of each integer after act (C H W Co Ho Wo and the parameters), and the ints' count
_RANGES = {kind: (tuple(zip(_HEADER_NAMES[_C:] + k.params, [1] * 6 + [_PARAM_RANGES[n][0] for n in k.params],
                            [MAX_DIM] * 6 + [_PARAM_RANGES[n][1] for n in k.params])), 10 + len(k.params))
           for kind, k in _OPS.items()}

