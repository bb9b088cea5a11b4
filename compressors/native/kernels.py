"""Build, load and call uniprune's native block-sparse CPU kernels (``csrc/uniprune_kernels.c``).

The C source is compiled with the machine's own C compiler into a shared library that is loaded with
:mod:`ctypes` (about a microsecond per call). The vector ISA is selectable: ``UNIPRUNE_ISA`` (or the
``isa=`` argument) in ``auto`` (default: the widest the CPU has), ``avx512`` (``-march=native`` on a CPU
with avx512f), ``avx2`` (``-march=x86-64-v3``), ``generic`` (``-O3``, no ``-march``: SSE2 on x86), so an
AVX-512 machine can run and time its AVX2 build; an ISA the CPU lacks is refused. The build runs at
install time (``python -m uniprune.compressors.native.kernels --build [--isa ...]``) and otherwise lazily on
first use; the library is cached under ``$UNIPRUNE_CACHE/kernels`` (default ``~/.cache/uniprune/kernels``)
in a file named by the ISA and a hash of the source, the compiler and its flags, so an edited source or
another machine's flags never load a stale build. :func:`build_id` names the build for cache keys of
measured timings. No compiler -> :class:`KernelBuildError` with the fix.

Conv weights are packed per panel of 1, 2, 4 or 8 output channels (the layer's block height, see
:func:`panel_height`): each panel lists the input channels that hold any non-pruned weight in its rows.
The GEMV's panels are always 8 rows. See docs/KERNELS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import ConfigError, KernelBuildError
from .uniprune_lean import cpu_flags

ROWS = 8  # the largest panel height; also the compact unified GEMV block height
PANEL_HEIGHTS = (1, 2, 4, 8)
SOURCE = Path(__file__).resolve().parent / "csrc" / "uniprune_kernels.c"
# compiled into the same library: the lean path's whole-model executor calls the kernels' plans directly
SOURCES = (SOURCE, SOURCE.parent / "uniprune_plan.c", SOURCE.parent / "uniprune_bf16.c")
ISAS = ("auto", "avx512", "avx2", "generic")
_COMMON_FLAGS = ["-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", "-ffp-contract=fast"]
# Per forced ISA: flag sets tried in order (a compiler that rejects the first gets the next), the CPU flags
# it needs, and what the build must report from up_isa() (so a flag set that silently compiled for another
# target is caught, not measured under the wrong name).
_ISA_FLAGS: dict[str, list[list[str]]] = {
    "avx512": [["-O3", "-march=native", "-mtune=native"], ["-O3", "-march=x86-64-v4"]],
    "avx2": [["-O3", "-march=x86-64-v3", "-mtune=native"], ["-O3", "-mavx2", "-mfma"]],
    "generic": [["-O3"]],
    "native": [["-O3", "-march=native", "-mtune=native"], ["-O3"]],  # auto on a CPU that is not x86
}
_ISA_NEEDS = {"avx512": ("avx512f", "fma"), "avx2": ("avx2", "fma"), "generic": (), "native": ()}
_ISA_REPORTS = {"avx512": "avx512f", "avx2": "avx2", "generic": "generic"}

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}
_built: dict[str, tuple[Path, list[str]]] = {}
_peaks: dict[tuple[str, int], float] = {}


def cache_dir() -> Path:
    """Where built libraries live: ``$UNIPRUNE_CACHE/kernels`` or ``~/.cache/uniprune/kernels``."""
    root = os.environ.get("UNIPRUNE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "uniprune") / "kernels"


def resolve_isa(isa: str | None = None) -> str:
    """The build target for ``isa`` (default ``$UNIPRUNE_ISA``, else ``"auto"``): avx512, avx2, generic or native.

    ``auto`` takes the widest the CPU has (avx512 when it has avx512f, avx2 with fma, else generic on x86;
    ``native``, i.e. the compiler's ``-march=native``, elsewhere). A forced ISA the CPU lacks raises
    :class:`KernelBuildError`; an unknown name :class:`ConfigError`.
    """
    name = (isa if isa is not None else os.environ.get("UNIPRUNE_ISA", "") or "auto").strip().lower()
    if name not in ISAS:
        src = "isa" if isa is not None else "UNIPRUNE_ISA"
        raise ConfigError(f"{src} must be one of {', '.join(ISAS)}; got {name!r}")
    flags = cpu_flags()
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    if name == "auto":
        if not x86:
            return "native"
        return next((t for t in ("avx512", "avx2") if all(f in flags for f in _ISA_NEEDS[t])), "generic")
    missing = [f for f in _ISA_NEEDS[name] if f not in flags]
    if missing:
        raise KernelBuildError(f"UNIPRUNE_ISA/isa={name} needs CPU flags {', '.join(missing)}, which this CPU "
                               f"({'none readable' if not flags else platform.machine()}) lacks; use auto, or "
                               f"{'avx2 or ' if name == 'avx512' and 'avx2' in flags else ''}generic")
    return name


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise KernelBuildError(
        "no C compiler found (tried $CC, cc, gcc, clang); install one (e.g. 'apt-get install gcc') "
        "and run 'python -m uniprune.compressors.native.kernels --build'"
    )


def source_hash() -> str:
    """sha256 (16 hex digits) of the kernel source; part of the library's cache key and the latency cache's."""
    return hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES)).hexdigest()[:16]


def _flags_key(cc: str, flags: list[str]) -> str:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    return hashlib.sha256("\n".join([source_hash(), cc, *version, *flags]).encode()).hexdigest()[:16]


def _library_path(cc: str, target: str, flags: list[str]) -> Path:
    tag = "-asan" if "-fsanitize=address" in flags else ""
    return cache_dir() / f"uniprune_kernels-{target}{tag}-{_flags_key(cc, flags)}.so"


def _sanitize_flags() -> list[str]:
    """``UNIPRUNE_SANITIZE=address``: an AddressSanitizer build (its own cache file; for the fuzzer, loaded
    with ``LD_PRELOAD`` of libasan, see benchmarks/fuzz_plan.py). Unset (the default), no flags: a normal
    build and its cache key are as they always were."""
    mode = os.environ.get("UNIPRUNE_SANITIZE", "").strip().lower()
    if not mode:
        return []
    if mode != "address":
        raise KernelBuildError(f"UNIPRUNE_SANITIZE must be 'address' or unset, got {mode!r}")
    return ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]


def build(force: bool = False, verbose: bool = False, isa: str | None = None) -> Path:
    """Compile the kernels for ``isa`` (see :func:`resolve_isa`) unless a cached build fits this source,
    compiler, ISA and flags; returns the library path. The file name carries the ISA."""
    target = resolve_isa(isa)
    cc = _compiler()
    errors = []
    for flags in _ISA_FLAGS[target]:
        flags = flags + _COMMON_FLAGS + _sanitize_flags()
        path = _library_path(cc, target, flags)
        if path.exists() and not force:
            _built[target] = (path, flags)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
        os.close(fd)
        cmd = [cc, *flags, "-o", tmp, *map(str, SOURCES)]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            Path(tmp).unlink(missing_ok=True)
            continue
        if proc.returncode == 0:
            os.replace(tmp, path)  # atomic: a concurrent build never loads a half-written file
            _built[target] = (path, flags)
            return path
        Path(tmp).unlink(missing_ok=True)
        errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    raise KernelBuildError(f"compiling {SOURCE.name} for {target} with {cc} failed ({'; '.join(errors)}); "
                           "check the compiler install or set UNIPRUNE_ISA=generic")


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
            path = build(isa=target if target != "native" else "auto")
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise KernelBuildError(f"cannot load {path} ({exc}); delete it and run "
                                       "'python -m uniprune.compressors.native.kernels --build --force'") from None
            _declare(lib)
            got, want = lib.up_isa().decode(), _ISA_REPORTS.get(target)
            if want is not None and got != want:
                raise KernelBuildError(f"the {target} build of {SOURCE.name} compiled for {got}; the compiler "
                                       f"ignored {' '.join(_built[target][1][:3])}; set UNIPRUNE_ISA to another ISA")
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
    path, flags = _built[target]
    return f"{source_hash()[:12]}-{_libs[target].up_isa().decode()}-{path.stem.rsplit('-', 1)[-1][:8]}"


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


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                     dilation: tuple[int, int] = (1, 1), clamp: tuple[float, float] | None = None,
                     threads: int = 1, isa: str | None = None) -> torch.Tensor:
    """A depthwise conv (groups = channels) on the native vectorised kernel, float32, CPU.

    ``x`` ``[N, C, H, W]``; ``weight`` ``[C, 1, kh, kw]`` (at most 64 taps); ``bias`` ``[C]`` or None; stride,
    padding (zeros) and dilation per axis (>= 1, >= 0, >= 1); ``clamp`` ``(lo, hi)`` applies
    ``min(max(y, lo), hi)`` to the output in the same pass (ReLU6: ``(0, 6)``); ``threads`` >= 1. Returns
    ``[N, C, Ho, Wo]`` as torch computes them. What the lean plan's grouped-conv op runs for depthwise convs.
    """
    lib = load(isa)
    n, c, h, w = (int(v) for v in x.shape)
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ConfigError(f"depthwise weight must be [C, 1, kh, kw] with C = {c}, got {tuple(weight.shape)}")
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"input {tuple(x.shape)} is smaller than the dilated {kh}x{kw} kernel")
    x = x.detach().float().contiguous()
    wt = weight.detach().float().contiguous()
    b = None if bias is None else bias.detach().float().contiguous()
    geom = torch.tensor([c, h, w, kh, kw, sh, sw, ph, pw, dh, dw], dtype=torch.int32)
    y = torch.empty(n, c, ho, wo, dtype=torch.float32)
    lo, hi = clamp if clamp is not None else (0.0, 0.0)
    rc = lib.up_dwconv_run(x.data_ptr(), y.data_ptr(), wt.data_ptr(), _ptr(b), geom.data_ptr(), n,
                           int(clamp is not None), float(lo), float(hi), int(threads))
    if rc:
        raise ConfigError(f"depthwise conv failed (code {rc}) on input {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return y


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


def panel_height(block_out: int) -> int:
    """The panel height the conv kernel uses for blocks of ``block_out`` (>= 1) output channels.

    The block height itself when it is 1, 2, 4 or 8, so a panel never mixes blocks and a pruned block is
    skipped exactly; 8 otherwise (any height runs correctly, with panels that mix blocks and skip less).
    """
    if not isinstance(block_out, int) or block_out < 1:
        raise ConfigError(f"block height must be a positive integer, got {block_out!r}")
    return block_out if block_out in PANEL_HEIGHTS else ROWS


@dataclass
class PackedPanels:
    """Weights packed per panel of ``rows`` output channels (see the module docstring).

    ``panel_ptr`` int32 ``[P+1]``; ``ch`` int32 ``[nnz]``; ``w`` float32 ``[nnz, taps, rows]``.
    """

    panel_ptr: torch.Tensor
    ch: torch.Tensor
    w: torch.Tensor
    rows: int = ROWS

    @property
    def nnz(self) -> int:
        return int(self.ch.numel())


def pack_panels(weight: torch.Tensor, keep: torch.Tensor, rows: int = ROWS) -> PackedPanels:
    """Pack ``weight`` ``[Co, Ci, *window]`` keeping, per panel of ``rows`` (1, 2, 4 or 8) output channels,
    the input channels where ``keep``.

    ``keep``: bool ``[Co, Ci]``, True where the (output, input) channel pair holds a weight to run; a panel
    keeps input channel c when any of its rows keeps it (rows that do not are packed as zeros).
    """
    if rows not in PANEL_HEIGHTS:
        raise ConfigError(f"panel height must be one of {PANEL_HEIGHTS}, got {rows!r}")
    co, ci = weight.shape[0], weight.shape[1]
    w = weight.detach().float().reshape(co, ci, -1)
    taps = w.shape[2]
    panels = (co + rows - 1) // rows
    pad = panels * rows - co
    keep_rows = keep.bool()
    if pad:
        w = torch.cat([w, w.new_zeros(pad, ci, taps)])
        keep_rows = torch.cat([keep_rows, keep_rows.new_zeros(pad, ci)])
    w = w * keep_rows[:, :, None]
    used = keep_rows.reshape(panels, rows, ci).any(1)  # [P, Ci]
    pi, cidx = used.nonzero(as_tuple=True)  # sorted by panel, then channel
    counts = torch.bincount(pi, minlength=panels)
    panel_ptr = torch.zeros(panels + 1, dtype=torch.int64)
    panel_ptr[1:] = torch.cumsum(counts, 0)
    packed = w.reshape(panels, rows, ci, taps)[pi, :, cidx, :]  # [nnz, rows, taps]
    return PackedPanels(_i32(panel_ptr), _i32(cidx), packed.permute(0, 2, 1).contiguous(), rows)


PRECISIONS = ("fp32", "bf16")


def bf16_bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bfloat16 (nearest even), as int16 bit patterns in a tensor of ``t``'s shape: how bf16
    weights are handed to the kernels and stored in a plan."""
    return t.detach().float().to(torch.bfloat16).contiguous().view(torch.int16)


class SparseConv:
    """A block-sparse 2-D convolution (groups=1) on the native kernels; inference only, float32 in and out, CPU.

    Owns its native plan (packed weights and scratch); freed when this object is collected. ``rows``: the
    panel height (1, 2, 4 or 8 output channels; :func:`panel_height` of the layer's block height), ``isa``:
    which build runs it (default the process's, see :func:`resolve_isa`). ``precision``: ``"fp32"``, or
    ``"bf16"`` (weights rounded to bfloat16; on AMX tiles, where the build and CPU have them, activations
    rounded too and products accumulated in float32; elsewhere the float32 kernels with the bf16 weights:
    :attr:`engine` says which, ``"amx_bf16"`` or ``"fp32"``; ``amx=False`` forces the latter).
    """

    def __init__(self, weight: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None,
                 stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                 rows: int = ROWS, isa: str | None = None, precision: str = "fp32", amx: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        lib = load(isa)
        co, ci, kh, kw = (int(s) for s in weight.shape)
        self.out_channels, self.kernel_size, self.rows = co, (kh, kw), rows
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        packed = pack_panels(weight, keep, rows)
        self.nnz = packed.nnz
        geom = torch.tensor([co, ci, kh, kw, *self.stride, *self.padding, *self.dilation], dtype=torch.int32)
        b = None if bias is None else bias.detach().float().contiguous()
        args = (_ptr(geom), rows, (co + rows - 1) // rows, _ptr(packed.panel_ptr), _ptr(packed.ch))
        if precision == "bf16":
            wb = bf16_bits(packed.w)  # held: a pointer into a temporary would dangle
            plan = lib.up_conv_create_bf16(*args, _ptr(wb), _ptr(b), int(bool(amx)))
        else:
            plan = lib.up_conv_create(*args, _ptr(packed.w), _ptr(b))
        if not plan:
            raise KernelBuildError(f"the native conv plan could not be created for weight {tuple(weight.shape)} "
                                   "(out of memory or an unsupported geometry)")
        self._plan = plan
        self.precision = precision
        self.engine = "amx_bf16" if lib.up_conv_engine(plan) else "fp32"
        self._finalizer = weakref.finalize(self, lib.up_conv_destroy, plan)
        self._run = lib.up_conv_run
        self._lock = threading.Lock()  # the plan's scratch buffers serve one call at a time
        self._out_shapes: dict[torch.Size, tuple[int, ...]] = {}

    def __deepcopy__(self, memo: dict) -> SparseConv:
        return self  # the native plan is read-only after creation and guarded by a lock: share, never double-free

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def __call__(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        """``x`` float32 ``[N, Ci, H, W]`` -> ``[N, Co, Ho, Wo]``, on ``threads`` (>= 1) threads."""
        x = x.contiguous()
        n, _, h, w = x.shape
        out = self._out_shapes.get(x.shape)
        if out is None:  # computing it costs a microsecond of Python per call
            out = self._out_shapes[x.shape] = (n, self.out_channels, *self.output_hw(h, w))
        y = torch.empty(*out, dtype=torch.float32)
        with self._lock:
            rc = self._run(self._plan, x.data_ptr(), y.data_ptr(), n, h, w, threads)
        if rc:
            raise ValueError(f"sparse conv failed (code {rc}) on input {tuple(x.shape)}: input smaller than the kernel?")
        return y


class SparseGemv:
    """A block-sparse ``y = x W^T + b``: batch 1 (memory-bound) one sample at a time, larger batches in
    tiles of samples that load each weight once.

    Kept weights are packed like :class:`SparseConv`'s; unified blocks given in ``unified`` run in
    compact form: one magnitude and one sign byte per input channel (bit r: row r is negative); that
    saves memory traffic only at small batches.
    """

    def __init__(self, weight: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None,
                 unified: list[tuple[int, int, int, float]] | None = None, isa: str | None = None) -> None:
        """``unified``: ``(panel, first input channel, input channels, magnitude)`` per compact block of 8
        rows, in panel order; their weights must be absent from ``keep``. Panels are always 8 rows here,
        whatever the block height (correct for any; a GEMV row is one vector of 8 outputs)."""
        lib = load(isa)
        co, ci = int(weight.shape[0]), int(weight.shape[1])
        self.out_features = co
        packed = pack_panels(weight, keep)
        self.nnz = packed.nnz
        panels = (co + ROWS - 1) // ROWS
        unified = unified or []
        counts = torch.zeros(panels + 1, dtype=torch.int64)
        signs, soff = [], []
        neg = (weight.detach() < 0).to(torch.int32)
        neg = torch.cat([neg, neg.new_zeros(panels * ROWS - co, ci)]) if panels * ROWS > co else neg
        bits = (neg.reshape(panels, ROWS, ci) << torch.arange(ROWS, dtype=torch.int32)[None, :, None]).sum(1)
        off = 0
        for p, c0, length, _m in unified:
            counts[p + 1] += 1
            signs.append(bits[p, c0:c0 + length])
            soff.append(off)
            off += length
        uptr = _i32(torch.cumsum(counts, 0))
        uch0 = _i32(torch.tensor([u[1] for u in unified] or [0]))
        ulen = _i32(torch.tensor([u[2] for u in unified] or [0]))
        usoff = _i32(torch.tensor(soff or [0]))
        umag = torch.tensor([u[3] for u in unified] or [0.0], dtype=torch.float32)
        usign = (torch.cat(signs) if signs else torch.zeros(1, dtype=torch.int32)).to(torch.uint8).contiguous()
        self.n_unified = len(unified)
        b = None if bias is None else bias.detach().float().contiguous()
        plan = lib.up_gemv_create(co, ci, panels, _ptr(packed.panel_ptr), _ptr(packed.ch), _ptr(packed.w),
                                  _ptr(uptr), _ptr(uch0), _ptr(ulen), _ptr(usoff), _ptr(umag), _ptr(usign),
                                  int(usign.numel()), _ptr(b))
        if not plan:
            raise KernelBuildError(f"the native GEMV plan could not be created for weight {tuple(weight.shape)}")
        self._plan = plan
        self._finalizer = weakref.finalize(self, lib.up_gemv_destroy, plan)
        self._run = lib.up_gemv_run
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> SparseGemv:
        return self  # as SparseConv: share the read-only native plan

    def __call__(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        """``x`` float32 ``[N, Ci]`` -> ``[N, Co]``."""
        x = x.contiguous()
        y = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)
        with self._lock:
            rc = self._run(self._plan, x.data_ptr(), y.data_ptr(), x.shape[0], threads)
        if rc:
            raise MemoryError(f"sparse GEMV failed (code {rc}) on input {tuple(x.shape)}: out of memory")
        return y


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


if __name__ == "__main__":
    sys.exit(main())
