"""Atomic file writes (temp file + rename) so an interrupted job never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import NonFiniteError, UnipruneError
from ..native.uniprune_lean import LeanError, loads_json


def parse_json(data: str | bytes, error: type[UnipruneError], where: str, fix: str) -> Any:
    """``data`` as strict JSON (:func:`~uniprune.compressors.native.uniprune_lean.loads_json`: no repeated key,
    no NaN, at most 64 levels of nesting, no integer of thousands of digits); ``error`` of one line naming
    ``where`` and ending with ``fix`` otherwise. Every JSON file uniprune reads goes through here."""
    try:
        return loads_json(data)
    except LeanError as exc:
        raise error(f"{where}: {exc}; {fix}") from None


def read_json(path: str | os.PathLike, error: type[UnipruneError], fix: str) -> Any:
    """The strict JSON in the file ``path`` (see :func:`parse_json`); ``error`` of one line when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); {fix}") from None
    return parse_json(data, error, repr(str(path)), fix)


def first_non_finite(obj: Any, where: str = "") -> str | None:
    """The key path of the first tensor in ``obj`` (nested dicts, lists, tuples) holding NaN or inf, else None."""
    if isinstance(obj, torch.Tensor):
        return where or "tensor" if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _atomic_replace(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the path."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return _atomic_replace(Path(path), lambda fh: fh.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    data = text.encode()
    return _atomic_replace(Path(path), lambda fh: fh.write(data))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write raw ``data`` to ``path`` atomically; returns the path."""
    return _atomic_replace(Path(path), lambda fh: fh.write(data))


def torch_save_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically; returns the path. Refuses (:class:`NonFiniteError`, nothing
    written) an ``obj`` holding a NaN or inf tensor: a diverged model must never replace a good one."""
    bad = first_non_finite(obj)
    if bad:
        raise NonFiniteError(f"{bad} holds NaN or inf, so {Path(path).name} was not written (the run diverged)")
    return _atomic_replace(Path(path), lambda fh: torch.save(obj, fh))
