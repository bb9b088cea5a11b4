"""``bench``: time the dense engines against the compressed model on the real kernels.

Every installed dense engine (torch eager, ONNX Runtime, OpenVINO) runs the model with BatchNorm folded,
interleaved with the compressed model in one process; ``speedup`` is over the fastest of them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.threads import torch_threads
from uniprune.compressors.latency.budget import latency_ratio
from uniprune.compressors.latency.table import build_latency_model, measure_model_ms

from .paths import check_writable
from .result import Result
from .specs import BenchSpec


@dataclass(frozen=True)
class BenchResult(Result):
    """Dense engines' and the compressed model's times (ms), the speedup over the fastest dense engine, the table's
    prediction; ``more`` holds the timing's other figures as the latency module reports them."""

    engines: dict[str, float]
    best_engine: str
    best_dense_ms: float
    compressed_ms: float
    speedup: float
    latency_ratio: float
    runtime: str
    predicted_ms: float | None
    predicted_latency_ratio: float | None
    model: str
    batch_size: int
    input_shape: list[int]
    threads: int
    statistic: str
    more: dict[str, Any] = field(default_factory=dict)


def _model_and_structures(args: BenchSpec) -> tuple[Any, dict, tuple[int, int, int], str]:
    from uniprune.compressors.core.projection import check_policy_model, project_model
    from uniprune.search.models import (
        build_model,
        load_state,
        model_hint,
        read_checkpoint,
        split_checkpoint,
    )

    if args.compressed:
        from uniprune.compressors.formats.checkpoint import load_compressed

        path = args.compressed
        if os.path.isdir(path):  # an exported artifact: its dense model is the checkpoint it came from
            from uniprune.compressors.formats.artifact import source_checkpoint

            path = str(source_checkpoint(args.compressed, args.model.checkpoint))
        name, state, structures, meta = load_compressed(path)
        shape = args.input_shape or tuple(meta["input_shape"])
        if os.path.isdir(args.compressed) and tuple(shape) != tuple(meta["input_shape"]):
            raise ConfigError(f"the artifact {args.compressed!r} takes inputs {tuple(meta['input_shape'])}, not "
                              f"--input-shape {tuple(shape)}; export it again for other shapes")
        model = build_model(name, num_classes=int(meta["num_classes"]), input_shape=shape)
        load_state(model, state, where=path)
        return model, structures, shape, name
    if not os.path.isfile(args.policy):
        raise ConfigError(f"policy file {args.policy!r} does not exist; pass the policy.json a search wrote")
    policy = Policy.load(args.policy)
    check_policy_model(policy, args.model.model)
    # the checkpoint knows its input shape and classes; without one, the defaults (read once, loaded below)
    state, meta = split_checkpoint(read_checkpoint(args.model.checkpoint), args.model.checkpoint) if args.model.checkpoint else ({}, {})
    default_shape = (1, 8, 8) if args.model.model == "digits-cnn" else (3, 32, 32)
    shape = args.input_shape or tuple(int(s) for s in meta.get("input_shape") or default_shape)
    model = build_model(args.model.model, num_classes=args.num_classes or int(meta.get("num_classes") or 10), input_shape=shape)
    if args.model.checkpoint:
        load_state(model, state, where=args.model.checkpoint, hint=model_hint(meta))
    structures = project_model(model, policy, apply=True)
    return model, structures, shape, args.model.model


def bench(spec: BenchSpec) -> BenchResult:
    """Time ``spec``'s dense engines against its compressed model; the figures, and the latency table's prediction."""
    with torch_threads(spec.threads) as threads:
        return BenchResult.of(_bench(spec, threads))


def _bench(args: BenchSpec, threads: int) -> dict[str, Any]:
    if args.cache_dir is not None and not args.no_table:
        check_writable(args.cache_dir, "--cache-dir", folder=True)
    model, structures, shape, name = _model_and_structures(args)
    model.eval()
    print(f"bench: {name} batch {args.batch_size} input {shape} threads {threads}", file=sys.stderr)
    if args.compressed and os.path.isdir(args.compressed):
        from uniprune.compressors.formats.artifact import measure_artifact_ms

        result = measure_artifact_ms(args.compressed, model, batch_size=args.batch_size, threads=threads,
                                     repeats=args.repeats, statistic=args.statistic, engines=list(args.engines) if args.engines else None)
    else:
        result = measure_model_ms(model, structures, shape, batch_size=args.batch_size, threads=threads,
                                  repeats=args.repeats, statistic=args.statistic, engines=list(args.engines) if args.engines else None,
                                  runtime=args.runtime)
    for note in result.pop("notes"):
        print(f"bench: note: {note}", file=sys.stderr)
    predicted = predicted_ratio = None
    if not args.no_table:
        lm = build_latency_model(model, shape, batch_size=args.batch_size, threads=threads,
                                 block_shapes={k: s.grid.block_shape for k, s in _kinds(model, structures).items()},
                                 cache_dir=args.cache_dir, statistic=args.statistic, engines=list(args.engines) if args.engines else None,
                                 runtime=args.runtime)
        actions = {}
        for layer, s in structures.items():
            c = s.counts()
            total = max(1, s.grid.num_blocks)
            actions[layer] = LayerAction(prune=c["prune"] / total, unify=c["unify"] / total)
        predicted = lm.predict(actions)
        predicted_ratio = latency_ratio(predicted, lm.dense_ms)
    for engine, ms in result["engines"].items():
        best = "  (fastest dense)" if engine == result["best_engine"] else ""
        print(f"  {engine:<12} {ms:9.3f} ms{best}", file=sys.stderr)
    print(f"  {'compressed':<12} {result['compressed_ms']:9.3f} ms ({result['runtime']})  speedup {result['speedup']:.2f}x over "
          f"{result['best_engine']}", file=sys.stderr)
    return {**result, "predicted_ms": predicted, "predicted_latency_ratio": predicted_ratio, "model": name,
            "batch_size": args.batch_size, "input_shape": list(shape), "threads": threads, "statistic": args.statistic}


def _kinds(model: torch.nn.Module, structures: dict) -> dict:
    """One structure per layer type, to learn the block shapes the structures use."""
    out = {}
    for layer, s in structures.items():
        kind = "linear" if isinstance(model.get_submodule(layer), torch.nn.Linear) else "conv"
        out.setdefault(kind, s)
    return out
