"""From lowered ops to a plan: fusing epilogues, assigning buffers, the op records and arrays of the header, and
the choice of each conv's implementation by timing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.fx

from ..core.errors import ConfigError, KernelBuildError, ModelError
from ..latency.timing import fastest
from . import uniprune_lean as lean_rt
from .planops import (
    _HAS_EPILOGUE,
    _IN_PLACE,
    _TAKES_RESIDUAL,
    ACT_NONE,
    IM2COL_MAX_PIXELS,
    OP_ACT,
    OP_ADD,
    OP_CONV,
    OP_IM2COL,
    OP_SLICEPAD,
    PlanOp,
)


def _fuse(ops: list[PlanOp], input_value: int, output_value: int) -> list[PlanOp]:
    """Fold activations, residual adds and slice-then-pad pairs into the op before them, where that op's
    output feeds nothing else: each fusion saves a pass over an activation and a buffer."""

    def readers() -> Counter:
        c = Counter(v for op in ops for v in op.ins)
        c[output_value] += 1
        return c

    def merge(first: PlanOp, second: PlanOp) -> None:
        first.out, first.shape_out, first.node = second.out, second.shape_out, f"{first.node}+{second.node}"
        ops.remove(second)

    changed = True
    while changed:
        changed = False
        r = readers()
        producer = {op.out: op for op in ops}
        for op in list(ops):
            src = producer.get(op.ins[0])
            if op.kind == OP_ACT and src is not None and src.kind in _HAS_EPILOGUE and src.act == ACT_NONE \
                    and r[op.ins[0]] == 1:
                src.act, src.lo, src.hi = op.act, op.lo, op.hi
                merge(src, op)
                changed = True
                break
            if op.kind == OP_ADD:
                order = {id(o): i for i, o in enumerate(ops)}
                cands = [(order[id(producer[v])], k) for k, v in enumerate(op.ins)
                         if v in producer and producer[v].kind in _TAKES_RESIDUAL and len(producer[v].ins) == 1
                         and producer[v].act == ACT_NONE and r[v] == 1 and op.ins[0] != op.ins[1]]
                if not cands:
                    continue
                k = max(cands)[1]
                conv = producer[op.ins[k]]
                conv.ins.append(op.ins[1 - k])
                conv.act, conv.lo, conv.hi = op.act, op.lo, op.hi
                # the fused op runs where the add ran: the residual exists by then (a downsampling block's
                # shortcut is traced after its conv), and only the add read the conv's output
                ops.remove(conv)
                ops.insert(ops.index(op), conv)
                merge(conv, op)
                changed = True
                break
            if op.kind == OP_SLICEPAD and src is not None and src.kind == OP_SLICEPAD and r[op.ins[0]] == 1 \
                    and src.params[2:] == [0, 0, 0] and op.params[:2] == [1, 1]:
                src.params = src.params[:2] + op.params[2:]
                merge(src, op)
                changed = True
                break
    return ops


def _assign_buffers(ops: list[PlanOp], vshape: Mapping[int, tuple[int, int, int]], input_value: int,
                    output_value: int) -> tuple[dict[int, int], list[int]]:
    """Buffer per value by a linear scan over lifetimes: 0 the input, 1 the output, others shared by values
    that are never live together; elementwise ops write over an input that dies with them."""
    last: dict[int, int] = {}
    for i, op in enumerate(ops):
        for v in op.ins:
            last[v] = i
    numel = {v: s[0] * s[1] * s[2] for v, s in vshape.items()}
    buf = {input_value: 0, output_value: 1}
    sizes = [0, 0]
    free: list[int] = []
    for i, op in enumerate(ops):
        if op.out not in buf:
            chosen = next((buf[v] for v in (op.ins if op.kind == OP_ADD else op.ins[:1]) if op.kind in _IN_PLACE
                           and last[v] == i and buf[v] >= 2 and numel[v] == numel[op.out]), None)
            if chosen is None and free:
                fits = [b for b in free if sizes[b] >= numel[op.out]]
                chosen = min(fits, key=sizes.__getitem__) if fits else max(free, key=sizes.__getitem__)
                free.remove(chosen)
            if chosen is None:
                chosen = len(sizes)
                sizes.append(0)
            buf[op.out] = chosen
            sizes[chosen] = max(sizes[chosen], numel[op.out])
        for v in set(op.ins):
            if last[v] == i and buf[v] >= 2 and buf[v] != buf[op.out]:
                free.append(buf[v])
        if op.out not in last and buf[op.out] >= 2:  # nothing reads it
            free.append(buf[op.out])
    return buf, sizes


def _records(ops: list[PlanOp]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """``ops`` (buffers assigned) as the plan header's op records and their arrays (see uniprune_lean)."""
    records, arrays = [], {}
    for i, op in enumerate(ops):
        head = np.array([op.lo, op.hi], dtype=np.float32)
        arrays[f"op{i}.floats"] = head if op.floats is None else np.concatenate([head, op.floats.reshape(-1)])
        kernel = None
        if op.kernel is not None:
            kernel = {}
            for key, value in op.kernel.items():
                if isinstance(value, np.ndarray):
                    arrays[f"op{i}.{key}"] = value
                    value = f"op{i}.{key}"
                kernel[key] = value
        ints = [op.ins[0], op.ins[1] if len(op.ins) > 1 else -1, op.out, op.act, *op.shape_in, *op.shape_out, *op.params]
        records.append({"kind": op.kind, "node": op.node, "layer": op.layer, "ints": [int(v) for v in ints],
                        "floats": f"op{i}.floats", "kernel": kernel})
    return records, arrays


def _op_from_record(rec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> PlanOp:
    ints = [int(v) for v in rec["ints"]]
    floats = arrays[rec["floats"]]
    return PlanOp(int(rec["kind"]), str(rec.get("node", "")), [ints[0]] + ([ints[1]] if ints[1] >= 0 else []), ints[2],
                  tuple(ints[4:7]), tuple(ints[7:10]), ints[3], float(floats[0]), float(floats[1]), ints[10:],
                  layer=str(rec.get("layer", "")))


def output_tolerance(precision: str) -> float:
    """Largest relative error (of the output's scale) a plan of ``precision`` may show against the float32 model
    it was lowered from: 1e-4 in fp32 (summation order), 5e-2 in bf16 (8-bit mantissas of weights and
    activations: ResNet-56 logits differ by about 1e-2)."""
    return 5e-2 if resolve_precision(precision) == "bf16" else 1e-4


def resolve_precision(precision: str = "auto") -> str:
    """``"fp32"`` or ``"bf16"``: ``auto`` is bf16 where the CPU has avx512_bf16 or amx_bf16, else fp32;
    ConfigError for a name not in ``auto``, ``fp32``, ``bf16``."""
    try:
        return lean_rt.resolve_precision(precision)
    except lean_rt.LeanError as exc:
        raise ConfigError(str(exc)) from None


def _native(lib: Any, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
            verified: bool = False) -> lean_rt.NativePlan:
    """The native plan of ``header`` and ``arrays`` on ``lib``, with the runtime's errors as the project's
    (``verified``: as :class:`~uniprune.compressors.native.uniprune_lean.NativePlan`'s)."""
    try:
        return lean_rt.NativePlan(lib, header, arrays, verified=verified)
    except lean_rt.PlanRefused as exc:
        op = _op_from_record(header["ops"][exc.index], arrays)
        raise ModelError(f"the native plan refused op {op.node!r} ({op.describe()}, {list(op.shape_in)} -> "
                         f"{list(op.shape_out)}, code {exc.code}); run the compiled model's Python path instead") from None
    except lean_rt.BuildError as exc:
        raise KernelBuildError(f"{exc}; rebuild with 'python -m uniprune.compressors.native.kernels --build --force'") from None
    except lean_rt.LeanError as exc:
        raise ModelError(f"the lean plan cannot be built: {exc}") from None


def _choose_convs(lib: Any, ops: list[PlanOp], batch: int, threads: int, choose: str, amx: bool = False) -> None:
    """Run each conv in the implementation of :data:`CONV_IMPLS` that
    :func:`~uniprune.compressors.latency.timing.fastest` finds fastest at ``batch`` samples (im2col forms only up to
    :data:`IM2COL_MAX_PIXELS` output pixels), or as ``choose`` forces (the im2col forms then at any size).
    A bf16 direct conv runs on AMX tiles where the CPU has them (``amx``), else on the bf16 dot product
    (VDPBF16PS) where it has avx512_bf16 (``"engine": "auto"``); either is also timed on the float32 kernels with
    the same bf16 weights (``"engine": "fp32"``), which win on some sparse layers, and on CPUs whose dot
    product is no faster than their float32 FMA (docs/KERNELS.md).

    Each candidate is timed as a one-op plan on random input, its activation included, its residual not."""
    for op in ops:
        if op.kind != OP_CONV or op.alt is None:
            continue
        builders, op.alt = op.alt, None
        pixels = op.shape_out[1] * op.shape_out[2]
        small = choose == "measure" and pixels <= IM2COL_MAX_PIXELS
        engines = (amx or bool(int(lib.up_bf16_caps()) & 1)) and op.kernel is not None and op.kernel.get("precision") == "bf16" and choose in ("measure", "direct")
        names = [choose] if choose not in ("measure", "direct") else list(builders) if small else []
        if not names and not engines:
            continue
        cands: dict[str, PlanOp] = {"direct": op} if choose in ("measure", "direct") else {}
        if engines:
            cands["direct_fp32"] = PlanOp(OP_CONV, op.node, list(op.ins), op.out, op.shape_in, op.shape_out, op.act,
                                          op.lo, op.hi, list(op.params), None, {**op.kernel, "engine": "fp32"})
        for name in names:
            kernel, params = builders[name]()
            cands[name] = PlanOp(OP_IM2COL, op.node, list(op.ins), op.out, op.shape_in, op.shape_out, op.act,
                                 op.lo, op.hi, params, None, kernel)
        best = next(iter(cands))
        if len(cands) > 1:
            x = torch.randn(batch, *op.shape_in)
            y = torch.empty(batch, *op.shape_out)
            plans = {}
            for name, cand in cands.items():
                alone = PlanOp(cand.kind, cand.node, [0], 1, cand.shape_in, cand.shape_out, cand.act, cand.lo, cand.hi,
                               cand.params, None, cand.kernel)
                records, arrays = _records([alone])
                plans[name] = _native(lib, {"buffers": [0, 0], "ops": records, "input_shape": list(cand.shape_in),
                                            "output_shape": list(cand.shape_out),
                                            "precision": (cand.kernel or {}).get("precision", "fp32")}, arrays)
            xp, yp = x.data_ptr(), y.data_ptr()
            best = fastest({k: (lambda p=p, xp=xp, yp=yp: p.run(xp, yp, batch, threads)) for k, p in plans.items()})
            for p in plans.values():
                p.close()
        if best != "direct":
            op.kind, op.params, op.kernel = cands[best].kind, cands[best].params, cands[best].kernel
