"""The plan on disk: ``plan.json`` (strict JSON) and ``weights.bin`` (raw little-endian arrays, 64-byte aligned,
its sha256 in ``plan.json``); never a pickle."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    _ALIGN,
    _DTYPES,
    FORMAT,
    MAX_ELEMENTS,
    PLAN_FILE,
    WEIGHTS_FILE,
    LeanError,
    _int,
    _prod,
    _show,
)


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, dict[str, Any]]]:
    """Concatenate ``arrays`` (float32, int32 or uint8, any shape) into one little-endian blob, each starting
    on a 64-byte boundary; returns ``(blob, index)`` with ``index[name] = {"dtype", "shape", "offset"}``."""
    parts: list[bytes] = []
    index: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, a in arrays.items():
        a = np.asarray(a)
        dtype = next((k for k, v in _DTYPES.items() if a.dtype == v), None)
        if dtype is None:
            raise LeanError(f"array {name!r} is {a.dtype}; plans hold float32, int32, uint8 or bfloat16 (uint16) only")
        pad = -offset % _ALIGN
        parts.append(b"\0" * pad)
        offset += pad
        data = np.ascontiguousarray(a, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")).tobytes()
        index[name] = {"dtype": dtype, "shape": [int(s) for s in a.shape], "offset": offset}
        parts.append(data)
        offset += len(data)
    return b"".join(parts), index


def unpack_arrays(blob: bytes | memoryview | np.ndarray, index: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The arrays :func:`pack_arrays` packed, as read-only views of ``blob``; LeanError for an index entry
    that is malformed (dtype, shape, offset) or does not fit inside ``blob``."""
    buf = memoryview(blob).cast("B") if not isinstance(blob, np.ndarray) else blob.reshape(-1).view(np.uint8)
    if not isinstance(index, Mapping):
        raise LeanError(f"plan field 'arrays' must be a JSON object, got {type(index).__name__}")
    out = {}
    for name, rec in index.items():
        where = f"plan field 'arrays'[{_show(name)}]"
        if not isinstance(rec, Mapping) or type(rec.get("dtype")) is not str or rec["dtype"] not in _DTYPES:
            raise LeanError(f"{where} must be an object with a dtype of {', '.join(_DTYPES)}, got {_show(rec)}")
        dtype = np.dtype(_DTYPES[rec["dtype"]]).newbyteorder("<")
        shape = rec.get("shape")
        if type(shape) is not list or len(shape) > 8:
            raise LeanError(f"{where} field 'shape' must be a list of at most 8 integers, got {_show(shape)}")
        shape = tuple(_int(s, 0, MAX_ELEMENTS, where, " field 'shape'") for s in shape)
        count = _prod(shape)
        offset = _int(rec.get("offset"), 0, 1 << 62, where, " field 'offset'")
        if offset % _ALIGN or count > MAX_ELEMENTS or offset + count * dtype.itemsize > len(buf):
            raise LeanError(f"array {name!r} ({count} x {dtype.name} at byte {offset}) lies outside the "
                            f"{len(buf)}-byte weights or off a {_ALIGN}-byte boundary; the plan and weights files do not "
                            "belong together")
        out[name] = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
    return out


def write_plan(directory: str | os.PathLike, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[Path]:
    """Write ``plan.json`` and ``weights.bin`` into ``directory`` (made if missing); returns both paths.

    Each file is written to a temporary name and renamed, the weights first; a reader that meets the new
    weights with the old plan is told so by the sha256. ``uniprune export`` writes a whole artifact into a
    fresh directory and renames that into place, so the files appear together.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob, index = pack_arrays(arrays)
    head = dict(header)
    head["format"] = FORMAT
    head["arrays"] = index
    head["weights"] = {"file": WEIGHTS_FILE, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    _write_atomic(directory / WEIGHTS_FILE, blob)
    _write_atomic(directory / PLAN_FILE, (json.dumps(head, indent=1, allow_nan=False) + "\n").encode())
    return [directory / PLAN_FILE, directory / WEIGHTS_FILE]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LeanError(f"cannot read {path} ({exc.strerror or exc}); {what}") from None


def read_header(directory: str | os.PathLike, *, fields: bool = True) -> dict[str, Any]:
    """The header in ``directory``'s ``plan.json`` (:func:`parse_header`; ``fields=False``: its format only);
    LeanError naming the file for one missing, foreign or damaged."""
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        raise LeanError(f"{path} does not exist; pass the directory 'uniprune export --out' wrote")
    return parse_header(_read(path, "the artifact is not readable"), str(path), fields=fields)


def read_plan(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of the plan in ``directory``; LeanError naming the file for anything missing,
    foreign or damaged (see :func:`parse_plan`)."""
    directory = Path(directory)
    path = directory / PLAN_FILE
    if not path.is_file():
        raise LeanError(f"{path} does not exist; pass the directory 'uniprune export --out' wrote")
    text = _read(path, "the artifact is not readable")
    return parse_plan(text, _read(directory / WEIGHTS_FILE, "the artifact is incomplete"), str(path))


def parse_header(text: bytes | str, where: str = PLAN_FILE, *, fields: bool = True) -> dict[str, Any]:
    """The header in the bytes of a ``plan.json`` (strict JSON: :func:`loads_json`), of this format, its fields
    of the right kinds (unless not ``fields``); LeanError starting with ``where`` otherwise. The one parser of
    ``plan.json``: :func:`parse_plan`, :func:`read_header` and uniprune's artifact reader all call it."""
    try:
        header = loads_json(text)
    except LeanError as exc:
        raise LeanError(f"{where}: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise LeanError(f"{where} has format {_show(got)}, expected {FORMAT!r}; export the model again with this version")
    if not fields:
        return header
    body = (("segments", list),) if "segments" in header else (("ops", list), ("buffers", list))  # see ort_segment
    for key, kind in (*body, ("input_shape", list), ("output_shape", list), ("arrays", dict), ("weights", dict)):
        if not isinstance(header.get(key), kind):
            raise LeanError(f"{where}: field {key!r} is missing or not a {kind.__name__}; the file is damaged")
    if header["weights"].get("file", WEIGHTS_FILE) != WEIGHTS_FILE:  # never a path to elsewhere
        raise LeanError(f"{where}: field 'weights' names file {_show(header['weights'].get('file'))}, expected {WEIGHTS_FILE!r}")
    return header


def parse_plan(text: bytes | str, blob: bytes, where: str = PLAN_FILE) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a plan from the bytes of its ``plan.json`` (``text``: :func:`parse_header`) and
    ``weights.bin`` (``blob``): the weights' sha256 and every array's index entry checked
    (:func:`unpack_arrays`); LeanError starting with ``where`` otherwise. The ops are checked by
    :func:`verify_plan`, which every loader runs once before any native call."""
    header = parse_header(text, where)
    if hashlib.sha256(blob).hexdigest() != header["weights"].get("sha256"):
        raise LeanError(f"{WEIGHTS_FILE} does not match the sha256 in {where}; the weights are damaged or from another export")
    return header, unpack_arrays(blob, header["arrays"])


MAX_JSON_DEPTH = 64  # nesting of objects and lists a plan (or a policy) may have: far past any real one


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise LeanError(f"key {_show(dup)} appears twice in one object; a JSON file we read must not repeat keys")
    return obj


def _refuse_constant(name: str) -> Any:
    raise LeanError(f"{name} is not a JSON number; write finite numbers only")


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            break
        level = [v for x in level if isinstance(x, (dict, list)) for v in (x.values() if isinstance(x, dict) else x)]
    return depth - 1 if not level else depth


def loads_json(data: str | bytes) -> Any:
    """``data`` parsed as strict JSON: no repeated key in an object, no NaN or Infinity, at most
    :data:`MAX_JSON_DEPTH` levels of nesting, integers of at most 4300 digits; a one-line LeanError otherwise
    (never a RecursionError or an OverflowError)."""
    try:
        value = json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except RecursionError:
        raise LeanError(f"nested deeper than Python can parse; at most {MAX_JSON_DEPTH} levels are allowed") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an integer of too many digits
        if isinstance(exc, LeanError):
            raise
        raise LeanError(f"not valid JSON ({str(exc).splitlines()[0][:160]})") from None
    if isinstance(value, (dict, list)) and _depth(value) > MAX_JSON_DEPTH:
        raise LeanError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value

