"""``finetune``: train a model into a policy's structure (ADMM, masked retraining, or channel pruning) and save it.

Epochs: ``epochs`` is the whole budget. ``masked`` retrains for all of them after the projection. ``admm``
spends ``retrain_epochs`` (default ``max(1, round(E/3))``) on retraining after the hard projection and the
rest on ADMM, split into ``iterations`` iterations (default one per epoch); ``time_budget`` plans the epochs from
the measured time of one instead. ``channel`` prunes whole channels (Torch-Pruning) and fine-tunes the smaller dense
model, saved as a channel-pruned checkpoint. The dense model teaches every method (distillation) whenever its
checkpoint is known. What the run did is printed as a table (the dense model on every engine against the compressed
one), its layers and the convergence warnings (:mod:`uniprune.search.finetune_summary`). Run under ``torchrun
--nproc_per_node N -m uniprune.search finetune ...`` to train with DDP (gloo on CPU); rank 0 writes the files.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass
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
from uniprune.compressors.core.threads import torch_threads
from uniprune.compressors.formats.channel_checkpoint import save_channel_pruned
from uniprune.compressors.formats.checkpoint import read_torch_file, save_compressed
from uniprune.compressors.formats.fileio import torch_save_atomic, write_json_atomic
from uniprune.compressors.formats.run_dir import RunDir, lock_run_dir, read_json_object
from uniprune.compressors.latency.budget import budget_verdict
from uniprune.compressors.train.diagnostics import convergence_warnings
from uniprune.compressors.train.distributed import world
from uniprune.compressors.train.finetune import (
    AdmmConfig,
    ChannelConfig,
    Distillation,
    FinetuneConfig,
    TimeBudget,
)
from uniprune.compressors.train.finetune import finetune as train_into
from uniprune.compressors.train.training import evaluate
from uniprune.search.datasets import load_dataset
from uniprune.search.finetune_summary import layer_records, summary_markdown
from uniprune.search.models import build_model, load_weights

from .devices import resolve_device, show_notes
from .finetune_spec import FinetuneSpec
from .paths import check_out_file
from .result import Result

_AUGMENTED = ("cifar10", "cifar-10", "imagefolder")


@dataclass(frozen=True)
class FinetuneResult(Result):
    """The compressed checkpoint and its figures (test accuracy; ratios of size, MACs, multiplications, latency)."""

    accuracy: float | None
    val_accuracy: float
    projected_val_accuracy: float
    dense_val_accuracy: float | None
    size_ratio: float
    mac_ratio: float
    mult_ratio: float | None
    collapsed_blocks: int
    method: str
    epochs: int
    checkpoint: str
    seconds: float
    latency_ratio: float | None = None
    #: the kernels' precision latency_ratio was timed in, and the ratio's verdict against the policy's budget
    precision: str | None = None
    budget_verdict: str | None = None
    #: the run's name, the dense model's test top-1, epochs run, the distillation and time-budget records, the
    #: convergence warnings, the timing per engine, every layer (see :mod:`uniprune.search.finetune_summary`)
    run: str | None = None
    dense_accuracy: float | None = None
    epochs_run: int | None = None
    distill: dict[str, float] | None = None
    time_budget: dict[str, Any] | None = None
    warnings: list[str] | None = None
    timing: dict[str, Any] | None = None
    layers: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["precision"] is None:  # not measured (latency=False, or not rank 0): absent from --json
            for key in ("latency_ratio", "precision", "budget_verdict", "timing"):
                del out[key]
        return out


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
    path = RunDir(run_dir).config_path
    if not path.is_file():
        raise RunDirError(f"{path} is missing; the run directory is incomplete (pass --policy/--model/--checkpoint instead)")
    return read_json_object(path, fix="pass --policy/--model/--checkpoint instead")


def _epoch_plan(args: FinetuneSpec) -> FinetuneConfig:
    epochs = args.epochs
    if args.method == "channel":
        return ChannelConfig(target=args.channel_target, measure=args.channel_measure, epochs=epochs, lr=args.lr,
                             schedule=args.schedule)
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


def _teacher(args: FinetuneSpec, job: _Inputs, model: torch.nn.Module) -> tuple[torch.nn.Module | None, Distillation | bool]:
    """The dense teacher (a copy of the model before training) and the distillation: on by default when the dense
    checkpoint is known, off with ``distill=False``."""
    if args.distill is False:
        return None, False
    if not job.checkpoint:
        if args.distill:
            raise ConfigError("--distill learns from the dense model: give its --checkpoint (or a --run-dir whose config "
                              "names one), or leave --distill out")
        return None, False
    return copy.deepcopy(model).eval(), Distillation(temperature=args.distill_temperature, weight=args.distill_weight)


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


def _timing(model: torch.nn.Module, structures: dict, input_shape: tuple[int, int, int], precision: str,
            dense: torch.nn.Module | None) -> dict[str, Any] | None:
    """Batch 1 on the CPU, every dense engine mode against the compressed model in the same rounds: the real kernels
    in ``precision`` for a structured model, or (``dense`` given: channel pruning) the pruned model on its fastest
    engine at default precision. :func:`~uniprune.compressors.latency.engines.race`'s fields with ``runtime`` and
    ``precision``; None when the kernels cannot run here."""
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        if dense is not None:
            from uniprune.compressors.train.channel_strategy import time_pruned

            timing = time_pruned(copy.deepcopy(dense).cpu().eval(), copy.deepcopy(model).cpu().eval(), x,
                                 threads=torch.get_num_threads())
            timing.update(runtime=f"engine {timing['compressed_engine']}", precision=timing["compressed_precision"])
        else:
            from uniprune.compressors.latency.table import measure_model_ms

            timing = measure_model_ms(copy.deepcopy(model).cpu().eval(), structures, input_shape, precision=precision)
    except (KernelBuildError, NotAvailableError) as exc:
        print(f"uniprune: note: no latency_ratio: {exc}", file=sys.stderr)
        return None
    for note in timing.pop("notes", []):
        print(f"uniprune finetune: note: {note}", file=sys.stderr)
    return timing


def finetune(spec: FinetuneSpec) -> FinetuneResult:
    """Fine-tune into ``spec``'s policy and save the compressed checkpoint (rank 0 under torchrun); returns its figures.
    Torch runs on ``spec.threads`` threads (default: the cores idle now)."""
    with torch_threads(spec.threads):
        return FinetuneResult.of(_finetune(spec))


@dataclass(frozen=True)
class _Inputs:
    """What a fine-tune reads and writes, resolved from the spec and the run directory."""

    run_dir: Path | None
    policy: Policy
    model_name: str
    checkpoint: str | None
    dataset: str
    data: str | None
    out: Path
    fingerprint: str

    @property
    def partial(self) -> Path:
        """The state of an interrupted fine-tune, kept next to ``out`` after every epoch."""
        return self.out.with_name(self.out.name + ".partial")


def _inputs(args: FinetuneSpec) -> _Inputs:
    run_dir = Path(args.run_dir) if args.run_dir else None
    config = _run_config(run_dir) if run_dir else {}
    policy_path = args.policy or (RunDir(run_dir).policy_path if run_dir else None)
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
    out = Path(args.out) if args.out else (RunDir(run_dir).compressed_path if run_dir else None)
    if out is None:
        raise ConfigError("no output path: pass --out compressed.pt (or --run-dir RUN)")
    out = check_out_file(out, args.force, example="compressed.pt")
    fingerprint = json.dumps({"policy": policy.to_dict(), "model": model_name, "checkpoint": checkpoint, "dataset": dataset,
                              "data": data, **{k: getattr(args, k) for k in FinetuneSpec.RESUME_KEYS}}, sort_keys=True, default=str)
    return _Inputs(run_dir, policy, model_name, checkpoint, dataset, data, out, fingerprint)


def _model(args: FinetuneSpec, job: _Inputs, device: str) -> tuple[torch.nn.Module, Any]:
    """The dense model (checked against the policy before any training) and the data."""
    torch.manual_seed(args.seed)
    bundle = load_dataset(job.dataset, job.data, val_fraction=args.val_fraction, seed=args.seed)
    show_notes(bundle)
    model = build_model(job.model_name, num_classes=bundle.num_classes, input_shape=bundle.input_shape)
    if job.checkpoint:
        load_weights(model, job.checkpoint)
    else:
        print("uniprune: note: no --checkpoint: fine-tuning a randomly initialised model", file=sys.stderr)
    # a policy made for another model fails here, before any data is touched for training
    check_policy_layers(job.policy, [s.name for s in compressible_layers(model, policy_block_shapes(job.policy.block_shape, None))],
                        model)
    return model.to(device), bundle


def _train(args: FinetuneSpec, job: _Inputs, model: torch.nn.Module, bundle: Any, plan: FinetuneConfig, rank: int,
           resume: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fine-tune into the policy (ADMM, masked or channel, distilled from the dense model when it is known); the
    driver's result and the dense model's figures: ``val`` and ``test`` accuracy (rank 0) and ``model`` (a copy
    kept for the teacher, or for channel pruning's timing, else None)."""
    device = plan.device
    augment = args.augment if args.augment is not None else job.dataset.lower() in _AUGMENTED
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

    def validate(net: torch.nn.Module) -> float:
        return evaluate(net, bundle.batches(eval_split, 256, device=device), device=device)

    def keep_state(state: dict[str, Any]) -> None:
        if rank == 0:
            torch_save_atomic(job.partial, {**state, "fingerprint": job.fingerprint})

    logger = None
    if job.run_dir is not None and rank == 0:
        from uniprune.search.tensorboard import TensorBoardLogger

        logger = TensorBoardLogger(RunDir(job.run_dir).tb_dir)  # next to the search's curves; keys are admm/*
    dense = {"val": validate(model) if rank == 0 else None,
             "test": evaluate(model, bundle.batches("test", 256, device=device), device=device) if rank == 0 and len(bundle.test) else None}
    teacher, distill = _teacher(args, job, model)
    dense["model"] = teacher if teacher is not None or args.method != "channel" else copy.deepcopy(model).eval()
    try:
        result = train_into(model, job.policy, _Epoch, validate, plan, log=logger.log if logger else None,
                            checkpoint=keep_state, resume=resume, teacher=teacher, distill=distill,
                            time_budget=TimeBudget(args.time_budget) if args.time_budget else None)
    except NonFiniteError as exc:
        knobs = f"--lr (now {args.lr:g})" + (f" or --rho (now {args.rho:g})" if args.method == "admm" else "")
        raise NonFiniteError(f"fine-tuning diverged ({exc}); nothing was written: lower {knobs}") from None
    finally:
        if logger is not None:
            logger.close()
    return result, dense


def _finetune(args: FinetuneSpec) -> dict[str, Any]:
    started = time.time()
    job = _inputs(args)
    resume = _resume_state(job.partial, job.fingerprint) if args.resume else None
    if not args.resume and job.partial.is_file():
        print(f"uniprune finetune: note: {job.partial} holds an interrupted fine-tune; starting over (--resume goes on "
              "from it)", file=sys.stderr)
    plan = _epoch_plan(args)
    plan.device = _init_distributed(str(resolve_device(args.device)))
    rank, _ = world()
    plan.progress = rank == 0
    if job.run_dir is not None and rank == 0:
        lock_run_dir(job.run_dir)  # a second fine-tune (or a search) into the same run directory is refused
    model, bundle = _model(args, job, plan.device)
    result, dense = _train(args, job, model, bundle, plan, rank, resume)
    structures, channels = result["structures"], result["channels"]
    collapsed = collapsed_blocks(structures)
    if collapsed and rank == 0:
        print(f"uniprune finetune: note: {sum(collapsed.values())} unified block(s) trained down to magnitude 0 and are "
              f"pruned in effect ({', '.join(f'{k}: {v}' for k, v in list(collapsed.items())[:4])}); a lower --lr keeps them",
              file=sys.stderr)
    device = plan.device
    test_acc = evaluate(model, bundle.batches("test", 256, device=device), device=device) if len(bundle.test) else None
    summary: dict[str, Any] = {
        "accuracy": test_acc, "val_accuracy": result["accuracy"], "projected_val_accuracy": result["projected_accuracy"],
        "dense_val_accuracy": dense["val"], **_sizes(model, structures, channels, dense["model"], bundle.input_shape),
        "collapsed_blocks": sum(collapsed.values()), "method": args.method, "epochs": result["epochs"],
        "checkpoint": str(job.out), "run": job.run_dir.name if job.run_dir is not None else job.out.stem,
        "dense_accuracy": dense["test"], "epochs_run": result["epochs_run"], "distill": result["distill"],
        "time_budget": result["time_budget"], "warnings": convergence_warnings(result, dense_accuracy=dense["val"]),
        "layers": layer_records(model, job.policy, structures, channels),
    }
    if args.latency and rank == 0:
        from uniprune.compressors.native.plan import resolve_precision

        timing = _timing(model, structures, bundle.input_shape, resolve_precision(args.precision),
                         dense["model"] if channels is not None else None)
        summary.update(timing=timing, precision=timing["precision"] if timing else resolve_precision(args.precision),
                       latency_ratio=timing["latency_ratio"] if timing else None)
        summary["budget_verdict"] = budget_verdict(summary["latency_ratio"], job.policy.latency_budget)
    summary["seconds"] = time.time() - started
    if rank == 0:
        _save(job, model, structures, channels, bundle, summary)
        print(summary_markdown(summary | {"latency_budget": job.policy.latency_budget}), file=sys.stderr)
        job.partial.unlink(missing_ok=True)  # done: nothing to resume
        if job.run_dir is not None and args.out is None:  # the run's record describes the run's own compressed.pt
            history = {"admm_history": result["admm_history"], "retrain_history": result["retrain_history"],
                       "residual": result["residual"], "before_projection": result["before_projection"],
                       "best_epoch": result["best_epoch"], "latency_budget": job.policy.latency_budget}
            write_json_atomic(RunDir(job.run_dir).finetune_path, summary | history)
    return summary


def _sizes(model: torch.nn.Module, structures: dict, channels: dict | None, dense: torch.nn.Module | None,
           input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """``size_ratio``, ``mac_ratio``, ``mult_ratio`` against the dense model (a channel-pruned model: its parameters
    over the dense model's, and the MACs Torch-Pruning's report counted)."""
    if channels is not None and dense is not None:
        params = sum(p.numel() for p in model.parameters()) / max(1, sum(p.numel() for p in dense.parameters()))
        return {"size_ratio": params, "mac_ratio": channels["mac_ratio"], "mult_ratio": channels["mac_ratio"]}
    size = model_size(model, structures, input_shape=input_shape)["total"]
    return {"size_ratio": size["size_ratio"], "mac_ratio": size["mac_ratio"],
            "mult_ratio": size["mults"] / size["dense_macs"] if size["dense_macs"] else None}


def _save(job: _Inputs, model: torch.nn.Module, structures: dict, channels: dict | None, bundle: Any,
          summary: dict[str, Any]) -> None:
    """The compressed checkpoint, or for channel pruning the channel-pruned one (its architecture as channel counts)."""
    meta = {k: v for k, v in summary.items() if k != "checkpoint"} | {
        "dataset": job.dataset, "dense_checkpoint": str(Path(job.checkpoint).resolve()) if job.checkpoint else None}
    if channels is not None:
        save_channel_pruned(job.out, model.cpu(), channels["record"], model_name=job.model_name, num_classes=bundle.num_classes,
                            input_shape=bundle.input_shape, meta=meta | {"channels": {k: v for k, v in channels.items() if k != "record"}})
        return
    save_compressed(job.out, model.cpu(), structures, model_name=job.model_name, num_classes=bundle.num_classes,
                    input_shape=bundle.input_shape, policy=job.policy, meta=meta)
