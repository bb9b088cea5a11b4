"""Inference runtime: turn a model and its layer structures into modules that run the real sparse kernels.

:func:`compile_model` returns an eval-mode copy in which every structured layer is a
:class:`CompiledConv2d` or :class:`CompiledLinear`. Each holds several real implementations and uses the
fastest for the input shape it sees:

- ``sparse``: the native block-sparse kernel (pruned blocks skipped; unified blocks materialised as
  ordinary kept blocks; an output-channel block that is gone costs only its bias), its weights packed in
  panels as tall as the layer's blocks (1, 2, 4 or 8 rows);
- ``sparse_p8`` (convs with blocks lower than 8 rows): the same kernel on 8-row panels, which runs a
  pruned block's rows as zeros unless its whole panel skips the channel but reuses each input 8 times;
- ``gemv`` / ``gemv_compact`` (linear, batch <= 4): the native GEMV, the second with unified blocks in
  compact form (one magnitude + sign bits), offered only when the layer has unified blocks; a linear's
  ``sparse`` (batch > 4) is the same GEMV kernel with unified blocks materialised;
- ``shrunk``: torch dense on the smaller layer left when whole output/input channels are gone;
- ``dense``: torch dense on the masked weight.

Which one wins is decided by a quick interleaved measurement (:func:`~uniprune.compressors.latency.timing.fastest`)
the first time a layer sees an input shape, at the thread count it runs with; ``choose="sparse"``/``"dense"`` forces one.
BatchNorm that directly follows a conv is folded into it (:func:`fold_batchnorm`); the dense engines of
:mod:`uniprune.compressors.latency.engines` fold it the same way, so both sides are compared like with like.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, ModelError
from ..core.projection import structured_weight
from ..core.structure import KEEP, PRUNE, UNIFY, LayerStructure
from ..latency.timing import fastest
from .kernels import ROWS, SparseConv, SparseGemv, panel_height

CHOICES = ("measure", "sparse", "dense")
_GEMV_MAX_BATCH = 4
_SHRINK_MIN_SAVING = 0.25  # a shrunk dense layer is a candidate only when it saves this share of MACs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into that conv, in place.

    The conv gets the folded weight and bias, the BatchNorm becomes ``nn.Identity``; module names stay.
    The pattern is found with ``torch.fx``; a model fx cannot trace is returned unchanged.
    Returns ``model``.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure just means "no folding"
        return model
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv, bn = modules.get(prev.target), modules[node.target]
        if not isinstance(conv, nn.Conv2d) or bn.running_mean is None or not bn.track_running_stats:
            continue
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            new_bias = (bias - bn.running_mean) * scale + shift
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias.clone())
            else:
                conv.bias.copy_(new_bias)
        parent_name, _, child = node.target.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return model


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy with BatchNorm folded: the dense baseline compiled models are compared with."""
    return fold_batchnorm(copy.deepcopy(model).eval())


class _Compiled(nn.Module):
    """Shared machinery: candidates per input shape, chosen once per shape."""

    def __init__(self, threads: int | None, choose: str) -> None:
        super().__init__()
        if choose not in CHOICES:
            raise ConfigError(f"choose must be one of {CHOICES}, got {choose!r}")
        self.threads, self.choose = threads, choose
        self.chosen: dict[tuple, str] = {}
        self._fns: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}

    def _threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def _candidates(self, x: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        raise NotImplementedError

    def implementation(self, x: torch.Tensor) -> str:
        """The implementation used for inputs shaped like ``x`` (measured on first sight of the shape)."""
        key = (tuple(x.shape), self._threads())
        name = self.chosen.get(key)
        if name is None:
            cands = self._candidates(x)
            if self.choose == "dense":
                name = "dense"
            elif self.choose == "sparse":
                name = next(k for k in cands if k != "dense" and k != "shrunk") if len(cands) > 1 else "dense"
            else:
                with torch.no_grad():
                    name = fastest({k: (lambda f=f: f(x)) for k, f in cands.items()})
            self.chosen[key] = name
        return name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the per-call path of a batch-1 layer: x.device.type alone costs a microsecond, x.is_cpu a tenth
        key = (x.shape, x.dtype, x.is_cpu, self._threads())
        fn = self._fns.get(key)
        if fn is None:
            if x.dtype != torch.float32 or not x.is_cpu:
                raise ModelError(f"the compiled model runs float32 on CPU; got {x.dtype} on {x.device}")
            fn = self._fns[key] = self._candidates(x)[self.implementation(x)]
        return fn(x)


class CompiledConv2d(_Compiled):
    """A structured Conv2d (inference only); ``conv``'s weight must already obey ``structure``
    (as :func:`compile_model` makes it: structure imposed, then BatchNorm folded)."""

    def __init__(self, conv: nn.Conv2d, structure: LayerStructure, *, threads: int | None = None,
                 choose: str = "measure") -> None:
        super().__init__(threads, choose)
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ModelError(f"conv with padding {conv.padding!r}/{conv.padding_mode!r} is not supported by the runtime; "
                             "use numeric zero padding")
        self.register_buffer("weight", conv.weight.detach().float().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        keep = structure.state_map()[:, :, 0, 0] != PRUNE
        self.counts = structure.counts()
        # grouped convs run on torch dense: one block grid per group would need a kernel per group
        # panels as tall as the blocks, so a pruned 1x1 or 4x1 block is skipped rather than run as zeros; with
        # blocks lower than 8 rows an 8-row plan is a second candidate: its tile reuses each input vector for 8
        # rows, which wins where few blocks are pruned (1x1 blocks at s = 0: 0.9x dense against 0.4x)
        rows_p = panel_height(structure.grid.block_shape.out)
        self.sparse = self.sparse8 = None
        if conv.groups == 1:
            self.sparse = SparseConv(self.weight, keep, self.bias, self.stride, self.padding, self.dilation, rows=rows_p)
            if rows_p != ROWS:
                self.sparse8 = SparseConv(self.weight, keep, self.bias, self.stride, self.padding, self.dilation)
        rows, cols = keep.any(1), keep.any(0)
        saving = 1 - float(rows.float().mean() * cols.float().mean())
        self.shrink = None
        if conv.groups == 1 and saving >= _SHRINK_MIN_SAVING and bool(rows.any()):
            self.shrink = (rows.nonzero().squeeze(1), cols.nonzero().squeeze(1),
                           self.weight[rows][:, cols].contiguous(), None if self.bias is None else self.bias[rows])

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _shrunk(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols, w, b = self.shrink
        part = F.conv2d(x.index_select(1, cols), w, b, self.stride, self.padding, self.dilation)
        out = part.new_zeros(part.shape[0], self.weight.shape[0], part.shape[2], part.shape[3])
        if self.bias is not None:
            out += self.bias.reshape(1, -1, 1, 1)
        out.index_copy_(1, rows, part)
        return out

    def _candidates(self, x: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        cands: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        threads = self._threads()  # part of the key the candidates are kept under
        if self.sparse is not None:
            cands["sparse"] = lambda t: self.sparse(t, threads)
        if self.sparse8 is not None:
            cands["sparse_p8"] = lambda t: self.sparse8(t, threads)
        if self.shrink is not None:
            cands["shrunk"] = self._shrunk
        cands["dense"] = self._dense
        return cands


class CompiledLinear(_Compiled):
    """A structured Linear (inference only); inputs ``[..., Ci]``; ``linear``'s weight must obey ``structure``."""

    def __init__(self, linear: nn.Linear, structure: LayerStructure, *, threads: int | None = None,
                 choose: str = "measure") -> None:
        super().__init__(threads, choose)
        w = linear.weight.detach().float().clone()
        self.register_buffer("weight", w)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        state = structure.state_map()
        keep = state != PRUNE
        self.counts = structure.counts()
        self.gemv = SparseGemv(w, keep, self.bias)
        self.gemv_compact = None
        grid = structure.grid
        if self.counts["unify"] and grid.block_shape.out == ROWS:
            # panel p of the GEMV is block row p exactly, so a unified block is one (panel, channel range)
            bi, ci = grid.block_shape.inp, w.shape[1]
            unified = [(int(p), int(j) * bi, min(bi, ci - int(j) * bi), float(structure.magnitudes[p, j]))
                       for p, j in (structure.states == UNIFY).nonzero().tolist()]
            self.gemv_compact = SparseGemv(w, state == KEEP, self.bias, unified)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _candidates(self, x: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        if x.dim() == 2:  # candidates are kept per input shape; two reshapes cost 5 µs at batch 1
            flat = lambda f: f  # noqa: E731
        else:
            flat = lambda f: (lambda t: f(t.reshape(-1, t.shape[-1])).reshape(*t.shape[:-1], -1))  # noqa: E731
        threads = self._threads()
        cands: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        rows = x.numel() // max(x.shape[-1], 1)
        if rows <= _GEMV_MAX_BATCH:
            if self.gemv_compact is not None:
                cands["gemv_compact"] = flat(lambda t: self.gemv_compact(t, threads))
            cands["gemv"] = flat(lambda t: self.gemv(t, threads))
        else:
            # the same kernel: past a few samples it runs them in tiles that load each weight once
            cands["sparse"] = flat(lambda t: self.gemv(t, threads))
        cands["dense"] = self._dense
        return cands


def compile_model(model: nn.Module, structures: Mapping[str, LayerStructure], *, threads: int | None = None,
                  choose: str = "measure") -> nn.Module:
    """An inference-only copy (eval mode) of ``model`` in which each structured layer runs its fastest real kernel.

    ``structures``: ``{module name: LayerStructure}`` (e.g. from ``project_model``); the copy's weights get
    each structure imposed (pruned blocks 0, unified blocks ``sign*m``), so outputs match the masked dense
    model to relative error <= 1e-4 whether or not ``model`` was projected already. ``threads`` (>= 1):
    threads of the native kernels (default: ``torch.get_num_threads()`` at call time). ``choose``:
    ``"measure"`` (default) picks per layer and input shape by a quick timing, ``"sparse"``/``"dense"`` force.
    Only float32 CPU inference; ``model`` itself is not changed.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    if choose not in CHOICES:
        raise ConfigError(f"choose must be one of {CHOICES}, got {choose!r}")
    out = copy.deepcopy(model).float().cpu().eval()
    for name, structure in structures.items():
        try:
            module = out.get_submodule(name)
        except AttributeError:
            raise ModelError(f"the model has no layer {name!r} that the structures name; wrong model?") from None
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise ModelError(f"layer {name!r} is a {type(module).__name__}; structures apply to Conv2d and Linear only")
        if tuple(module.weight.shape) != structure.grid.weight_shape:
            raise ModelError(f"layer {name!r} has weight shape {tuple(module.weight.shape)}, the structure expects "
                             f"{structure.grid.weight_shape}")
        with torch.no_grad():
            module.weight.copy_(structured_weight(module.weight.detach(), structure))
    fold_batchnorm(out)
    for name, structure in structures.items():
        module = out.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            new: nn.Module = CompiledConv2d(module, structure, threads=threads, choose=choose)
        else:
            new = CompiledLinear(module, structure, threads=threads, choose=choose)
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, new)
    return out.requires_grad_(False)


def implementations(model: nn.Module) -> dict[str, str]:
    """``{layer name: implementation}`` of a compiled model's layers for the last input shape each saw."""
    return {name: (list(m.chosen.values())[-1] if m.chosen else "undecided")
            for name, m in model.named_modules() if isinstance(m, _Compiled)}


__all__ = ["compile_model", "fold_batchnorm", "inference_copy", "implementations", "CompiledConv2d",
           "CompiledLinear", "KEEP", "PRUNE", "UNIFY"]
