"""The plan verifier: every number of a plan checked before any native call, with a one-line LeanError naming
the op and the field."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .common import (
    _C,
    _CO,
    _DTYPE_CHARS,
    _ENGINES,
    _GEOM_RANGES,
    _H,
    _HEADER_NAMES,
    _HO,
    _KERNEL_ROWS,
    _W,
    _WEIGHT_DTYPES,
    _WO,
    ACT_LAST,
    MAX_SAMPLE_FLOATS,
    LeanError,
    _int,
    _show,
)
from .fastcheck import ops_ok
from .header import check_header
from .ops import _OPS, _RANGES
from .ort_segment import is_segmented, verify_segments


def _array(arrays: Mapping[str, np.ndarray], name: Any, dtype: str, size: int | None, where: str, field: str) -> np.ndarray:
    a = arrays.get(name) if type(name) is str else None
    if a is None:
        raise LeanError(f"{where}{field} names array {_show(name)}, which the plan's arrays do not hold")
    if a.dtype.char != _DTYPE_CHARS[dtype]:
        raise LeanError(f"{where}{field}: array {name!r} is {a.dtype.name}, expected {dtype}")
    if size is not None and a.size != size:
        raise LeanError(f"{where}{field}: array {name!r} has {a.size} elements, expected {size}")
    return a


def _panels(k: Mapping[str, Any], arrays: Mapping[str, np.ndarray], panels: int, rows: int, taps: int, ci: int,
            co: int, precision: str, where: str) -> None:
    """The packed arrays of a kernel of ``panels`` panels of ``rows`` outputs: sizes against each other and
    the kernel's geometry (their contents, the panel pointers and channel indices, csrc/uniprune_kernels.c checks)."""
    ptr = _array(arrays, k.get("panel_ptr"), "int32", panels + 1, where, " kernel.panel_ptr").reshape(-1)  # any shape
    first, nnz = ptr[0].item(), ptr[-1].item()
    if first != 0 or not 0 <= nnz <= panels * ci:
        raise LeanError(f"{where} kernel.panel_ptr: runs from {first} to {nnz}, expected 0 to at most {panels * ci}")
    _array(arrays, k.get("ch"), "int32", nnz, where, " kernel.ch")
    own = k.get("precision", precision)
    if type(own) is not str or _WEIGHT_DTYPES.get(own) != _WEIGHT_DTYPES[precision]:
        raise LeanError(f"{where} kernel.precision: {_show(own)} in a {precision} plan")
    if k.get("engine", "auto") not in _ENGINES:
        raise LeanError(f"{where} kernel.engine must be one of {', '.join(_ENGINES)}, got {_show(k.get('engine'))}")
    _array(arrays, k.get("w"), _WEIGHT_DTYPES[precision], nnz * taps * rows, where, " kernel.w")
    if k.get("bias") is not None:
        _array(arrays, k["bias"], "float32", co, where, " kernel.bias")


def _kernel_conv(k: Mapping[str, Any], arrays: Mapping[str, np.ndarray], precision: str, where: str) -> tuple[int, ...]:
    geom = k.get("geom")
    if type(geom) is not list or len(geom) != 10:
        raise LeanError(f"{where} kernel.geom must be a list of 10 integers, got {_show(geom)}")
    for v, (name, lo, hi) in zip(geom, _GEOM_RANGES):
        if type(v) is not int or not lo <= v <= hi:
            _int(v, lo, hi, where, f" kernel.geom {name}")
    rows = k.get("rows")
    if type(rows) is not int or rows not in (1, 2, 4, 8):
        raise LeanError(f"{where} kernel.rows must be 1, 2, 4 or 8, got {_show(rows)}")
    _panels(k, arrays, -(-geom[0] // rows), rows, geom[2] * geom[3], geom[1], geom[0], precision, where)
    return tuple(geom)


def _kernel_gemv(k: Mapping[str, Any], arrays: Mapping[str, np.ndarray], precision: str, where: str) -> tuple[int, ...]:
    co = _int(k.get("out"), 1, MAX_SAMPLE_FLOATS, where, " kernel.out")
    ci = _int(k.get("in"), 1, MAX_SAMPLE_FLOATS, where, " kernel.in")
    _panels(k, arrays, -(-co // _KERNEL_ROWS), _KERNEL_ROWS, 1, ci, co, precision, where)
    return co, ci


_KERNELS: dict[str, Callable[..., tuple[int, ...]]] = {"conv": _kernel_conv, "gemv": _kernel_gemv}


def verify_plan(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, quick: bool = True) -> None:
    """Check a plan before anything native sees it; a LeanError of one line naming the op and the field
    otherwise. Checked: header integers in range; ``ops`` non-empty; each op's kind, integers and geometry
    (output extents from its window, channels against its kernel's); every buffer's size against what each
    op reads and writes there (buffer 0 holds exactly ``input_shape``, buffer 1 ``output_shape``) and its
    lifetime (no op reads a buffer before one writes it; the output is written); each array an op or kernel
    names against the op (dtype, element count). The arrays' offsets in weights.bin: :func:`unpack_arrays`.

    Each op goes through the quick path first (:func:`~.fastcheck.ops_ok`, plain comparisons that only say yes
    or no); an op it does not pass through the same checks step by step, which name what is wrong.
    ``quick=False``: step by step only (the reference the quick path is fuzzed against). A segmented plan
    (:mod:`.ort_segment`): each native segment's plan so, and each ONNX segment's bytes against its sha256."""
    if is_segmented(header):
        verify_segments(header, arrays, lambda plan, arr: verify_plan(plan, arr, quick=quick))
        return
    precision, sizes, ops = check_header(header)
    written = bytearray(len(sizes))
    written[0] = 1
    most = [0] * len(sizes)  # the most any op writes to each buffer, floats per sample
    i = 0
    while i < len(ops):
        if quick:
            i = ops_ok(ops, i, arrays, precision, sizes, written, most)
            if i == len(ops):
                break
        _check_op(i, ops[i], arrays, precision, sizes, written, most)
        i += 1
    if not written[1]:
        raise LeanError("plan field 'ops': no op writes the output (buffer 1)")
    for b in range(2, len(sizes)):  # a buffer larger than anything written to it would only waste memory
        if sizes[b] > most[b]:
            raise LeanError(f"plan field 'buffers'[{b}]: holds {sizes[b]} floats per sample, but no op writes more than "
                            f"{most[b]} there")


def _check_op(i: int, op: Any, arrays: Mapping[str, np.ndarray], precision: str, sizes: list[int],
              written: bytearray, most: list[int]) -> None:
    """Op ``i``: its fields, kernel, arrays and geometry, then its buffers (``written`` and ``most`` updated)."""
    last, size_in, size_out = len(sizes) - 1, sizes[0], sizes[1]
    if not isinstance(op, dict):
        raise LeanError(f"op {i} must be a JSON object, got {_show(op)}")
    code = op.get("kind")
    kind = _OPS.get(code) if type(code) is int else None
    if kind is None:
        raise LeanError(f"op {i} field 'kind' must be an op kind {min(_OPS)} to {max(_OPS)}, got {_show(code)}")
    where = f"op {i} ({kind.name})"
    v = op.get("ints")
    ranges, count = _RANGES[code]
    if type(v) is not list or len(v) != count:
        raise LeanError(f"{where} field 'ints' must be a list of {count} integers "
                        f"({' '.join(_HEADER_NAMES + kind.params)}), got {_show(v)}")
    in0, in1, out, act = v[0], v[1], v[2], v[3]
    _int(in0, 0, last, where, " ints in0")
    _int(in1, -1 if code not in (4, 12) else 0, last if kind.residual else -1, where, " ints in1")
    _int(out, 1, last, where, " ints out")
    _int(act, 0, ACT_LAST, where, " ints act")
    for x, (name, lo, hi) in zip(v[4:], ranges):
        if type(x) is not int or not lo <= x <= hi:
            _int(x, lo, hi, where, " ints " + name)
    k = op.get("kernel")
    ktype = kind.kernel if kind.kernel != "mode" else ("gemv", "conv")[v[18]]
    if ktype is None:
        if k is not None:
            raise LeanError(f"{where} field 'kernel' must be null for this kind, got {_show(k)}")
        kgeom = None
    else:
        if not isinstance(k, dict) or k.get("type") != ktype:
            raise LeanError(f"{where} field 'kernel' must be a {ktype} kernel, got "
                            f"{_show(k.get('type') if isinstance(k, dict) else k)}")
        kgeom = _KERNELS[ktype](k, arrays, precision, where)
    problem = kind.geometry(v, kgeom)
    if problem:
        raise LeanError(f"{where} {problem}")
    lo, hi = _array(arrays, op.get("floats"), "float32", 2 + kind.floats(v), where, " field 'floats'").ravel()[:2].tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise LeanError(f"{where} field 'floats': the clamp bounds must be finite, got {lo}, {hi}")
    # buffers: what the op reads must have been written and fit; what it writes must fit
    plane, oplane = v[_C] * v[_H] * v[_W], v[_CO] * v[_HO] * v[_WO]
    if not written[in0]:
        raise LeanError(f"{where} ints in0: reads buffer {in0} before any op writes it")
    if plane > sizes[in0] or (in0 == 0 and plane != size_in):
        raise LeanError(f"{where} ints in0: reads {plane} floats per sample from buffer {in0}"
                        f"{' (the input)' if in0 == 0 else ''}, which holds {sizes[in0]}")
    if in1 >= 0:
        if not written[in1]:
            raise LeanError(f"{where} ints in1: reads buffer {in1} before any op writes it")
        need = v[_C] if code == 12 else oplane  # channel_mul's gate: one float per channel
        if need > sizes[in1] or (in1 == 0 and need != size_in):
            raise LeanError(f"{where} ints in1: reads {need} floats per sample from buffer {in1}, which holds "
                            f"{sizes[in1]}")
    if oplane > sizes[out] or (out == 1 and oplane != size_out):
        raise LeanError(f"{where} ints out: writes {oplane} floats per sample to buffer {out}"
                        f"{' (the output)' if out == 1 else ''}, which holds {sizes[out]}")
    if (out == in0 and not kind.in_place) or (out == in1 and code != 4):
        raise LeanError(f"{where} ints out: buffer {out} is also an input, which this kind cannot run in place")
    written[out] = 1
    if oplane > most[out]:
        most[out] = oplane
