"""Latency measurement with the real kernels, and the per-layer latency table the search reads.

Measurement (DESIGN "Latency"): warm-up calls, then rounds in which every function runs once (the order
rotating each round), median per function, a fixed torch thread count, all in one process, so dense and
compressed see the same machine state.

The table (:func:`build_latency_model`): every compressible layer is timed in isolation at its real
input (captured by a hook during one dense forward pass), as torch dense (the ``(0, 0)`` entry) and as
the compiled layer (:mod:`uniprune.compressors.runtime`) at each feasible ``(prune, unify)`` grid point,
with random block states of exactly those fractions, kept as ratios to the layer's dense time measured
side by side. At the end the whole dense model and every dense layer are timed together, interleaved;
tables = ratios x those dense layer times, and ``fixed_ms`` is measured directly: the dense model with
its compressible layers replaced by stubs that return their recorded outputs. Tables are cached as JSON under a key of architecture,
input shape, batch, threads, block shapes, grid and machine (CPU model, torch version, kernel source hash).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .blocks import DEFAULT_BLOCK_SHAPES, compressible_layers
from .errors import ConfigError
from .fileio import write_json_atomic
from .kernels import source_hash
from .latency_model import LatencyModel
from .policy import LayerAction
from .projection import block_counts, structured_weight
from .runtime import CompiledConv2d, CompiledLinear, compile_model, inference_copy
from .structure import KEEP, PRUNE, UNIFY, BlockGrid, BlockShape, LayerStructure


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return torch.get_num_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    return threads


STATISTICS = ("median", "min")


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, warmup: int = 10, repeats: int = 50,
                     threads: int | None = None, statistic: str = "median") -> dict[str, float]:
    """Median (or ``statistic="min"``) wall time in ms of each function, measured in interleaved rounds.

    ``warmup`` (>= 0) calls of each first, then ``repeats`` (>= 1) rounds each calling every function once
    (the order rotates per round). torch runs on ``threads`` threads (default: as now) during the timing.
    The minimum suits a machine shared with other jobs: a long call is preempted far more often than a
    short one, which biases medians of long calls (a whole model) against short ones (a layer).
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if statistic not in STATISTICS:
        raise ConfigError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    n = _check_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    try:
        with torch.no_grad():
            for _ in range(warmup):
                for k in names:
                    fns[k]()
            for r in range(repeats):
                for i in range(len(names)):
                    k = names[(i + r) % len(names)]
                    t0 = time.perf_counter()
                    fns[k]()
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    reduce = statistics.median if statistic == "median" else min
    return {k: 1e3 * reduce(v) for k, v in times.items()}


def random_structure(grid: BlockGrid, prune: float, unify: float, generator: torch.Generator) -> LayerStructure:
    """Block states with exactly ``block_counts(prune, unify)`` pruned/unified blocks, placed at random.

    Magnitudes of unified blocks are drawn in [0.5, 1). ``prune``, ``unify`` in [0, 1].
    """
    n_p, n_u = block_counts(grid.num_blocks, prune, unify)
    order = torch.randperm(grid.num_blocks, generator=generator)
    states = torch.full((grid.num_blocks,), KEEP, dtype=torch.int8)
    states[order[:n_p]] = PRUNE
    states[order[n_p:n_p + n_u]] = UNIFY
    mags = torch.where(states == UNIFY, 0.5 + 0.5 * torch.rand(grid.num_blocks, generator=generator), 0.0)
    return LayerStructure(grid, states.reshape(grid.n_out, grid.n_in), mags.reshape(grid.n_out, grid.n_in))


def _example_input(input_shape: Sequence[int], batch_size: int, seed: int) -> torch.Tensor:
    if len(input_shape) < 1 or any(int(s) < 1 for s in input_shape):
        raise ConfigError(f"input shape must be positive sizes like 3,32,32, got {tuple(input_shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(seed))


def measure_model_ms(model: nn.Module, structures: Mapping[str, LayerStructure], input_shape: tuple[int, ...], *,
                     batch_size: int = 1, threads: int | None = None, warmup: int = 10, repeats: int = 50,
                     seed: int = 0, statistic: str = "median") -> dict[str, float]:
    """Whole-model ms of the dense model (BN folded) and the compiled model, interleaved in one process.

    Returns ``{"dense_ms", "compressed_ms", "speedup"}`` (speedup = dense / compressed).
    """
    n = _check_threads(threads)
    x = _example_input(input_shape, batch_size, seed)
    dense = inference_copy(model)
    compiled = compile_model(model, structures, threads=n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with torch.no_grad():
            compiled(x)  # picks each layer's implementation at this shape and thread count
    finally:
        torch.set_num_threads(before)
    t = time_interleaved({"dense": lambda: dense(x), "compressed": lambda: compiled(x)}, warmup=warmup,
                         repeats=repeats, threads=n, statistic=statistic)
    return {"dense_ms": t["dense"], "compressed_ms": t["compressed"], "speedup": t["dense"] / t["compressed"]}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> dict[str, str]:
    """What makes timings from another machine or build invalid: CPU, core count, torch, kernel source."""
    return {"cpu": _cpu_model(), "cores": str(os.cpu_count()), "torch": torch.__version__, "kernels": source_hash()}


def _default_cache_dir() -> Path:
    root = os.environ.get("UNIPRUNE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "uniprune") / "latency"


def _capture_inputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_m, args, name=name):
            inputs[name] = args[0].detach().clone()
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return inputs


class _Stub(nn.Module):
    """Stands in for a layer: returns the output it recorded, at no cost."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, *_args: Any) -> torch.Tensor:
        return self.output


def _stubbed(base: nn.Module, specs: Sequence[Any], x: torch.Tensor) -> nn.Module:
    outputs: dict[str, torch.Tensor] = {}
    hooks = [base.get_submodule(s.name).register_forward_hook(
        lambda _m, _a, out, name=s.name: outputs.__setitem__(name, out.detach())) for s in specs]
    try:
        with torch.no_grad():
            base(x)
    finally:
        for h in hooks:
            h.remove()
    stub = copy.deepcopy(base)
    for spec in specs:
        parent, _, child = spec.name.rpartition(".")
        setattr(stub.get_submodule(parent) if parent else stub, child, _Stub(outputs[spec.name]))
    return stub


def _compiled_layer(module: nn.Module, structure: LayerStructure, threads: int) -> nn.Module:
    cls = CompiledConv2d if isinstance(module, nn.Conv2d) else CompiledLinear
    layer = copy.deepcopy(module)
    with torch.no_grad():
        layer.weight.copy_(structured_weight(layer.weight, structure))
    return cls(layer, structure, threads=threads)


def build_latency_model(model: nn.Module, input_shape: tuple[int, int, int], *, batch_size: int = 1,
                        threads: int | None = None, block_shapes: Mapping[str, BlockShape] | None = None,
                        grid: Sequence[float] = (0, .25, .5, .75, .9), cache_dir: str | os.PathLike | None = None,
                        seed: int = 0, progress: bool = True, warmup: int = 3, repeats: int = 15,
                        statistic: str = "median") -> LatencyModel:
    """Measure (or load from the cache) the per-layer latency table of ``model`` on this machine.

    ``input_shape``: one sample's shape (C, H, W); ``batch_size`` >= 1; ``threads`` >= 1 (default: torch's
    now); ``grid``: ascending fractions from 0, used for both prune and unify (points with
    prune + unify > 1 hold the value at the largest feasible unify of their row). Cached under
    ``cache_dir`` (default ``$UNIPRUNE_CACHE/latency`` or ``~/.cache/uniprune/latency``).
    """
    n = _check_threads(threads)
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or len(g) < 1 or g[0] != 0 or np.any(np.diff(g) <= 0) or g[-1] > 1:
        raise ConfigError(f"grid must ascend from 0 to at most 1, got {list(grid)}")
    shapes = dict(DEFAULT_BLOCK_SHAPES)
    shapes.update(block_shapes or {})
    x = _example_input(input_shape, batch_size, seed)
    specs = compressible_layers(model, shapes)
    key_obj = {
        "arch": repr(model), "params": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "input_shape": list(input_shape), "batch": batch_size, "threads": n,
        "block_shapes": {k: [v.out, v.inp] for k, v in sorted(shapes.items())}, "grid": g.tolist(),
        "machine": machine_key(), "warmup": warmup, "repeats": repeats, "method": "ratios, stubbed fixed/2", "statistic": statistic,
    }
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = folder / f"latency-{key}.json"
    if path.exists():
        try:
            lm = LatencyModel.from_dict(json.loads(path.read_text()))
            if progress:
                print(f"latency table: -> dense table cached ({path})", file=sys.stderr)
            return lm
        except (ValueError, KeyError, json.JSONDecodeError):
            pass  # a damaged cache file is measured again and overwritten
    base = inference_copy(model)
    inputs = _capture_inputs(base, [s.name for s in specs], x)
    gen = torch.Generator().manual_seed(seed)
    ratios: dict[str, np.ndarray] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        for spec in tqdm(specs, desc="latency table", disable=not progress, file=sys.stderr):
            module = base.get_submodule(spec.name)
            xin = inputs[spec.name]
            fns: dict[Any, Callable[[], object]] = {"dense": lambda m=module, t=xin: m(t)}
            for i, p in enumerate(g):
                for j, u in enumerate(g):
                    if p + u <= 1 + 1e-9 and (i, j) != (0, 0):
                        layer = _compiled_layer(module, random_structure(spec.grid, p, u, gen), n)
                        with torch.no_grad():
                            layer(xin)  # decide the implementation now, outside the timing
                        fns[(i, j)] = lambda m=layer, t=xin: m(t)
            t = time_interleaved(fns, warmup=warmup, repeats=repeats, threads=n, statistic=statistic)
            ratio = np.ones((len(g), len(g)))
            for i in range(len(g)):
                for j in range(len(g)):
                    if (i, j) in t:
                        ratio[i, j] = t[(i, j)] / t["dense"]
                    elif (i, j) != (0, 0):
                        ratio[i, j] = ratio[i, j - 1]  # infeasible: the row's last feasible point
            ratios[spec.name] = ratio
        # Load on a shared machine drifts over minutes, so each layer's table is kept as ratios to its own
        # dense time (measured side by side), and the dense layers, the whole dense model and the model
        # with its compressible layers stubbed out (everything else: activations, adds, pooling, Python
        # overhead) are measured together, interleaved, at the end. fixed_ms is that stub model, measured
        # directly: "whole minus the layers" absorbed every drift of the layer timings into it.
        stub = _stubbed(base, specs, x)
        final: dict[str, Callable[[], object]] = {"whole": lambda: base(x), "fixed": lambda: stub(x)}
        for spec in specs:
            layer_module = base.get_submodule(spec.name)
            final[spec.name] = lambda m=layer_module, t=inputs[spec.name]: m(t)
        tf = time_interleaved(final, warmup=warmup, repeats=max(repeats, 20), threads=n, statistic=statistic)
    finally:
        torch.set_num_threads(before)
    dense_layer = {spec.name: tf[spec.name] for spec in specs}
    tables = {name: ratios[name] * dense_layer[name] for name in ratios}
    fixed = tf["fixed"]
    meta = {"kind": "measured", "key": key_obj | {"arch": type(model).__name__}, "dense_model_ms": tf["whole"],
            "fixed_ms_method": "measured directly: the dense model with its compressible layers stubbed out"}
    lm = LatencyModel(g, g, tables, fixed, meta)
    write_json_atomic(path, lm.to_dict())
    return lm


def random_policy_structures(model: nn.Module, generator: torch.Generator, *, max_prune: float = 0.9,
                             block_shapes: Mapping[str, BlockShape] | None = None
                             ) -> tuple[dict[str, LayerAction], dict[str, LayerStructure]]:
    """A random policy (per layer prune in [0, max_prune], unify in [0, 1 - prune]) and random structures of it."""
    actions, structures = {}, {}
    for spec in compressible_layers(model, block_shapes):
        p = float(torch.rand(1, generator=generator)) * max_prune
        u = float(torch.rand(1, generator=generator)) * (1 - p) * 0.5
        actions[spec.name] = LayerAction(prune=p, unify=u)
        structures[spec.name] = random_structure(spec.grid, p, u, generator)
    return actions, structures


def check_latency_model(model: nn.Module, lm: LatencyModel, input_shape: tuple[int, int, int], *,
                        batch_size: int = 1, threads: int | None = None, policies: int = 20, seed: int = 0,
                        block_shapes: Mapping[str, BlockShape] | None = None, repeats: int = 20,
                        progress: bool = True, statistic: str = "median") -> dict[str, Any]:
    """Compare the table's whole-model prediction with real whole-model timings of random policies.

    Returns ``{"rows": [{"predicted_ms", "measured_ms", "error"}...], "median_error", "max_error"}``
    (errors relative to the measurement).
    """
    n = _check_threads(threads)
    x = _example_input(input_shape, batch_size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = []
    for _ in tqdm(range(policies), desc="check table", disable=not progress, file=sys.stderr):
        actions, structures = random_policy_structures(model, gen, block_shapes=block_shapes)
        compiled = compile_model(model, structures, threads=n)
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            with torch.no_grad():
                compiled(x)
        finally:
            torch.set_num_threads(before)
        measured = time_interleaved({"m": lambda c=compiled: c(x)}, warmup=3, repeats=repeats, threads=n,
                                    statistic=statistic)["m"]
        predicted = lm.predict(actions)
        rows.append({"predicted_ms": predicted, "measured_ms": measured, "error": abs(predicted - measured) / measured})
    errors = [r["error"] for r in rows]
    return {"rows": rows, "median_error": float(statistics.median(errors)), "max_error": float(max(errors))}
