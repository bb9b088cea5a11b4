"""Whole-model latency with the real kernels against the dense engines, and the per-layer latency table the
search reads.

Every timing goes through :mod:`uniprune.compressors.latency.timing` (one interleaved loop); every ratio and
budget through :mod:`uniprune.compressors.latency.budget`; the baseline of every ratio is the fastest dense engine
(:mod:`uniprune.compressors.latency.engines`).

The table (:func:`build_latency_model`): every compressible layer is timed in its place inside whole-model
forward passes, once per grid point (prune ``p`` of the weights, unify ``q`` of the rest: every point a
feasible policy): the whole model compiled with every layer at that point (random block states of exactly
those fractions) for the runtime it will run on, which picks each layer's fastest implementation.
``fixed_ms`` is a bare compiled pass's whole time minus its layers' times in a clocked pass right after it,
measured in the same rounds; the fastest dense engine's time, the baseline of every ratio, is taken
apart (see :func:`build_latency_model`). Tables are cached as JSON under a key of architecture, input shape,
batch, threads, block shapes, grid and machine (CPU model and vector flags, kernel build and its ISA, the
engines' versions), and checked against a quick timing before they are trusted; a fresh table whose sum
disagrees with the whole pass timed beside the engines is measured again.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..core.blocks import DEFAULT_BLOCK_SHAPES, compressible_layers
from ..core.errors import ConfigError, ModelError
from ..core.policy import LayerAction
from ..core.projection import BlockClasses
from ..core.structure import KEEP, PRUNE, UNIFY, BlockGrid, BlockShape, LayerStructure
from ..core.threads import torch_threads
from ..formats.fileio import write_json_atomic
from ..native.plan import compile_lean, compile_lean_spec, resolve_precision
from ..native.runtime import compile_model
from ..native.segments import placement
from .budget import latency_ratio
from .engines import DenseEngines, check_modes, dense_engines, race
from .model import LatencyModel
from .table_cache import (
    CACHE_CHECK_SECONDS,
    CACHE_CHECK_TOLERANCE,
    TABLE_AGREEMENT_TOLERANCE,
    TABLE_ATTEMPTS,
    machine_key,
    read_cached_table,
    table_path,
)
from .table_rounds import baseline_rounds, measure_rounds
from .timing import SPREAD_SECONDS, check_counts, check_threads, reducer


def random_structure(grid: BlockGrid, prune: float, unify: float, generator: torch.Generator) -> LayerStructure:
    """Block states as the projection would count them for ``prune``, ``unify`` (fractions of the weights, in
    [0, 1]): exactly :meth:`BlockClasses.counts` pruned/unified blocks of each block size, placed at random.

    Magnitudes of unified blocks are drawn in [0.5, 1).
    """
    states = torch.full((grid.num_blocks,), KEEP, dtype=torch.int8)
    classes = BlockClasses.of(grid)
    for idx, (n_p, n_u) in zip(classes.indices, classes.counts(prune, unify)):
        chosen = torch.from_numpy(idx)[torch.randperm(len(idx), generator=generator)]
        states[chosen[:n_p]] = PRUNE
        states[chosen[n_p:n_p + n_u]] = UNIFY
    mags = torch.where(states == UNIFY, 0.5 + 0.5 * torch.rand(grid.num_blocks, generator=generator), 0.0)
    return LayerStructure(grid, states.reshape(grid.n_out, grid.n_in), mags.reshape(grid.n_out, grid.n_in))


def _example_input(input_shape: Sequence[int], batch_size: int, seed: int) -> torch.Tensor:
    if len(input_shape) < 1 or any(int(s) < 1 for s in input_shape):
        raise ConfigError(f"input shape must be positive sizes like 3,32,32, got {tuple(input_shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(seed))


#: How a compressed model runs when it is timed: ``"lean"`` (default), one native plan per forward pass
#: (:mod:`uniprune.compressors.native.plan`), built from the same spec ``uniprune export`` writes; ``"artifact"``, that
#: spec exported to a temporary folder and read back as ``uniprune bench --compressed DIR`` reads an artifact
#: (plan and weights verified, on uniprune's own kernels), exactly the files a user deploys; ``"python"``, the compiled nn.Module whose layers
#: call the kernels one by one (about 5 µs of Python a layer).
RUNTIMES = ("lean", "artifact", "python")


def compile_for_timing(model: nn.Module, structures: Mapping[str, LayerStructure], x: torch.Tensor, threads: int,
                       runtime: str = "lean", precision: str = "fp32",
                       fallback: dict[str, Any] | None = None) -> tuple[Any, str, list[str]]:
    """The compressed model as it will run, ready for inputs shaped like ``x``: ``(callable, runtime, notes)``.

    ``runtime`` ``"lean"`` runs the nodes the plan cannot lower on ONNX Runtime inside the plan (a segmented
    plan: the callable's ``segments`` say which nodes run where), and falls back to ``"python"`` (with a note
    saying why) only where that fails too; then ``fallback`` (a dict, when given) gets ``"reason"`` (the one-line error) and ``"blockers"``
    (every node the plan could not lower, one line each). Each layer's implementation is picked here, at this
    shape and ``threads``. ``precision`` (``fp32``, ``bf16``, ``auto``:
    :func:`~uniprune.compressors.native.plan.resolve_precision`) applies to the plan (lean, artifact); the
    Python path is float32 only (a bf16 request falls back to it with a note).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    precision = resolve_precision(precision)
    notes = []
    if runtime == "artifact":
        return _exported(model, structures, x, threads, precision), "artifact", notes
    if runtime == "lean":
        try:  # nodes the plan has no op for run on ONNX Runtime inside it; the Python path only where that fails
            return (compile_lean(model, structures, example_input=x, threads=threads, precision=precision,
                                 onnx_fallback=True), "lean", notes)
        except ModelError as exc:
            notes.append(f"{exc}; timed on the Python path")
            if fallback is not None:
                fallback.update(reason=str(exc), blockers=list(getattr(exc, "blockers", [str(exc)])))
    if precision != "fp32":
        notes.append(f"the Python path runs float32 only; {precision} was asked for")
    compiled = compile_model(model, structures, threads=threads)
    with torch_threads(threads), torch.no_grad():
        compiled(x)  # picks each layer's implementation at this shape and thread count
    return compiled, "python", notes


def _exported(model: nn.Module, structures: Mapping[str, LayerStructure], x: torch.Tensor, threads: int,
              precision: str = "fp32") -> Any:
    """The compressed model in ``precision`` exported to a temporary artifact and read back (plan and weights,
    verified, on uniprune's own kernels: :func:`~uniprune.compressors.formats.artifact.open_artifact`); the folder
    lives as long as the returned callable (``torch [N, C, H, W] -> torch``)."""
    import tempfile

    from ..formats.artifact import open_artifact, write_artifact

    spec = compile_lean_spec(model, structures, example_input=x, threads=threads, precision=precision,
                             onnx_fallback=True)
    folder = tempfile.TemporaryDirectory(prefix="uniprune-artifact-")
    write_artifact(Path(folder.name) / "artifact", spec, source={"model_name": type(model).__name__})
    art = open_artifact(Path(folder.name) / "artifact", threads=threads)

    def run(inputs: torch.Tensor, _keep: Any = folder) -> torch.Tensor:
        return art(inputs)

    run.segments = art.segments  # type: ignore[attr-defined]  # which nodes run where, as the artifact says

    return run


def measure_model_ms(model: nn.Module, structures: Mapping[str, LayerStructure], input_shape: tuple[int, ...], *,
                     batch_size: int = 1, threads: int | None = None, warmup: int = 10, repeats: int = 50,
                     seed: int = 0, statistic: str = "median", min_seconds: float = SPREAD_SECONDS,
                     engines: Sequence[str] | None = None, runtime: str = "lean", baseline: str = "default",
                     int8_calibration: np.ndarray | None = None, dense: DenseEngines | None = None,
                     precision: str = "fp32") -> dict[str, Any]:
    """Whole-model ms of every dense engine and of the compressed model, interleaved in one process.

    The dense engine modes (:mod:`uniprune.compressors.latency.engines`: torch eager, ONNX Runtime, OpenVINO at
    their default precisions and OpenVINO at f32, those installed, or the ``engines`` named; the int8 modes
    too with ``int8_calibration``) run the model with BatchNorm folded; the compressed model runs the
    real kernels on ``runtime`` (:data:`RUNTIMES`, :func:`compile_for_timing`). The baseline is the fastest mode
    of the ``baseline`` group (default: each engine at its default precision) by ``statistic``; ``latency_ratio`` is
    :func:`~uniprune.compressors.latency.budget.paired_ratio` of the compiled model's samples against that
    engine's, taken in the same rounds, and ``speedup`` its inverse. Rounds span at least ``min_seconds``.

    ``dense``: the engines already built (:func:`~.engines.dense_engines` on an input of this shape), else built
    here. Returns :func:`~uniprune.compressors.latency.engines.race`'s fields, ``"runtime"`` (the one timed),
    ``"precision"`` (the compressed model's, ``fp32`` or ``bf16``: ``auto`` resolved for this CPU) and
    ``"fallback"`` (``None``, or why the lean path was left for the Python path: ``{"reason", "blockers"}``, see
    :func:`compile_for_timing`), ``"segments"`` (``None``, or for a plan with nodes on ONNX Runtime which nodes
    ran where: ``[{"runs_on": "native" | "onnxruntime", "nodes": [...]}, ...]``); ``notes`` says why an installed engine mode or the lean path was left out.
    """
    n = check_threads(threads)
    x = _example_input(input_shape, batch_size, seed)
    if dense is None:
        dense = dense_engines(model, x, threads=n, engines=engines, int8_calibration=int8_calibration, progress=True)
    precision = resolve_precision(precision)
    fallback: dict[str, Any] = {}
    compiled, used, notes = compile_for_timing(model, structures, x, n, runtime, precision, fallback)
    result = race(dense, lambda: compiled(x), threads=n, warmup=warmup, repeats=repeats, min_seconds=min_seconds,
                  statistic=statistic, baseline=baseline)
    segments = getattr(compiled, "segments", None)
    return {**result, "runtime": used, "precision": precision if used != "python" else "fp32",
            "fallback": fallback or None, "segments": placement(segments), "notes": result["notes"] + notes}


def without_zeros(model: nn.Module, specs: Sequence[Any], seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose compressible layers (``specs``, from ``compressible_layers``) hold no zero weight.

    The native plan keeps a weight window only where a weight is non-zero (a compressed model's pruned blocks are
    zero), so a table timed on already pruned weights timed every grid point sparser than its label: a table
    built from a 75 %-pruned checkpoint predicted 10.8 ms for a ResNet-56 policy that ran 22.3 ms, and a
    table built from the dense weights and one from compressed weights, sharing one cache key, each failed
    the other's quick check. Zeros become small random values (a tenth of the layer's mean magnitude), so the
    grid points' random structures alone decide what is kept, whatever the weights.
    """
    import copy

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for spec in specs:
            w = out.get_submodule(spec.name).weight
            zero = w == 0
            if bool(zero.any()):
                scale = 0.1 * (float(w.abs().mean()) or 1.0)
                fill = (torch.rand(w.shape, generator=gen) + 0.5) * scale
                w.copy_(torch.where(zero, fill.to(w.dtype), w))
    return out


def _cached_table_holds(lm: LatencyModel, model: nn.Module, specs: Sequence[Any], x: torch.Tensor, n: int,
                        statistic: str, progress: bool, runtime: str, precision: str = "fp32") -> bool:
    """Whether a quick timing now still gives the cached table's ratio of the nothing-compressed compiled
    model to the fastest dense engine (within :data:`CACHE_CHECK_TOLERANCE`)."""
    gen = torch.Generator().manual_seed(0)
    model = without_zeros(model, specs)
    compiled, _, _ = compile_for_timing(model, {s.name: random_structure(s.grid, 0.0, 0.0, gen) for s in specs}, x, n,
                                        runtime, precision)
    engines = dense_engines(model, x, threads=n, engines=list(lm.meta.get("engines", {})) or None)
    now = baseline_rounds(engines, compiled, x, n, repeats=5, min_seconds=CACHE_CHECK_SECONDS, statistic=statistic)
    then = latency_ratio(lm.predict({}), lm.dense_ms)
    ratio = latency_ratio(now["compressed_ms"], now["best_dense_ms"])
    holds = abs(ratio / then - 1) <= CACHE_CHECK_TOLERANCE
    if progress:
        verdict = "holds" if holds else f"is off by more than {CACHE_CHECK_TOLERANCE:.0%}: measuring it again"
        print(f"latency table: cached; quick check: nothing-compressed ratio {ratio:.3f} now against {then:.3f} in the "
              f"table, {verdict}", file=sys.stderr)
    return holds


def _grids(grid: Sequence[float], unify_grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The prune and unify grids as arrays; ConfigError unless each ascends from 0 to at most 1."""
    g, q = np.asarray(grid, dtype=np.float64), np.asarray(unify_grid, dtype=np.float64)
    for axis, given in ((g, grid), (q, unify_grid)):
        if axis.ndim != 1 or len(axis) < 1 or axis[0] != 0 or np.any(np.diff(axis) <= 0) or axis[-1] > 1:
            raise ConfigError(f"grids must ascend from 0 to at most 1, got {list(given)}")
    return g, q


def _table_key(model: nn.Module, input_shape: Sequence[int], batch_size: int, n: int, shapes: Mapping[str, BlockShape],
               g: np.ndarray, q: np.ndarray, modes: list[str], *, warmup: int, repeats: int, runtime: str,
               statistic: str, min_seconds: float, precision: str) -> dict[str, Any]:
    """Everything a table's timings depend on (hashed into its cache file's name, kept in its meta)."""
    key_obj = {
        "arch": repr(model), "params": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "input_shape": list(input_shape), "batch": batch_size, "threads": n,
        "block_shapes": {k: [v.out, v.inp] for k, v in sorted(shapes.items())}, "grid": g.tolist(), "unify_grid": q.tolist(),
        "machine": machine_key(), "warmup": warmup, "repeats": repeats, "engines": modes,
        "method": "layers in place, warm passes, fixed from bare whole passes, fastest default engine mode apart, "
                  "unify of the rest, weights without zeros",
        "runtime": runtime,
        "statistic": statistic, "min_seconds": min_seconds,
    }
    if precision != "fp32":  # fp32 tables keep the key they had before precisions existed
        key_obj["precision"] = precision
    return key_obj


def _compile_points(model: nn.Module, specs: Sequence[Any], g: np.ndarray, q: np.ndarray, x: torch.Tensor, n: int,
                    runtime: str, precision: str, seed: int) -> tuple[dict[tuple[int, int], Any], str, list[str]]:
    """Every grid point's model compiled for ``runtime`` (random block states of exactly its fractions); the
    runtime they run on and the notes of the nothing-compressed one."""
    gen = torch.Generator().manual_seed(seed)
    models: dict[tuple[int, int], Any] = {}
    notes: list[str] = []
    used = runtime
    for i in range(len(g)):
        for j in range(len(q)):
            structures = {s.name: random_structure(s.grid, float(g[i]), float(q[j] * (1 - g[i])), gen) for s in specs}
            models[(i, j)], used, more = compile_for_timing(model, structures, x, n, runtime, precision)
            notes += more if (i, j) == (0, 0) else []
    return models, used, notes


def _table(samples: Mapping[tuple[int, int], Mapping[str, list[float]]], wholes: Mapping[tuple[int, int], list[float]],
           base: Mapping[str, Any], g: np.ndarray, q: np.ndarray, reduce: Any, meta: dict[str, Any]) -> LatencyModel:
    """The table from the rounds' samples (ms) and the baseline's race; ``meta`` gets the engines' figures."""
    points = list(wholes)
    names = list(samples[points[0]])
    ms = {pt: {name: reduce(samples[pt][name]) for name in names} for pt in points}
    tables = {name: np.array([[ms[(i, j)][name] for j in range(len(q))] for i in range(len(g))]) for name in names}
    # Measured on the compiled passes, not the dense one: torch's dense layers leave some of their cost to
    # what runs after them (0.4 ms of 14 at batch 1 on ResNet-56), which a compiled model does not pay.
    # Per grid point, the fixed part that makes the table's sum give that point's bare pass; the median over
    # the points. The bare and the clocked passes are separate, so the statistic of their per-round
    # differences (the min, on a shared machine) would pick one round's noise: it read 0 on ResNet-56.
    fixed = max(0.0, float(np.median([reduce(wholes[pt]) - sum(ms[pt].values()) for pt in points])))
    meta = {**meta, "engines": base["engines"], "precisions": base["precisions"], "baseline_engine": base["best_engine"],
            "baseline_precision": base["precisions"].get(base["best_engine"], "f32"), "rivals": base["rivals"],
            "fixed_ms_method": "bare compiled whole-model passes minus their layers timed in place"}
    return LatencyModel(g, q, tables, fixed, meta, baseline_ms=base["best_dense_ms"])


def build_latency_model(model: nn.Module, input_shape: tuple[int, int, int], *, batch_size: int = 1,
                        threads: int | None = None, block_shapes: Mapping[str, BlockShape] | None = None,
                        grid: Sequence[float] = (0, .25, .5, .75, .9), unify_grid: Sequence[float] = (0, .5, 1),
                        cache_dir: str | os.PathLike | None = None,
                        seed: int = 0, progress: bool = True, warmup: int = 3, repeats: int = 15,
                        statistic: str = "median", min_seconds: float = SPREAD_SECONDS,
                        engines: Sequence[str] | None = None, check_cache: bool = True,
                        runtime: str = "lean", precision: str = "fp32") -> LatencyModel:
    """Measure (or load from the cache) the per-layer latency table of ``model`` on this machine.

    For every grid point ``(p, q)``, ``(0, 0)`` included (prune ``p`` of the weights, unify ``q`` of what is left:
    see :class:`~.latency_model.LatencyModel`), the whole model is compiled with each
    compressible layer at that point (random block states of exactly those fractions) for ``runtime``
    (:data:`RUNTIMES`: by default the lean plan, what a user deploys) and run; each layer is timed in its
    place in the pass (:func:`~.table_rounds.measure_rounds`), the grid points' models taking turns round by
    round, each timed pass right after an untimed one of the same model (as in steady inference: its weights
    warm in the caches). ``fixed_ms`` (pooling, shortcuts, the call itself; on the Python path also the Python
    between the layers) is a bare pass's time (no clock in it) minus the layers' times of the clocked pass after
    it. The baseline every ratio divides by is the fastest dense engine (:mod:`uniprune.compressors.latency.engines`;
    all installed, or those named in ``engines``), each timed whole after the rounds, interleaved with the
    nothing-compressed compiled model only, as :func:`measure_model_ms` times them; every engine's ms is kept in
    ``meta["engines"]``. Rounds go on past ``repeats`` until ``min_seconds`` have passed (:data:`SPREAD_SECONDS`).

    ``input_shape``: one sample's shape (C, H, W); ``batch_size`` >= 1; ``threads`` >= 1 (default: torch's
    now); ``grid``: ascending prune fractions from 0; ``unify_grid``: ascending fractions of the rest from 0
    (unify buys a conv little time, so three points by default). Cached under ``cache_dir``
    (:mod:`~.table_cache`) by model, input shape, batch, threads, block shapes, grid, engines and machine (CPU,
    vector ISA, kernel build); with ``check_cache`` (default) a cached table is first checked against a quick
    timing (:data:`CACHE_CHECK_TOLERANCE`). A fresh table is measured again (at most :data:`TABLE_ATTEMPTS` times
    in all) while its sum for the nothing-compressed model and that model timed whole beside the engines disagree
    by more than :data:`TABLE_AGREEMENT_TOLERANCE` (the machine's speed changed; ``meta["agreement"]`` keeps the
    last ratio). ``precision``: the compressed model's (``fp32``, ``bf16``, ``auto``
    resolved for this CPU), part of the cache key and of ``meta["precision"]``.
    """
    n = check_threads(threads)
    precision = resolve_precision(precision)
    g, q = _grids(grid, unify_grid)
    check_counts(warmup, repeats, min_seconds)
    reduce = reducer(statistic)
    shapes = dict(DEFAULT_BLOCK_SHAPES)
    shapes.update(block_shapes or {})
    x = _example_input(input_shape, batch_size, seed)
    specs = compressible_layers(model, shapes)
    names = [s.name for s in specs]
    modes = check_modes(engines)
    key_obj = _table_key(model, input_shape, batch_size, n, shapes, g, q, modes, warmup=warmup, repeats=repeats,
                         runtime=runtime, statistic=statistic, min_seconds=min_seconds, precision=precision)
    path = table_path(key_obj, cache_dir)
    lm = read_cached_table(path)
    if lm is not None and (not check_cache or _cached_table_holds(lm, model, specs, x, n, statistic, progress, runtime,
                                                                  precision)):
        if progress and not check_cache:
            print(f"latency table: cached ({path})", file=sys.stderr)
        return lm
    model = without_zeros(model, specs, seed)
    dense = dense_engines(model, x, threads=n, engines=modes)
    models, used, more = _compile_points(model, specs, g, q, x, n, runtime, precision, seed)
    notes = list(dense.notes) + more
    for note in notes:
        print(f"latency table: note: {note}", file=sys.stderr)
    meta = {"kind": "measured", "key": key_obj | {"arch": type(model).__name__}, "runtime": used,
            "precision": precision if used != "python" else "fp32", "notes": notes}
    lm = _agreeing_table(models, names, dense, x, n, used, g, q, reduce, meta, warmup=warmup, repeats=repeats,
                         min_seconds=min_seconds, statistic=statistic, progress=progress)
    write_json_atomic(path, lm.to_dict())
    return lm


def _agreeing_table(models: Mapping[tuple[int, int], Any], names: Sequence[str], dense: DenseEngines, x: torch.Tensor,
                    n: int, used: str, g: np.ndarray, q: np.ndarray, reduce: Any, meta: dict[str, Any], *, warmup: int,
                    repeats: int, min_seconds: float, statistic: str, progress: bool) -> LatencyModel:
    """The table from the rounds and the baseline's race, measured again (at most :data:`TABLE_ATTEMPTS` times in
    all) while it disagrees with the whole pass (:func:`table_agreement`); ``meta["agreement"]`` keeps the last."""
    for attempt in range(1, TABLE_ATTEMPTS + 1):
        samples, wholes = measure_rounds(models, names, x, n, used, warmup=warmup, repeats=repeats,
                                         min_seconds=min_seconds, progress=progress)
        # The baseline is timed apart, against the nothing-compressed compiled model only, as `bench` times it.
        # Timed inside the rounds, where 15 other models run between two dense passes (evicting its weights from
        # the shared caches, we think), ResNet-56's dense pass at batch 1 read 11.0 ms against 8.7 ms in `bench`,
        # and every predicted ratio came out about 20 % too low.
        with torch_threads(n), torch.no_grad():
            base = baseline_rounds(dense, models[(0, 0)], x, n, repeats=repeats, min_seconds=min_seconds,
                                   statistic=statistic)
        lm = _table(samples, wholes, base, g, q, reduce, meta)
        agreement = table_agreement(lm, base)
        if abs(agreement - 1) <= TABLE_AGREEMENT_TOLERANCE:
            break
        again = "measuring it again" if attempt < TABLE_ATTEMPTS else \
            f"kept after {attempt} measurements, but its ratios may be off: measure it on a quieter machine"
        print(f"latency table: its sum for the nothing-compressed model is {agreement:.2f}x that model timed whole "
              f"beside the dense engines (want within {TABLE_AGREEMENT_TOLERANCE:.0%}): the machine's speed changed "
              f"while it was measured; {again}", file=sys.stderr)
    lm.meta["agreement"] = agreement
    return lm


def table_agreement(lm: LatencyModel, base: Mapping[str, Any]) -> float:
    """The table's sum for the nothing-compressed model over that model's ms timed whole beside the dense
    engines (``base``: :func:`~.table_rounds.baseline_rounds`); 1 on a steady machine (0.90 to 1.02 measured)."""
    return lm.predict({}) / base["compressed_ms"]


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
                        progress: bool = True, statistic: str = "median",
                        min_seconds: float = SPREAD_SECONDS) -> dict[str, Any]:
    """Compare the table's whole-model prediction with real whole-model timings of random policies.

    Each policy's compressed model, on the runtime the table was measured on, is timed interleaved with the
    dense engines (:func:`measure_model_ms`; its measured ratio is against the fastest of them).
    Two errors per policy, relative to the measurement: of the latency *ratio* (predicted ms / the table's
    dense ms against compressed / dense measured side by side), which is what a budget constrains and what
    holds up on a machine whose speed drifts; and of the absolute ms, which also carries the drift between
    the table's measurement and this one.

    Returns ``{"rows": [{"predicted_ms", "measured_ms", "dense_ms", "predicted_ratio", "measured_ratio",
    "ratio_error", "ms_error"}...], "median_error", "max_error", "median_ms_error", "max_ms_error"}``
    (``*_error``: of the ratio).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    rows = []
    for _ in tqdm(range(policies), desc="check table", disable=not progress, file=sys.stderr):
        actions, structures = random_policy_structures(model, gen, block_shapes=block_shapes)
        timing = measure_model_ms(model, structures, input_shape, batch_size=batch_size, threads=threads, warmup=3,
                                  repeats=repeats, seed=seed, statistic=statistic, min_seconds=min_seconds,
                                  engines=list(lm.meta.get("engines", {})) or None,
                                  runtime=lm.meta.get("runtime", "lean"), precision=lm.meta.get("precision", "fp32"))
        predicted = lm.predict(actions)
        predicted_ratio, measured_ratio = latency_ratio(predicted, lm.dense_ms), timing["latency_ratio"]
        rows.append({"predicted_ms": predicted, "measured_ms": timing["compressed_ms"], "dense_ms": timing["best_dense_ms"],
                     "predicted_ratio": predicted_ratio, "measured_ratio": measured_ratio,
                     "ratio_error": abs(predicted_ratio - measured_ratio) / measured_ratio,
                     "ms_error": abs(predicted - timing["compressed_ms"]) / timing["compressed_ms"]})
    ratio_errors = [r["ratio_error"] for r in rows]
    ms_errors = [r["ms_error"] for r in rows]
    return {"rows": rows, "median_error": float(statistics.median(ratio_errors)), "max_error": float(max(ratio_errors)),
            "median_ms_error": float(statistics.median(ms_errors)), "max_ms_error": float(max(ms_errors))}
