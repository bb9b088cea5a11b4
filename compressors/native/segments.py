"""A plan in segments: the nodes the lowering cannot turn into plan ops run on ONNX Runtime inside the plan,
between native plans, so a missing op costs its own time rather than sending the whole model to the Python path.

The traced graph is cut where exactly one tensor is live (a ``[N, C, H, W]`` or ``[N, F]`` float32 value held in
torch's order; nothing else, not even a size, crosses a cut). Around each node that did not lower, the nearest
cuts before and after bound an ONNX segment (touching ones merge); what lies between ONNX segments is lowered as
native plans. Inside a residual block, where the shortcut is live beside the main branch, the ONNX segment is
the whole block. Each ONNX segment is its sub-graph exported with ``torch.onnx.export`` (the structured layers
in it as their dense, masked convolutions), checked against torch on the example input, and held as bytes in
the plan (:mod:`.uniprune_lean.ort_segment` gives the format and runs it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..core.errors import KernelBuildError, ModelError
from . import uniprune_lean as lean_rt
from .runtime import CompiledConv2d, CompiledLinear

_OPSET = 17  # as the ONNX Runtime engine's export (latency/engines.py)
_MATCH = 1e-4  # an ONNX segment's output against torch's on the example, relative to its scale


class _Dense(nn.Module):
    """A compiled layer as the dense (masked, BatchNorm-folded) op it computes: what ONNX can export."""

    def __init__(self, layer: CompiledConv2d | CompiledLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer._dense(x)


def _why(exc: BaseException) -> str:
    return ((str(exc).splitlines() or [""])[0] or type(exc).__name__)[:160]


def _cuts(gm: torch.fx.GraphModule, order: list[torch.fx.Node], batch: int,
          reordered: set[str]) -> tuple[list[int], dict[int, torch.fx.Node]]:
    """Positions after which exactly one value is live and it is a boundary a segment may have: ``c`` means
    "after ``order[c]``" (-1: before the first node). Returns the positions and the value live at each."""
    pos = {n: i for i, n in enumerate(order)}
    end = len(order)
    last: dict[torch.fx.Node, int] = {}
    for n in gm.graph.nodes:
        at = pos.get(n, end if n.op == "output" else -1)
        for a in n.all_input_nodes:
            if a.op != "get_attr":  # parameters are copied into every segment that reads them
                last[a] = max(last.get(a, -1), at)
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    live = {placeholder} if last.get(placeholder, -1) >= 0 else set()
    cuts, value = [], {}
    for c in range(-1, end):
        if c >= 0:
            n = order[c]
            if last.get(n, -1) > c:
                live.add(n)
            live -= {a for a in list(live) if last.get(a, -1) <= c}
        if len(live) == 1:
            (v,) = live
            meta = v.meta.get("tensor_meta")
            if (isinstance(meta, TensorMetadata) and meta.dtype == torch.float32 and len(meta.shape) in (2, 4)
                    and int(meta.shape[0]) == batch and v.name not in reordered):
                cuts.append(c)
                value[c] = v
    return cuts, value


def _subgraph(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node], start: torch.fx.Node, stop: torch.fx.Node,
              dense: bool) -> torch.fx.GraphModule:
    """``nodes`` as a graph of their own: ``start``'s value in, ``stop``'s out; parameters they read copied in;
    with ``dense`` compiled layers as their dense ops (what ONNX exports)."""
    g = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {start: g.placeholder("x")}
    root: dict[str, Any] = {}

    def arg(a: torch.fx.Node) -> torch.fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise ModelError(f"node {a.name!r} crosses a segment's boundary; this is a bug, please report it")
            value: Any = gm
            for part in str(a.target).split("."):
                value = getattr(value, part)
            root[str(a.target)] = value
            env[a] = g.get_attr(a.target)
        return env[a]

    for n in nodes:
        env[n] = g.node_copy(n, arg)
        if n.op == "call_module":
            m = gm.get_submodule(str(n.target))
            root[str(n.target)] = _Dense(m) if dense and isinstance(m, (CompiledConv2d, CompiledLinear)) else m
    g.output(env[stop])
    return torch.fx.GraphModule(root, g)


def _segments(gm: torch.fx.GraphModule, example: torch.Tensor, failed: set[str],
              reordered: set[str]) -> list[tuple[str, list[torch.fx.Node], torch.fx.Node, torch.fx.Node]]:
    """The graph as ``[(runs_on, nodes, value in, value out), ...]`` in order (see the module docstring)."""
    order = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    cuts, value = _cuts(gm, order, int(example.shape[0]), reordered)
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if -1 not in cuts or not order or cuts[-1] != len(order) - 1 or value[cuts[-1]] is not out:
        raise ModelError("the graph's input or output is not one [N, C, H, W] or [N, F] float32 tensor")
    spans: list[list[int]] = []
    for f in sorted(i for i, n in enumerate(order) if n.name in failed):
        lo = max(c for c in cuts if c < f)
        hi = min(c for c in cuts if c >= f)
        if spans and lo <= spans[-1][1]:  # overlapping or touching: one ONNX segment
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    if not spans:
        raise ModelError("no node failed to lower, yet the plan could not be built")
    parts = []
    at = -1
    for lo, hi in spans:
        if lo > at:
            parts.append(("native", order[at + 1:lo + 1], value[at], value[lo]))
        parts.append(("onnxruntime", order[lo + 1:hi + 1], value[lo], value[hi]))
        at = hi
    if at < len(order) - 1:
        parts.append(("native", order[at + 1:], value[at], value[len(order) - 1]))
    return parts


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null: the exporter prints its failed graph from C++, past Python's
    sys.stdout, and stdout is for --json alone."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _export(sub: torch.fx.GraphModule, x: torch.Tensor, names: list[str]) -> tuple[bytes, torch.Tensor]:
    """``sub`` as ONNX bytes (batch axis free), checked on ONNX Runtime against torch on ``x``; and torch's output."""
    with torch.no_grad():
        ref = sub(x)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet():
            warnings.simplefilter("ignore")  # the exporter's tracer warnings
            torch.onnx.export(sub, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=_OPSET)
    except Exception as exc:  # noqa: BLE001 - any exporter failure: no segment, in one line
        raise ModelError(f"node(s) {', '.join(names[:4])} cannot be exported to ONNX either ({_why(exc)})") from None
    data = buf.getvalue()
    try:
        got = lean_rt.OrtSegment(data, 1, "an ONNX segment").run(x.numpy())
    except lean_rt.LeanError as exc:
        raise ModelError(f"node(s) {', '.join(names[:4])}: {exc}") from None
    err = float(np.abs(got - ref.numpy()).max() / max(float(ref.abs().max()), 1e-12)) if ref.numel() else 0.0
    if not err <= _MATCH:
        raise ModelError(f"node(s) {', '.join(names[:4])} give other values on ONNX Runtime than in torch "
                         f"(relative error {err:.2g})")
    return data, ref


def _prefixed(spec: Any, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A native segment's plan header (without format) and arrays, every array name starting with ``prefix``."""
    header = {k: v for k, v in spec.header.items() if k != "format"}
    ops = []
    for rec in header["ops"]:
        rec = dict(rec, floats=prefix + rec["floats"])
        if rec.get("kernel"):
            rec["kernel"] = {k: prefix + v if isinstance(v, str) and v in spec.arrays else v
                             for k, v in rec["kernel"].items()}
        ops.append(rec)
    header["ops"] = ops
    return header, {prefix + k: v for k, v in spec.arrays.items()}


def segmented_spec(gm: torch.fx.GraphModule, example: torch.Tensor, error: ModelError,
                   lower: Callable[[torch.fx.GraphModule, torch.Tensor], Any], *, threads: int,
                   precision: str) -> Any:
    """The plan of ``gm`` (traced, BatchNorm folded) in segments, ``error`` being the lowering's ModelError
    (its ``.failed`` nodes go to ONNX Runtime); ``lower(graph, x)`` lowers a segment to a LeanSpec. A LeanSpec
    whose header holds ``"segments"`` (:mod:`.uniprune_lean.ort_segment`). A one-line ModelError, starting with
    ``error``'s own first line, when no segmented plan can be made (a node ONNX cannot export either, an
    output that is not one tensor): the caller then keeps the Python path."""
    from .plan import LeanSpec  # plan imports this module lazily; LeanSpec is plain data

    try:
        parts = _segments(gm, example, set(getattr(error, "failed", [])), set(getattr(error, "reordered", [])))
        segments, arrays = [], {}
        x = example
        for k, (runs_on, nodes, start, stop) in enumerate(parts):
            names = [n.name for n in nodes]
            sub = _subgraph(gm, nodes, start, stop, dense=runs_on == "onnxruntime")
            if runs_on == "native":
                plan, more = _prefixed(lower(sub, x), f"s{k}.")
                arrays.update(more)
                segments.append({"runs_on": "native", "nodes": names, "plan": plan})
                with torch.no_grad():
                    x = sub(x)
            else:
                data, y = _export(sub, x, names)
                arrays[f"s{k}.onnx"] = np.frombuffer(data, dtype=np.uint8).copy()
                segments.append({"runs_on": "onnxruntime", "nodes": names, "onnx": f"s{k}.onnx",
                                 "sha256": hashlib.sha256(data).hexdigest(), "input_shape": list(x.shape[1:]),
                                 "output_shape": list(y.shape[1:])})
                x = y
    except ModelError as exc:
        head = str(error).split("; run the compiled")[0]
        why = ModelError(f"{head}; nor can it run on ONNX Runtime inside the plan: {_why(exc)}; "
                         "run the compiled model's Python path instead")
        why.blockers = list(getattr(error, "blockers", [str(error)]))  # type: ignore[attr-defined]
        raise why from None
    header = {"format": lean_rt.FORMAT, "input_shape": list(example.shape[1:]), "output_shape": list(x.shape[1:]),
              "threads": int(threads), "batch_size": int(example.shape[0]), "precision": precision,
              "segments": segments}
    return LeanSpec(header, arrays)


def build_chain(lib: Any, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], threads: int) -> Any:
    """A verified segmented plan's :class:`~.uniprune_lean.SegmentChain` on ``lib``, ONNX Runtime on ``threads``
    threads; the runtime's errors as the project's, in one line."""
    try:
        return lean_rt.SegmentChain(lib, header, arrays, threads, lean_rt.NativePlan)
    except lean_rt.BuildError as exc:
        raise KernelBuildError(str(exc)) from None
    except lean_rt.LeanError as exc:
        raise ModelError(f"the segmented plan cannot be built: {exc}") from None


def placement(segments: list[tuple[str, list[str]]] | None) -> list[dict[str, Any]] | None:
    """``[{"runs_on": "native" | "onnxruntime", "nodes": [...]}, ...]``: which nodes ran where (bench's JSON)."""
    return None if segments is None else [{"runs_on": r, "nodes": list(n)} for r, n in segments]


__all__ = ["build_chain", "placement", "segmented_spec"]
