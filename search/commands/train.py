"""`uniprune train`: train a zoo model from scratch, or go on training a checkpoint, and save it."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from uniprune.compressors.core.errors import ConfigError, NonFiniteError
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

from .common import (
    add_data_arguments,
    add_device_argument,
    add_model_arguments,
    add_seed_argument,
    add_threads_argument,
    check_writable,
    model_name,
    resolve_device,
    show_notes,
    torch_threads,
)

NAME = "train"
HELP = "train a model from scratch (or go on training --checkpoint) and save a checkpoint"

EVAL_BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, from_checkpoint=True)
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, default=15, help="passes over the training split, >= 1 (default 15)")
    parser.add_argument(
        "--out",
        default=None,
        help="checkpoint to write (default checkpoints/<model>-<dataset>.pt); an existing file is only replaced with --force",
    )
    parser.add_argument("--force", action="store_true", help="replace --out when it already exists")
    parser.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate, cosine-decayed per step (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 on weights, not on biases/BN (default 5e-4)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the training data held out for validation (default 0.1)")
    parser.add_argument("--no-augment", action="store_true", help="turn off random crop + flip on training batches")
    add_seed_argument(parser)
    add_device_argument(parser)
    add_threads_argument(parser)


def default_out(model: str, dataset: str) -> Path:
    """``checkpoints/<model>-<dataset>.pt`` with the model name made file-safe (``tv:resnet18`` -> ``tv-resnet18``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{dataset}").strip("-")
    return Path("checkpoints") / f"{safe}.pt"


def run(args: argparse.Namespace) -> dict[str, Any]:
    with torch_threads(args.threads) as threads:
        return _train(args, threads)


def _train(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    state, previous = split_checkpoint(read_checkpoint(args.checkpoint), args.checkpoint) if args.checkpoint else ({}, {})
    name = model_name(args.model, previous)
    out = Path(args.out).expanduser() if args.out else default_out(name, args.dataset)
    # Checked before training, so a refused overwrite never throws away minutes of work.
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file path such as {out / 'model.pt'}")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; pass --force to replace it or --out to write elsewhere")
    check_writable(out, "--out")
    device = resolve_device(args.device)
    started = time.perf_counter()

    data = load_dataset(args.dataset, args.data, val_fraction=args.val_fraction, seed=args.seed)
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
            "train", args.batch_size, shuffle=True, augment=not args.no_augment,
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
        out, model, model_name=name, dataset=args.dataset, input_shape=data.input_shape,
        num_classes=data.num_classes, accuracy=test_acc,
        extra={
            "val_accuracy": val_acc, "epochs": epochs_total, "train_loss": stats["loss"], "seed": args.seed,
            "lr": args.lr, "batch_size": args.batch_size, "data": args.data, "mean": list(data.mean), "std": list(data.std),
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
        "dataset": args.dataset,
        "threads": threads,
        "seconds": round(time.perf_counter() - started, 2),
    }
