"""`uniprune bench`: time the dense engines against the compressed model on the real kernels.

Every installed dense engine (torch eager, ONNX Runtime, OpenVINO) runs the model with BatchNorm folded, each
at its default precision (OpenVINO: bf16 on CPUs with avx512_bf16 or AMX) and OpenVINO also at f32, and with
``--int8`` a statically quantized copy on ONNX Runtime and OpenVINO, interleaved with the compressed model in
one process; ``speedup`` is over the fastest engine at its default precision (what a user runs). With
``--dataset`` every engine mode and the compressed model are also scored (top-1 on the test split).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from typing import Any

import torch
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.latency.budget import budget_verdict, latency_ratio
from uniprune.compressors.latency.engines import (
    BASELINES,
    ENGINES,
    MODE_PRECISIONS,
    check_modes,
    dense_engines,
    top1,
)
from uniprune.compressors.latency.table import RUNTIMES, build_latency_model, measure_model_ms
from uniprune.compressors.latency.timing import SPREAD_SECONDS

from .common import (
    add_model_arguments,
    add_precision_argument,
    check_batch_memory,
    check_writable,
    positive_int,
)

NAME = "bench"
HELP = "time the dense engines (torch, ONNX Runtime, OpenVINO; default precision, f32, int8) against the compressed model"


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W as three positive integers like 3,32,32, got {text!r}")
    return shape  # type: ignore[return-value]


def _engines(text: str) -> list[str]:
    names = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in names if e.partition(":")[0] not in ENGINES or e.partition(":")[2] not in ("", *MODE_PRECISIONS)]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected engine modes from {','.join(ENGINES)} (optionally :f32 or :int8, "
                                         f"e.g. openvino:f32) joined by commas, got {text!r}")
    return names


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a latency budget in (0, 1] like 0.5, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="policy.json to project the model onto (structure chosen from the weights)")
    source.add_argument("--compressed", help="a compressed checkpoint ('uniprune finetune --out'; needs no policy), or an "
                        "artifact directory ('uniprune export --out'), whose plan.json and weights.bin are verified and run on uniprune's "
                        "own kernels (its Python and C files are never run); the dense engines then "
                        "run the checkpoint it was exported from (recorded in it, or --checkpoint)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="samples per forward pass (default 1)")
    parser.add_argument("--input-shape", type=_input_shape, default=None,
                        help="C,H,W of one sample (default: the checkpoint's, else 3,32,32; 1,8,8 for digits-cnn)")
    parser.add_argument("--num-classes", type=positive_int, default=None, help="output classes (default: the checkpoint's, else 10)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch and the kernels (default: torch's)")
    parser.add_argument("--repeats", type=positive_int, default=50, help=f"timed rounds, at least (default 50; they go on until at least {SPREAD_SECONDS:g} s have passed, "
                        "so the timing sees more than one speed phase of a shared machine)")
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="statistic of the timed rounds (default median; min suits a machine shared with other jobs)")
    parser.add_argument("--engines", type=_engines, default=None,
                        help=f"dense engine modes to time, joined by commas: {','.join(ENGINES)} at their default precision "
                        "(OpenVINO's is bf16 on CPUs with avx512_bf16 or AMX), NAME:f32 pinned to float32, onnxruntime:int8 "
                        "and openvino:int8 (with --int8) (default: every installed engine, openvino:f32 too, and the int8 "
                        "modes with --int8)")
    parser.add_argument("--baseline", choices=BASELINES, default="default",
                        help="what speedup, latency_ratio and the budget divide by: the fastest engine at its default "
                        "precision (default: what a user runs), the fastest f32 mode, or the fastest int8 mode (needs "
                        "--int8). The others are reported beside it")
    parser.add_argument("--int8", action="store_true",
                        help="also time and score the dense model quantized by ONNX Runtime's static quantization (QDQ, "
                        "per-channel, calibrated on --calibration training images of --dataset) on ONNX Runtime and "
                        "OpenVINO: a reported rival, not the denominator of speedup unless --baseline int8")
    parser.add_argument("--calibration", type=positive_int, default=256,
                        help="training images to calibrate --int8 on (default 256); test images among them are left "
                        "out of every mode's top-1")
    parser.add_argument("--latency-budget", type=_fraction, default=None,
                        help="the latency budget to judge the ratio by (default: the policy's, when it has one)")
    parser.add_argument("--dataset", default=None,
                        help="score every engine mode and the compressed model on this dataset's test split (digits, "
                        "fashion-mnist, cifar10, imagefolder, npz: as in 'uniprune train'); default: timing only")
    parser.add_argument("--data", default=None, help="the dataset's folder or file, as in 'uniprune train'")
    parser.add_argument("--runtime", choices=RUNTIMES, default="lean",
                        help="how the compressed model runs: lean (default: one native plan per pass, what 'uniprune export' "
                        "deploys; falls back to python for a model it cannot lower) or python (layer by layer)")
    add_precision_argument(parser, "the compressed model is timed in (an artifact runs in its own)")
    parser.add_argument("--no-table", action="store_true", help="skip the latency table (predicted_ms is then null)")
    parser.add_argument("--cache-dir", default=None, help="latency table cache (default $UNIPRUNE_CACHE/latency)")


def _model_and_structures(args: argparse.Namespace) -> tuple[Any, Any, dict, tuple[int, int, int], str]:
    """``(model, dense, structures, shape, name)``: the compressed model (structured weights), the dense model the
    engines run (the checkpoint before the policy's projection; for --compressed the compressed weights
    themselves, all a compressed checkpoint holds), the structures, one sample's shape and the model's name."""
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
        return model, model, structures, shape, name
    if not os.path.isfile(args.policy):
        raise ConfigError(f"policy file {args.policy!r} does not exist; pass the policy.json a search wrote")
    policy = Policy.load(args.policy)
    check_policy_model(policy, args.model)
    # the checkpoint knows its input shape and classes; without one, the defaults (read once, loaded below)
    state, meta = split_checkpoint(read_checkpoint(args.checkpoint), args.checkpoint) if args.checkpoint else ({}, {})
    default_shape = (1, 8, 8) if args.model == "digits-cnn" else (3, 32, 32)
    shape = args.input_shape or tuple(int(s) for s in meta.get("input_shape") or default_shape)
    model = build_model(args.model, num_classes=args.num_classes or int(meta.get("num_classes") or 10), input_shape=shape)
    if args.checkpoint:
        load_state(model, state, where=args.checkpoint, hint=model_hint(meta))
    dense = copy.deepcopy(model).eval()
    structures = project_model(model, policy, apply=True)
    return model, dense, structures, shape, args.model


def _data(args: argparse.Namespace, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """``(bundle, calibration, held_out)``: the dataset (None without --dataset), the --int8 calibration inputs
    (normalised float32 numpy, None without --int8) and the test images' mask of those not among them."""
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


def _budget(args: argparse.Namespace) -> float | None:
    """--latency-budget, else the policy's (a policy file's, or the one a compressed checkpoint records)."""
    if args.latency_budget is not None:
        return args.latency_budget
    if args.policy:
        return Policy.load(args.policy).latency_budget
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.cache_dir is not None and not args.no_table:
        check_writable(args.cache_dir, "--cache-dir", folder=True)
    model, dense_model, structures, shape, name = _model_and_structures(args)
    check_batch_memory(args.batch_size, math.prod(shape))
    model.eval()
    threads = args.threads or torch.get_num_threads()
    modes = check_modes(args.engines, int8=args.int8)
    if args.baseline == "int8" and not any(m.endswith(":int8") for m in modes):
        raise ConfigError("--baseline int8 needs the int8 modes: add --int8 (with --dataset) and leave them in --engines")
    bundle, calibration, held_out = _data(args, shape)
    print(f"bench: {name} batch {args.batch_size} input {shape} threads {threads}", file=sys.stderr)
    x = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(0))
    dense = dense_engines(dense_model, x, threads=threads, engines=modes, int8_calibration=calibration, progress=True)
    if args.compressed and os.path.isdir(args.compressed):
        from uniprune.compressors.formats.artifact import measure_artifact_ms

        result = measure_artifact_ms(args.compressed, model, batch_size=args.batch_size, threads=threads,
                                     repeats=args.repeats, statistic=args.statistic, baseline=args.baseline, dense=dense)
    else:
        result = measure_model_ms(model, structures, shape, batch_size=args.batch_size, threads=threads,
                                  repeats=args.repeats, statistic=args.statistic, runtime=args.runtime,
                                  baseline=args.baseline, dense=dense, precision=args.precision)
    for note in result.pop("notes"):
        print(f"bench: note: {note}", file=sys.stderr)
    scores = _scores(dense, model, bundle, held_out, args.batch_size) if bundle is not None else None
    predicted = predicted_ratio = None
    if not args.no_table:
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
        predicted_ratio = latency_ratio(predicted, lm.dense_ms) * result["rivals"]["default"]["ms"] / result["best_dense_ms"]
    budget = _budget(args)
    verdict = budget_verdict(result["latency_ratio"], budget)
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
    return {**result, "predicted_ms": predicted, "predicted_latency_ratio": predicted_ratio, "model": name,
            "batch_size": args.batch_size, "input_shape": list(shape), "threads": threads, "statistic": args.statistic,
            "latency_budget": budget, "budget_verdict": verdict,
            "top1": scores, "scored_images": int(held_out.sum()) if scores is not None else None}


def _kinds(model: torch.nn.Module, structures: dict) -> dict:
    """One structure per layer type, to learn the block shapes the structures use."""
    out = {}
    for layer, s in structures.items():
        kind = "linear" if isinstance(model.get_submodule(layer), torch.nn.Linear) else "conv"
        out.setdefault(kind, s)
    return out
