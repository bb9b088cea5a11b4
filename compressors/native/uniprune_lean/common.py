"""The lean plan format's names, limits and errors, shared by every module of the loader."""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT = "uniprune.lean/1"
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.bin"
#: The C sources a plan needs, compiled into one library: the kernels and the plan executor.
SOURCES = ("uniprune_kernels.c", "uniprune_plan.c", "uniprune_bf16.c")
#: The header they share (allocation, clocks, index checks), hashed with them and shipped beside them.
HEADERS = ("uniprune_common.h",)
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


class IsaNameError(BuildError, ValueError):
    """``UNIPRUNE_ISA`` (or ``isa=``) names no ISA this loader knows."""


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
#: a bf16 conv record's "engine": auto (AMX where present, else the bf16 dot product where present, else the
#: float32 kernels), fp32, or dpbf16 (the dot product even where AMX is present); see up_conv_create_bf16
_ENGINES = ("auto", "fp32", "dpbf16")
_HEADER_NAMES = ("in0", "in1", "out", "act", "C", "H", "W", "Co", "Ho", "Wo")
_IN0, _IN1, _OUT, _ACT, _C, _H, _W, _CO, _HO, _WO = range(10)  # positions in an op's "ints"
#: Each op parameter's range; a name shared by several kinds means the same thing in each.
_PARAM_RANGES: dict[str, tuple[int, int]] = {
    "kh": (1, MAX_PARAM), "kw": (1, MAX_PARAM), "sh": (1, MAX_PARAM), "sw": (1, MAX_PARAM), "ph": (0, MAX_PARAM),
    "pw": (0, MAX_PARAM), "dh": (1, MAX_PARAM), "dw": (1, MAX_PARAM), "groups": (1, MAX_DIM), "has_bias": (0, 1),
    "is_max": (0, 1), "count_include_pad": (0, 1), "clo": (-MAX_DIM, MAX_DIM), "pt": (-MAX_PARAM, MAX_PARAM),
    "pl": (-MAX_PARAM, MAX_PARAM), "mode": (0, 1), "ooff": (0, MAX_DIM), "ioff": (0, MAX_DIM), "cnt": (1, MAX_DIM),
    "g": (1, MAX_DIM), "has_affine": (0, 1), "heads": (1, MAX_DIM), "bf16": (0, 1), "rows": (1, MAX_DIM)}
ATTN_MAX_TOKENS = 16384  # csrc/uniprune_plan.c: an attention's tokens (H * W), its scores of one query on the stack
ACT_LAST = 8  # csrc/uniprune_plan.c: relu, clamp, hardswish, hardsigmoid, silu, gelu, sigmoid, gelu (tanh)
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


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n

