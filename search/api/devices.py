"""Devices and dataset notes, shared by every job of the API."""

from __future__ import annotations

import sys

import torch
from uniprune.compressors.core.errors import ConfigError, NotAvailableError
from uniprune.search.datasets import DataBundle


def resolve_device(spec: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (cuda when available) -> a device; CUDA without a GPU is a one-line error."""
    key = (spec or "cpu").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(key)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NotAvailableError(f"--device {spec} asked for CUDA, but no CUDA GPU is available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {spec!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def show_notes(bundle: DataBundle) -> None:
    """Print a dataset's remarks (e.g. test images doubling as training data) to stderr."""
    for note in bundle.notes:
        print(f"uniprune: note: {note}", file=sys.stderr)
