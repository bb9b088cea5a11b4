"""ADMM fine-tuning into a policy's structure (Zhang et al. 2018, as used by Lin et al. 2021).

The problem ``min loss(W)  s.t.  W in S`` (``S``: the layers' block structures of the policy) is split as
``min loss(W) + g(Z)  s.t.  W = Z`` and solved by ADMM, one iteration being a few epochs:

1. W-step: train ``loss(W) + sum_l rho/2 ||W_l - Z_l + U_l||^2`` by SGD for ``epochs_per_iteration``;
2. Z-step: ``Z_l = project(W_l + U_l)`` (the exact projection of :mod:`.projection`);
3. U-step: ``U_l = U_l + W_l - Z_l``; then ``rho *= rho_growth`` and ``U /= rho_growth`` (U is the
   scaled dual ``y / rho``; Boyd et al. 2011, 3.4.1).

The primal residual ``||W - Z|| / ||W||`` (over all structured layers) is logged after each iteration.
Then W is projected hard and retrained with pruned blocks frozen at 0 and each unified block tied to one
trainable magnitude (:mod:`.constraints`). ``method="masked"`` skips the ADMM part: project, then retrain
(the baseline ADMM is compared against, sharing the same retraining code).

Distributed: when ``torch.distributed`` is initialised with more than one process (``torchrun``; gloo on
CPU, NCCL on GPU), training runs under DistributedDataParallel and each rank takes every
``world_size``-th batch of the sequence ``train_batches(epoch)`` gives (which must be the same on every
rank: seed it by the epoch). Z and U are updated identically on every rank; ``evaluate`` and ``log`` run
on rank 0 only and the accuracy is broadcast.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ..core.blocks import LayerSpec, compressible_layers, policy_block_shapes
from ..core.constraints import bake, constrain, constrain_masks
from ..core.errors import ConfigError
from ..core.policy import Policy
from ..core.projection import check_policy_layers, project_layer, project_model
from ..core.structure import BlockShape, LayerStructure
from ..formats.checkpoint import structure_from_record, structure_record
from .training import make_optimizer, train_epoch

LogFn = Callable[[str, float, int], None]
METHODS = ("admm", "masked")
SCHEDULES = ("cosine", "constant")


@dataclass
class AdmmConfig:
    """Options of :func:`admm_finetune`.

    Attributes:
        method: ``"admm"`` (ADMM, then hard projection and retraining) or ``"masked"`` (projection and
            retraining only).
        iterations: ADMM iterations (Z/U updates), >= 1. Ignored by ``"masked"``.
        epochs_per_iteration: W-step epochs per ADMM iteration, >= 1.
        rho: initial penalty coefficient, > 0 (per squared weight unit; the penalty is summed over all
            structured weights, not averaged).
        rho_growth: factor applied to rho after each iteration, >= 1.
        lr: SGD learning rate of the ADMM phase (held constant there), > 0.
        retrain_lr: initial learning rate of retraining; ``None``: ``lr``.
        schedule: learning-rate schedule of retraining, ``"cosine"`` (per epoch, towards 0) or
            ``"constant"``. The ADMM phase keeps ``lr`` constant so that every iteration's W-step is alike.
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 on weights (and shared magnitudes), >= 0.
        retrain_epochs: epochs of masked/tied retraining after the hard projection, >= 0.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        evaluate_every_iteration: evaluate after each ADMM iteration (for ``admm/val_accuracy``).
        progress: show tqdm bars on stderr (rank 0 only).
    """

    method: str = "admm"
    iterations: int = 4
    epochs_per_iteration: int = 1
    rho: float = 0.01
    rho_growth: float = 3.0
    lr: float = 0.01
    retrain_lr: float | None = None
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    retrain_epochs: int = 2
    device: str = "cpu"
    evaluate_every_iteration: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        for key in ("iterations", "epochs_per_iteration"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.retrain_epochs < 0:
            raise ConfigError(f"retrain_epochs must be >= 0, got {self.retrain_epochs}")
        if not (self.rho > 0 and math.isfinite(self.rho)):
            raise ConfigError(f"rho must be a positive number, got {self.rho}; try --rho 0.01")
        if not self.rho_growth >= 1:
            raise ConfigError(f"rho_growth must be >= 1, got {self.rho_growth}")
        for key in ("lr", "retrain_lr"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be a positive number, got {value}")

    @property
    def admm_epochs(self) -> int:
        """Epochs spent in the ADMM phase (0 for ``"masked"``)."""
        return 0 if self.method == "masked" else self.iterations * self.epochs_per_iteration

    @property
    def total_epochs(self) -> int:
        return self.admm_epochs + self.retrain_epochs


# ----------------------------------------------------------------------------- distributed helpers


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batches(batches: Iterable, rank: int, world_size: int) -> Iterator:
    """Every ``world_size``-th batch of ``batches`` starting at ``rank``; an incomplete last round is
    dropped so that all ranks step the same number of times (DDP needs that)."""
    if world_size == 1:
        yield from batches
        return
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == world_size:
            yield group[rank]
            group = []


def _epoch(train_batches: Callable[[int], Iterable], epoch: int) -> tuple[Iterator, int | None]:
    """This rank's batches of ``epoch`` and their number when known (for the progress bar)."""
    rank, size = world()
    batches = train_batches(epoch)
    total = len(batches) // size if hasattr(batches, "__len__") else None
    return shard_batches(batches, rank, size), total


def _wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if world()[1] == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _evaluate(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float:
    rank, size = world()
    value = [float(evaluate(model)) if rank == 0 else 0.0]
    if size > 1:
        dist.broadcast_object_list(value, src=0)
    return value[0]


class _Logger:
    def __init__(self, log: LogFn | None) -> None:
        self.log = log if world()[0] == 0 else None

    def __call__(self, key: str, value: float, step: int) -> None:
        if self.log is not None:
            self.log(key, float(value), step)


def _epoch_schedule(optimizer: torch.optim.Optimizer, epochs: int, schedule: str) -> LambdaLR:
    """Stepped once per epoch: cosine from the base lr towards 0 (the last epoch keeps a little), or constant."""
    if schedule == "constant":
        return LambdaLR(optimizer, lambda e: 1.0)
    return LambdaLR(optimizer, lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / max(1, epochs))))


# ----------------------------------------------------------------------------- the phases


def retrain(
    model: nn.Module,
    structures: Mapping[str, LayerStructure],
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: str | torch.device = "cpu",
    log: LogFn | None = None,
    first_epoch: int = 0,
    progress: bool = True,
    prefix: str = "admm",
    masks: Mapping[str, Tensor] | None = None,
    schedule: str = "cosine",
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> tuple[dict[str, LayerStructure], list[dict[str, float]]]:
    """Train ``model`` for ``epochs`` with every layer held to its structure, then bake the weights.

    ``checkpoint(state)``, when given, is called after every epoch with what :func:`retrain` needs to go on
    from there (``resume=state``: the constrained model's and the optimizer's state, epochs done, history).

    ``masks`` (0/1 per weight, for unstructured baselines) are held as well, for layers without a
    structure. ``train_batches(epoch)`` is called with ``first_epoch + i``; the learning rate follows
    ``schedule`` (``"cosine"`` per epoch from ``lr``, or ``"constant"``). Scalars are logged as ``<prefix>/loss`` and
    ``<prefix>/val_accuracy``. Returns the structures with trained magnitudes and one
    ``{"epoch", "loss", "val_accuracy"}`` record per epoch (accuracy of the constrained model).
    """
    device = torch.device(device)
    logger = _Logger(log)
    rank = world()[0]
    constrain(model, structures)
    history: list[dict[str, float]] = list(resume["history"]) if resume else []
    try:
        if masks:
            constrain_masks(model, masks)
        if epochs > 0:
            optimizer = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
            scheduler = _epoch_schedule(optimizer, epochs, schedule)
            done = 0
            if resume:
                model.load_state_dict(resume["model"])
                optimizer.load_state_dict(resume["optimizer"])
                done = int(resume["done"])
                scheduler.last_epoch = done  # the optimizer's state holds the lr of that epoch already
            net = _wrap(model, device)
            for i in range(done, epochs):
                epoch = first_epoch + i
                batches, total = _epoch(train_batches, epoch)
                stats = train_epoch(net, batches, optimizer, device=device, total=total,
                                    desc=f"{prefix} retrain {i + 1}/{epochs}" if progress and rank == 0 else None)
                scheduler.step()
                acc = _evaluate(evaluate, model)
                history.append({"epoch": epoch, "loss": stats["loss"], "val_accuracy": acc})
                logger(f"{prefix}/loss", stats["loss"], epoch)
                logger(f"{prefix}/val_accuracy", acc, epoch)
                if checkpoint is not None:
                    checkpoint({"done": i + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "history": history})
            del net
    finally:
        trained = bake(model)
    out = dict(structures)
    out.update(trained)
    return out, history


def _admm_phase(
    model: nn.Module,
    specs: list[LayerSpec],
    policy: Policy,
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    config: AdmmConfig,
    device: torch.device,
    logger: _Logger,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> list[dict[str, float]]:
    """The ADMM iterations (W, Z, U updates) on ``model`` in place; returns one record per iteration.

    ``checkpoint(state)`` is called after every epoch (after the Z and U updates when the epoch ends an
    iteration) with what ``resume=state`` needs to go on from there."""
    rank = world()[0]
    layers = [(s, policy.action(s.name)) for s in specs if not policy.action(s.name).is_dense]
    if not layers:
        return []

    def z_of(w: Tensor, spec: LayerSpec, prune: float, unify: float) -> Tensor:
        return project_layer(w, spec.grid, prune, unify)[1]

    weights = [s.module.weight for s, _ in layers]
    z = [z_of(w.detach(), s, a.prune, a.unify) for w, (s, a) in zip(weights, layers)]
    u = [torch.zeros_like(w) for w in weights]
    rho = config.rho

    def penalty() -> Tensor:
        return 0.5 * rho * sum(((w - zi + ui) ** 2).sum() for w, zi, ui in zip(weights, z, u))

    optimizer = make_optimizer(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    done = 0
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        with torch.no_grad():
            for zi, ui, z_saved, u_saved in zip(z, u, resume["z"], resume["u"]):
                zi.copy_(z_saved)
                ui.copy_(u_saved)
        rho, done, history = float(resume["rho"]), int(resume["done"]), list(resume["history"])
    net = _wrap(model, device)

    def save(epochs_done: int) -> None:
        if checkpoint is not None:
            checkpoint({"done": epochs_done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "z": [zi.detach().clone() for zi in z], "u": [ui.detach().clone() for ui in u], "rho": rho,
                        "history": history})

    epoch = 0
    for it in range(config.iterations):
        if epoch + config.epochs_per_iteration <= done:  # this iteration, Z and U updates included, is in the state
            epoch += config.epochs_per_iteration
            continue
        for _ in range(config.epochs_per_iteration):
            if epoch < done:
                epoch += 1
                continue
            batches, total = _epoch(train_batches, epoch)
            stats = train_epoch(net, batches, optimizer, penalty=penalty, device=device, total=total,
                                desc=f"admm {it + 1}/{config.iterations} rho={rho:.3g}" if config.progress and rank == 0 else None)
            logger("admm/loss", stats["loss"], epoch)
            logger("admm/rho", rho, epoch)
            epoch += 1
            if epoch % config.epochs_per_iteration:
                save(epoch)
        with torch.no_grad():
            w_now = [w.detach() for w in weights]
            z = [z_of(w + ui, s, a.prune, a.unify) for w, ui, (s, a) in zip(w_now, u, layers)]
            u = [ui + w - zi for w, zi, ui in zip(w_now, z, u)]
            diff = math.sqrt(sum(float(((w - zi) ** 2).sum()) for w, zi in zip(w_now, z)))
            norm = math.sqrt(sum(float((w**2).sum()) for w in w_now))
        residual = diff / norm if norm > 0 else 0.0
        logger("admm/residual", residual, epoch - 1)
        record = {"iteration": it, "epoch": epoch - 1, "rho": rho, "loss": stats["loss"], "residual": residual}
        if config.evaluate_every_iteration:
            record["val_accuracy"] = _evaluate(evaluate, model)
            logger("admm/val_accuracy", record["val_accuracy"], epoch - 1)
        history.append(record)
        # U is the scaled dual (y / rho): rescale it with rho so the dual y itself is unchanged
        rho *= config.rho_growth
        u = [ui / config.rho_growth for ui in u]
        save(epoch)
    del net  # drop DDP's hooks before retraining wraps the model again
    return history


def admm_finetune(
    model: nn.Module,
    policy: Policy,
    train_batches: Callable[[int], Iterable],
    evaluate: Callable[[nn.Module], float],
    config: AdmmConfig,
    *,
    block_shapes: Mapping[str, BlockShape] | None = None,
    log: LogFn | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` (in place) into ``policy``'s structure by ADMM (or masked retraining).

    Args:
        model: the trained dense network; on return it holds plain weights that obey the structures.
        policy: per-layer prune/unify fractions; block shapes from ``block_shapes``, else the policy's,
            else the defaults.
        train_batches: ``epoch -> iterable of (x, y)`` for that epoch (shuffled by the epoch as seed; the
            same sequence on every rank under torchrun).
        evaluate: ``model -> validation accuracy in [0, 1]`` (given the bare module, rank 0 only).
        config: see :class:`AdmmConfig`.
        log: ``log(key, value, step)`` for the scalars ``admm/loss``, ``admm/val_accuracy``,
            ``admm/residual``, ``admm/rho``, ``admm/projected_accuracy`` (step = epoch index).
        checkpoint: called after every epoch with a state (tensors, numbers, lists and dicts only) from
            which ``resume=state`` goes on, losing nothing of the epochs done.
        resume: a state ``checkpoint`` was given, with ``model`` as it was built for the first run.

    Returns:
        ``{"structures": {layer: LayerStructure}, "method", "accuracy" (final validation accuracy),
        "projected_accuracy" (right after the hard projection, before retraining), "epochs",
        "admm_history", "retrain_history", "config"}``.
    """
    device = torch.device(config.device)
    model.to(device)
    shapes = policy_block_shapes(policy.block_shape, block_shapes)
    specs = compressible_layers(model, shapes)
    check_policy_layers(policy, [s.name for s in specs])
    logger = _Logger(log)
    admm_history: list[dict[str, float]] = []
    phase = resume.get("phase") if resume else None
    if phase not in (None, "admm", "retrain"):
        raise ConfigError(f"a fine-tuning state of unknown phase {phase!r}; start over without it")
    if config.method == "admm" and phase != "retrain":
        admm_history = _admm_phase(model, specs, policy, train_batches, evaluate, config, device, logger,
                                   checkpoint=None if checkpoint is None else (lambda s: checkpoint({"phase": "admm", **s})),
                                   resume=resume if phase == "admm" else None)
    if phase == "retrain":  # the hard projection was made before the state was saved: take it from there
        admm_history, projected = list(resume["admm_history"]), float(resume["projected"])
        structures = {name: structure_from_record(rec) for name, rec in resume["structures"].items()}
    else:
        structures = project_model(model, policy, shapes, apply=True)
        projected = _evaluate(evaluate, model)
        logger("admm/projected_accuracy", projected, config.admm_epochs)
    records = {name: structure_record(s) for name, s in structures.items()}

    def retrain_checkpoint(state: dict[str, Any]) -> None:
        checkpoint({"phase": "retrain", "structures": records, "projected": projected, "admm_history": admm_history, **state})

    structures, retrain_history = retrain(
        model, structures, train_batches, evaluate,
        epochs=config.retrain_epochs, lr=config.retrain_lr or config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, device=device, log=log, first_epoch=config.admm_epochs,
        progress=config.progress, schedule=config.schedule,
        checkpoint=None if checkpoint is None else retrain_checkpoint, resume=resume if phase == "retrain" else None,
    )
    final = retrain_history[-1]["val_accuracy"] if retrain_history else projected
    return {
        "structures": structures,
        "method": config.method,
        "accuracy": final,
        "projected_accuracy": projected,
        "epochs": config.total_epochs,
        "admm_history": admm_history,
        "retrain_history": retrain_history,
        "config": asdict(config),
    }


def projected_copy(model: nn.Module, policy: Policy, block_shapes: Mapping[str, BlockShape] | None = None) -> tuple[nn.Module, dict[str, LayerStructure]]:
    """A deep copy of ``model`` projected onto ``policy`` (the original is untouched)."""
    clone = copy.deepcopy(model)
    return clone, project_model(clone, policy, block_shapes, apply=True)
