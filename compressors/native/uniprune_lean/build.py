"""Compiling the C sources into one library per ISA, cached; the CPU's flags and the precision it runs."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from .common import BF16_FLAGS, HEADERS, PRECISIONS, SOURCES, BuildError, IsaNameError, LeanError

ISAS = ("auto", "avx512", "avx2", "generic")
_COMMON_FLAGS = ["-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", "-ffp-contract=fast"]
# Per forced ISA: flag sets tried in order (a compiler that rejects the first gets the next), the CPU flags it
# needs, and what the build must report from up_isa().
_ISA_FLAGS = {
    "avx512": [["-O3", "-march=native", "-mtune=native"], ["-O3", "-march=x86-64-v4"]],
    "avx2": [["-O3", "-march=x86-64-v3", "-mtune=native"], ["-O3", "-mavx2", "-mfma"]],
    "generic": [["-O3"]],
    "native": [["-O3", "-march=native", "-mtune=native"], ["-O3"]],
}
_ISA_NEEDS = {"avx512": ("avx512f", "fma"), "avx2": ("avx2", "fma"), "generic": (), "native": ()}
_ISA_REPORTS = {"avx512": "avx512f", "avx2": "avx2", "generic": "generic"}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); empty when unreadable.
    (Also what :mod:`uniprune.compressors.native.kernels` reads: this file must stand alone in an artifact.)"""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(precision: str = "auto", flags: frozenset[str] | None = None) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` in ``auto``, ``fp32``, ``bf16``: auto is bf16 where the CPU
    (``flags``, default :func:`cpu_flags`) has avx512_bf16 or amx_bf16, else fp32. LeanError for another name."""
    if precision not in ("auto", *PRECISIONS):
        raise LeanError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else flags
    return "bf16" if any(f in flags for f in BF16_FLAGS) else "fp32"


def check_precision(precision: str, flags: frozenset[str] | None = None) -> None:
    """LeanError in one line when a plan of ``precision`` was made for CPU flags this CPU (``flags``, default
    :func:`cpu_flags`) lacks: a bf16 plan needs avx512_bf16 or amx_bf16."""
    flags = cpu_flags() if flags is None else flags
    if precision == "bf16" and not any(f in flags for f in BF16_FLAGS):
        raise LeanError("this plan is bf16 but this CPU has neither avx512_bf16 nor amx_bf16; export it again with "
                        "'uniprune export --precision fp32', or load it with allow_fp32_fallback=True (bf16 weights on "
                        "the float32 kernels, no faster than fp32)")


def resolve_isa(isa: str | None = None) -> str:
    """The build target for ``isa`` (default ``$UNIPRUNE_ISA``, else auto): avx512, avx2, generic or native.

    ``auto`` takes the widest the CPU has (avx512 when it has avx512f, avx2 with fma, else generic on x86;
    ``native``, i.e. the compiler's ``-march=native``, elsewhere). An unknown name raises :class:`IsaNameError`,
    a forced ISA the CPU lacks :class:`BuildError` (both one line)."""
    name = (isa if isa is not None else os.environ.get("UNIPRUNE_ISA", "") or "auto").strip().lower()
    if name not in ISAS:
        raise IsaNameError(f"{'isa' if isa is not None else 'UNIPRUNE_ISA'} must be one of {', '.join(ISAS)}; got {name!r}")
    flags = cpu_flags()
    if name == "auto":
        if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
            return "native"
        return next((t for t in ("avx512", "avx2") if all(f in flags for f in _ISA_NEEDS[t])), "generic")
    missing = [f for f in _ISA_NEEDS[name] if f not in flags]
    if missing:
        raise BuildError(f"UNIPRUNE_ISA/isa={name} needs CPU flags {', '.join(missing)}, which this CPU "
                         f"({'none readable' if not flags else platform.machine()}) lacks; use auto, or "
                         f"{'avx2 or ' if name == 'avx512' and 'avx2' in flags else ''}generic")
    return name


def cache_dir() -> Path:
    """The one cache of built libraries: ``$UNIPRUNE_LEAN_CACHE``, else ``$UNIPRUNE_CACHE/kernels``, else
    ``~/.cache/uniprune/kernels``. uniprune and an artifact's loader share it: the same sources, compiler and
    flags make the same file."""
    root = os.environ.get("UNIPRUNE_LEAN_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("UNIPRUNE_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "uniprune") / "kernels"


def sanitize_flags() -> list[str]:
    """``UNIPRUNE_SANITIZE=address``: an AddressSanitizer build (its own cache file; for the fuzzer, loaded with
    ``LD_PRELOAD`` of libasan, see benchmarks/fuzz_plan.py). Unset (the default): no flags."""
    mode = os.environ.get("UNIPRUNE_SANITIZE", "").strip().lower()
    if not mode:
        return []
    if mode != "address":
        raise BuildError(f"UNIPRUNE_SANITIZE must be 'address' or unset, got {mode!r}")
    return ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]


def compiler() -> str:
    """The C compiler: ``$CC``, else cc, gcc, clang (the first found); BuildError when there is none."""
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if cc is None:
        raise BuildError("no C compiler found (tried $CC, cc, gcc, clang); install one (e.g. 'apt-get install gcc') "
                         "and run 'python -m uniprune.compressors.native.kernels --build'")
    return cc


def source_files(source_dir: str | os.PathLike) -> list[Path]:
    """:data:`SOURCES` and :data:`HEADERS` in ``source_dir`` (what a build compiles and hashes); BuildError for
    any missing."""
    files = [Path(source_dir) / s for s in (*SOURCES, *HEADERS)]
    missing = [str(s) for s in files if not s.is_file()]
    if missing:
        raise BuildError(f"C source(s) {', '.join(missing)} missing; the artifact or install is incomplete")
    return files


def source_hash(source_dir: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of the C sources and headers in ``source_dir``: part of every build's cache key."""
    return hashlib.sha256(b"".join(s.read_bytes() for s in source_files(source_dir))).hexdigest()[:16]


class Built(NamedTuple):
    """One build: the library's path, the ISA target and the compiler flags it was built with."""
    path: Path
    target: str
    flags: list[str]


def build(source_dir: str | os.PathLike, *, isa: str | None = None, cache: str | os.PathLike | None = None,
          force: bool = False, verbose: bool = False) -> Built:
    """Compile the C sources in ``source_dir`` into one shared library for ``isa`` (see :func:`resolve_isa`),
    unless ``cache`` (default :func:`cache_dir`) holds one for the same sources, compiler and flags (and not
    ``force``). The file name carries the ISA (and ``-asan`` for :func:`sanitize_flags`); it is written to a
    temporary name and renamed, so a concurrent build never loads a half-written file."""
    target = resolve_isa(isa)
    files, cc = source_files(source_dir), compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    folder = Path(cache) if cache is not None else cache_dir()
    code, errors = source_hash(source_dir), []
    for flags in _ISA_FLAGS[target]:
        flags = flags + _COMMON_FLAGS + sanitize_flags()
        key = hashlib.sha256("\n".join([code, cc, *version, *flags]).encode()).hexdigest()[:16]
        path = folder / f"uniprune_kernels-{target}{'-asan' if '-fsanitize=address' in flags else ''}-{key}.so"
        if path.exists() and not force:
            return Built(path, target, flags)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
        os.close(fd)
        cmd = [cc, *flags, f"-I{Path(source_dir)}", "-o", tmp, *(str(f) for f in files if f.suffix == ".c")]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            Path(tmp).unlink(missing_ok=True)
            errors.append(str(exc))
            continue
        if proc.returncode == 0:
            os.replace(tmp, path)
            return Built(path, target, flags)
        Path(tmp).unlink(missing_ok=True)
        errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    raise BuildError(f"compiling the native library for {target} with {cc} failed ({'; '.join(errors)}); "
                     "check the compiler install or set UNIPRUNE_ISA=generic")


def build_library(source_dir: str | os.PathLike, *, isa: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """:func:`build`'s library path (``cache_dir``: its ``cache``)."""
    return build(source_dir, isa=isa, cache=cache_dir).path


def open_library(built: Built) -> ctypes.CDLL:
    """The library of ``built``, loaded; checks that a forced ISA is what the build reports (``up_isa``), so a
    flag set that silently compiled for another target is caught."""
    try:
        lib = ctypes.CDLL(str(built.path))
    except OSError as exc:
        raise BuildError(f"cannot load {built.path} ({exc}); delete it to rebuild") from None
    isa_fn = lib["up_isa"]  # a fresh function object: the argument types others declare stay theirs
    isa_fn.restype, isa_fn.argtypes = ctypes.c_char_p, []
    got, want = isa_fn().decode(), _ISA_REPORTS.get(built.target)
    if want is not None and got != want:
        raise BuildError(f"the {built.target} build compiled for {got}: the compiler ignored {' '.join(built.flags[:3])}; "
                         "set UNIPRUNE_ISA to another ISA")
    return lib


def load_library(source_dir: str | os.PathLike, *, isa: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> ctypes.CDLL:
    """:func:`build`, loaded (:func:`open_library`)."""
    target = resolve_isa(isa)
    return open_library(build(source_dir, isa=target if target != "native" else "auto", cache=cache_dir))
