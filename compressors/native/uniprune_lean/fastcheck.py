"""The plan verifier's quick path: each op's checks as one run of plain comparisons that only says yes or no.

Why: the op-by-op checks of :mod:`.verify` build a message at every step (a helper call per field, a record
per array), ~8 µs of Python per op: 44 % of a batch-1 ResNet-56 pass for its 59 ops. Here an op that passes
costs ~2 µs: its integers unpacked and compared in one expression, its kernel's arrays looked up once. An
op this path does not pass goes through :func:`~.verify._check_op`, which names the op and the field; so this
path must never pass an op that would be refused there (benchmarks/fuzz_plan.py checks that on every mutated
plan, and numpy over columns of all ops was tried first: at 60 ops its per-call overhead costs more than this).

The rules themselves are :data:`~.ops._OPS`'s (ranges, geometry, floats, buffers): read here, not restated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .common import _ENGINES, _KERNEL_ROWS, _WEIGHT_DTYPES, ACT_LAST, MAX_DIM, MAX_PARAM, MAX_SAMPLE_FLOATS
from .ops import _OPS, _RANGES

_CHAR = {"float32": "f", "int32": "i", "bfloat16": "H"}  # numpy dtype.char of each array dtype a kernel names
#: per kind: its ints count, the lower bound of in1, whether in1 may name a buffer, the ranges of its parameters
#: (after the ten header ints), and the kernel type (None, "conv", "gemv", "mode")
_KIND = {code: (count, 0 if code in (4, 12) else -1, kind.residual, ranges[6:], kind.kernel)
         for code, kind in _OPS.items() for ranges, count in (_RANGES[code],)}


def _params_ok(v: list[Any], ranges: tuple[tuple[str, int, int], ...]) -> bool:
    for x, (_, lo, hi) in zip(v[10:], ranges):
        if type(x) is not int or not lo <= x <= hi:
            return False
    return True


def _kernel(k: Any, ktype: str, arrays: Mapping[str, np.ndarray], precision: str) -> tuple[int, ...] | None:
    """The kernel record ``k`` of type ``ktype`` as :func:`~.verify._kernel_conv` / ``_kernel_gemv`` and
    ``_panels`` check it: its geometry (conv: the ten ``geom`` integers; gemv: out, in), or None."""
    if type(k) is not dict or k.get("type") != ktype:
        return None
    if ktype == "conv":
        geom, rows = k.get("geom"), k.get("rows")
        if type(geom) is not list or len(geom) != 10 or type(rows) is not int or rows not in (1, 2, 4, 8):
            return None
        co, ci, kh, kw, sh, sw, ph, pw, dh, dw = geom
        if not (type(co) is type(ci) is type(kh) is type(kw) is type(sh) is type(sw) is type(ph) is type(pw)
                is type(dh) is type(dw) is int and 1 <= co <= MAX_DIM and 1 <= ci <= MAX_DIM and 1 <= kh <= MAX_PARAM
                and 1 <= kw <= MAX_PARAM and 1 <= sh <= MAX_PARAM and 1 <= sw <= MAX_PARAM and 0 <= ph <= MAX_PARAM
                and 0 <= pw <= MAX_PARAM and 1 <= dh <= MAX_PARAM and 1 <= dw <= MAX_PARAM):
            return None
        taps, out = kh * kw, tuple(geom)
    else:
        co, ci, rows, taps = k.get("out"), k.get("in"), _KERNEL_ROWS, 1
        if not (type(co) is type(ci) is int and 1 <= co <= MAX_SAMPLE_FLOATS and 1 <= ci <= MAX_SAMPLE_FLOATS):
            return None
        out = (co, ci)
    panels = -(-co // rows)
    get, names = arrays.get, (k.get("panel_ptr"), k.get("ch"), k.get("w"), k.get("bias"))
    if not (type(names[0]) is type(names[1]) is type(names[2]) is str and (names[3] is None or type(names[3]) is str)):
        return None
    ptr, ch, wt = get(names[0]), get(names[1]), get(names[2])
    if ptr is None or ch is None or wt is None or ptr.dtype.char != "i" or ptr.size != panels + 1:
        return None
    nnz = ptr.item(-1)  # a flat index: any shape holds, only the element count counts
    wdtype = _WEIGHT_DTYPES[precision]
    own = k.get("precision", precision)
    if (ptr.item(0) != 0 or not 0 <= nnz <= panels * ci or type(own) is not str or _WEIGHT_DTYPES.get(own) != wdtype
            or k.get("engine", "auto") not in _ENGINES or ch.dtype.char != "i" or ch.size != nnz
            or wt.dtype.char != _CHAR[wdtype] or wt.size != nnz * taps * rows):
        return None
    if names[3] is None:
        return out
    bias = get(names[3])
    return out if bias is not None and bias.dtype.char == "f" and bias.size == co else None


def ops_ok(ops: list[Any], start: int, arrays: Mapping[str, np.ndarray], precision: str, sizes: list[int],
           written: bytearray, most: list[int]) -> int:
    """The index of the first op from ``start`` on that does not pass every check :func:`~.verify._check_op`
    makes (``len(ops)`` when all do), given the buffers' ``sizes`` and what the ops before wrote (``written``,
    ``most``; updated as there for each op that passes). The caller lets ``_check_op`` name what is wrong with
    that op (it may also find it fine), then goes on from the next."""
    last, size_in = len(sizes) - 1, sizes[0]
    for i in range(start, len(ops)):
        op = ops[i]
        if type(op) is not dict:
            return i
        code = op.get("kind")
        spec = _KIND.get(code) if type(code) is int else None
        v = op.get("ints")
        if spec is None or type(v) is not list or len(v) != spec[0]:
            return i
        _, in1_lo, residual, params, ktype = spec
        in0, in1, out, act, c, h, w, co, ho, wo = v[:10]
        if not (type(in0) is type(in1) is type(out) is type(act) is type(c) is type(h) is type(w) is type(co)
                is type(ho) is type(wo) is int and 0 <= in0 <= last and in1_lo <= in1 <= (last if residual else -1)
                and 1 <= out <= last and 0 <= act <= ACT_LAST and 1 <= c <= MAX_DIM and 1 <= h <= MAX_DIM
                and 1 <= w <= MAX_DIM and 1 <= co <= MAX_DIM and 1 <= ho <= MAX_DIM and 1 <= wo <= MAX_DIM):
            return i
        if params and not _params_ok(v, params):
            return i
        k = op.get("kernel")
        if ktype == "mode":
            ktype = ("gemv", "conv")[v[18]]
        if ktype is None:
            if k is not None:
                return i
            kgeom = None
        else:
            kgeom = _kernel(k, ktype, arrays, precision)
            if kgeom is None:
                return i
        kind = _OPS[code]
        if code == 1:  # the conv, most ops of most plans: ops._geom_conv inline (its four calls cost a µs)
            gco, gci, kh, kw, sh, sw, ph, pw, dh, dw = kgeom
            if (gco != co or gci != c or (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1 != ho
                    or (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1 != wo):
                return i
        elif kind.geometry(v, kgeom):
            return i
        name = op.get("floats")
        floats = arrays.get(name) if type(name) is str else None
        if floats is None or floats.dtype.char != "f" or floats.size != 2 + kind.floats(v):
            return i
        lo, hi = floats.item(0), floats.item(1)
        plane, oplane = c * h * w, co * ho * wo
        if (not (math.isfinite(lo) and math.isfinite(hi)) or not written[in0] or plane > sizes[in0]
                or (in0 == 0 and plane != size_in) or oplane > sizes[out] or (out == 1 and oplane != sizes[1])
                or (out == in0 and not kind.in_place) or (out == in1 and code != 4)):
            return i
        if in1 >= 0:
            need = c if code == 12 else oplane
            if not written[in1] or need > sizes[in1] or (in1 == 0 and need != size_in):
                return i
        written[out] = 1
        if oplane > most[out]:
            most[out] = oplane
    return len(ops)
