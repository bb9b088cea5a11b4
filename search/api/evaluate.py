"""``evaluate``: top-1 accuracy of a checkpoint (plain or compressed) on one split of a dataset."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from uniprune.compressors.core.errors import ConfigError, DataError, NotAvailableError
from uniprune.compressors.core.threads import torch_threads
from uniprune.compressors.formats.channel_checkpoint import CHANNEL_FORMAT, load_channel_pruned
from uniprune.compressors.train.channel import reshape_like
from uniprune.compressors.train.training import evaluate
from uniprune.search.datasets import load_dataset
from uniprune.search.models import (
    COMPRESSED_FORMAT,
    build_model,
    load_state,
    model_hint,
    read_checkpoint,
    split_checkpoint,
)

from .devices import resolve_device, show_notes
from .result import Result
from .specs import EvalSpec
from .train import model_name


@dataclass(frozen=True)
class EvalResult(Result):
    """Accuracy in [0, 1] on ``samples`` images of ``split``; ``more``: the structured layers and the saved accuracy, when known."""

    accuracy: float
    samples: int
    split: str
    model: str
    dataset: str
    checkpoint: str
    compressed: bool
    threads: int
    seconds: float
    more: dict[str, Any] = field(default_factory=dict)


def _load_compressed(path: str) -> tuple[str, dict, dict, dict]:
    """Hook for compressed checkpoints: ``(model_name, state_dict, structures, meta)``.

    The state dict of a compressed checkpoint holds plain weights that already obey the structures
    (pruned blocks zero, unified blocks at one magnitude), so the ordinary model scores it exactly.
    """
    try:
        from uniprune.compressors.formats.checkpoint import load_compressed
    except ImportError:
        raise NotAvailableError(
            f"{path} is a compressed checkpoint, but this installation has no uniprune.compressors.formats.checkpoint to read it"
        ) from None
    return load_compressed(path)


def evaluate_checkpoint(spec: EvalSpec) -> EvalResult:
    """Top-1 accuracy of ``spec.checkpoint`` on ``spec.split``."""
    with torch_threads(spec.threads) as threads:
        return EvalResult.of(_evaluate(spec, threads))


def _evaluate(args: EvalSpec, threads: int) -> dict[str, Any]:
    if not args.checkpoint:
        raise ConfigError("eval needs --checkpoint FILE (a checkpoint written by 'uniprune train' or 'finetune', or a state dict)")
    device = resolve_device(args.device)
    started = time.perf_counter()

    raw = read_checkpoint(args.checkpoint)
    compressed = raw.get("format") == COMPRESSED_FORMAT
    channels = None
    if raw.get("format") == CHANNEL_FORMAT:  # a channel-pruned model: built at its channel counts, then loaded
        saved = load_channel_pruned(args.checkpoint)
        name, state, structures, meta, channels = saved.model_name, saved.state_dict, {}, saved.meta, saved.channels
        compressed = True
    elif compressed:
        name, state, structures, meta = _load_compressed(args.checkpoint)
    else:
        state, meta = split_checkpoint(raw, args.checkpoint)
        name, structures = model_name(args.model, meta), {}
    data = load_dataset(args.data.dataset, args.data.data, val_fraction=args.data.val_fraction, seed=args.seed)
    show_notes(data)

    saved_shape = meta.get("input_shape")
    if saved_shape is not None and tuple(int(s) for s in saved_shape) != tuple(data.input_shape):
        raise ConfigError(
            f"{args.checkpoint} was trained on inputs {tuple(saved_shape)}, dataset {args.data.dataset!r} gives "
            f"{tuple(data.input_shape)}; evaluate it on the data it was trained for"
        )
    saved_norm = [meta.get("mean"), meta.get("std")]
    if all(isinstance(v, (list, tuple)) for v in saved_norm) and any(
            len(a) != len(b) or any(abs(float(x) - float(y)) > 1e-3 for x, y in zip(a, b))
            for a, b in zip(saved_norm, (data.mean, data.std))):
        print(f"uniprune eval: warning: {args.checkpoint} was trained on inputs normalised with mean {list(saved_norm[0])} "
              f"and std {list(saved_norm[1])}; dataset {args.data.dataset!r} normalises with {list(data.mean)} and "
              f"{list(data.std)}, so the accuracy is of other inputs than it learnt", file=sys.stderr)
    num_classes = int(meta.get("num_classes") or data.num_classes)
    labels = data.split(args.split).labels
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(
            f"the {args.split} split has label {int(labels.max())}, but the model has {num_classes} classes; "
            "this checkpoint was trained for other data"
        )
    model = build_model(name, num_classes=num_classes, input_shape=data.input_shape)
    if channels is not None:
        reshape_like(model, channels)
    load_state(model, state, where=args.checkpoint, hint=model_hint(meta))
    model.to(device)

    samples = min(len(labels), args.limit) if args.limit else len(labels)
    batches = data.batches(args.split, args.batch_size, limit=args.limit, device=device)
    accuracy = evaluate(
        model, batches, device=device, desc=f"eval {args.split}", total=data.num_batches(args.split, args.batch_size, args.limit)
    )
    result: dict[str, Any] = {
        "accuracy": accuracy,
        "samples": samples,
        "split": args.split,
        "model": name,
        "dataset": args.data.dataset,
        "checkpoint": args.checkpoint,
        "compressed": compressed,
    }
    if compressed:
        result["structured_layers"] = len(structures)
    if isinstance(meta.get("accuracy"), float):
        result["saved_accuracy"] = meta["accuracy"]
    result["threads"] = threads
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result
