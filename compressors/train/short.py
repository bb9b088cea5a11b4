"""A few hundred SGD steps inside a fixed structure: the search's optional short-fine-tune reward.

Where even BatchNorm-re-estimated accuracy sits near chance (heavy budgets), a policy's worth after
fine-tuning is better told by a short masked fine-tune than by the projected model's accuracy: the
structure is held by :func:`~..core.constraints.constrain` (pruned blocks frozen at 0, unified blocks
tied to one magnitude), ``steps`` SGD steps run on training batches (cycled), and the constraints are
baked back into plain weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.constraints import bake, constrain
from ..core.errors import ConfigError
from ..core.structure import LayerStructure
from .training import make_optimizer, train_epoch

#: The most steps a reward may take: beyond it, fine-tune the policy properly (``uniprune finetune``).
MAX_REWARD_STEPS = 100_000


def short_finetune(model: nn.Module, structures: Mapping[str, LayerStructure], batches: Sequence[tuple[Tensor, Tensor]],
                   steps: int, *, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                   device: str | torch.device = "cpu") -> dict[str, LayerStructure]:
    """Train ``model`` (in place, already projected onto ``structures``) for ``steps`` SGD steps in that structure.

    ``batches``: training ``(x, y)`` batches, cycled when fewer than ``steps`` (not empty when ``steps`` > 0);
    ``steps`` in [0, :data:`MAX_REWARD_STEPS`]; ``lr`` > 0 (constant: a short run has no schedule to follow).
    Returns the structures with their trained magnitudes (layers all KEEP are not constrained and not listed).
    The model is left in eval mode.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_REWARD_STEPS:
        raise ConfigError(f"reward steps must be an integer in [0, {MAX_REWARD_STEPS}], got {steps!r}")
    if steps == 0:
        return dict(structures)
    if not batches:
        raise ConfigError("a short-fine-tune reward needs training batches: give the search training data")
    constrain(model, structures)
    try:
        optimizer = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
        train_epoch(model, itertools.islice(itertools.cycle(batches), steps), optimizer, device=device)
    finally:
        trained = bake(model)
    model.eval()
    return {**structures, **trained}
