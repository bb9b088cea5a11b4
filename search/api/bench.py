"""``bench``: time the dense engines against the compressed model on the real kernels.

Every installed dense engine (torch eager, ONNX Runtime, OpenVINO) runs the model with BatchNorm folded, each
at its default precision (OpenVINO: bf16 on CPUs with avx512_bf16 or AMX) and OpenVINO also at f32, and with
``int8`` a statically quantized copy on ONNX Runtime and OpenVINO, interleaved with the compressed model in
one process; ``speedup`` is over the fastest engine at its default precision (what a user runs). With a
``dataset`` every engine mode and the compressed model are also scored (top-1 on the test split). Nodes the plan
has no op for run on ONNX Runtime inside the plan: one line says which, and ``segments`` which nodes ran where.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from uniprune.compressors.core.errors import CheckpointError, ConfigError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.threads import torch_threads
from uniprune.compressors.latency.budget import budget_verdict, latency_ratio
from uniprune.compressors.latency.engines import check_modes, dense_engines, top1
from uniprune.compressors.latency.table import build_latency_model, measure_model_ms
from uniprune.compressors.native.uniprune_lean import available_cores, onnx_nodes

from .inputs import check_batch_memory, policy_model
from .paths import check_writable
from .result import Result
from .specs import BenchSpec


@dataclass(frozen=True)
class BenchResult(Result):
    """Dense engine modes' and the compressed model's times (ms), the speedup over the fastest engine of the
    baseline group, the table's prediction, the budget's verdict; ``more`` holds the timing's other figures as the
    latency module reports them (precisions, rivals, ...)."""

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
    latency_budget: float | None
    budget_verdict: str
    top1: dict[str, float] | None
    scored_images: int | None
    more: dict[str, Any] = field(default_factory=dict)


def _model_and_structures(args: BenchSpec) -> tuple[Any, Any, dict, tuple[int, int, int], str]:
    """``(model, dense, structures, shape, name)``: the compressed model (structured weights), the dense model the
    engines run (the checkpoint before the policy's projection; for ``compressed`` the dense checkpoint its
    fine-tune recorded, or ``--checkpoint``, when that file is there, else the compressed weights themselves run
    dense: the same time, but then the engines' top-1 is the compressed model's), the structures, one sample's
    shape and the model's name."""
    from uniprune.search.models import build_model, load_state

    if not args.compressed:
        return policy_model(args.policy, args.model.model, args.model.checkpoint, args.input_shape, args.num_classes)
    if _channel_pruned(args):
        return _channel_models(args)
    from uniprune.compressors.formats.checkpoint import load_compressed

    path = args.compressed
    if os.path.isdir(path):  # an exported artifact: its dense model is the checkpoint it came from
        from uniprune.compressors.formats.artifact import source_checkpoint

        path = str(source_checkpoint(args.compressed, args.model.checkpoint))
    name, state, structures, meta = load_compressed(path)
    shape = args.input_shape or tuple(meta["input_shape"])
    if os.path.isdir(args.compressed):
        _check_artifact_shape(args, shape, list(meta["input_shape"]))
    model = build_model(name, num_classes=int(meta["num_classes"]), input_shape=shape)
    load_state(model, state, where=path)
    return model, _dense_source(args, meta, model, name, shape), structures, shape, name


def _dense_source(args: BenchSpec, meta: dict, compressed: Any, name: str, shape: tuple[int, ...]) -> Any:
    """The dense model a compressed checkpoint came from (``--checkpoint``, else the one its fine-tune recorded), when
    that file is there; else ``compressed`` itself."""
    from uniprune.search.models import build_model, load_weights

    given = None if os.path.isdir(args.compressed) else args.model.checkpoint  # an artifact's --checkpoint is its source
    source = given or meta.get("dense_checkpoint")
    if not source or not os.path.isfile(source):
        return compressed
    dense = build_model(name, num_classes=int(meta["num_classes"]), input_shape=shape)
    try:
        load_weights(dense, source)
    except CheckpointError:
        if given:
            raise
        return compressed  # a recorded dense checkpoint that was since replaced: race the compressed weights instead
    return dense.eval()


def _channel_pruned(args: BenchSpec) -> bool:
    """Whether ``compressed`` is a channel-pruned checkpoint (``finetune --method channel``)."""
    from uniprune.compressors.formats.channel_checkpoint import CHANNEL_FORMAT, checkpoint_format

    return bool(args.compressed) and os.path.isfile(args.compressed) and checkpoint_format(args.compressed) == CHANNEL_FORMAT


def _channel_models(args: BenchSpec) -> tuple[Any, Any, dict, tuple[int, int, int], str]:
    """A channel-pruned checkpoint: the pruned model (rebuilt from its channel counts) and the dense model it came from
    (``--checkpoint``, else the one its fine-tune recorded), which the engines race it against."""
    from uniprune.compressors.formats.channel_checkpoint import load_channel_pruned
    from uniprune.compressors.train.channel import rebuild
    from uniprune.search.models import build_model, load_weights

    saved = load_channel_pruned(args.compressed)
    shape = args.input_shape or tuple(saved.meta["input_shape"])
    classes = int(saved.meta["num_classes"])
    pruned = rebuild(build_model(saved.model_name, num_classes=classes, input_shape=shape), saved.channels, saved.state_dict)
    source = args.model.checkpoint or saved.meta.get("dense_checkpoint")
    if not source:
        raise ConfigError(f"{args.compressed} is channel-pruned: bench races it against the dense model it came from; pass "
                          "that model's --checkpoint")
    dense = build_model(saved.model_name, num_classes=classes, input_shape=shape)
    load_weights(dense, source)
    return pruned, dense.eval(), {}, shape, saved.model_name


def _check_artifact_shape(args: BenchSpec, shape: tuple[int, ...], exported: list[int]) -> None:
    """ConfigError unless the artifact's plan, its source checkpoint and ``input_shape`` agree on one sample's shape."""
    from uniprune.compressors.formats.artifact import read_header

    if tuple(shape) != tuple(exported):
        raise ConfigError(f"the artifact {args.compressed!r} takes inputs {tuple(exported)}, not "
                          f"--input-shape {tuple(shape)}; export it again for other shapes")
    planned = read_header(args.compressed).get("input_shape")
    if planned != exported:
        raise ConfigError(f"the artifact {args.compressed!r} says its input is {str(planned)[:40]}, but the checkpoint "
                          f"it was exported from takes {exported}: its plan.json was edited or "
                          "belongs to another export; export it again")


def _data(args: BenchSpec, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """``(bundle, calibration, held_out)``: the dataset (None without ``dataset``), the ``int8`` calibration inputs
    (normalised float32 numpy, None without ``int8``) and the test images' mask of those not among them."""
    if args.dataset is None:
        if args.int8:
            raise ConfigError("--int8 calibrates on training images: add --dataset (and --data), e.g. --dataset npz "
                              "--data images.npz")
        return None, None, None
    from uniprune.search.datasets import load_dataset

    bundle = load_dataset(args.dataset, args.data)
    if tuple(bundle.input_shape) != tuple(shape):
        raise ConfigError(f"dataset {args.dataset!r} has inputs {tuple(bundle.input_shape)}, the model takes {tuple(shape)}; "
                          "choose the dataset the model was trained on")
    held_out = torch.ones(len(bundle.test), dtype=torch.bool)
    if not args.int8:
        return bundle, None, held_out
    train = bundle.split("train")
    if len(train) == 0:
        raise ConfigError(f"dataset {args.dataset!r} has no training images to calibrate --int8 on")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.calibration]
    raw = train.images[order]
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    calibration = ((raw.float() / 255 - mean) / std).numpy()
    # a dataset whose training images include its test images (an npz without train arrays): score every mode
    # only on the test images the quantizer never saw
    seen = {bytes(img.numpy().tobytes()) for img in raw}
    held_out = torch.tensor([bytes(img.numpy().tobytes()) not in seen for img in bundle.test.images], dtype=torch.bool)
    if not bool(held_out.any()):
        raise ConfigError(f"every test image of {args.dataset!r} was used to calibrate --int8; lower --calibration")
    return bundle, calibration, held_out


def _scores(dense: Any, model: torch.nn.Module, bundle: Any, held_out: torch.Tensor, batch: int) -> dict[str, float]:
    """Top-1 (in [0, 1]) of every engine mode and of the compressed model (its structured weights in float32,
    which the f32 kernels compute to 1e-4) on the held-out test images."""
    test = bundle.test
    images, labels = test.images[held_out], test.labels[held_out].numpy()
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)

    def batches(size: int):
        for start in range(0, len(images), size):
            yield ((images[start:start + size].float() / 255 - mean) / std).numpy(), labels[start:start + size]

    out = {}
    for mode, infer in dense.infer.items():
        print(f"bench: scoring {mode} on {len(images)} test images", file=sys.stderr)
        out[mode] = top1(infer, batches(256), 256 if mode.partition(":")[0] == "torch" else batch)
    with torch.no_grad():
        out["compressed"] = top1(lambda a: model(torch.from_numpy(a)).numpy(), batches(256), 256)
    return out


def _budget(args: BenchSpec) -> float | None:
    """``latency_budget``, else the policy's (when a policy file is benched)."""
    if args.latency_budget is not None:
        return args.latency_budget
    if args.policy:
        return Policy.load(args.policy).latency_budget
    return None


def _predicted(args: BenchSpec, model: torch.nn.Module, structures: dict, shape: tuple[int, ...], threads: int,
               modes: list[str], result: dict[str, Any]) -> tuple[float | None, float | None]:
    """The latency table's prediction for ``structures`` (ms) and its ratio against this run's baseline."""
    if args.no_table or not structures:  # nothing structured (a channel-pruned model is dense): no table to predict
        return None, None
    lm = build_latency_model(model, shape, batch_size=args.batch_size, threads=threads,
                             block_shapes={k: s.grid.block_shape for k, s in _kinds(model, structures).items()},
                             cache_dir=args.cache_dir, statistic=args.statistic,
                             engines=[m for m in modes if not m.endswith(":int8")], runtime=args.runtime,
                             precision=result["precision"])
    actions = {}
    for layer, s in structures.items():
        c = s.counts()
        total = max(1, s.grid.num_blocks)
        actions[layer] = LayerAction(prune=c["prune"] / total, unify=c["unify"] / total)
    predicted = lm.predict(actions)
    # the table divides by the fastest default mode; another baseline by the two's ms in this run's rounds
    return predicted, latency_ratio(predicted, lm.dense_ms) * result["rivals"]["default"]["ms"] / result["best_dense_ms"]


def bench(spec: BenchSpec) -> BenchResult:
    """Time ``spec``'s dense engines against its compressed model; the figures, and the latency table's prediction."""
    with torch_threads(spec.threads or available_cores()) as threads:
        return BenchResult.of(_bench(spec, threads))


def _bench(args: BenchSpec, threads: int) -> dict[str, Any]:
    if args.cache_dir is not None and not args.no_table:
        check_writable(args.cache_dir, "--cache-dir", folder=True)
    model, dense_model, structures, shape, name = _model_and_structures(args)
    check_batch_memory(args.batch_size, math.prod(shape))
    model.eval()
    modes = check_modes(list(args.engines) if args.engines else None, int8=args.int8)
    if args.baseline == "int8" and not any(m.endswith(":int8") for m in modes):
        raise ConfigError("--baseline int8 needs the int8 modes: add --int8 (with --dataset) and leave them in --engines")
    bundle, calibration, held_out = _data(args, shape)
    print(f"bench: {name} batch {args.batch_size} input {shape} threads {threads}", file=sys.stderr)
    x = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(0))
    dense = dense_engines(dense_model, x, threads=threads, engines=modes, int8_calibration=calibration, progress=True)
    if _channel_pruned(args):  # the smaller dense model on its own fastest engine, at its default precision
        from uniprune.compressors.train.channel_strategy import time_pruned

        result = time_pruned(dense, model, x, threads=threads, repeats=args.repeats, statistic=args.statistic,
                             baseline=args.baseline)
        result.update(runtime=f"engine {result['compressed_engine']}", precision=result["compressed_precision"])
    elif args.compressed and os.path.isdir(args.compressed):
        from uniprune.compressors.formats.artifact import measure_artifact_ms

        result = measure_artifact_ms(args.compressed, model, batch_size=args.batch_size, threads=threads,
                                     repeats=args.repeats, statistic=args.statistic, baseline=args.baseline, dense=dense)
    else:
        result = measure_model_ms(model, structures, shape, batch_size=args.batch_size, threads=threads,
                                  repeats=args.repeats, statistic=args.statistic, runtime=args.runtime,
                                  baseline=args.baseline, dense=dense, precision=args.precision)
    if bundle is not None and dense_model is model and structures:
        how = "fine-tune from a --checkpoint" if os.path.isdir(args.compressed) else "pass the dense --checkpoint"
        result["notes"].append(f"no dense checkpoint is known ({how}), so the engines ran the compressed weights "
                               "dense: the same times, and the compressed model's top-1")
    for note in result.pop("notes"):
        print(f"bench: note: {note}", file=sys.stderr)
    ort = onnx_nodes(result.get("segments"))
    if ort:  # a segmented plan: which nodes left the native kernels (the JSON's "segments" says where each ran)
        print(f"bench: {len(ort)} node(s) ran on ONNX Runtime inside the plan: {', '.join(ort)}", file=sys.stderr)
    scores = _scores(dense, model, bundle, held_out, args.batch_size) if bundle is not None else None
    predicted, predicted_ratio = _predicted(args, model, structures, shape, threads, modes, result)
    budget = _budget(args)
    verdict = budget_verdict(result["latency_ratio"], budget)
    _print_table(args, result, scores, held_out, verdict)
    return {**result, "predicted_ms": predicted, "predicted_latency_ratio": predicted_ratio, "model": name,
            "batch_size": args.batch_size, "input_shape": list(shape), "threads": threads, "statistic": args.statistic,
            "latency_budget": budget, "budget_verdict": verdict,
            "top1": scores, "scored_images": int(held_out.sum()) if scores is not None else None}


def _print_table(args: BenchSpec, result: dict[str, Any], scores: dict[str, float] | None, held_out: Any,
                 verdict: str) -> None:
    """Every engine mode's precision, time and top-1, the compressed model's, and the speedups, on stderr."""
    scored = f" top-1 on {int(held_out.sum())} test images" if scores is not None else ""
    print(f"  {'mode':<17} {'precision':<9} {'ms':>9}{'  top-1' if scores else ''}{scored}", file=sys.stderr)
    for mode, ms in result["engines"].items():
        mark = f"  (fastest at {args.baseline} precision: the baseline)" if mode == result["best_engine"] else ""
        acc = f"  {100 * scores[mode]:5.2f} %" if scores else ""
        print(f"  {mode:<17} {result['precisions'].get(mode, 'f32'):<9} {ms:9.3f}{acc}{mark}", file=sys.stderr)
    acc = f"  {100 * scores['compressed']:5.2f} %" if scores else ""
    print(f"  {'compressed':<17} {result.get('precision', 'fp32'):<9} {result['compressed_ms']:9.3f}{acc}  ({result['runtime']})", file=sys.stderr)
    rivals = "; ".join(f"{r['speedup']:.2f}x over {r['engine']} ({r['precision']}, fastest {group})"
                       for group, r in result["rivals"].items() if group != args.baseline)
    print(f"  speedup {result['speedup']:.2f}x over {result['best_engine']} ({result['precisions'].get(result['best_engine'], 'f32')}): "
          f"latency ratio {result['latency_ratio']:.3f}, {verdict}" + (f"; {rivals}" if rivals else ""), file=sys.stderr)


def _kinds(model: torch.nn.Module, structures: dict) -> dict:
    """One structure per layer type, to learn the block shapes the structures use."""
    out = {}
    for layer, s in structures.items():
        kind = "linear" if isinstance(model.get_submodule(layer), torch.nn.Linear) else "conv"
        out.setdefault(kind, s)
    return out
