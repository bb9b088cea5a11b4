"""A verified plan on the native library: its kernel plans and the executor, freed when collected."""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from .common import _KERNEL_ROWS, PRECISIONS, SOURCES, BuildError, LeanError, PlanRefused, _prod
from .verify import verify_plan


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
        self.gemv_create_bf16 = fn("up_gemv_create_bf16", p, c_int, c_int, c_int, p, p, p, p, p, p, p, p, p, i64, p)
        self.gemv_destroy = fn("up_gemv_destroy", None, p)
        self.plan_create = fn("up_plan_create", p, c_int, p)
        self.plan_add = fn("up_plan_add", c_int, p, c_int, p, c_int, p, i64, p)
        self.plan_run = fn("up_plan_run", c_int, p, p, p, c_int, c_int)
        self.plan_run_timed = fn("up_plan_run_timed", c_int, p, p, p, c_int, c_int, p)
        self.plan_destroy = fn("up_plan_destroy", None, p)
        self.isa = fn("up_isa", ctypes.c_char_p)


_ENGINE_CODES = {"fp32": 0, "auto": 1, "dpbf16": 2}  # a bf16 conv record's engine, as up_conv_create_bf16 takes it


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
    Raises :class:`PlanRefused` for an op the executor refuses, LeanError for a malformed header. The plan is
    verified first (:func:`~.verify.verify_plan`) unless ``verified``: the caller just verified exactly these
    ``header`` and ``arrays`` (a load verifies once).
    """

    def __init__(self, lib: ctypes.CDLL, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
                 verified: bool = False) -> None:
        if not verified:
            verify_plan(header, arrays)
        #: bytes of the plan's own buffers per sample of a batch (what a run of N samples allocates, times N)
        self.bytes_per_sample = 4 * sum(header["buffers"][2:])
        self.fns = fns = _Functions(lib)
        self.n_ops = len(header["ops"])
        self.amx_convs = 0  # convs that run on AMX tiles (bf16 kernels on a CPU with AMX)
        self.dot_convs = 0  # convs that run on the bf16 dot product (VDPBF16PS: avx512_bf16, no AMX or told so)
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
                handle = fns.conv_create_bf16(*args, _ENGINE_CODES[k.get("engine", "auto")])
            else:
                handle = fns.conv_create(*args)
            destroy = fns.conv_destroy
            if handle:
                runs_on = int(fns.conv_engine(handle))
                self.amx_convs += runs_on == 1
                self.dot_convs += runs_on == 2
        elif k.get("type") == "gemv":
            co, ci = int(k["out"]), int(k["in"])
            panels = (co + _KERNEL_ROWS - 1) // _KERNEL_ROWS
            # no compact unified blocks: a lowered linear runs its unified blocks materialised
            uptr = np.zeros(panels + 1, dtype=np.int32)
            one_i, one_f, one_b = np.zeros(1, np.int32), np.zeros(1, np.float32), np.zeros(1, np.uint8)
            create = fns.gemv_create_bf16 if precision == "bf16" else fns.gemv_create  # bf16: kept in bf16
            handle = create(co, ci, panels, _ptr(ptr), _ptr(ch), _ptr(w), _ptr(uptr), _ptr(one_i), _ptr(one_i),
                            _ptr(one_i), _ptr(one_f), _ptr(one_b), 0, _ptr(bias))
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

