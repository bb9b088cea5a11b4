"""Atomic file writes (temp file + rename) so an interrupted job never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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
    """``torch.save`` to ``path`` atomically; returns the path."""
    return _atomic_replace(Path(path), lambda fh: torch.save(obj, fh))
