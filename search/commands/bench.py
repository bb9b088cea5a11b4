"""`uniprune bench`: time the dense engines against the compressed model on the real kernels.

Every installed dense engine (torch eager, ONNX Runtime, OpenVINO) runs the model with BatchNorm folded,
interleaved with the compressed model in one process; ``speedup`` is over the fastest of them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import torch
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction
from uniprune.compressors.latency.budget import latency_ratio
from uniprune.compressors.latency.engines import ENGINES
from uniprune.compressors.latency.table import RUNTIMES, build_latency_model, measure_model_ms
from uniprune.compressors.latency.timing import SPREAD_SECONDS
from uniprune.compressors.native.uniprune_lean import available_cores

from .common import (
    add_model_arguments,
    add_shape_arguments,
    check_batch_memory,
    check_writable,
    policy_model,
    positive_int,
)

NAME = "bench"
HELP = "time the dense engines (torch, ONNX Runtime, OpenVINO) against the compressed model on the real kernels"


def _engines(text: str) -> list[str]:
    names = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in names if e not in ENGINES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected engines from {','.join(ENGINES)} joined by commas, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="policy.json to project the model onto (structure chosen from the weights)")
    source.add_argument("--compressed", help="a compressed checkpoint ('uniprune finetune --out'; needs no policy), or an "
                        "artifact directory ('uniprune export --out'), whose plan.json and weights.bin are verified and run on uniprune's "
                        "own kernels (its Python and C files are never run); the dense engines then "
                        "run the checkpoint it was exported from (recorded in it, or --checkpoint)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="samples per forward pass (default 1)")
    add_shape_arguments(parser)
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch, the other engines and the kernels (default: every core)")
    parser.add_argument("--repeats", type=positive_int, default=50, help=f"timed rounds, at least (default 50; they go on until at least {SPREAD_SECONDS:g} s have passed, "
                        "so the timing sees more than one speed phase of a shared machine)")
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="statistic of the timed rounds (default median; min suits a machine shared with other jobs)")
    parser.add_argument("--engines", type=_engines, default=None,
                        help=f"dense engines to time, joined by commas, from {','.join(ENGINES)} (default: every one installed); "
                        "the speedup is over the fastest")
    parser.add_argument("--runtime", choices=RUNTIMES, default="lean",
                        help="how the compressed model runs: lean (default: one native plan per pass, what 'uniprune export' "
                        "deploys; falls back to python for a model it cannot lower) or python (layer by layer)")
    parser.add_argument("--no-table", action="store_true", help="skip the latency table (predicted_ms is then null)")
    parser.add_argument("--cache-dir", default=None, help="latency table cache (default $UNIPRUNE_CACHE/latency)")


def _model_and_structures(args: argparse.Namespace) -> tuple[Any, dict, tuple[int, int, int], str]:
    from uniprune.search.models import build_model, load_state

    if args.compressed:
        from uniprune.compressors.formats.checkpoint import load_compressed

        path = args.compressed
        if os.path.isdir(path):  # an exported artifact: its dense model is the checkpoint it came from
            from uniprune.compressors.formats.artifact import source_checkpoint

            path = str(source_checkpoint(args.compressed, args.checkpoint))
        name, state, structures, meta = load_compressed(path)
        shape = args.input_shape or tuple(meta["input_shape"])
        if os.path.isdir(args.compressed) and tuple(shape) != tuple(meta["input_shape"]):
            raise ConfigError(f"the artifact {args.compressed!r} takes inputs {tuple(meta['input_shape'])}, not "
                              f"--input-shape {tuple(shape)}; export it again for other shapes")
        if os.path.isdir(args.compressed):
            from uniprune.compressors.formats.artifact import read_header

            planned = read_header(args.compressed).get("input_shape")
            if planned != list(meta["input_shape"]):
                raise ConfigError(f"the artifact {args.compressed!r} says its input is {str(planned)[:40]}, but the checkpoint "
                                  f"it was exported from takes {list(meta['input_shape'])}: its plan.json was edited or "
                                  "belongs to another export; export it again")
        model = build_model(name, num_classes=int(meta["num_classes"]), input_shape=shape)
        load_state(model, state, where=path)
        return model, structures, shape, name
    return policy_model(args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.cache_dir is not None and not args.no_table:
        check_writable(args.cache_dir, "--cache-dir", folder=True)
    model, structures, shape, name = _model_and_structures(args)
    check_batch_memory(args.batch_size, math.prod(shape))
    model.eval()
    threads = args.threads or available_cores()
    print(f"bench: {name} batch {args.batch_size} input {shape} threads {threads}", file=sys.stderr)
    if args.compressed and os.path.isdir(args.compressed):
        from uniprune.compressors.formats.artifact import measure_artifact_ms

        result = measure_artifact_ms(args.compressed, model, batch_size=args.batch_size, threads=threads,
                                     repeats=args.repeats, statistic=args.statistic, engines=args.engines)
    else:
        result = measure_model_ms(model, structures, shape, batch_size=args.batch_size, threads=threads,
                                  repeats=args.repeats, statistic=args.statistic, engines=args.engines,
                                  runtime=args.runtime)
    for note in result.pop("notes"):
        print(f"bench: note: {note}", file=sys.stderr)
    predicted = predicted_ratio = None
    if not args.no_table:
        lm = build_latency_model(model, shape, batch_size=args.batch_size, threads=threads,
                                 block_shapes={k: s.grid.block_shape for k, s in _kinds(model, structures).items()},
                                 cache_dir=args.cache_dir, statistic=args.statistic, engines=args.engines,
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
