"""Build, load and call uniprune's native library (``csrc/``): the one build of the one library, per ISA.

The C sources (the float32 kernels, the plan executor, the bf16 kernels, and the header they share) are
compiled by :mod:`uniprune.compressors.native.uniprune_lean.build`, the routine an exported artifact's loader
runs too, into the one cache both share (``$UNIPRUNE_LEAN_CACHE``, else ``$UNIPRUNE_CACHE/kernels``, else
``~/.cache/uniprune/kernels``), in a file named by the ISA and a hash of the sources, the compiler and its
flags, so an edited source or another machine's flags never load a stale build. It is loaded with
:mod:`ctypes` (about a microsecond per call). The vector ISA is selectable: ``UNIPRUNE_ISA`` (or ``isa=``)
in ``auto`` (default: the widest the CPU has), ``avx512`` (``-march=native`` on a CPU with avx512f),
``avx2`` (``-march=x86-64-v3``), ``generic`` (``-O3``, no ``-march``: SSE2 on x86), so an AVX-512 machine can
run and time its AVX2 build; an ISA the CPU lacks is refused. The build runs at install time
(``python -m uniprune.compressors.native.kernels --build [--isa ...]``) and otherwise lazily on first use.
:func:`build_id` names the build for cache keys of measured timings. No compiler -> :class:`KernelBuildError`
with the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import ConfigError, KernelBuildError
from .uniprune_lean import build as _build
from .uniprune_lean.common import BuildError, IsaNameError

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCE = CSRC / "uniprune_kernels.c"
#: Every file of the one library, in the order it is compiled (then the shared header): what the build hashes
#: and what an artifact ships.
SOURCES = tuple(CSRC / name for name in (*_build.SOURCES, *_build.HEADERS))
ISAS = _build.ISAS

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}
_built: dict[str, _build.Built] = {}
_peaks: dict[tuple[str, int], float] = {}


def cache_dir() -> Path:
    """Where built libraries live (:func:`~uniprune.compressors.native.uniprune_lean.build.cache_dir`)."""
    return _build.cache_dir()


def resolve_isa(isa: str | None = None) -> str:
    """The build target for ``isa`` (default ``$UNIPRUNE_ISA``, else ``"auto"``): avx512, avx2, generic or native.

    ``auto`` takes the widest the CPU has (avx512 when it has avx512f, avx2 with fma, else generic on x86;
    ``native``, i.e. the compiler's ``-march=native``, elsewhere). A forced ISA the CPU lacks raises
    :class:`KernelBuildError`; an unknown name :class:`ConfigError`.
    """
    try:
        return _build.resolve_isa(isa)
    except IsaNameError as exc:
        raise ConfigError(str(exc)) from None
    except BuildError as exc:
        raise KernelBuildError(str(exc)) from None


def source_hash() -> str:
    """sha256 (16 hex digits) of the C sources and header; part of the library's cache key and the latency cache's."""
    return _build.source_hash(CSRC)


def build(force: bool = False, verbose: bool = False, isa: str | None = None) -> Path:
    """Compile the library for ``isa`` (see :func:`resolve_isa`) unless a cached build fits these sources,
    compiler, ISA and flags (``UNIPRUNE_SANITIZE=address``: the AddressSanitizer build); returns its path.
    The file name carries the ISA."""
    target = resolve_isa(isa)
    try:
        built = _build.build(CSRC, isa=target, force=force, verbose=verbose)
    except BuildError as exc:
        raise KernelBuildError(str(exc)) from None
    _built[target] = built
    return built.path


def _declare(lib: ctypes.CDLL) -> None:
    p, i32p, f32p, c_int = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
    lib.up_conv_create.restype = p
    lib.up_conv_create.argtypes = [i32p, c_int, c_int, i32p, i32p, f32p, f32p]
    lib.up_conv_create_bf16.restype = p
    lib.up_conv_create_bf16.argtypes = [i32p, c_int, c_int, i32p, i32p, p, f32p, c_int]
    lib.up_conv_engine.restype = c_int
    lib.up_conv_engine.argtypes = [p]
    lib.up_bf16_mask_caps.restype = None
    lib.up_bf16_mask_caps.argtypes = [c_int]
    lib.up_conv_run.restype = c_int
    lib.up_conv_run.argtypes = [p, p, p, c_int, c_int, c_int, c_int]
    lib.up_conv_destroy.argtypes = [p]
    lib.up_conv_destroy.restype = None
    lib.up_gemv_create.restype = p
    lib.up_gemv_create.argtypes = [c_int, c_int, c_int, i32p, i32p, f32p, i32p, i32p, i32p, i32p, f32p, p,
                                   ctypes.c_int64, f32p]
    lib.up_gemv_run.restype = c_int
    lib.up_gemv_run.argtypes = [p, p, p, c_int, c_int]
    lib.up_gemv_destroy.argtypes = [p]
    lib.up_gemv_destroy.restype = None
    lib.up_isa.restype = ctypes.c_char_p
    lib.up_set_spin_us.argtypes = [ctypes.c_long]
    lib.up_set_spin_us.restype = None
    lib.up_fma_peak.argtypes = [ctypes.c_double, c_int]
    lib.up_fma_peak.restype = ctypes.c_double
    lib.up_bf16_peak.argtypes = [c_int, ctypes.c_double, c_int]
    lib.up_bf16_peak.restype = ctypes.c_double
    lib.up_bf16_caps.argtypes = []
    lib.up_bf16_caps.restype = c_int
    lib.up_conv_force_layout.argtypes = [c_int]
    lib.up_conv_force_layout.restype = None
    lib.up_amx_force_split.argtypes = [c_int]
    lib.up_amx_tile_ns.argtypes = [c_int, c_int, ctypes.c_double]
    lib.up_amx_tile_ns.restype = ctypes.c_double
    lib.up_amx_force_split.restype = None
    lib.up_dwconv_run.argtypes = [p, p, f32p, f32p, i32p, c_int, c_int, ctypes.c_float, ctypes.c_float, c_int]
    lib.up_dwconv_run.restype = c_int


def load(isa: str | None = None) -> ctypes.CDLL:
    """The loaded kernel library for ``isa`` (default ``$UNIPRUNE_ISA`` or auto), building it first if needed.

    Thread-safe; one library per ISA per process (each has its own thread pool and scratch), so an
    AVX-512 machine can run its AVX2 and generic builds side by side.
    """
    target = resolve_isa(isa)
    lib = _libs.get(target)
    if lib is not None:
        return lib
    with _lock:
        if target not in _libs:
            build(isa=target if target != "native" else "auto")
            try:
                lib = _build.open_library(_built[target])
            except BuildError as exc:
                raise KernelBuildError(f"{exc} (or run 'python -m uniprune.compressors.native.kernels --build --force')") from None
            _declare(lib)
            _libs[target] = lib
    return _libs[target]


def isa(isa: str | None = None) -> str:
    """The vector instruction set the build for ``isa`` (default: the process's) runs: avx512f, avx2, neon
    or generic (16-byte or scalar vectors)."""
    return load(isa).up_isa().decode()


def build_id(isa: str | None = None) -> str:
    """A short id of the build for ``isa`` (default: the process's): source hash, the ISA actually compiled
    and a hash of compiler and flags, e.g. ``"3f9a1c2d0b7e-avx2-5c1e9a0f"``. Changes whenever timings may."""
    target = resolve_isa(isa)
    load(target)
    return f"{source_hash()[:12]}-{_libs[target].up_isa().decode()}-{_built[target].path.stem.rsplit('-', 1)[-1][:8]}"


def fma_peak_gflops(threads: int = 1, isa: str | None = None) -> float:
    """The measured peak of the build's vector FMA on ``threads`` (>= 1) cores, in GFLOP/s (2 flops per lane).

    Many independent FMA chains on the build's native vector type for about 0.2 s, the best of 8 windows (a
    neighbour's burst on a shared machine lowers one window, not the peak); measured once per process, ISA
    and thread count. What a kernel's "share of the FMA peak" divides by. On Zen 4 it reads 32 flops a cycle
    for the avx512 and the avx2 build alike (see docs/KERNELS.md).
    """
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    key = (resolve_isa(isa), threads)
    if key not in _peaks:
        _peaks[key] = float(load(key[0]).up_fma_peak(0.2, threads))
    return _peaks[key]


#: The compute units :func:`peak_gflops` probes: the build's float32 vector FMA, the bf16 dot product
#: (VDPBF16PS, avx512_bf16) and AMX bf16 tiles (TDPBF16PS).
PEAK_UNITS = ("fma", "bf16_dot", "amx_bf16")
_UNIT_CODES = {"bf16_dot": 1, "amx_bf16": 2}


def peak_gflops(unit: str = "fma", threads: int = 1, isa: str | None = None) -> float | None:
    """The measured peak of ``unit`` (one of :data:`PEAK_UNITS`) on ``threads`` (>= 1) cores, in GFLOP/s (a
    multiply and an add count 2), or None where this build or CPU lacks the unit (no avx512_bf16, no AMX,
    or Linux refused the AMX tile permission). Probed like :func:`fma_peak_gflops` (independent chains or
    tiles, the best of 8 windows over 0.2 s), once per process, ISA, unit and thread count: what a kernel's
    "share of peak" divides by in its precision."""
    if unit not in PEAK_UNITS:
        raise ConfigError(f"unit must be one of {PEAK_UNITS}, got {unit!r}")
    if unit == "fma":
        return fma_peak_gflops(threads, isa)
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    key = (f"{resolve_isa(isa)}:{unit}", threads)
    if key not in _peaks:
        _peaks[key] = float(load(isa).up_bf16_peak(_UNIT_CODES[unit], 0.2, threads))
    return _peaks[key] or None


def bf16_units(isa: str | None = None) -> tuple[str, ...]:
    """The bf16 units the build for ``isa`` can run on this CPU: a subset of ``("bf16_dot", "amx_bf16")``."""
    caps = int(load(isa).up_bf16_caps())
    return tuple(u for u, bit in _UNIT_CODES.items() if caps & bit)


@contextlib.contextmanager
def only_bf16_units(units: tuple[str, ...], isa: str | None = None) -> Iterator[None]:
    """Within the block, the ``isa`` build (default: the process's) sees only ``units`` (a subset of
    :data:`PEAK_UNITS`' bf16 units, ``"bf16_dot"`` and ``"amx_bf16"``) of what the CPU has: plans created meanwhile
    run as on a CPU without the others (``("bf16_dot",)`` on an AMX machine: as on AMD Zen 4/5). The environment
    variable ``UNIPRUNE_AMX=0`` hides AMX for a whole process (an artifact's loader included). Process-wide for
    that build: for tests and benchmarks, not for production code."""
    bad = [u for u in units if u not in _UNIT_CODES]
    if bad:
        raise ConfigError(f"bf16 units must be among {list(_UNIT_CODES)}, got {bad}")
    lib = load(isa)
    lib.up_bf16_mask_caps(sum(_UNIT_CODES[u] for u in set(units)))
    try:
        yield
    finally:
        lib.up_bf16_mask_caps(-1)


#: Input layouts of the direct conv (``up_conv_run``): which one a call uses is the kernel's choice; forcing one
#: (:func:`force_conv_layout`) is for tests and benchmarks. See docs/KERNELS.md.
CONV_LAYOUTS = {"auto": -1, "direct": 0, "flat": 1, "shifted": 2, "masked": 3}


def force_conv_layout(layout: str = "auto", isa: str | None = None) -> None:
    """Make every later conv call of the ``isa`` build (default: the process's) use ``layout``, one of
    :data:`CONV_LAYOUTS`; ``"auto"`` restores the kernel's own choice. A layout that cannot run a call
    (``direct`` with output rows shorter than a vector; ``masked`` off stride 1, on builds without masked
    loads, or where neither Wo == W nor Wo >= the vector width) falls back to the automatic choice for it.
    Process-wide for that build: for tests and benchmarks, not for production code."""
    if layout not in CONV_LAYOUTS:
        raise ConfigError(f"conv layout must be one of {list(CONV_LAYOUTS)}, got {layout!r}")
    load(isa).up_conv_force_layout(CONV_LAYOUTS[layout])


AMX_SPLITS = {"auto": -1, "panels": 0, "pixels": 1}


def force_amx_split(how: str = "auto") -> None:
    """Make every later AMX conv call on fewer images than threads split its work ``how``, one of
    :data:`AMX_SPLITS`: by panels of output channels, or by ranges of output pixels (each thread every panel);
    ``"auto"`` restores the kernel's rule (pixels where each thread gets at least 4 blocks of 16). Process-wide:
    for tests and benchmarks."""
    if how not in AMX_SPLITS:
        raise ConfigError(f"AMX split must be one of {list(AMX_SPLITS)}, got {how!r}")
    load().up_amx_force_split(AMX_SPLITS[how])


def main(argv: list[str] | None = None) -> int:
    """``python -m uniprune.compressors.native.kernels --build [--force]``: compile the kernels now."""
    parser = argparse.ArgumentParser(prog="python -m uniprune.compressors.native.kernels", description=main.__doc__)
    parser.add_argument("--build", action="store_true", help="compile (or find in the cache) the native kernels")
    parser.add_argument("--force", action="store_true", help="recompile even if a cached build exists")
    parser.add_argument("--isa", choices=ISAS, default=None,
                        help="vector ISA to build for (default $UNIPRUNE_ISA, else auto: the widest the CPU has)")
    args = parser.parse_args(argv)
    if not args.build:
        parser.error("nothing to do; pass --build")
    try:
        path = build(force=args.force, verbose=True, isa=args.isa)
        _libs.clear()
        print(f"uniprune kernels: {path} ({isa(args.isa)}, build {build_id(args.isa)})", file=sys.stderr)
    except (KernelBuildError, ConfigError) as exc:
        print(f"uniprune kernels: error: {exc}", file=sys.stderr)
        return 2
    return 0


