"""The lean execution path: a compiled model lowered to one native plan, run in one C call per forward pass.

:func:`~uniprune.compressors.native.runtime.compile_model` gives an ``nn.Module`` whose structured layers call the
native kernels one by one from Python: about 5 µs of Python per layer, i.e. 0.5 ms of a batch-1 ResNet-56
pass. :func:`lower` turns such a model (or a plain one) into a :class:`LeanModel`: the graph is traced with
``torch.fx``, each node becomes an op of ``csrc/uniprune_plan.c`` (conv and linear on the block-sparse
kernels, a layer left dense running there with every block kept; residual adds and activations fused into
the op before them; pooling, flatten, the CIFAR ResNets' option-A shortcut), activations get numbered
buffers that values with disjoint lifetimes share, and a forward pass is one native call.

A graph with a node it cannot lower raises a one-line :class:`~uniprune.compressors.core.errors.ModelError`
naming the node and its op; with ``onnx_fallback=True`` (what bench, the latency table and export ask for) such
nodes run on ONNX Runtime inside the plan instead (:mod:`.segments`: native plans and ONNX segments in turn,
one artifact), and callers keep the Python path (``compile_model``'s module) only where that fails too.

Serialisable: :func:`lower_spec` gives the plan as a :class:`LeanSpec`, a JSON header plus plain numpy arrays
(the kernels' packed weights among them), and a :class:`LeanModel` is always built from one, by
:mod:`uniprune.compressors.native.uniprune_lean`, the numpy-and-ctypes runtime that ``uniprune export`` copies
into an artifact. So what runs in-process, what is timed and what is deployed come from one code path.

Supported: ``Conv2d`` (any kernel, stride, zero padding, dilation; groups > 1 as a direct dense loop),
``Linear`` on ``[N, F]``, ``BatchNorm2d`` not folded (per-channel affine), ReLU / ReLU6 / Hardtanh / clamp,
``+`` of two same-shaped tensors, adaptive / global average pool, average and max pool (no ceil mode),
flatten / ``view(x.size(0), -1)``, Identity, Dropout (eval), strided slicing of H and W and zero ``F.pad``;
the torchvision classifiers' ops (Hardswish, SiLU, GELU, Sigmoid, squeeze-excitation, concat, chunk, channel
shuffle, ceil-mode pools, channels-last LayerNorm and Linear) and a vision transformer's (tokens ``[N, L, E]``
stored channel-major, attention as :class:`~uniprune.compressors.core.attention.HeadAttention` after
``split_attention``, the class token, the position embedding; :mod:`.lower_tokens`).
Inference only, float32, CPU; one input tensor, one output tensor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..core.errors import CheckpointError, ConfigError, ModelError
from ..core.structure import LayerStructure
from ..latency.timing import check_threads
from . import kernels
from . import uniprune_lean as lean_rt
from .lowering import _Lowering, _Tracer
from .planbuild import (
    _assign_buffers,
    _choose_convs,
    _fuse,
    _native,
    _op_from_record,
    _records,
    output_tolerance,
    resolve_precision,
)
from .planops import (  # the op kinds, activations and conv implementations, for callers of plan
    ACT_CLAMP,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_NONE,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_SILU,
    CONV_CHOICES,
    CONV_IMPLS,
    IM2COL_MAX_PIXELS,
    NHWC,
    OP_ACT,
    OP_ADD,
    OP_ADDC,
    OP_AFFINE,
    OP_ATTN,
    OP_CHCOPY,
    OP_CHMUL,
    OP_CHNORM,
    OP_CONV,
    OP_COPY,
    OP_GAP,
    OP_GCONV,
    OP_GEMV,
    OP_IM2COL,
    OP_NAMES,
    OP_POOL,
    OP_ROWCAT,
    OP_SHUFFLE,
    OP_SLICEPAD,
    PlanOp,
)
from .runtime import compile_model, inference_copy


@dataclass
class LeanSpec:
    """A lowered plan in plain form: ``header`` (JSON-able: shapes, buffers, op records naming their arrays;
    the format is :mod:`uniprune.compressors.native.uniprune_lean`'s) and ``arrays`` (``{name: numpy array}``,
    float32 / int32 / uint8). What :class:`LeanModel` is built from and what ``uniprune export`` writes."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def save(self, directory: str | Path, **extra: Any) -> list[Path]:
        """Write ``plan.json`` and ``weights.bin`` into ``directory`` (each atomically; see
        :func:`~uniprune.compressors.native.uniprune_lean.write_plan`); ``extra`` JSON-able fields join the header.
        Returns the files written."""
        return lean_rt.write_plan(directory, {**self.header, **extra}, self.arrays)

    @classmethod
    def load(cls, directory: str | Path) -> LeanSpec:
        """The plan :meth:`save` wrote in ``directory``; a one-line CheckpointError for a missing or damaged one."""
        try:
            header, arrays = lean_rt.read_plan(directory)
        except lean_rt.LeanError as exc:
            raise CheckpointError(str(exc)) from None
        return cls(header, arrays)


class LeanModel(nn.Module):
    """A network as one native plan: ``lean(x)`` is one C call for the whole forward pass.

    Built from a :class:`LeanSpec` (:func:`lower`, :func:`compile_lean`, or one loaded from an artifact).
    ``x``: float32 CPU ``[N, *input_shape]`` (any ``N >= 0``; the per-sample shape is the one it was lowered
    for); returns a new float32 tensor ``[N, *output_shape]``. Buffers for the activations are allocated once
    per larger batch size seen. Calls from several threads take turns (one set of buffers). ``threads``
    (>= 1): threads of the native kernels (default: ``torch.get_num_threads()`` at each call). ``ops`` lists
    what runs (buffer numbers in and out), for inspection; ``header`` is the spec's header. The arrays are
    copied into native memory, so the spec may be dropped afterwards.
    """

    def __init__(self, spec: LeanSpec, threads: int | None = None) -> None:
        super().__init__()
        if threads is not None:
            check_threads(threads)
        header = spec.header
        try:  # every field is checked before one is used, once (the native executor checks its indices too)
            lean_rt.verify_plan(header, spec.arrays)
        except lean_rt.LeanError as exc:
            raise ModelError(f"the lean plan cannot be built: {exc}") from None
        self.header = {k: v for k, v in header.items() if k != "arrays"}
        self.input_shape = tuple(int(s) for s in header["input_shape"])
        self.output_shape = tuple(int(s) for s in header["output_shape"])
        self.threads = threads
        self.ops = [_op_from_record(rec, spec.arrays) for rec in lean_rt.plan_ops(header)]
        self.precision = str(header.get("precision", "fp32"))
        plans = [seg["plan"] for seg in header.get("segments", []) if seg["runs_on"] == "native"] or [header]
        self.num_buffers = sum(len(p["buffers"]) for p in plans)
        #: ``[(runs_on, node names), ...]`` per segment of a segmented plan (nodes on ONNX Runtime); else None
        self.segments: list[tuple[str, list[str]]] | None = None
        if lean_rt.is_segmented(header):
            from .segments import build_chain  # segments builds on this module

            self._native = build_chain(kernels.load(), header, spec.arrays, threads or torch.get_num_threads())
            self.segments = self._native.nodes
            self._run, self._handle = (lambda _h, x, y, n, t: self._native.run(x, y, n, t)), None
            self.buffer_floats = self._native.bytes_per_sample // 4
        else:
            self._native = _native(kernels.load(), header, spec.arrays, verified=True)  # verified above: once per load
            # the executor's own ctypes function and handle: NativePlan.run's Python frame costs ~0.2 µs a call
            self._run, self._handle = self._native.fns.plan_run, self._native.handle
            self.buffer_floats = int(sum(header["buffers"]))  # per sample
        self.amx_convs = self._native.amx_convs  # convs on AMX tiles
        self._lock = threading.Lock()
        self._out_shapes: dict[tuple, tuple[int, ...]] = {}

    def __deepcopy__(self, memo: dict) -> LeanModel:
        return self  # the native plan is guarded by its lock: share, never double-free

    def _threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the plan on ``x`` float32 ``[N, *input_shape]`` on the CPU; returns ``[N, *output_shape]``."""
        return self._call(x, None)

    def profile(self, x: torch.Tensor) -> list[tuple[str, str, float]]:
        """One pass on ``x`` with each op timed in its place: ``[(node(s), op, ms), ...]`` in run order.

        The clock is read between ops inside the native call, so the figures carry no Python; their sum is
        the pass less the call's own overhead (a few µs).
        """
        ns = torch.zeros(len(self.ops), dtype=torch.int64)
        self._call(x, ns)
        return [(op.node, op.describe(), float(t) / 1e6) for op, t in zip(self.ops, ns.tolist())]

    def layer_ms(self, x: torch.Tensor) -> tuple[float, dict[str, float]]:
        """One pass on ``x`` timed whole (ms, the native call and its Python wrapper) and per compressible layer
        in its place (``{module name: ms}``, a fused ReLU or residual add included): what the latency table
        reads. The whole less the layers is the glue (pools, shortcuts, the call itself)."""
        ns = torch.zeros(len(self.ops), dtype=torch.int64)
        t0 = time.perf_counter()
        self._call(x, ns)
        whole = 1e3 * (time.perf_counter() - t0)
        layers: dict[str, float] = {}
        for op, t in zip(self.ops, ns.tolist()):
            if op.layer:
                layers[op.layer] = layers.get(op.layer, 0.0) + t / 1e6
        return whole, layers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Module.__call__'s hook machinery costs ~2 µs, a tenth of a batch-1 digits CNN pass; a plan has no hooks
        return self._call(x, None)

    def _call(self, x: torch.Tensor, op_ns: torch.Tensor | None) -> torch.Tensor:
        key = (x.shape, x.dtype, x.is_cpu)  # the checks below cost microseconds; once per shape suffices
        out_shape = self._out_shapes.get(key)
        if out_shape is None:
            if x.dtype != torch.float32 or not x.is_cpu or x.dim() < 1 or tuple(x.shape[1:]) != self.input_shape:
                raise ModelError(f"the lean plan takes float32 CPU input [N, {', '.join(map(str, self.input_shape))}], "
                                 f"got {x.dtype} {list(x.shape)} on {x.device}; lower the model again for other shapes")
            out_shape = self._out_shapes[key] = (x.shape[0], *self.output_shape)
        if not x.is_contiguous():
            x = x.contiguous()
        n = out_shape[0]
        y = torch.empty(out_shape)
        if n == 0:
            return y
        with self._lock:
            if op_ns is None:
                rc = self._run(self._handle, x.data_ptr(), y.data_ptr(), n, self._threads())
            else:
                rc = self._native.run(x.data_ptr(), y.data_ptr(), n, self._threads(), op_ns.data_ptr())
        if rc:
            if rc == -1:
                raise MemoryError(f"the lean plan ran out of memory for a batch of {n}")
            op = self.ops[rc // 100 - 1] if rc >= 100 and rc // 100 <= len(self.ops) else None
            where = f" in op {op.node!r} ({op.describe()})" if op else ""
            raise RuntimeError(f"the lean plan failed (code {rc}){where} on input {list(x.shape)}")
        return y

    def summary(self) -> list[str]:
        """One line per op: node(s), op, buffers and per-sample shapes."""
        return [f"{op.node}: {op.describe()} buf{op.ins} -> buf{op.out} {list(op.shape_in)} -> {list(op.shape_out)}"
                for op in self.ops]


def lower_spec(model: nn.Module, example_input: torch.Tensor, *, threads: int | None = None,
               choose: str = "measure", precision: str = "fp32", onnx_fallback: bool = False) -> LeanSpec:
    """Lower ``model`` (a :func:`~uniprune.compressors.native.runtime.compile_model` result, or any plain model) to a
    :class:`LeanSpec` for inputs shaped like ``example_input`` per sample (any batch size).

    BatchNorm after a conv is folded (on a copy; ``model`` is not changed). ``threads`` (>= 1; default
    ``torch.get_num_threads()``): the threads the conv choices are timed on, recorded in the header.
    ``choose``: how each groups=1 conv runs: ``"measure"`` (default: the fastest of :data:`CONV_IMPLS`,
    timed once per layer at the example's batch size; the im2col forms only up to :data:`IM2COL_MAX_PIXELS`
    output pixels) or one of :data:`CONV_IMPLS` for every such conv. ``precision``: ``"fp32"``, ``"bf16"``
    (weights stored in bfloat16; convs on AMX tiles where the CPU has them, see
    :mod:`~uniprune.compressors.native.uniprune_lean`) or ``"auto"`` (:func:`resolve_precision`); recorded in
    the header. Raises a one-line ModelError naming the first node it cannot lower; the caller then keeps the
    Python path. With ``onnx_fallback`` such nodes run on ONNX Runtime inside the plan instead: the plan is
    split into segments (:func:`~uniprune.compressors.native.segments.segmented_spec`), and a ModelError comes
    only where that split fails too (it says why).
    """
    precision = resolve_precision(precision)
    if threads is not None:
        check_threads(threads)
    if choose not in CONV_CHOICES:
        raise ConfigError(f"choose must be one of {CONV_CHOICES}, got {choose!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.dtype != torch.float32 or example_input.numel() == 0:
        raise ConfigError(f"example_input must be a non-empty float32 tensor, got "
                          f"{getattr(example_input, 'dtype', type(example_input).__name__)}")
    lib = kernels.load()
    dense = inference_copy(model).float().cpu()
    try:
        graph = _Tracer().trace(dense)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "no plan", in one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot lower {type(model).__name__} to a lean plan: torch.fx cannot trace it ({first[:160]}); "
                         "run the compiled model's Python path instead") from None
    gm = torch.fx.GraphModule(dense, graph)
    gm.graph.eliminate_dead_code()  # what nothing reads (attention weights asked for and dropped) costs no op
    example = example_input.detach().cpu().contiguous()
    n_threads = threads or torch.get_num_threads()

    def lower_graph(part: torch.fx.GraphModule, x: torch.Tensor) -> LeanSpec:
        return _lower_graph(lib, part, x, n_threads, choose, precision)

    try:
        return lower_graph(gm, example)
    except ModelError as exc:
        if not onnx_fallback or not hasattr(exc, "failed"):
            raise
        from .segments import segmented_spec  # segments builds on this module's lowering

        return segmented_spec(gm, example, exc, lower_graph, threads=n_threads, precision=precision)


def _lower_graph(lib: Any, gm: torch.fx.GraphModule, example: torch.Tensor, n_threads: int, choose: str,
                 precision: str) -> LeanSpec:
    """One traced graph (one tensor in, one out) as a plan for inputs shaped like ``example``; ModelError (with
    ``.blockers`` and ``.failed``) for a node it cannot lower."""
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    lowering = _Lowering(gm, example, precision)
    lowering.run()
    ops = _fuse(lowering.ops, lowering.input_value, lowering.output_value)
    _choose_convs(lib, ops, int(example.shape[0]), n_threads, choose, amx="amx_bf16" in kernels.bf16_units())
    buffers, sizes = _assign_buffers(ops, lowering.vshape, lowering.input_value, lowering.output_value)
    for op in ops:  # from here on an op names buffers, as the native plan does
        op.ins, op.out = [buffers[v] for v in op.ins], buffers[op.out]
    records, arrays = _records(ops)
    out_node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    header = {"format": lean_rt.FORMAT, "input_shape": list(example.shape[1:]),
              "output_shape": list(lowering.shape[out_node]), "buffers": [int(v) for v in sizes],
              "threads": int(n_threads), "batch_size": int(example.shape[0]), "precision": precision, "ops": records}
    return LeanSpec(header, arrays)


def lower(model: nn.Module, example_input: torch.Tensor, *, threads: int | None = None,
          choose: str = "measure", precision: str = "fp32", onnx_fallback: bool = False) -> LeanModel:
    """:func:`lower_spec`, built: a :class:`LeanModel` for inputs shaped like ``example_input`` per sample.

    ``threads`` (>= 1): threads of the native kernels (default: ``torch.get_num_threads()`` at each call);
    ``choose``, ``precision`` and ``onnx_fallback`` as in :func:`lower_spec`. Raises a one-line ModelError naming
    the first node it cannot lower.
    """
    spec = lower_spec(model, example_input, threads=threads, choose=choose, precision=precision,
                      onnx_fallback=onnx_fallback)
    return LeanModel(spec, threads=threads)


def compile_lean_spec(model: nn.Module, structures: Mapping[str, LayerStructure], *, example_input: torch.Tensor,
                      threads: int | None = None, choose: str = "measure", precision: str = "fp32",
                      onnx_fallback: bool = False) -> LeanSpec:
    """:func:`~uniprune.compressors.native.runtime.compile_model` then :func:`lower_spec`: ``model`` with ``structures``
    (``{module name: LayerStructure}``) imposed, as a plan for inputs shaped like ``example_input``."""
    compiled = compile_model(model, structures, threads=threads, choose="sparse")
    return lower_spec(compiled, example_input, threads=threads, choose=choose, precision=precision,
                      onnx_fallback=onnx_fallback)


def compile_lean(model: nn.Module, structures: Mapping[str, LayerStructure], *, example_input: torch.Tensor,
                 threads: int | None = None, choose: str = "measure", precision: str = "fp32",
                 onnx_fallback: bool = False) -> LeanModel:
    """:func:`compile_lean_spec`, built: ``model`` with ``structures`` imposed as one native plan.

    Outputs match the masked dense model to relative error <= 1e-4 in fp32 (bf16: the rounding of weights and
    activations, ~1e-2). ``threads``, ``choose``, ``precision`` and ``onnx_fallback`` as in :func:`lower`.
    """
    spec = compile_lean_spec(model, structures, example_input=example_input, threads=threads, choose=choose,
                             precision=precision, onnx_fallback=onnx_fallback)
    return LeanModel(spec, threads=threads)


__all__ = ["LeanModel", "LeanSpec", "compile_lean", "compile_lean_spec", "lower", "lower_spec",
           "output_tolerance", "resolve_precision", "ACT_CLAMP", "ACT_GELU", "ACT_GELU_TANH",
           "ACT_HARDSIGMOID", "ACT_HARDSWISH", "ACT_NONE", "ACT_RELU", "ACT_SIGMOID", "ACT_SILU",
           "CONV_CHOICES", "CONV_IMPLS", "IM2COL_MAX_PIXELS", "NHWC", "OP_ACT", "OP_ADD", "OP_ADDC", "OP_AFFINE", "OP_ATTN",
           "OP_CHCOPY", "OP_CHMUL", "OP_CHNORM", "OP_CONV", "OP_COPY", "OP_GAP", "OP_GCONV", "OP_GEMV",
           "OP_IM2COL", "OP_NAMES", "OP_POOL", "OP_ROWCAT", "OP_SHUFFLE", "OP_SLICEPAD", "PlanOp"]
