"""Build, load and call uniprune's native block-sparse CPU kernels (``csrc/uniprune_kernels.c``).

The C source is compiled with the machine's own C compiler (``cc -O3 -march=native``) into a shared
library that is loaded with :mod:`ctypes` (about a microsecond per call). The build runs at install time
(``python -m uniprune.compressors.kernels --build``) and otherwise lazily on first use; the library is
cached under ``$UNIPRUNE_CACHE/kernels`` (default ``~/.cache/uniprune/kernels``) in a file named by a
hash of the source, the compiler and its flags, so an edited source or another machine's flags never
load a stale build. No compiler -> :class:`KernelBuildError` with the fix.

Weights are packed per panel of :data:`ROWS` = 8 output channels: each panel lists the input channels
that hold any non-pruned weight in its rows. See docs/KERNELS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import KernelBuildError

ROWS = 8
SOURCE = Path(__file__).resolve().parent / "csrc" / "uniprune_kernels.c"
_NATIVE_FLAGS = ["-O3", "-march=native", "-mtune=native"]
_COMMON_FLAGS = ["-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", "-ffp-contract=fast"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def cache_dir() -> Path:
    """Where built libraries live: ``$UNIPRUNE_CACHE/kernels`` or ``~/.cache/uniprune/kernels``."""
    root = os.environ.get("UNIPRUNE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "uniprune") / "kernels"


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise KernelBuildError(
        "no C compiler found (tried $CC, cc, gcc, clang); install one (e.g. 'apt-get install gcc') "
        "and run 'python -m uniprune.compressors.kernels --build'"
    )


def _flag_sets() -> list[list[str]]:
    # -march=native first; a compiler that does not know it still gets a portable -O3 build
    return [_NATIVE_FLAGS + _COMMON_FLAGS, ["-O3"] + _COMMON_FLAGS]


def source_hash() -> str:
    """sha256 (16 hex digits) of the kernel source; part of the library's cache key and the latency cache's."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def _library_path(cc: str, flags: list[str]) -> Path:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    key = hashlib.sha256("\n".join([source_hash(), cc, *version, *flags]).encode()).hexdigest()[:16]
    return cache_dir() / f"uniprune_kernels-{key}.so"


def build(force: bool = False, verbose: bool = False) -> Path:
    """Compile the kernels if no cached build fits this source, compiler and flags; returns the library path."""
    cc = _compiler()
    errors = []
    for flags in _flag_sets():
        path = _library_path(cc, flags)
        if path.exists() and not force:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
        os.close(fd)
        cmd = [cc, *flags, "-o", tmp, str(SOURCE)]
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
            return path
        Path(tmp).unlink(missing_ok=True)
        errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    raise KernelBuildError(f"compiling {SOURCE.name} with {cc} failed ({'; '.join(errors)}); check the compiler install")


def _declare(lib: ctypes.CDLL) -> None:
    p, i32p, f32p, c_int = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
    lib.up_conv_create.restype = p
    lib.up_conv_create.argtypes = [i32p, c_int, i32p, i32p, f32p, f32p]
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


def load() -> ctypes.CDLL:
    """The loaded kernel library, building it first if needed (thread-safe, once per process)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            path = build()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise KernelBuildError(f"cannot load {path} ({exc}); delete it and run "
                                       "'python -m uniprune.compressors.kernels --build --force'") from None
            _declare(lib)
            _lib = lib
    return _lib


def isa() -> str:
    """The vector instruction set the loaded build uses: avx512f, avx2, neon or generic."""
    return load().up_isa().decode()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


@dataclass
class PackedPanels:
    """Weights packed per panel of 8 output channels (see the module docstring).

    ``panel_ptr`` int32 ``[P+1]``; ``ch`` int32 ``[nnz]``; ``w`` float32 ``[nnz, taps, 8]``.
    """

    panel_ptr: torch.Tensor
    ch: torch.Tensor
    w: torch.Tensor

    @property
    def nnz(self) -> int:
        return int(self.ch.numel())


def pack_panels(weight: torch.Tensor, keep: torch.Tensor) -> PackedPanels:
    """Pack ``weight`` ``[Co, Ci, *window]`` keeping, per panel of 8 rows, the input channels where ``keep``.

    ``keep``: bool ``[Co, Ci]``, True where the (output, input) channel pair holds a weight to run; a panel
    keeps input channel c when any of its rows keeps it (rows that do not are packed as zeros).
    """
    co, ci = weight.shape[0], weight.shape[1]
    w = weight.detach().float().reshape(co, ci, -1)
    taps = w.shape[2]
    panels = (co + ROWS - 1) // ROWS
    pad = panels * ROWS - co
    keep_rows = keep.bool()
    if pad:
        w = torch.cat([w, w.new_zeros(pad, ci, taps)])
        keep_rows = torch.cat([keep_rows, keep_rows.new_zeros(pad, ci)])
    w = w * keep_rows[:, :, None]
    used = keep_rows.reshape(panels, ROWS, ci).any(1)  # [P, Ci]
    pi, cidx = used.nonzero(as_tuple=True)  # sorted by panel, then channel
    counts = torch.bincount(pi, minlength=panels)
    panel_ptr = torch.zeros(panels + 1, dtype=torch.int64)
    panel_ptr[1:] = torch.cumsum(counts, 0)
    packed = w.reshape(panels, ROWS, ci, taps)[pi, :, cidx, :]  # [nnz, 8, taps]
    return PackedPanels(_i32(panel_ptr), _i32(cidx), packed.permute(0, 2, 1).contiguous())


class SparseConv:
    """A block-sparse 2-D convolution (groups=1) on the native kernels; inference only, float32, CPU.

    Owns its native plan (packed weights and scratch); freed when this object is collected.
    """

    def __init__(self, weight: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None,
                 stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> None:
        lib = load()
        co, ci, kh, kw = (int(s) for s in weight.shape)
        self.out_channels, self.kernel_size = co, (kh, kw)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        packed = pack_panels(weight, keep)
        self.nnz = packed.nnz
        geom = torch.tensor([co, ci, kh, kw, *self.stride, *self.padding, *self.dilation], dtype=torch.int32)
        b = None if bias is None else bias.detach().float().contiguous()
        plan = lib.up_conv_create(_ptr(geom), (co + ROWS - 1) // ROWS, _ptr(packed.panel_ptr), _ptr(packed.ch),
                                  _ptr(packed.w), _ptr(b))
        if not plan:
            raise KernelBuildError(f"the native conv plan could not be created for weight {tuple(weight.shape)} "
                                   "(out of memory or an unsupported geometry)")
        self._plan = plan
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
                 unified: list[tuple[int, int, int, float]] | None = None) -> None:
        """``unified``: ``(panel, first input channel, input channels, magnitude)`` per compact block,
        in panel order; their weights must be absent from ``keep``."""
        lib = load()
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
    """``python -m uniprune.compressors.kernels --build [--force]``: compile the kernels now."""
    parser = argparse.ArgumentParser(prog="python -m uniprune.compressors.kernels", description=main.__doc__)
    parser.add_argument("--build", action="store_true", help="compile (or find in the cache) the native kernels")
    parser.add_argument("--force", action="store_true", help="recompile even if a cached build exists")
    args = parser.parse_args(argv)
    if not args.build:
        parser.error("nothing to do; pass --build")
    try:
        path = build(force=args.force, verbose=True)
        global _lib
        _lib = None
        print(f"uniprune kernels: {path} ({isa()})", file=sys.stderr)
    except KernelBuildError as exc:
        print(f"uniprune kernels: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
