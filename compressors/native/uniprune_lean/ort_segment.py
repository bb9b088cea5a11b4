"""A segmented plan: native plans and ONNX Runtime graphs in one chain, for networks with nodes the plan has no op
for. Numpy, ctypes and (only where a plan holds an ONNX segment) onnxruntime; never torch.

A segmented header holds ``"segments"`` in place of ``"ops"`` and ``"buffers"``::

    {"format": "uniprune.lean/1", "input_shape": [...], "output_shape": [...], "precision": ..., "threads": T,
     "batch_size": N,
     "segments": [{"runs_on": "native", "nodes": ["conv1", ...],
                   "plan": {"input_shape", "output_shape", "buffers", "ops", "precision", ...}},   # a plan header
                  {"runs_on": "onnxruntime", "nodes": ["softplus", "tanh", "mul"],
                   "onnx": "s1.onnx",                     # a uint8 array of weights.bin: the ONNX model's bytes
                   "sha256": "...", "input_shape": [...], "output_shape": [...]}, ...]}

Each segment takes one float32 tensor ``[N, *input_shape]`` (NCHW, or ``[N, F]``: the order both torch and the
plan's buffers hold it in) and gives one ``[N, *output_shape]``, the next segment's input. An ONNX segment's
model takes input ``"x"`` and gives ``"y"`` with a free batch axis. ONNX bytes are data (a protobuf ONNX
Runtime parses), never code this loader imports.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .common import _WEIGHT_DTYPES, MAX_BATCH, MAX_OPS, MAX_THREADS, PRECISIONS, LeanError, _int, _prod, _show
from .header import _shape

RUNS_ON = ("native", "onnxruntime")


def is_segmented(header: Mapping[str, Any]) -> bool:
    """Whether ``header`` is a segmented plan's (it holds ``"segments"``)."""
    return isinstance(header, Mapping) and "segments" in header


def verify_segments(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], verify_one: Any) -> None:
    """Check a segmented header before anything native or ONNX Runtime sees it; a one-line LeanError naming the
    segment and field otherwise. Each native segment's plan goes through ``verify_one`` (the plan verifier);
    each ONNX segment's bytes must be a 1-D uint8 array whose sha256 the segment records; the shapes must
    chain from the header's input to its output."""
    segments = header.get("segments")
    if type(segments) is not list or not 1 <= len(segments) <= MAX_OPS:
        raise LeanError(f"plan field 'segments' must be a list of 1 to {MAX_OPS} segments, got {_show(segments)}")
    if "ops" in header or "buffers" in header:
        raise LeanError("a segmented plan holds its ops inside its segments, not in fields 'ops' or 'buffers'")
    precision = header.get("precision", "fp32")
    if type(precision) is not str or precision not in _WEIGHT_DTYPES:
        raise LeanError(f"plan field 'precision' must be one of {', '.join(PRECISIONS)}, got {_show(precision)}")
    for key, hi in (("threads", MAX_THREADS), ("batch_size", MAX_BATCH)):
        if header.get(key) is not None:
            _int(header[key], 1, hi, "plan field ", repr(key))
    shape = _shape(header.get("input_shape"), "plan field 'input_shape'")
    out = _shape(header.get("output_shape"), "plan field 'output_shape'")
    for k, seg in enumerate(segments):
        where = f"plan segment {k}"
        if not isinstance(seg, Mapping) or seg.get("runs_on") not in RUNS_ON:
            got = seg.get("runs_on") if isinstance(seg, Mapping) else seg
            raise LeanError(f"{where} field 'runs_on' must be one of {', '.join(RUNS_ON)}, got {_show(got)}")
        nodes = seg.get("nodes")
        if type(nodes) is not list or not all(type(n) is str for n in nodes):
            raise LeanError(f"{where} field 'nodes' must be a list of node names, got {_show(nodes)}")
        if seg["runs_on"] == "native":
            plan = seg.get("plan")
            if not isinstance(plan, Mapping) or is_segmented(plan):
                raise LeanError(f"{where} field 'plan' must be a plan header without segments, got {_show(plan)}")
            if _WEIGHT_DTYPES.get(plan.get("precision", "fp32")) != _WEIGHT_DTYPES[precision]:
                raise LeanError(f"{where} (native) field 'precision': {_show(plan.get('precision'))} in a {precision} plan")
            try:
                verify_one(plan, arrays)
            except LeanError as exc:
                raise LeanError(f"{where} (native): {exc}") from None
            seg_in = _shape(plan.get("input_shape"), f"{where} plan field 'input_shape'")
            seg_out = _shape(plan.get("output_shape"), f"{where} plan field 'output_shape'")
        else:
            seg_in = _shape(seg.get("input_shape"), f"{where} field 'input_shape'")
            seg_out = _shape(seg.get("output_shape"), f"{where} field 'output_shape'")
            onnx_bytes(seg, arrays, where)
        if seg_in != shape:
            raise LeanError(f"{where} takes {list(seg_in)} per sample, but what comes before it gives {list(shape)}")
        shape = seg_out
    if shape != out:
        raise LeanError(f"the last segment gives {list(shape)} per sample, but plan field 'output_shape' says {list(out)}")


def onnx_bytes(seg: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str) -> bytes:
    """An ONNX segment's model bytes: its ``"onnx"`` array (1-D uint8) checked against its ``"sha256"``."""
    name = seg.get("onnx")
    a = arrays.get(name) if type(name) is str else None
    if a is None:
        raise LeanError(f"{where} (onnxruntime) field 'onnx' names array {_show(name)}, which the plan's arrays do "
                        "not hold; the artifact is incomplete: export it again")
    if a.dtype != np.uint8 or a.ndim != 1 or a.size == 0:
        raise LeanError(f"{where} (onnxruntime): array {name!r} must be non-empty 1-D uint8 (the ONNX model's bytes), "
                        f"got {a.dtype.name} {list(a.shape)}")
    data = a.tobytes()
    if hashlib.sha256(data).hexdigest() != seg.get("sha256"):
        raise LeanError(f"{where} (onnxruntime): the ONNX bytes in array {name!r} do not match the segment's sha256; "
                        "the artifact is damaged: export it again")
    return data


class OrtSegment:
    """One ONNX segment on ONNX Runtime's CPU provider: ``threads`` intra-op threads (>= 1), sequential."""

    def __init__(self, data: bytes, threads: int, where: str, shapes: tuple[Any, Any] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise LeanError(f"{where} runs on ONNX Runtime, which is not installed: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings would print on every load
        # the native pool and ORT's would spin against each other between segments
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT's own errors (bad protobuf, bad graph) as one line
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise LeanError(f"{where}: ONNX Runtime cannot load its ONNX model ({first[:160]}); the artifact is damaged: "
                            "export it again") from None
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if names != (["x"], ["y"]):
            raise LeanError(f"{where}: its ONNX model takes {names[0]} and gives {names[1]}, expected ['x'] and ['y']")
        # ``shapes``: the segment's (input, output) per sample, which the model's own must not contradict
        for what, io, want in zip(("takes", "gives"), (self.session.get_inputs()[0], self.session.get_outputs()[0]),
                                  shapes or (None, None)):
            have = list(io.shape or [])[1:]
            if want is not None and (len(have) != len(want) or any(isinstance(h, int) and h != w
                                                                    for h, w in zip(have, want))):
                raise LeanError(f"{where}: its ONNX model {what} {have} per sample, but the segment says {list(want)}")
        self.where = where

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["y"], {"x": x})[0]


_ARRAY_TYPES: dict[int, Any] = {}


def _floats(count: int) -> Any:
    """``ctypes.c_float * count``, made once per count (a new array type costs more than the view it makes)."""
    t = _ARRAY_TYPES.get(count)
    if t is None:
        if len(_ARRAY_TYPES) > 256:
            _ARRAY_TYPES.clear()
        t = _ARRAY_TYPES[count] = ctypes.c_float * count
    return t


class SegmentChain:
    """A verified segmented plan, ready to run: its native plans (``plan_type``, e.g. NativePlan, on ``lib``) and
    ONNX Runtime sessions (``threads`` intra-op threads each). ``run`` has :class:`~.native.NativePlan`'s
    signature, so a loader runs either alike; ``nodes`` lists ``(runs_on, node names)`` per segment."""

    def __init__(self, lib: Any, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], threads: int,
                 plan_type: Any) -> None:
        self.parts: list[tuple[str, Any, tuple[int, ...], int]] = []  # (runs_on, runner, output shape, ops before)
        self.nodes: list[tuple[str, list[str]]] = []
        self.bytes_per_sample = 0
        self.amx_convs = self.dot_convs = self.n_ops = 0
        self.input_shape = tuple(int(s) for s in header["input_shape"])
        for k, seg in enumerate(header["segments"]):
            if seg["runs_on"] == "native":
                plan = plan_type(lib, seg["plan"], arrays, verified=True)
                self.parts.append(("native", plan, tuple(seg["plan"]["output_shape"]), self.n_ops))
                self.n_ops += plan.n_ops
                self.amx_convs += plan.amx_convs
                self.dot_convs += plan.dot_convs
                self.bytes_per_sample += plan.bytes_per_sample
            else:
                runner = OrtSegment(onnx_bytes(seg, arrays, f"plan segment {k}"), threads, f"plan segment {k}",
                                    (seg["input_shape"], seg["output_shape"]))
                self.parts.append(("onnxruntime", runner, tuple(seg["output_shape"]), self.n_ops))
            self.bytes_per_sample += 4 * _prod(self.parts[-1][2])  # each segment's output, held between segments
            self.nodes.append((seg["runs_on"], list(seg["nodes"])))

    def run(self, x: int, y: int, n: int, threads: int, op_ns: int | None = None) -> int:
        """One pass over ``n`` samples from the address ``x`` into ``y`` (float32, as NativePlan.run); ``op_ns``:
        the address of ``int64[n_ops]``, the native ops' wall times in ns. Returns 0, or a native segment's code
        with its op index counted over every native op of the chain. ONNX Runtime's failures raise
        RuntimeError."""
        cur, held, cur_shape, last = x, None, self.input_shape, len(self.parts) - 1
        for k, (runs_on, runner, shape, before) in enumerate(self.parts):
            if runs_on == "native":
                # each segment's output is a fresh array (the chain may run from several threads' models)
                src = held  # what ``cur`` points into stays alive until the native call has read it
                held = None if k == last else np.empty(n * _prod(shape), dtype=np.float32)
                out = y if held is None else held.ctypes.data
                rc = runner.run(cur, out, n, threads, None if op_ns is None else op_ns + 8 * before)
                del src
                if rc:
                    return rc + 100 * before if rc >= 100 else rc
                cur = out
            else:
                if held is None:  # the caller's input: a view of it, no copy
                    held = np.ctypeslib.as_array(_floats(n * _prod(cur_shape)).from_address(cur))
                got = runner.run(held.reshape(n, *cur_shape))
                if got.dtype != np.float32 or got.shape != (n, *shape):
                    raise RuntimeError(f"{runner.where} (onnxruntime) gave {got.dtype} {list(got.shape)}, expected "
                                       f"float32 [{n}, {', '.join(map(str, shape))}]")
                if k == last:
                    np.ctypeslib.as_array(_floats(got.size).from_address(y))[:] = got.reshape(-1)
                else:
                    held = np.ascontiguousarray(got)  # ONNX Runtime's own array, handed on as it is
                    cur = held.ctypes.data
            cur_shape = shape
        return 0

    def close(self) -> None:
        """Free the native plans now (also done when they are collected)."""
        for runs_on, runner, _, _ in self.parts:
            if runs_on == "native":
                runner.close()


def onnx_nodes(segments: Any) -> list[str]:
    """The node names that run on ONNX Runtime, in order, from a segmented header's ``"segments"`` or from the
    ``[{"runs_on", "nodes"}, ...]`` a timing reports (the same two keys); ``[]`` for None."""
    return [n for seg in segments or [] if seg["runs_on"] == "onnxruntime" for n in seg["nodes"]]


def plan_ops(header: Mapping[str, Any]) -> list[Any]:
    """Every native op record of ``header``, a segmented one's in segment order."""
    if not is_segmented(header):
        return list(header.get("ops") or [])
    return [op for seg in header["segments"] if seg.get("runs_on") == "native" for op in seg["plan"]["ops"]]


__all__ = ["RUNS_ON", "OrtSegment", "SegmentChain", "is_segmented", "onnx_bytes", "onnx_nodes", "plan_ops",
           "verify_segments"]
