"""``train``: train a zoo model from scratch, or go on training a checkpoint, and save it."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from uniprune.compressors.core.errors import ConfigError, NonFiniteError
from uniprune.compressors.core.threads import torch_threads
from uniprune.compressors.train.training import cosine_schedule, evaluate, make_optimizer, train_epoch
from uniprune.search.datasets import load_dataset
from uniprune.search.models import (
    build_model,
    load_state,
    model_hint,
    read_checkpoint,
    save_checkpoint,
    split_checkpoint,
)

from .devices import resolve_device, show_notes
from .paths import check_writable
from .result import Result
from .specs import DEFAULT_MODEL, TrainSpec

EVAL_BATCH = 256


@dataclass(frozen=True)
class TrainResult(Result):
    """The trained checkpoint and its accuracies (test, validation, last training epoch)."""

    accuracy: float
    val_accuracy: float
    train_accuracy: float
    train_loss: float
    checkpoint: str
    epochs: int
    samples: int
    model: str
    dataset: str
    threads: int
    seconds: float


def model_name(given: str | None, checkpoint_meta: dict) -> str:
    """The model to build: the one given, else the one a uniprune checkpoint names, else the default."""
    if given:
        return given
    saved = checkpoint_meta.get("model")
    return saved if isinstance(saved, str) and saved else DEFAULT_MODEL


def default_out(model: str, dataset: str) -> Path:
    """``checkpoints/<model>-<dataset>.pt`` with the model name made file-safe (``tv:resnet18`` -> ``tv-resnet18``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{dataset}").strip("-")
    return Path("checkpoints") / f"{safe}.pt"


def train(spec: TrainSpec) -> TrainResult:
    """Train ``spec.model`` (or go on training ``spec.checkpoint``) and save the checkpoint; returns its figures."""
    with torch_threads(spec.threads) as threads:
        return TrainResult(**_train(spec, threads))


def _train(args: TrainSpec, threads: int) -> dict[str, Any]:
    state, previous = split_checkpoint(read_checkpoint(args.checkpoint), args.checkpoint) if args.checkpoint else ({}, {})
    name = model_name(args.model, previous)
    out = Path(args.out).expanduser() if args.out else default_out(name, args.data.dataset)
    # Checked before training, so a refused overwrite never throws away minutes of work.
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file path such as {out / 'model.pt'}")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; pass --force to replace it or --out to write elsewhere")
    check_writable(out, "--out")
    device = resolve_device(args.device)
    started = time.perf_counter()

    data = load_dataset(args.data.dataset, args.data.data, val_fraction=args.data.val_fraction, seed=args.seed)
    show_notes(data)
    torch.manual_seed(args.seed)
    model = build_model(name, num_classes=data.num_classes, input_shape=data.input_shape)
    if args.checkpoint:
        load_state(model, state, where=args.checkpoint, hint=model_hint(previous))
    model.to(device)

    steps = data.num_batches("train", args.batch_size)
    total = steps * args.epochs
    optimizer = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = cosine_schedule(optimizer, total, warmup_steps=min(steps, total // 10))
    has_val = len(data.val) > 0
    val_acc = float("nan")
    stats: dict[str, float] = {}
    for epoch in range(args.epochs):
        batches = data.batches(
            "train", args.batch_size, shuffle=True, augment=args.augment,
            seed=args.seed * 100_003 + epoch, device=device,
        )
        try:
            stats = train_epoch(
                model, batches, optimizer, scheduler=scheduler, device=device,
                desc=f"epoch {epoch + 1}/{args.epochs}", total=steps,
            )
        except NonFiniteError as exc:
            raise NonFiniteError(f"training diverged in epoch {epoch + 1} ({exc}); nothing was written: lower --lr "
                                 f"(now {args.lr:g})") from None
        if has_val:
            val_acc = evaluate(model, data.batches("val", EVAL_BATCH, device=device), device=device)
        print(
            f"epoch {epoch + 1}/{args.epochs}  loss {stats['loss']:.4f}  train {stats['accuracy']:.4f}  val {val_acc:.4f}",
            file=sys.stderr,
        )
    test_acc = evaluate(model, data.batches("test", EVAL_BATCH, device=device), device=device) if len(data.test) else float("nan")
    model.cpu()
    epochs_total = int(previous.get("epochs", 0) or 0) + args.epochs
    path = save_checkpoint(
        out, model, model_name=name, dataset=args.data.dataset, input_shape=data.input_shape,
        num_classes=data.num_classes, accuracy=test_acc,
        extra={
            "val_accuracy": val_acc, "epochs": epochs_total, "train_loss": stats["loss"], "seed": args.seed,
            "lr": args.lr, "batch_size": args.batch_size, "data": args.data.data, "mean": list(data.mean), "std": list(data.std),
        },
    )
    return {
        "accuracy": test_acc,
        "val_accuracy": val_acc,
        "train_accuracy": stats["accuracy"],
        "train_loss": stats["loss"],
        "checkpoint": str(path),
        "epochs": args.epochs,
        "samples": len(data.train),
        "model": name,
        "dataset": args.data.dataset,
        "threads": threads,
        "seconds": round(time.perf_counter() - started, 2),
    }
