"""uniprune's lean runtime: a compressed network as one native plan, with nothing but numpy, ctypes and a C compiler.

This one file is both the module :mod:`uniprune.compressors.native.plan` builds every in-process ``LeanModel``
with and the loader ``uniprune export`` copies into each artifact (as ``uniprune_lean.py``): the plan a
user deploys is built by the same code that was tested and timed. It must therefore never import uniprune
or torch.

A plan is a JSON header plus named arrays (float32, int32 or uint8)::

    {"format": "uniprune.lean/1",
     "input_shape": [C, H, W] | [F], "output_shape": [...],       # per sample; any batch runs
     "buffers": [0, 0, s2, ...],                                   # floats per sample of each buffer
     "threads": T, "batch_size": N,                                # what the conv choices were timed at
     "ops": [{"kind": 1, "node": "conv1+relu", "layer": "conv1",
              "ints": [in0, in1, out, act, C, H, W, Co, Ho, Wo, *params],
              "floats": "op0.floats",                              # float32 [2 + n]: clamp lo, hi, the op's data
              "kernel": null | {"type": "conv", "geom": [Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw], "rows": R,
                                "panel_ptr": ..., "ch": ..., "w": ..., "bias": ... | null}
                             | {"type": "gemv", "out": Co, "in": Ci, "panel_ptr": ..., "ch": ..., "w": ...,
                                "bias": ... | null}}, ...]}

(op kinds, header fields and parameters: ``csrc/uniprune_plan.c``; kernel arrays: ``csrc/uniprune_kernels.c``'s
``up_conv_create`` / ``up_gemv_create``, packed as ``uniprune.compressors.native.kernels.pack_panels`` packs them).
On disk (:func:`write_plan` / :func:`read_plan`) the header is ``plan.json`` with an ``"arrays"`` index
(dtype, shape, byte offset) into one ``weights.bin`` of raw little-endian arrays, each 64-byte aligned, and
the file's sha256; never a pickle.

Deployment::

    import numpy as np, uniprune_lean
    model = uniprune_lean.Model("path/to/artifact")        # compiles the C sources once (cached)
    y = model.run(np.zeros((4, *model.input_shape), np.float32))

The C sources are compiled with ``$CC`` (else cc, gcc, clang), ``-O3`` and the vector ISA of
``UNIPRUNE_ISA`` (auto: the widest the CPU has; avx512, avx2, generic), cached in
``$UNIPRUNE_LEAN_CACHE`` (default ``~/.cache/uniprune-lean``) under a hash of the sources, compiler and flags.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "uniprune.lean/1"
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.bin"
#: The C sources a plan needs, compiled into one library: the kernels and the plan executor.
SOURCES = ("uniprune_kernels.c", "uniprune_plan.c")
_ALIGN = 64  # bytes: every array starts on a cache line, so a memory-mapped read is as good as a copy
_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}
_KERNEL_ROWS = 8  # the GEMV's panel height (csrc/uniprune_kernels.c ROWS)
_HEADER_INTS = 10  # csrc/uniprune_plan.c I_HEADER: in0 in1 out act C H W Co Ho Wo


class LeanError(ValueError):
    """A plan file, a plan or an input is not what the lean runtime expects; the message says what to fix."""


class PlanRefused(LeanError):
    """The native executor refused an op (``index``, ``code``): the plan does not fit its checks."""

    def __init__(self, message: str, index: int, code: int) -> None:
        super().__init__(message)
        self.index, self.code = index, code


class BuildError(RuntimeError):
    """The C sources could not be compiled or loaded here."""


# ------------------------------------------------------------------------------------------ arrays
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
            raise LeanError(f"array {name!r} is {a.dtype}; plans hold float32, int32 or uint8 only")
        pad = -offset % _ALIGN
        parts.append(b"\0" * pad)
        offset += pad
        data = np.ascontiguousarray(a, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")).tobytes()
        index[name] = {"dtype": dtype, "shape": [int(s) for s in a.shape], "offset": offset}
        parts.append(data)
        offset += len(data)
    return b"".join(parts), index


def unpack_arrays(blob: bytes | memoryview | np.ndarray, index: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The arrays :func:`pack_arrays` packed, as read-only views of ``blob``; LeanError for an index that
    does not fit it."""
    buf = memoryview(blob).cast("B") if not isinstance(blob, np.ndarray) else blob.reshape(-1).view(np.uint8)
    out = {}
    for name, rec in index.items():
        try:
            dtype = np.dtype(_DTYPES[rec["dtype"]]).newbyteorder("<")
            shape = tuple(int(s) for s in rec["shape"])
            count, offset = int(np.prod(shape, dtype=np.int64)), int(rec["offset"])
        except (KeyError, TypeError, ValueError):
            raise LeanError(f"array {name!r} has a malformed index entry {dict(rec)!r}") from None
        if offset < 0 or offset % _ALIGN or offset + count * dtype.itemsize > len(buf):
            raise LeanError(f"array {name!r} ({count} x {dtype.name} at byte {offset}) lies outside the "
                            f"{len(buf)}-byte weights; the plan and weights files do not belong together")
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


def read_plan(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of the plan in ``directory``; LeanError naming the file for anything missing,
    foreign or damaged (the weights' sha256 is checked)."""
    directory = Path(directory)
    path = directory / PLAN_FILE
    if not path.is_file():
        raise LeanError(f"{path} does not exist; pass the directory 'uniprune export --out' wrote")
    try:
        header = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeanError(f"{path} is not readable JSON ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise LeanError(f"{path} has format {got!r}, expected {FORMAT!r}; export the model again with this version")
    for key, kind in (("ops", list), ("buffers", list), ("input_shape", list), ("output_shape", list),
                      ("arrays", dict), ("weights", dict)):
        if not isinstance(header.get(key), kind):
            raise LeanError(f"{path}: field {key!r} is missing or not a {kind.__name__}; the file is damaged")
    wpath = directory / str(header["weights"].get("file", WEIGHTS_FILE))
    try:
        blob = wpath.read_bytes()
    except OSError as exc:
        raise LeanError(f"cannot read {wpath} ({exc.strerror or exc}); the artifact is incomplete") from None
    if hashlib.sha256(blob).hexdigest() != header["weights"].get("sha256"):
        raise LeanError(f"{wpath} does not match the sha256 in {path}; the weights are damaged or from another export")
    return header, unpack_arrays(blob, header["arrays"])


# ----------------------------------------------------------------------------------- native plan
class _Functions:
    """The library's entry points as ctypes functions of their own (``lib[name]`` makes a fresh object), so
    declaring them here never changes the argument types another module declared on the same library."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, c_int, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            try:
                f = lib[name]
            except AttributeError:
                raise BuildError(f"the native library has no {name}: it was not built from {' and '.join(SOURCES)}") from None
            f.restype, f.argtypes = restype, list(argtypes)
            return f

        self.conv_create = fn("up_conv_create", p, p, c_int, c_int, p, p, p, p)
        self.conv_destroy = fn("up_conv_destroy", None, p)
        self.gemv_create = fn("up_gemv_create", p, c_int, c_int, c_int, p, p, p, p, p, p, p, p, p, i64, p)
        self.gemv_destroy = fn("up_gemv_destroy", None, p)
        self.plan_create = fn("up_plan_create", p, c_int, p)
        self.plan_add = fn("up_plan_add", c_int, p, c_int, p, c_int, p, i64, p)
        self.plan_run = fn("up_plan_run", c_int, p, p, p, c_int, c_int)
        self.plan_run_timed = fn("up_plan_run_timed", c_int, p, p, p, c_int, c_int, p)
        self.plan_destroy = fn("up_plan_destroy", None, p)
        self.isa = fn("up_isa", ctypes.c_char_p)


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _free(fns: _Functions, plan: int | None, kernels: list[tuple[Any, int]]) -> None:
    if plan:
        fns.plan_destroy(plan)
    for destroy, handle in kernels:  # after the plan, which borrows them
        destroy(handle)


class NativePlan:
    """The native plan of one header and its arrays on the library ``lib``: its kernel plans and executor.

    Every array is copied into native memory here, so ``arrays`` may be freed afterwards. ``run`` is not
    reentrant (one set of activation buffers): callers serialise calls (:class:`Model` holds a lock).
    Raises :class:`PlanRefused` for an op the executor refuses, LeanError for a malformed header.
    """

    def __init__(self, lib: ctypes.CDLL, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.fns = fns = _Functions(lib)
        self.n_ops = len(header["ops"])
        kernels: list[tuple[Any, int]] = []  # filled below; the finalizer frees what is in it by then
        sizes = np.asarray(header["buffers"], dtype=np.int64)
        plan = fns.plan_create(len(sizes), _ptr(sizes))
        if not plan:
            raise LeanError(f"the native plan could not be created ({len(sizes)} buffers): bad sizes or out of memory")
        self._finalizer = weakref.finalize(self, _free, fns, plan, kernels)
        self.handle = plan
        try:
            self._add_ops(header, arrays, kernels)
        except BaseException:
            self._finalizer()
            raise

    def _add_ops(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], kernels: list[tuple[Any, int]]) -> None:
        fns, plan = self.fns, self.handle

        def array(name: Any, dtype: Any, what: str) -> np.ndarray | None:
            if name is None:
                return None
            a = arrays.get(name) if isinstance(name, str) else None
            if a is None or a.dtype != dtype:
                raise LeanError(f"{what}: array {name!r} is missing or not {np.dtype(dtype).name}")
            return np.ascontiguousarray(a)

        for i, op in enumerate(header["ops"]):
            where = f"op {i} ({op.get('node', '?')})"
            ints = np.asarray(op["ints"], dtype=np.int32)
            floats = array(op["floats"], np.float32, where).reshape(-1)
            kplan = self._kernel(op.get("kernel"), array, where, kernels) if op.get("kernel") else None
            rc = fns.plan_add(plan, int(op["kind"]), _ptr(ints), len(ints), _ptr(floats), len(floats), kplan)
            if rc < 0:
                raise PlanRefused(f"the native plan refused {where} (code {rc})", i, rc)

    def _kernel(self, k: Mapping[str, Any], array: Any, where: str, kernels: list[tuple[Any, int]]) -> int:
        fns = self.fns
        ptr = array(k.get("panel_ptr"), np.int32, where)
        ch, w = array(k.get("ch"), np.int32, where), array(k.get("w"), np.float32, where)
        bias = array(k.get("bias"), np.float32, where)
        if ptr is None or ch is None or w is None:
            raise LeanError(f"{where}: its kernel lacks panel_ptr, ch or w")
        if k.get("type") == "conv":
            geom = np.asarray(k["geom"], dtype=np.int32)
            rows = int(k["rows"])
            handle = fns.conv_create(_ptr(geom), rows, (int(geom[0]) + rows - 1) // rows, _ptr(ptr), _ptr(ch), _ptr(w),
                                     _ptr(bias))
            destroy = fns.conv_destroy
        elif k.get("type") == "gemv":
            co, ci = int(k["out"]), int(k["in"])
            panels = (co + _KERNEL_ROWS - 1) // _KERNEL_ROWS
            # no compact unified blocks: a lowered linear runs its unified blocks materialised
            uptr = np.zeros(panels + 1, dtype=np.int32)
            one_i, one_f, one_b = np.zeros(1, np.int32), np.zeros(1, np.float32), np.zeros(1, np.uint8)
            handle = fns.gemv_create(co, ci, panels, _ptr(ptr), _ptr(ch), _ptr(w), _ptr(uptr), _ptr(one_i),
                                     _ptr(one_i), _ptr(one_i), _ptr(one_f), _ptr(one_b), 0, _ptr(bias))
            destroy = fns.gemv_destroy
        else:
            raise LeanError(f"{where}: unknown kernel type {k.get('type')!r}")
        if not handle:
            raise LeanError(f"{where}: the native {k['type']} kernel refused its arrays (bad geometry or out of memory)")
        kernels.append((destroy, handle))
        return handle

    def run(self, x: int, y: int, n: int, threads: int, op_ns: int | None = None) -> int:
        """One pass over ``n`` samples from the address ``x`` into ``y`` on ``threads`` threads; with ``op_ns``
        (the address of ``int64[n_ops]``) each op's wall time in ns is written there. Returns the executor's
        code: 0, -1 out of memory, -3 bad arguments, ``100 * (op + 1) + k`` a kernel's failure."""
        if op_ns is None:
            return self.fns.plan_run(self.handle, x, y, n, threads)
        return self.fns.plan_run_timed(self.handle, x, y, n, threads, op_ns)

    def close(self) -> None:
        """Free the native memory now (also done when the object is collected)."""
        self._finalizer()


# ---------------------------------------------------------------------------------------- building
_ISAS = ("auto", "avx512", "avx2", "generic")
_COMMON_FLAGS = ["-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", "-ffp-contract=fast"]
_ISA_FLAGS = {  # flag sets tried in order, as uniprune.compressors.native.kernels builds them
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


def resolve_isa(isa: str | None = None) -> str:
    """The build target for ``isa`` (default ``$UNIPRUNE_ISA``, else auto): avx512, avx2, generic or native
    (``-march=native`` on a CPU that is not x86). A forced ISA the CPU lacks raises BuildError."""
    name = (isa if isa is not None else os.environ.get("UNIPRUNE_ISA", "") or "auto").strip().lower()
    if name not in _ISAS:
        raise BuildError(f"UNIPRUNE_ISA/isa must be one of {', '.join(_ISAS)}, got {name!r}")
    flags = cpu_flags()
    if name == "auto":
        if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
            return "native"
        return next((t for t in ("avx512", "avx2") if all(f in flags for f in _ISA_NEEDS[t])), "generic")
    missing = [f for f in _ISA_NEEDS[name] if f not in flags]
    if missing:
        raise BuildError(f"ISA {name} needs CPU flags {', '.join(missing)}, which this CPU lacks; use auto or generic")
    return name


def _cache_dir() -> Path:
    root = os.environ.get("UNIPRUNE_LEAN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "uniprune-lean"


def build_library(source_dir: str | os.PathLike, *, isa: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Compile :data:`SOURCES` in ``source_dir`` into one shared library for ``isa`` (see :func:`resolve_isa`),
    or find it in ``cache_dir`` (default ``$UNIPRUNE_LEAN_CACHE`` or ``~/.cache/uniprune-lean``) under a hash of
    the sources, compiler and flags; returns its path. Written to a temporary file and renamed."""
    target = resolve_isa(isa)
    sources = [Path(source_dir) / s for s in SOURCES]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise BuildError(f"C source(s) {', '.join(missing)} missing; the artifact is incomplete")
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if cc is None:
        raise BuildError("no C compiler found (tried $CC, cc, gcc, clang); install one, e.g. 'apt-get install gcc'")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    code = b"".join(s.read_bytes() for s in sources)
    cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
    errors = []
    for flags in _ISA_FLAGS[target]:
        flags = flags + _COMMON_FLAGS
        key = hashlib.sha256(code + "\n".join([cc, *version, *flags]).encode()).hexdigest()[:16]
        path = cache / f"uniprune_lean-{target}-{key}.so"
        if path.exists():
            return path
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=cache)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, "-o", tmp, *map(str, sources)], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            Path(tmp).unlink(missing_ok=True)
            errors.append(str(exc))
            continue
        if proc.returncode == 0:
            os.replace(tmp, path)  # a concurrent build never loads a half-written file
            return path
        Path(tmp).unlink(missing_ok=True)
        errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    raise BuildError(f"compiling the lean runtime for {target} with {cc} failed ({'; '.join(errors)}); "
                     "check the compiler or set UNIPRUNE_ISA=generic")


def load_library(source_dir: str | os.PathLike, *, isa: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> ctypes.CDLL:
    """:func:`build_library`, loaded; checks that a forced ISA is what the build reports."""
    target = resolve_isa(isa)
    path = build_library(source_dir, isa=target if target != "native" else "auto", cache_dir=cache_dir)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise BuildError(f"cannot load {path} ({exc}); delete it to rebuild") from None
    got, want = _Functions(lib).isa().decode(), _ISA_REPORTS.get(target)
    if want is not None and got != want:
        raise BuildError(f"the {target} build compiled for {got}: the compiler ignored the ISA flags; set UNIPRUNE_ISA")
    return lib


# ------------------------------------------------------------------------------------------- model
class Model:
    """An exported network, ready to run: ``Model(path).run(x)``.

    ``path``: the artifact directory (``plan.json``, ``weights.bin`` and the C sources, or the sources in
    ``source_dir``). ``threads`` (>= 1): threads of the native kernels (default: every core this process may
    run on, :func:`available_cores`). ``isa`` / ``cache_dir``: as :func:`build_library`. Calls from several Python threads take turns.
    """

    def __init__(self, path: str | os.PathLike = ".", *, threads: int | None = None, isa: str | None = None,
                 cache_dir: str | os.PathLike | None = None, source_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.header, arrays = read_plan(self.path)
        self.input_shape = tuple(int(s) for s in self.header["input_shape"])
        self.output_shape = tuple(int(s) for s in self.header["output_shape"])
        self.threads = _check_threads(threads if threads is not None else available_cores())
        self.source = dict(self.header.get("source") or {})
        self.lib = load_library(self.path if source_dir is None else source_dir, isa=isa, cache_dir=cache_dir)
        self.isa = _Functions(self.lib).isa().decode()
        self.plan = NativePlan(self.lib, self.header, arrays)
        self._lock = threading.Lock()

    def run(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """``x`` float32 ``[N, *input_shape]`` (any ``N >= 0``) -> a new float32 ``[N, *output_shape]``."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 1 or tuple(x.shape[1:]) != self.input_shape:
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise LeanError(f"the model takes a float32 array [N, {', '.join(map(str, self.input_shape))}], got {got}; "
                            "convert with x.astype(np.float32) and reshape")
        n = int(x.shape[0])
        y = np.empty((n, *self.output_shape), dtype=np.float32)
        if n == 0:
            return y
        x = np.ascontiguousarray(x)
        t = self.threads if threads is None else _check_threads(threads)
        with self._lock:
            rc = self.plan.run(x.ctypes.data, y.ctypes.data, n, t)
        if rc:
            if rc == -1:
                raise MemoryError(f"the plan ran out of memory for a batch of {n}")
            raise RuntimeError(f"the plan failed (code {rc}) on input {list(x.shape)}")
        return y

    __call__ = run


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the machine's), >= 1:
    the default thread count, as deployments run on every core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_threads(threads: int) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise LeanError(f"threads must be a positive integer, got {threads!r}")
    return threads


def main(argv: list[str] | None = None) -> int:
    """``python uniprune_lean.py [DIR] [--batch-size N] [--threads T]``: build, run a random batch, print the
    output shape and the least time of 20 passes."""
    parser = argparse.ArgumentParser(prog="python uniprune_lean.py", description=main.__doc__)
    parser.add_argument("path", nargs="?", default=str(Path(__file__).resolve().parent), help="artifact directory (default: this file's)")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per pass (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="kernel threads (default: every core)")
    args = parser.parse_args(argv)
    try:
        model = Model(args.path, threads=args.threads)
        x = np.random.default_rng(0).standard_normal((args.batch_size, *model.input_shape)).astype(np.float32)
        y, best = model.run(x), float("inf")
        for _ in range(20):
            t0 = time.perf_counter()
            model.run(x)
            best = min(best, time.perf_counter() - t0)
    except (LeanError, BuildError, MemoryError, RuntimeError) as exc:
        print(f"uniprune_lean: error: {exc}", file=sys.stderr)
        return 2
    print(f"{model.source.get('model_name', 'model')}: input {[args.batch_size, *model.input_shape]} -> output "
          f"{list(y.shape)}; {1e3 * best:.3f} ms per pass (least of 20, {model.threads} thread(s), {model.isa})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
