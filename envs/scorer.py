"""What a policy is worth before fine-tuning: projection, BatchNorm re-estimation, accuracy and storage.

A :class:`Scorer` keeps the trained network untouched and a scratch copy (made once) that each call gets
the original weights back, is projected onto the policy (no fine-tuning), optionally has its BatchNorm
statistics re-estimated on a few training batches (EagleEye, Li et al. 2020), and is scored on a fixed
validation subset. The env composes its reward from it; searchers, replay and benchmarks use it directly
to score a policy again (other images, with or without BN re-estimation) or to get the projected model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from uniprune.compressors.core.accounting import model_size
from uniprune.compressors.core.blocks import resolve_block_shapes
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import project_model
from uniprune.compressors.core.structure import BlockShape, LayerStructure
from uniprune.compressors.train.short import short_finetune
from uniprune.compressors.train.training import evaluate

Batch = tuple[Tensor, Tensor]
#: layer -> ``(prune, unify)``, or ``(prune, unify, "1x1")`` with the layer's own block shape
Actions = Mapping[str, tuple]


def layer_action(action: tuple) -> LayerAction:
    """A policy's :class:`LayerAction` for ``(prune, unify)`` or ``(prune, unify, shape key)``."""
    block = BlockShape.parse(action[2]) if len(action) > 2 and action[2] is not None else None
    return LayerAction(float(action[0]), float(action[1]), block)


def recalibrate_bn(model: nn.Module, batches: Sequence[Batch], *, device: str | torch.device = "cpu") -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (EagleEye); returns how many.

    Running stats are reset and accumulated as a cumulative average (``momentum=None``) over train-mode
    forwards without gradients; momentum and the train/eval mode are restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not batches:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(device))
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(norms)


class Scorer:
    """Scores policies of ``model`` on ``val_batches`` (BatchNorm re-estimated on ``bn_batches`` first, if any).

    :param model: the trained network (left untouched). :param val_batches: ``(x, y)`` batches, not empty.
    :param bn_batches: training batches for BatchNorm re-estimation (empty: none).
    :param block_shapes: per layer type block shapes (default the project's). :param model_name: named in policies.
    :param device: where the scratch copy is scored.
    :param reward_steps: SGD steps of a short fine-tune inside the policy's structure before scoring (0: none), on
        ``train_batches`` (cycled; :func:`~uniprune.compressors.train.short.short_finetune`).
    """

    def __init__(self, model: nn.Module, val_batches: Sequence[Batch], *, bn_batches: Sequence[Batch] = (),
                 block_shapes: Mapping[str, BlockShape | Sequence[int]] | None = None, model_name: str = "",
                 device: str | torch.device = "cpu", reward_steps: int = 0, train_batches: Sequence[Batch] = ()) -> None:
        if not val_batches:
            raise ConfigError("the validation subset is empty: pass at least one (x, y) batch (--val-samples > 0)")
        self.model = model
        self.val_batches = list(val_batches)
        self.bn_batches = list(bn_batches)
        self.block_shapes = resolve_block_shapes(
            {k: (v.out, v.inp) if isinstance(v, BlockShape) else tuple(v) for k, v in (block_shapes or {}).items()})
        self.model_name = model_name
        self.device = device
        self.reward_steps = int(reward_steps)
        self.train_batches = list(train_batches)
        if self.reward_steps and not self.train_batches:
            raise ConfigError("a short-fine-tune reward (--reward-steps) needs training batches to train on")
        self.scratch = copy.deepcopy(model).to(device)
        self._original = {k: v.detach().clone() for k, v in self.scratch.state_dict().items()}

    def policy(self, actions: Actions, *, latency_budget: float | None = None) -> Policy:
        """A :class:`Policy` for ``actions`` with this model's name and block shapes."""
        return Policy(layers={n: layer_action(a) for n, a in actions.items()}, model=self.model_name,
                      block_shape={k: (v.out, v.inp) for k, v in self.block_shapes.items()}, latency_budget=latency_budget)

    def projected(self, actions: Actions, *, bn_batches: Sequence[Batch] | None = None) -> tuple[nn.Module, dict[str, LayerStructure]]:
        """The scratch copy with the original weights, projected onto ``actions``, BatchNorm re-estimated on
        ``bn_batches`` (default the scorer's) and, with ``reward_steps``, briefly fine-tuned in that structure
        (then BatchNorm re-estimated again); valid until the next call."""
        self.scratch.load_state_dict(self._original)
        structures = project_model(self.scratch, self.policy(actions), self.block_shapes, apply=True)
        bn = self.bn_batches if bn_batches is None else bn_batches
        recalibrate_bn(self.scratch, bn, device=self.device)
        if self.reward_steps:
            structures = short_finetune(self.scratch, structures, self.train_batches, self.reward_steps, device=self.device)
            recalibrate_bn(self.scratch, bn, device=self.device)
        return self.scratch, structures

    def score(self, actions: Actions, *, val_batches: Sequence[Batch] | None = None,
              bn_batches: Sequence[Batch] | None = None) -> dict[str, Any]:
        """Validation top-1 in [0, 1] of the projected model (on ``val_batches``, default the scorer's) and its
        storage ratio (compressed over dense bits, as accounting counts them)."""
        model, structures = self.projected(actions, bn_batches=bn_batches)
        accuracy = float(evaluate(model, self.val_batches if val_batches is None else val_batches, device=self.device))
        return {"val_accuracy": accuracy, "size_ratio": float(model_size(model, structures)["total"]["size_ratio"])}
