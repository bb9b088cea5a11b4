"""The plan header's own fields (threads, batch size, precision, shapes, buffers, the ops list), checked before
any op is: what both verifiers start from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .common import (
    _WEIGHT_DTYPES,
    MAX_BATCH,
    MAX_BUFFERS,
    MAX_DIM,
    MAX_OPS,
    MAX_SAMPLE_FLOATS,
    MAX_THREADS,
    PRECISIONS,
    LeanError,
    _int,
    _prod,
    _show,
)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if type(value) is not list or not 1 <= len(value) <= 4:
        raise LeanError(f"{where} must be a list of 1 to 4 integers, got {_show(value)}")
    return tuple(_int(v, 1, MAX_DIM, where, f"[{j}]") for j, v in enumerate(value))


def check_header(header: Mapping[str, Any]) -> tuple[str, list[int], list[Any]]:
    """``(precision, sizes, ops)`` of a plan header whose own fields are in range: ``sizes`` the floats per
    sample of every buffer (0 the input's, 1 the output's); a one-line LeanError naming the field otherwise."""
    if not isinstance(header, Mapping):
        raise LeanError(f"the plan header must be a JSON object, got {type(header).__name__}")
    for key, hi in (("threads", MAX_THREADS), ("batch_size", MAX_BATCH)):
        if header.get(key) is not None:
            _int(header[key], 1, hi, "plan field ", repr(key))
    precision = header.get("precision", "fp32")
    if type(precision) is not str or precision not in _WEIGHT_DTYPES:
        raise LeanError(f"plan field 'precision' must be one of {', '.join(PRECISIONS)}, got {_show(precision)}")
    size_in = _prod(_shape(header.get("input_shape"), "plan field 'input_shape'"))
    size_out = _prod(_shape(header.get("output_shape"), "plan field 'output_shape'"))
    if max(size_in, size_out) > MAX_SAMPLE_FLOATS:
        raise LeanError(f"plan fields 'input_shape'/'output_shape' hold more than {MAX_SAMPLE_FLOATS} floats per sample")
    buffers, ops = header.get("buffers"), header.get("ops")
    if type(buffers) is not list or not 2 <= len(buffers) <= MAX_BUFFERS:
        raise LeanError(f"plan field 'buffers' must be a list of 2 to {MAX_BUFFERS} integers, got {_show(buffers)}")
    sizes = [size_in, size_out] + [_int(v, 0, MAX_SAMPLE_FLOATS, "plan field 'buffers'", f"[{b}]")
                                   for b, v in enumerate(buffers[2:], 2)]
    if type(ops) is not list or not 1 <= len(ops) <= MAX_OPS:
        raise LeanError(f"plan field 'ops' must be a list of 1 to {MAX_OPS} ops, got {_show(ops)}")
    return precision, sizes, ops
