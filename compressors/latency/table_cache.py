"""The latency tables' cache: the key a table is stored under (model, shapes, grid, machine) and reading it back.

A table is a JSON file ``latency-<key>.json`` under ``$UNIPRUNE_CACHE/latency`` (or
``~/.cache/uniprune/latency``); the key hashes everything that makes a timing invalid elsewhere, the machine
included (:func:`machine_key`). A damaged file reads as absent (it is measured again and overwritten).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError
from ..formats.fileio import read_json
from ..native import kernels
from .engines import engine_versions
from .model import LatencyModel

#: A cached table is trusted only while a quick timing of the nothing-compressed compiled model against the
#: fastest dense engine gives a ratio within this relative distance of the table's own; past it the machine,
#: its load or its engines have changed since the table was measured, and the table is measured again.
CACHE_CHECK_TOLERANCE = 0.15
#: seconds the quick check of a cached table times for
CACHE_CHECK_SECONDS = 1.0
#: A freshly measured table is kept only while its sum for the nothing-compressed model is within this relative
#: distance of that model timed whole beside the dense engines (the baseline rounds, right after the table's):
#: where the machine's speed changed between the two, the table's ratios are off by about as much. Measured on an
#: Intel Xeon with AMX, 2026-12-05: 23 tables (digits CNN, ResNet-20/56, ViT-B; batch 1 and 32) agreed within
#: 0.90 to 1.02. The demo's table measured under bursts of 0 to 3 busy processes (0.5 to 3 s, at random times)
#: gave 0.93 to 0.95 and a nothing-compressed ratio of 0.76 to 0.79, except once 0.78 with the ratio at 0.64.
#: One table measured while the machine was disturbed put the demo's least reachable ratio at 1.06 (usually 0.61
#: to 0.67), and the demo stopped.
TABLE_AGREEMENT_TOLERANCE = 0.15
#: measurements of a table at most, while its sum and the whole pass disagree
TABLE_ATTEMPTS = 3


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _vector_flags() -> list[str]:
    return sorted(f for f in kernels.cpu_flags() if f.startswith(("avx", "fma", "amx", "sve", "asimd"))) or [platform.machine()]


def machine_key() -> dict[str, Any]:
    """What makes timings from another machine or build invalid: CPU, its vector unit, core count, the kernel
    build (source and the ISA it was compiled for) and the dense engines' versions.

    The CPU's name is not enough: the same "AMD EPYC" has come with AVX2 only and with AVX-512.
    """
    return {"cpu": _cpu_model(), "cpu_flags": _vector_flags(), "cores": str(os.cpu_count()),
            "kernel_isa": kernels.isa(), "kernels": kernels.build_id(), "engines": engine_versions()}


def default_cache_dir() -> Path:
    """``$UNIPRUNE_CACHE/latency``, else ``~/.cache/uniprune/latency``."""
    root = os.environ.get("UNIPRUNE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "uniprune") / "latency"


def table_path(key_obj: Mapping[str, Any], cache_dir: str | os.PathLike | None) -> Path:
    """Where the table keyed by ``key_obj`` (any JSON-able mapping) lives under ``cache_dir`` (default
    :func:`default_cache_dir`)."""
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"latency-{key}.json"


def read_cached_table(path: Path) -> LatencyModel | None:
    """The table stored at ``path``; None when there is none or it cannot be read as one."""
    if not path.exists():
        return None
    try:
        return LatencyModel.from_dict(read_json(path, CheckpointError, "it is measured again"))
    except (ValueError, KeyError, TypeError, OverflowError, CheckpointError):
        return None  # a damaged cache file is measured again and overwritten
