"""`uniprune finetune`: train a model into a policy's structure (ADMM, or masked retraining) and save it.

Epochs: ``--epochs E`` is the whole budget. ``--method masked`` retrains for all E epochs after the
projection. ``--method admm`` spends ``--retrain-epochs`` (default ``max(1, round(E/3))``) on retraining
after the hard projection and the rest on ADMM, split into ``--iterations`` iterations (default one per
epoch). Run it under ``torchrun --nproc_per_node N -m uniprune.search finetune ...`` to train with
DDP (gloo on CPU); rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from uniprune.compressors.core.accounting import model_size
from uniprune.compressors.core.blocks import compressible_layers, policy_block_shapes
from uniprune.compressors.core.constraints import collapsed_blocks
from uniprune.compressors.core.errors import (
    ConfigError,
    KernelBuildError,
    NonFiniteError,
    NotAvailableError,
    RunDirError,
)
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.core.projection import check_policy_layers, check_policy_model
from uniprune.compressors.formats.checkpoint import read_torch_file, save_compressed
from uniprune.compressors.formats.fileio import torch_save_atomic, write_json_atomic
from uniprune.compressors.latency.budget import budget_verdict
from uniprune.compressors.train.distributed import world
from uniprune.compressors.train.finetune import AdmmConfig, finetune
from uniprune.compressors.train.training import evaluate
from uniprune.search.run_dir import lock_run_dir, read_json_object

from .common import (
    add_data_arguments,
    add_device_argument,
    add_precision_argument,
    add_seed_argument,
    check_writable,
    resolve_device,
    show_notes,
)

NAME = "finetune"
HELP = "fine-tune a model into a policy's structure by ADMM (or masked retraining) and save the compressed model"

_AUGMENTED = ("cifar10", "cifar-10", "imagefolder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=None, help="a search run directory: reads its policy.json and config.json "
                        "(model, checkpoint, dataset, data) and writes compressed.pt, finetune.json and admm/* curves in tb/ there")
    parser.add_argument("--policy", default=None, help="policy.json to fine-tune into (default: RUN/policy.json)")
    parser.add_argument("--model", default=None, help="model name (default: from the run's config.json or the policy)")
    parser.add_argument("--checkpoint", default=None, help="the trained dense model's checkpoint")
    add_data_arguments(parser)
    parser.set_defaults(dataset=None)
    parser.add_argument("--method", choices=("admm", "masked"), default="admm", help="admm (default) or masked retraining only")
    parser.add_argument("--epochs", type=int, default=3, help="total training epochs, >= 1 (>= 2 for admm; default 3)")
    parser.add_argument("--retrain-epochs", type=int, default=None, help="admm: epochs of masked/tied retraining after projection (default max(1, round(E/3)))")
    parser.add_argument("--iterations", type=int, default=None, help="admm: ADMM iterations (default: one per ADMM epoch)")
    parser.add_argument("--rho", type=float, default=AdmmConfig.rho, help=f"admm: initial penalty, > 0 (default {AdmmConfig.rho})")
    parser.add_argument("--rho-growth", type=float, default=AdmmConfig.rho_growth, help=f"admm: rho factor per iteration, >= 1 (default {AdmmConfig.rho_growth})")
    parser.add_argument("--lr", type=float, default=AdmmConfig.lr, help=f"SGD learning rate, > 0 (default {AdmmConfig.lr})")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="learning-rate schedule of the retraining epochs (default cosine; the ADMM epochs keep --lr)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per batch and process (default 128)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training samples per epoch (quick runs)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the training data held out for validation (default 0.1)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop + flip on training batches (default: on for cifar10/imagefolder)")
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                        help="time dense against compressed with the real kernels for latency_ratio (default on)")
    add_precision_argument(parser, "latency_ratio times the compressed model in")
    parser.add_argument("--out", default=None, help="where to write the compressed checkpoint (default RUN/compressed.pt); "
                        "an existing file needs --force")
    parser.add_argument("--force", action="store_true", help="replace --out (or RUN/compressed.pt) when it already exists")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the last finished epoch of an interrupted fine-tune into the same --out (its state "
                        "is kept next to it as <out>.partial after every epoch), with the same options")
    add_seed_argument(parser)
    add_device_argument(parser)


#: Options that must match for --resume to go on with a run (besides the policy, model, checkpoint and data).
_RESUME_KEYS = ("method", "epochs", "retrain_epochs", "iterations", "rho", "rho_growth", "lr", "schedule", "batch_size",
                "limit", "val_fraction", "augment", "seed")


def _resume_state(partial: Path, fingerprint: str) -> dict[str, Any]:
    """The state an interrupted fine-tune left in ``partial``, if it was made with the same options."""
    if not partial.is_file():
        raise RunDirError(f"nothing to resume: {partial} does not exist (the fine-tune finished, or never ran an epoch); "
                          "start without --resume")
    state = read_torch_file(partial, "fine-tuning state")
    if not isinstance(state, dict) or "phase" not in state:
        raise RunDirError(f"{partial} is not a fine-tuning state; delete it and start without --resume")
    if state.get("fingerprint") != fingerprint:
        raise RunDirError(f"{partial} was made with other options (policy, model, data, epochs, lr, ...); resume with the "
                          "options of that run, or start over without --resume")
    print(f"uniprune finetune: resuming the {state['phase']} phase after {state['done']} epoch(s) of it", file=sys.stderr)
    return state


def _run_config(run_dir: Path) -> dict[str, Any]:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is a file; pass the folder a search wrote")
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {str(run_dir)!r} does not exist; pass the --run-dir a search wrote")
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunDirError(f"{path} is missing; the run directory is incomplete (pass --policy/--model/--checkpoint instead)")
    return read_json_object(path, fix="pass --policy/--model/--checkpoint instead")


def _epoch_plan(args: argparse.Namespace) -> AdmmConfig:
    epochs = args.epochs
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    common = {"lr": args.lr, "rho": args.rho, "rho_growth": args.rho_growth, "schedule": args.schedule}
    if args.method == "masked":
        return AdmmConfig(method="masked", retrain_epochs=epochs, **common)
    retrain = args.retrain_epochs if args.retrain_epochs is not None else max(1, round(epochs / 3))
    admm_epochs = epochs - retrain
    if retrain < 0 or admm_epochs < 1:
        raise ConfigError(f"admm needs at least one ADMM epoch: --epochs {epochs} with {retrain} retraining epochs leaves {admm_epochs}; raise --epochs")
    iterations = args.iterations or admm_epochs
    if iterations < 1 or admm_epochs % iterations:
        raise ConfigError(f"--iterations {iterations} must divide the {admm_epochs} ADMM epochs (E - retrain epochs)")
    return AdmmConfig(method="admm", iterations=iterations, epochs_per_iteration=admm_epochs // iterations, retrain_epochs=retrain, **common)


def _init_distributed(device: str) -> str:
    """Join the torchrun process group when started by torchrun; returns the device this rank uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def _latency_ratio(model: torch.nn.Module, structures: dict, input_shape: tuple[int, int, int],
                   precision: str = "fp32") -> float | None:
    """Compressed latency (batch 1, CPU, the real kernels in ``precision``) over the fastest dense engine's; None
    when the kernels cannot run here."""
    try:
        from uniprune.compressors.latency.table import measure_model_ms
    except ImportError:
        return None
    try:
        timing = measure_model_ms(copy.deepcopy(model).cpu().eval(), structures, input_shape, precision=precision)
    except (KernelBuildError, NotAvailableError) as exc:
        print(f"uniprune: note: no latency_ratio: {exc}", file=sys.stderr)
        return None
    return timing["latency_ratio"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from uniprune.search.datasets import load_dataset
    from uniprune.search.models import build_model, load_weights

    started = time.time()
    run_dir = Path(args.run_dir) if args.run_dir else None
    config = _run_config(run_dir) if run_dir else {}
    policy_path = args.policy or (run_dir / "policy.json" if run_dir else None)
    if policy_path is None:
        raise ConfigError("no policy given: pass --policy policy.json or --run-dir RUN")
    policy = Policy.load(policy_path)
    model_name = args.model or config.get("model") or policy.model
    if not model_name:
        raise ConfigError("no model given: pass --model (the policy and run config do not name one)")
    check_policy_model(policy, model_name)
    checkpoint = args.checkpoint or config.get("checkpoint")
    dataset = args.dataset or config.get("dataset") or "digits"
    data = args.data if args.data is not None else config.get("data")
    out = Path(args.out) if args.out else (run_dir / "compressed.pt" if run_dir else None)
    if out is None:
        raise ConfigError("no output path: pass --out compressed.pt (or --run-dir RUN)")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file path such as {out / 'compressed.pt'}")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; pass --force to replace it or --out to write elsewhere")
    check_writable(out, "--out")
    partial = out.with_name(out.name + ".partial")
    fingerprint = json.dumps({"policy": policy.to_dict(), "model": model_name, "checkpoint": checkpoint, "dataset": dataset,
                              "data": data, **{k: getattr(args, k) for k in _RESUME_KEYS}}, sort_keys=True, default=str)
    resume = _resume_state(partial, fingerprint) if args.resume else None
    if not args.resume and partial.is_file():
        print(f"uniprune finetune: note: {partial} holds an interrupted fine-tune; starting over (--resume goes on from it)",
              file=sys.stderr)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    plan = _epoch_plan(args)
    device = _init_distributed(str(resolve_device(args.device)))
    plan.device = device
    rank, _ = world()
    plan.progress = rank == 0
    if run_dir is not None and rank == 0:
        lock_run_dir(run_dir)  # a second fine-tune (or a search) into the same run directory is refused

    torch.manual_seed(args.seed)
    bundle = load_dataset(dataset, data, val_fraction=args.val_fraction, seed=args.seed)
    show_notes(bundle)
    model = build_model(model_name, num_classes=bundle.num_classes, input_shape=bundle.input_shape)
    if checkpoint:
        load_weights(model, checkpoint)
    else:
        print("uniprune: note: no --checkpoint: fine-tuning a randomly initialised model", file=sys.stderr)
    # a policy made for another model fails here, before any data is touched for training
    check_policy_layers(policy, [s.name for s in compressible_layers(model, policy_block_shapes(policy.block_shape, None))])
    model.to(device)
    augment = args.augment if args.augment is not None else dataset.lower() in _AUGMENTED
    eval_split = "val" if len(bundle.val) else "train"

    class _Epoch:
        """One epoch's training batches, with a length for the progress bars."""

        def __init__(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return bundle.num_batches("train", args.batch_size, limit=args.limit)

        def __iter__(self):
            return bundle.batches("train", args.batch_size, shuffle=True, augment=augment,
                                  seed=args.seed * 100_003 + self.epoch, limit=args.limit, device=device)

    train_batches = _Epoch

    def validate(net: torch.nn.Module) -> float:
        return evaluate(net, bundle.batches(eval_split, 256, device=device), device=device)

    logger = None
    if run_dir is not None and rank == 0:
        from uniprune.search.tensorboard import TensorBoardLogger

        logger = TensorBoardLogger(run_dir / "tb")  # next to the search's curves; keys are admm/*
    dense_val = validate(model) if rank == 0 else None
    try:
        def keep_state(state: dict[str, Any]) -> None:
            if rank == 0:
                torch_save_atomic(partial, {**state, "fingerprint": fingerprint})

        result = finetune(model, policy, train_batches, validate, plan, log=logger.log if logger else None,
                               checkpoint=keep_state, resume=resume)
    except NonFiniteError as exc:
        knobs = f"--lr (now {args.lr:g})" + (f" or --rho (now {args.rho:g})" if args.method == "admm" else "")
        raise NonFiniteError(f"fine-tuning diverged ({exc}); nothing was written: lower {knobs}") from None
    finally:
        if logger is not None:
            logger.close()
    structures = result["structures"]
    collapsed = collapsed_blocks(structures)
    if collapsed and rank == 0:
        print(f"uniprune finetune: note: {sum(collapsed.values())} unified block(s) trained down to magnitude 0 and are "
              f"pruned in effect ({', '.join(f'{k}: {v}' for k, v in list(collapsed.items())[:4])}); a lower --lr keeps them",
              file=sys.stderr)
    test_acc = evaluate(model, bundle.batches("test", 256, device=device), device=device) if len(bundle.test) else None
    size = model_size(model, structures, input_shape=bundle.input_shape)["total"]
    summary: dict[str, Any] = {
        "accuracy": test_acc,
        "val_accuracy": result["accuracy"],
        "projected_val_accuracy": result["projected_accuracy"],
        "dense_val_accuracy": dense_val,
        "size_ratio": size["size_ratio"],
        "mac_ratio": size["mac_ratio"],
        "mult_ratio": size["mults"] / size["dense_macs"] if size["dense_macs"] else None,
        "collapsed_blocks": sum(collapsed.values()),
        "method": args.method,
        "epochs": plan.total_epochs,
        "checkpoint": str(out),
        "seconds": time.time() - started,
    }
    if args.latency and rank == 0:
        from uniprune.compressors.native.plan import resolve_precision

        summary["precision"] = resolve_precision(args.precision)
        summary["latency_ratio"] = _latency_ratio(model, structures, bundle.input_shape, summary["precision"])
        summary["budget_verdict"] = budget_verdict(summary["latency_ratio"], policy.latency_budget)
    if rank == 0:
        save_compressed(out, model.cpu(), structures, model_name=model_name, num_classes=bundle.num_classes,
                        input_shape=bundle.input_shape, policy=policy,
                        meta={k: v for k, v in summary.items() if k != "checkpoint"} | {"dataset": dataset})
        partial.unlink(missing_ok=True)  # done: nothing to resume
        if run_dir is not None and args.out is None:  # the run's record describes the run's own compressed.pt
            write_json_atomic(run_dir / "finetune.json", summary | {"admm_history": result["admm_history"], "retrain_history": result["retrain_history"]})
    return summary
