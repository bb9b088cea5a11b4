"""uniprune's lean runtime: a compressed network as one native plan, with nothing but numpy, ctypes and a C compiler.

This one file is both the module :mod:`uniprune.compressors.native.plan` builds every in-process ``LeanModel``
with and the loader ``uniprune export`` copies into each artifact (as ``uniprune_lean.py``): the plan a
user deploys is built by the same code that was tested and timed. It must therefore never import uniprune
or torch.

A plan is a JSON header plus named arrays (float32, int32, uint8, or bfloat16 held as uint16 bit patterns)::

    {"format": "uniprune.lean/1",
     "precision": "fp32" | "bf16",                                 # absent: fp32 (see below)
     "input_shape": [C, H, W] | [F], "output_shape": [...],       # per sample; any batch runs
     "buffers": [0, 0, s2, ...],                                   # floats per sample of each buffer
     "threads": T, "batch_size": N,                                # what the conv choices were timed at
     "ops": [{"kind": 1, "node": "conv1+relu", "layer": "conv1",
              "ints": [in0, in1, out, act, C, H, W, Co, Ho, Wo, *params],
              "floats": "op0.floats",                              # float32 [2 + n]: clamp lo, hi, the op's data
              "kernel": null | {"type": "conv", "geom": [Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw], "rows": R,
                                "panel_ptr": ..., "ch": ..., "w": ..., "bias": ... | null,
                                "precision": "bf16", "engine": "auto" | "fp32"}   # both optional
                             | {"type": "gemv", "out": Co, "in": Ci, "panel_ptr": ..., "ch": ..., "w": ...,
                                "bias": ... | null, "precision": "bf16"}}, ...]}

Precision: a kernel with ``"precision": "bf16"`` has its ``w`` in bfloat16 (dtype ``"bfloat16"`` in the index,
the upper 16 bits of the float32 values, rounded to nearest even); ``bias`` stays float32. Its conv runs on
AMX tiles where the CPU has them (activations rounded to bf16 at the conv's input, float32 accumulation, float32
output), unless ``"engine": "fp32"`` (chosen by timing when the plan was lowered) or the CPU lacks AMX: then on
the float32 kernels with the bf16 weights widened. A bf16 GEMV always runs on the float32 kernel with its
weights widened. The header's ``"precision"`` says what the plan was exported for; :class:`Model` refuses a bf16
plan on a CPU with neither avx512_bf16 nor amx_bf16 unless told ``allow_fp32_fallback=True``.

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
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FORMAT = "uniprune.lean/1"
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.bin"
#: The C sources a plan needs, compiled into one library: the kernels and the plan executor.
SOURCES = ("uniprune_kernels.c", "uniprune_plan.c", "uniprune_bf16.c")
_ALIGN = 64  # bytes: every array starts on a cache line, so a memory-mapped read is as good as a copy
_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "bfloat16": np.uint16}  # bf16 as its bits
#: Precisions a plan may record, and the CPU flags (any one of them) a bf16 plan is exported for.
PRECISIONS = ("fp32", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
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


def read_plan(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of the plan in ``directory``; LeanError naming the file for anything missing,
    foreign or damaged (see :func:`parse_plan`)."""
    directory = Path(directory)
    path, wpath = directory / PLAN_FILE, directory / WEIGHTS_FILE
    if not path.is_file():
        raise LeanError(f"{path} does not exist; pass the directory 'uniprune export --out' wrote")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise LeanError(f"{path} is not readable ({exc.strerror or exc})") from None
    try:
        blob = wpath.read_bytes()
    except OSError as exc:
        raise LeanError(f"cannot read {wpath} ({exc.strerror or exc}); the artifact is incomplete") from None
    return parse_plan(text, blob, str(path))


def parse_plan(text: bytes | str, blob: bytes, where: str = PLAN_FILE) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a plan from the bytes of its ``plan.json`` (``text``, strict JSON:
    :func:`loads_json`) and ``weights.bin`` (``blob``): the header's fields, the weights' sha256 and every
    array's index entry checked (:func:`unpack_arrays`); LeanError starting with ``where`` otherwise. The ops
    are checked by :func:`verify_plan`, which every native plan runs first."""
    try:
        header = loads_json(text)
    except LeanError as exc:
        raise LeanError(f"{where}: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise LeanError(f"{where} has format {_show(got)}, expected {FORMAT!r}; export the model again with this version")
    for key, kind in (("ops", list), ("buffers", list), ("input_shape", list), ("output_shape", list),
                      ("arrays", dict), ("weights", dict)):
        if not isinstance(header.get(key), kind):
            raise LeanError(f"{where}: field {key!r} is missing or not a {kind.__name__}; the file is damaged")
    if header["weights"].get("file", WEIGHTS_FILE) != WEIGHTS_FILE:  # never a path to elsewhere
        raise LeanError(f"{where}: field 'weights' names file {_show(header['weights'].get('file'))}, expected {WEIGHTS_FILE!r}")
    if hashlib.sha256(blob).hexdigest() != header["weights"].get("sha256"):
        raise LeanError(f"{WEIGHTS_FILE} does not match the sha256 in {where}; the weights are damaged or from another export")
    return header, unpack_arrays(blob, header["arrays"])


# --------------------------------------------------------------------------------------------- verifier
# A plan file is data from anywhere, so every number in it is checked here before any native call: a plan
# verify_plan accepts reads and writes only inside the buffers and arrays it names (csrc/uniprune_plan.c
# checks the indices it is handed too; this is the check that can name the op and the field). Table-driven:
# an op kind is one entry of _OPS, a kernel type one of _KERNELS, a weight precision one of _WEIGHT_DTYPES.

MAX_DIM = 1 << 24             # one extent of a shape: channels, height, width or features
MAX_SAMPLE_FLOATS = 1 << 34   # floats per sample of one buffer (64 GiB; csrc/uniprune_plan.c MAX_FLOATS)
MAX_BUFFERS = 1 << 16         # csrc/uniprune_plan.c MAX_BUFS
MAX_OPS = 1 << 20
MAX_THREADS = 1024
MAX_BATCH = 1 << 24
MAX_PARAM = 1 << 16           # a window, stride, padding, dilation or shift (csrc/uniprune_plan.c MAX_PARAM)
MAX_ELEMENTS = 1 << 40        # elements of one array of weights.bin
#: A plan's ``"precision"`` (absent: fp32; ``"float32"`` is read as fp32) -> the dtype of its kernels' packed
#: weights ``w``. A kernel record's own ``"precision"``, where given, must say the same.
_WEIGHT_DTYPES: dict[str, str] = {"float32": "float32", "fp32": "float32", "bf16": "bfloat16"}
_ENGINES = ("auto", "fp32")  # a bf16 conv record's "engine": AMX where present, or the float32 kernels
_HEADER_NAMES = ("in0", "in1", "out", "act", "C", "H", "W", "Co", "Ho", "Wo")
_IN0, _IN1, _OUT, _ACT, _C, _H, _W, _CO, _HO, _WO = range(10)  # positions in an op's "ints"
#: Each op parameter's range; a name shared by several kinds means the same thing in each.
_PARAM_RANGES: dict[str, tuple[int, int]] = {
    "kh": (1, MAX_PARAM), "kw": (1, MAX_PARAM), "sh": (1, MAX_PARAM), "sw": (1, MAX_PARAM), "ph": (0, MAX_PARAM),
    "pw": (0, MAX_PARAM), "dh": (1, MAX_PARAM), "dw": (1, MAX_PARAM), "groups": (1, MAX_DIM), "has_bias": (0, 1),
    "is_max": (0, 1), "count_include_pad": (0, 1), "clo": (-MAX_DIM, MAX_DIM), "pt": (-MAX_PARAM, MAX_PARAM),
    "pl": (-MAX_PARAM, MAX_PARAM), "mode": (0, 1)}
_WINDOW = ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw")
_GEOM_RANGES = tuple(zip(("Co", "Ci", *_WINDOW), (1, 1, 1, 1, 1, 1, 0, 0, 1, 1), (MAX_DIM, MAX_DIM, *[MAX_PARAM] * 8)))
_DTYPE_CHARS = {name: np.dtype(t).char for name, t in _DTYPES.items()}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def _int(value: Any, lo: int, hi: int, where: str, field: str = "") -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise LeanError(f"{where}{field} must be an integer in [{lo}, {hi}], got {_show(value)}")
    return value


def _extent(n: int, k: int, s: int, p: int, d: int) -> int:
    """Output extent of a conv or pool window along one axis, as torch computes it (< 1: the window does not fit)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _window_out(v: list[int], kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int) -> str | None:
    ho, wo = _extent(v[_H], kh, sh, ph, dh), _extent(v[_W], kw, sw, pw, dw)
    if ho != v[_HO] or wo != v[_WO]:
        return f"ints Ho/Wo: the op says {v[_HO]}x{v[_WO]}, its {kh}x{kw} window on {v[_H]}x{v[_W]} gives {ho}x{wo}"
    return None


def _same_shape(v: list[int], k: Any) -> str | None:
    if v[_C] != v[_CO] or v[_H] != v[_HO] or v[_W] != v[_WO]:
        return f"ints Co/Ho/Wo: an elementwise op keeps its shape, got {v[_C:_W + 1]} -> {v[_CO:_WO + 1]}"
    return None


def _geom_conv(v: list[int], k: tuple[int, ...]) -> str | None:
    if k[0] != v[_CO] or k[1] != v[_C]:
        return f"kernel.geom: the kernel maps {k[1]} -> {k[0]} channels, the op {v[_C]} -> {v[_CO]}"
    return _window_out(v, *k[2:])


def _geom_gemv(v: list[int], k: tuple[int, ...]) -> str | None:
    if k[0] != v[_CO] * v[_HO] * v[_WO] or k[1] != v[_C] * v[_H] * v[_W]:
        return f"kernel out/in: the kernel maps {k[1]} -> {k[0]} features, the op {v[_C] * v[_H] * v[_W]} -> " \
               f"{v[_CO] * v[_HO] * v[_WO]}"
    return None


def _geom_gconv(v: list[int], k: None) -> str | None:
    groups = v[18]
    if v[_C] % groups or v[_CO] % groups:
        return f"ints groups: {groups} does not divide {v[_C]} input and {v[_CO]} output channels"
    return _window_out(v, *v[10:18])


def _geom_pool(v: list[int], k: None) -> str | None:
    if v[_CO] != v[_C]:
        return f"ints Co: a pool keeps its {v[_C]} channels, got {v[_CO]}"
    return _window_out(v, *v[10:16], 1, 1)


def _geom_gap(v: list[int], k: None) -> str | None:
    if v[_CO] != v[_C] or v[_HO] != 1 or v[_WO] != 1:
        return f"ints Co/Ho/Wo: a global pool gives [{v[_C]}, 1, 1], got {v[_CO:_WO + 1]}"
    return None


def _geom_im2col(v: list[int], k: tuple[int, ...]) -> str | None:
    patch, mode = v[_C] * v[10] * v[11], v[18]
    want = (v[_CO], patch) if mode == 0 else (v[_CO], patch, 1, 1, 1, 1, 0, 0, 1, 1)
    if tuple(k) != want:
        return f"kernel: an im2col conv in mode {mode} needs a kernel {list(want)}, got {list(k)}"
    return _window_out(v, *v[10:18])


def _geom_none(v: list[int], k: Any) -> str | None:
    return None


def _floats_none(v: list[int]) -> int:
    return 0


class _Kind(NamedTuple):
    """One op kind of csrc/uniprune_plan.c: its parameters (after the header ints), the kernel it runs
    (``"conv"``, ``"gemv"``, ``"mode"``: by its ``mode`` parameter, or None), whether it may read a fused
    residual (in1) or write over its input, its floats after lo and hi, and its geometry check."""
    name: str
    params: tuple[str, ...]
    kernel: str | None
    residual: bool
    in_place: bool
    floats: Callable[[list[int]], int]
    geometry: Callable[[list[int], Any], str | None]


_OPS: dict[int, _Kind] = {  # the numbers are csrc/uniprune_plan.c's op kinds
    1: _Kind("conv", (), "conv", True, False, _floats_none, _geom_conv),
    2: _Kind("linear", (), "gemv", True, False, _floats_none, _geom_gemv),
    3: _Kind("grouped_conv", (*_WINDOW, "groups", "has_bias"), None, True, False,
             lambda v: v[_CO] * (v[_C] // v[18]) * v[10] * v[11] + v[_CO] * v[19], _geom_gconv),
    4: _Kind("add", (), None, True, True, _floats_none, _same_shape),
    5: _Kind("act", (), None, False, True, _floats_none, _same_shape),
    6: _Kind("affine", (), None, False, True, lambda v: 2 * v[_C], _same_shape),
    7: _Kind("global_avg_pool", (), None, False, False, _floats_none, _geom_gap),
    8: _Kind("pool", ("kh", "kw", "sh", "sw", "ph", "pw", "is_max", "count_include_pad"), None, False, False,
             _floats_none, _geom_pool),
    9: _Kind("slice_pad", ("sh", "sw", "clo", "pt", "pl"), None, False, False, _floats_none, _geom_none),
    10: _Kind("copy", (), None, False, True, _floats_none, _same_shape),
    11: _Kind("im2col_conv", (*_WINDOW, "mode"), "mode", True, False, _floats_none, _geom_im2col),
}
#: per kind: (name, lo, hi) of each integer after act (C H W Co Ho Wo and the parameters), and the ints' count
_RANGES = {kind: (tuple(zip(_HEADER_NAMES[_C:] + k.params, [1] * 6 + [_PARAM_RANGES[n][0] for n in k.params],
                            [MAX_DIM] * 6 + [_PARAM_RANGES[n][1] for n in k.params])), 10 + len(k.params))
           for kind, k in _OPS.items()}


def _array(arrays: Mapping[str, np.ndarray], name: Any, dtype: str, size: int | None, where: str, field: str) -> np.ndarray:
    a = arrays.get(name) if type(name) is str else None
    if a is None:
        raise LeanError(f"{where}{field} names array {_show(name)}, which the plan's arrays do not hold")
    if a.dtype.char != _DTYPE_CHARS[dtype]:
        raise LeanError(f"{where}{field}: array {name!r} is {a.dtype.name}, expected {dtype}")
    if size is not None and a.size != size:
        raise LeanError(f"{where}{field}: array {name!r} has {a.size} elements, expected {size}")
    return a


def _panels(k: Mapping[str, Any], arrays: Mapping[str, np.ndarray], panels: int, rows: int, taps: int, ci: int,
            co: int, precision: str, where: str) -> None:
    """The packed arrays of a kernel of ``panels`` panels of ``rows`` outputs: sizes against each other and
    the kernel's geometry (their contents, the panel pointers and channel indices, csrc/uniprune_kernels.c checks)."""
    ptr = _array(arrays, k.get("panel_ptr"), "int32", panels + 1, where, " kernel.panel_ptr").reshape(-1)  # any shape
    first, nnz = ptr[0].item(), ptr[-1].item()
    if first != 0 or not 0 <= nnz <= panels * ci:
        raise LeanError(f"{where} kernel.panel_ptr: runs from {first} to {nnz}, expected 0 to at most {panels * ci}")
    _array(arrays, k.get("ch"), "int32", nnz, where, " kernel.ch")
    own = k.get("precision", precision)
    if type(own) is not str or _WEIGHT_DTYPES.get(own) != _WEIGHT_DTYPES[precision]:
        raise LeanError(f"{where} kernel.precision: {_show(own)} in a {precision} plan")
    if k.get("engine", "auto") not in _ENGINES:
        raise LeanError(f"{where} kernel.engine must be one of {', '.join(_ENGINES)}, got {_show(k.get('engine'))}")
    _array(arrays, k.get("w"), _WEIGHT_DTYPES[precision], nnz * taps * rows, where, " kernel.w")
    if k.get("bias") is not None:
        _array(arrays, k["bias"], "float32", co, where, " kernel.bias")


def _kernel_conv(k: Mapping[str, Any], arrays: Mapping[str, np.ndarray], precision: str, where: str) -> tuple[int, ...]:
    geom = k.get("geom")
    if type(geom) is not list or len(geom) != 10:
        raise LeanError(f"{where} kernel.geom must be a list of 10 integers, got {_show(geom)}")
    for v, (name, lo, hi) in zip(geom, _GEOM_RANGES):
        if type(v) is not int or not lo <= v <= hi:
            _int(v, lo, hi, where, f" kernel.geom {name}")
    rows = k.get("rows")
    if type(rows) is not int or rows not in (1, 2, 4, 8):
        raise LeanError(f"{where} kernel.rows must be 1, 2, 4 or 8, got {_show(rows)}")
    _panels(k, arrays, -(-geom[0] // rows), rows, geom[2] * geom[3], geom[1], geom[0], precision, where)
    return tuple(geom)


def _kernel_gemv(k: Mapping[str, Any], arrays: Mapping[str, np.ndarray], precision: str, where: str) -> tuple[int, ...]:
    co = _int(k.get("out"), 1, MAX_SAMPLE_FLOATS, where, " kernel.out")
    ci = _int(k.get("in"), 1, MAX_SAMPLE_FLOATS, where, " kernel.in")
    _panels(k, arrays, -(-co // _KERNEL_ROWS), _KERNEL_ROWS, 1, ci, co, precision, where)
    return co, ci


_KERNELS: dict[str, Callable[..., tuple[int, ...]]] = {"conv": _kernel_conv, "gemv": _kernel_gemv}


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if type(value) is not list or not 1 <= len(value) <= 4:
        raise LeanError(f"{where} must be a list of 1 to 4 integers, got {_show(value)}")
    return tuple(_int(v, 1, MAX_DIM, where, f"[{j}]") for j, v in enumerate(value))


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def verify_plan(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Check a plan before anything native sees it; a LeanError of one line naming the op and the field
    otherwise. Checked: header integers in range; ``ops`` non-empty; each op's kind, integers and geometry
    (output extents from its window, channels against its kernel's); every buffer's size against what each
    op reads and writes there (buffer 0 holds exactly ``input_shape``, buffer 1 ``output_shape``) and its
    lifetime (no op reads a buffer before one writes it; the output is written); each array an op or kernel
    names against the op (dtype, element count). The arrays' offsets in weights.bin: :func:`unpack_arrays`.
    """
    if not isinstance(header, Mapping):
        raise LeanError(f"the plan header must be a JSON object, got {type(header).__name__}")
    for key, hi in (("threads", MAX_THREADS), ("batch_size", MAX_BATCH)):
        if header.get(key) is not None:
            _int(header[key], 1, hi, "plan field ", repr(key))
    precision = header.get("precision", "fp32")
    if type(precision) is not str or precision not in _WEIGHT_DTYPES:
        raise LeanError(f"plan field 'precision' must be one of {', '.join(PRECISIONS)}, got {_show(precision)}")
    size_in = _prod(_shape(header.get("input_shape"), "plan field 'input_shape'"))
    size_out = _prod(_shape(header.get("output_shape"), "plan field 'output_shape'"))
    if max(size_in, size_out) > MAX_SAMPLE_FLOATS:
        raise LeanError(f"plan fields 'input_shape'/'output_shape' hold more than {MAX_SAMPLE_FLOATS} floats per sample")
    buffers, ops = header.get("buffers"), header.get("ops")
    if type(buffers) is not list or not 2 <= len(buffers) <= MAX_BUFFERS:
        raise LeanError(f"plan field 'buffers' must be a list of 2 to {MAX_BUFFERS} integers, got {_show(buffers)}")
    sizes = [size_in, size_out] + [_int(v, 0, MAX_SAMPLE_FLOATS, "plan field 'buffers'", f"[{b}]")
                                   for b, v in enumerate(buffers[2:], 2)]
    if type(ops) is not list or not 1 <= len(ops) <= MAX_OPS:
        raise LeanError(f"plan field 'ops' must be a list of 1 to {MAX_OPS} ops, got {_show(ops)}")
    last = len(sizes) - 1
    written = bytearray(len(sizes))
    written[0] = 1
    most = [0] * len(sizes)  # the most any op writes to each buffer, floats per sample
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise LeanError(f"op {i} must be a JSON object, got {_show(op)}")
        code = op.get("kind")
        kind = _OPS.get(code) if type(code) is int else None
        if kind is None:
            raise LeanError(f"op {i} field 'kind' must be an op kind {min(_OPS)} to {max(_OPS)}, got {_show(code)}")
        where = f"op {i} ({kind.name})"
        v = op.get("ints")
        ranges, count = _RANGES[code]
        if type(v) is not list or len(v) != count:
            raise LeanError(f"{where} field 'ints' must be a list of {count} integers "
                            f"({' '.join(_HEADER_NAMES + kind.params)}), got {_show(v)}")
        in0, in1, out, act = v[0], v[1], v[2], v[3]
        _int(in0, 0, last, where, " ints in0")
        _int(in1, -1 if code != 4 else 0, last if kind.residual else -1, where, " ints in1")
        _int(out, 1, last, where, " ints out")
        _int(act, 0, 2, where, " ints act")
        for x, (name, lo, hi) in zip(v[4:], ranges):
            if type(x) is not int or not lo <= x <= hi:
                _int(x, lo, hi, where, " ints " + name)
        k = op.get("kernel")
        ktype = kind.kernel if kind.kernel != "mode" else ("gemv", "conv")[v[18]]
        if ktype is None:
            if k is not None:
                raise LeanError(f"{where} field 'kernel' must be null for this kind, got {_show(k)}")
            kgeom = None
        else:
            if not isinstance(k, dict) or k.get("type") != ktype:
                raise LeanError(f"{where} field 'kernel' must be a {ktype} kernel, got "
                                f"{_show(k.get('type') if isinstance(k, dict) else k)}")
            kgeom = _KERNELS[ktype](k, arrays, precision, where)
        problem = kind.geometry(v, kgeom)
        if problem:
            raise LeanError(f"{where} {problem}")
        lo, hi = _array(arrays, op.get("floats"), "float32", 2 + kind.floats(v), where, " field 'floats'").ravel()[:2].tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise LeanError(f"{where} field 'floats': the clamp bounds must be finite, got {lo}, {hi}")
        # buffers: what the op reads must have been written and fit; what it writes must fit
        plane, oplane = v[_C] * v[_H] * v[_W], v[_CO] * v[_HO] * v[_WO]
        if not written[in0]:
            raise LeanError(f"{where} ints in0: reads buffer {in0} before any op writes it")
        if plane > sizes[in0] or (in0 == 0 and plane != size_in):
            raise LeanError(f"{where} ints in0: reads {plane} floats per sample from buffer {in0}"
                            f"{' (the input)' if in0 == 0 else ''}, which holds {sizes[in0]}")
        if in1 >= 0:
            if not written[in1]:
                raise LeanError(f"{where} ints in1: reads buffer {in1} before any op writes it")
            if oplane > sizes[in1] or (in1 == 0 and oplane != size_in):
                raise LeanError(f"{where} ints in1: reads {oplane} floats per sample from buffer {in1}, which holds "
                                f"{sizes[in1]}")
        if oplane > sizes[out] or (out == 1 and oplane != size_out):
            raise LeanError(f"{where} ints out: writes {oplane} floats per sample to buffer {out}"
                            f"{' (the output)' if out == 1 else ''}, which holds {sizes[out]}")
        if (out == in0 and not kind.in_place) or (out == in1 and code != 4):
            raise LeanError(f"{where} ints out: buffer {out} is also an input, which this kind cannot run in place")
        written[out] = 1
        if oplane > most[out]:
            most[out] = oplane
    if not written[1]:
        raise LeanError("plan field 'ops': no op writes the output (buffer 1)")
    for b in range(2, len(sizes)):  # a buffer larger than anything written to it would only waste memory
        if sizes[b] > most[b]:
            raise LeanError(f"plan field 'buffers'[{b}]: holds {sizes[b]} floats per sample, but no op writes more than "
                            f"{most[b]} there")


# ------------------------------------------------------------------------------------------- JSON
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
        self.conv_create_bf16 = fn("up_conv_create_bf16", p, p, c_int, c_int, p, p, p, p, c_int)
        self.conv_engine = fn("up_conv_engine", c_int, p)
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
        verify_plan(header, arrays)
        #: bytes of the plan's own buffers per sample of a batch (what a run of N samples allocates, times N)
        self.bytes_per_sample = 4 * sum(header["buffers"][2:])
        self.fns = fns = _Functions(lib)
        self.n_ops = len(header["ops"])
        self.amx_convs = 0  # convs that run on AMX tiles (bf16 kernels on a CPU with AMX)
        kernels: list[tuple[Any, int]] = []  # filled below; the finalizer frees what is in it by then
        # the executor checks each op against every buffer's size, the caller's input and output included
        sizes = np.asarray([_prod(tuple(header["input_shape"])), _prod(tuple(header["output_shape"])),
                            *header["buffers"][2:]], dtype=np.int64)
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
        precision = k.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise LeanError(f"{where}: kernel precision {precision!r} is not one of {PRECISIONS}")
        ptr = array(k.get("panel_ptr"), np.int32, where)
        ch = array(k.get("ch"), np.int32, where)
        w = array(k.get("w"), np.uint16 if precision == "bf16" else np.float32, where)
        bias = array(k.get("bias"), np.float32, where)
        if ptr is None or ch is None or w is None:
            raise LeanError(f"{where}: its kernel lacks panel_ptr, ch or w")
        if k.get("type") == "conv":
            geom = np.asarray(k["geom"], dtype=np.int32)
            rows = int(k["rows"])
            args = (_ptr(geom), rows, (int(geom[0]) + rows - 1) // rows, _ptr(ptr), _ptr(ch), _ptr(w), _ptr(bias))
            if precision == "bf16":
                handle = fns.conv_create_bf16(*args, 0 if k.get("engine") == "fp32" else 1)
            else:
                handle = fns.conv_create(*args)
            destroy = fns.conv_destroy
            if handle:
                self.amx_convs += int(fns.conv_engine(handle))
        elif k.get("type") == "gemv":
            co, ci = int(k["out"]), int(k["in"])
            if precision == "bf16":  # widened: the GEMV has no bf16 form (exact; see the module docstring)
                w = (w.astype(np.uint32) << 16).view(np.float32)
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
            raise LeanError(f"{where}: the native {k['type']} kernel refused its arrays (kernel.panel_ptr not from 0 upwards, "
                            "kernel.ch out of range, or out of memory)")
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
    ``source_dir``). ``threads`` (>= 1): threads of the native kernels (default: what the plan was exported
    for). ``isa`` / ``cache_dir``: as :func:`build_library`. Calls from several Python threads take turns.
    A bf16 plan (``precision``) on a CPU without avx512_bf16 or amx_bf16 is refused in one line (LeanError)
    before anything is built, unless ``allow_fp32_fallback``. ``amx_convs``: how many convs run on AMX tiles.
    """

    def __init__(self, path: str | os.PathLike = ".", *, threads: int | None = None, isa: str | None = None,
                 cache_dir: str | os.PathLike | None = None, source_dir: str | os.PathLike | None = None,
                 allow_fp32_fallback: bool = False) -> None:
        self.path = Path(path)
        self.header, arrays = read_plan(self.path)
        verify_plan(self.header, arrays)  # before any field is used, and before the C is even compiled
        self.precision = str(self.header.get("precision", "fp32"))
        if self.precision not in PRECISIONS:
            raise LeanError(f"{self.path / PLAN_FILE}: precision {self.precision!r} is not one of {PRECISIONS}")
        if not allow_fp32_fallback:
            check_precision(self.precision)
        self.input_shape = tuple(int(s) for s in self.header["input_shape"])
        self.output_shape = tuple(int(s) for s in self.header["output_shape"])
        self.threads = _check_threads(threads if threads is not None else int(self.header.get("threads") or 1))
        self.source = dict(self.header.get("source") or {})
        self.lib = load_library(self.path if source_dir is None else source_dir, isa=isa, cache_dir=cache_dir)
        self.isa = _Functions(self.lib).isa().decode()
        self.plan = NativePlan(self.lib, self.header, arrays)
        self.amx_convs = self.plan.amx_convs
        self._lock = threading.Lock()

    def run(self, x: np.ndarray, threads: int | None = None, *, check_finite: bool = True) -> np.ndarray:
        """``x`` float32 ``[N, *input_shape]`` (any ``N >= 0``) -> a new float32 ``[N, *output_shape]``.

        LeanError for another shape or dtype, and (unless ``check_finite=False``, which saves one pass over
        ``x``) for NaN or inf in ``x``: the kernels would turn them into finite-looking garbage."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 1 or tuple(x.shape[1:]) != self.input_shape:
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise LeanError(f"the model takes a float32 array [N, {', '.join(map(str, self.input_shape))}], got {got}; "
                            "convert with x.astype(np.float32) and reshape")
        if check_finite and not np.isfinite(x).all():
            raise LeanError("the input holds NaN or inf; pass finite values (or check_finite=False to skip this check)")
        n = int(x.shape[0])
        need = n * self.plan.bytes_per_sample
        if need > _memory_bytes():
            raise MemoryError(f"a batch of {n} needs {need / 2**30:.1f} GiB of activations, more than this machine's memory")
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


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (a very large number where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


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
    parser.add_argument("--threads", type=int, default=None, help="kernel threads (default: the plan's)")
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
          f"{list(y.shape)}; {1e3 * best:.3f} ms per pass (least of 20, {model.threads} thread(s), {model.isa}, "
          f"{model.precision}{f', {model.amx_convs} convs on AMX' if model.amx_convs else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
