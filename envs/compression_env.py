"""AMC's environment: a network seen as a sequence of layers, one (prune, unify) decision per layer.

One episode walks the compressible layers in order (:func:`~uniprune.compressors.core.blocks.compressible_layers`).
At layer ``t`` the agent sees the layer's embedding (:mod:`uniprune.envs.embedding`) and answers with an
action ``(a_prune, a_unify)`` in [0, 1]^2, mapped to fractions of the layer's weights (taken in whole
blocks, the same fraction of every block size: :class:`~uniprune.compressors.core.projection.BlockClasses`)::

    prune = a_prune * max_prune,    unify = min(a_unify * max_unify, 1 - prune)

Where the search picks each conv's block shape (:class:`Wall` with several ``shapes``) the action has a
third component in [0, 1] that picks the shape, in order.

The env is the MDP only: observation, action, step and reward composition. It is handed a
:class:`~uniprune.envs.scorer.Scorer` (projection, BatchNorm re-estimation, accuracy, storage) and a
:class:`~uniprune.envs.wall.Wall` (AMC's action wall, built from the latency and size budget objects): each
step the wall clips the action so that the budgets stay reachable, so every finished episode meets them
by construction. :meth:`CompressionEnv.of` builds both from a model, a latency model and data.

**The reward** comes at the end of the episode, from the scorer's validation accuracy of the projected
network (no fine-tuning):

* ``"accuracy"`` (default): validation top-1 in [0, 1];
* ``"log-latency"``: AMC's ``-error * log(latency)``, with the latency model's predicted whole-model
  cost in thousandths of its unit (microseconds for measured tables) and ``log(1 + x)`` so it stays > 0;
* ``"size"``: validation top-1, with the storage budget walled as well.

Latency and size here are *predictions*: the latency table's (additive per layer) and storage counted
as :mod:`~uniprune.compressors.core.accounting` does, both at the whole block counts the projection applies
(:meth:`Wall.applied_fractions`), so a policy the wall lets through is within budget as applied; ``info`` at the end reports the actual storage ratio of the projected model too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from uniprune.compressors.core.accounting import SizeBudget, layer_profile, model_size
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.core.structure import BlockShape
from uniprune.compressors.latency.budget import LatencyBudget, latency_ratio
from uniprune.compressors.latency.model import LatencyModel

from .embedding import NUM_FEATURES, observation, static_features
from .scorer import Batch, Scorer, recalibrate_bn
from .wall import Walk, Wall

REWARDS = ("accuracy", "log-latency", "size")

__all__ = ["REWARDS", "CompressionEnv", "make_tiny_env", "recalibrate_bn"]


class CompressionEnv(gym.Env):
    """Gymnasium environment: choose (prune, unify) per searched layer under the wall's budgets.

    :param scorer: scores a finished episode's policy (validation accuracy, storage).
    :param wall: the budgets over the searched layers, in episode order.
    :param input_shape: one sample's ``(C, H, W)`` (for the layer embedding).
    :param reward: one of :data:`REWARDS`.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, scorer: Scorer, wall: Wall, *, input_shape: tuple[int, int, int], reward: str = "accuracy") -> None:
        super().__init__()
        if reward not in REWARDS:
            raise ConfigError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        if reward == "size" and wall.size_budget is None:
            raise ConfigError("reward 'size' needs a storage budget: pass size_budget (--size-budget) in (0, 1]")
        self.scorer, self.wall, self.reward_kind = scorer, wall, reward
        self.input_shape = tuple(int(s) for s in input_shape)
        self.layer_names = list(wall.layer_names)
        profile = layer_profile(scorer.model, self.input_shape)
        self.profile = {n: profile[n] for n in self.layer_names}
        #: per layer, the embedding's static part (normalised per network; :func:`~uniprune.envs.embedding.static_features`)
        self.static_features = static_features(self.layer_names, self.profile, dict(zip(self.layer_names, wall.dense_layer_ms)))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(NUM_FEATURES,), dtype=np.float32)
        self.action_space = spaces.Box(0.0, 1.0, shape=(wall.action_dims,), dtype=np.float32)
        self.last_result: dict[str, Any] | None = None
        self._walk = Walk()

    @classmethod
    def of(cls, model: nn.Module, latency_model: LatencyModel, val_batches: Sequence[Batch], *,
           input_shape: tuple[int, int, int], latency_budget: float = 0.5, bn_batches: Sequence[Batch] = (),
           max_prune: float = 0.8, max_unify: float = 1.0, reward: str = "accuracy", size_budget: float | None = None,
           block_shapes: Mapping[str, BlockShape | Sequence[int]] | None = None, model_name: str = "",
           skip: Collection[str] = (), device: str | torch.device = "cpu", shapes: Sequence[BlockShape] = (),
           reward_steps: int = 0, train_batches: Sequence[Batch] = ()) -> CompressionEnv:
        """The env over ``model``'s compressible layers (less ``skip``): a :class:`Scorer` on ``val_batches`` (BN
        re-estimated on ``bn_batches``) and a :class:`Wall` of ``latency_budget`` (and ``size_budget``, a fraction
        of dense storage) over ``latency_model``, with caps ``max_prune``/``max_unify`` in [0, 1]. ``shapes``: conv block
        shapes each layer chooses among (two or more; the first is ``block_shapes["conv"]``); ``reward_steps``: a
        short fine-tune on ``train_batches`` before scoring (:class:`Scorer`)."""
        if reward == "size" and size_budget is None:
            raise ConfigError("reward 'size' needs a storage budget: pass size_budget (--size-budget) in (0, 1]")
        budget = LatencyBudget(latency_budget)
        sizes = None if size_budget is None else SizeBudget(size_budget)
        scorer = Scorer(model, val_batches, bn_batches=bn_batches, block_shapes=block_shapes, model_name=model_name,
                        device=device, reward_steps=reward_steps, train_batches=train_batches)
        specs = compressible_layers(model, scorer.block_shapes, skip=skip)
        if not specs:
            raise ConfigError("the model has no compressible layers (Conv2d or Linear) to search over")
        wall = Wall(latency_model, specs, budget, size_budget=sizes, max_prune=max_prune, max_unify=max_unify,
                    dense_bits=float(model_size(model)["total"]["dense_storage_bits"]), shapes=shapes)
        return cls(scorer, wall, input_shape=input_shape, reward=reward)

    # -- what the env is over -------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Steps per episode: the number of searched layers."""
        return len(self.layer_names)

    @property
    def latency_budget(self) -> float:
        """The latency budget as a ratio in (0, 1] of the baseline."""
        return self.wall.budget.ratio

    @latency_budget.setter
    def latency_budget(self, ratio: float) -> None:
        self.wall.with_budget(LatencyBudget(ratio))

    @property
    def least_latency_ratio(self) -> float:
        """The least latency ratio any episode can reach (every layer at its extreme point)."""
        return self.wall.least_latency_ratio

    @property
    def model(self) -> nn.Module:
        """The trained network (untouched)."""
        return self.scorer.model

    @property
    def latency_model(self) -> LatencyModel:
        return self.wall.latency_model

    @property
    def block_shapes(self) -> dict[str, BlockShape]:
        return self.scorer.block_shapes

    def map_action(self, action: np.ndarray, layer: int = 0) -> tuple:
        """The requested (prune, unify) fractions (and block shape, where the search picks it) of layer index
        ``layer`` for a raw action in [0, 1]^2 (or ^3) (the wall's caps applied)."""
        return self.wall.map_action(action, layer)

    def policy(self, actions: Mapping[str, tuple[float, float]]) -> Policy:
        """A :class:`Policy` for ``actions`` with this env's model name, block shapes and budget."""
        return self.scorer.policy(actions, latency_budget=self.latency_budget)

    # -- gymnasium API ---------------------------------------------------------------------------

    def _obs(self) -> np.ndarray:
        walk, dense = self._walk, self.wall.dense_layer_ms
        t = min(walk.t, self.num_layers - 1)
        reduced = float(sum(dense[i] - self.wall.layer_ms(i, *a) for i, a in enumerate(walk.applied)))
        rest = float(dense[t + 1:].sum()) if walk.t < self.num_layers else 0.0
        total = float(dense.sum()) or 1.0
        prev = walk.applied[-1][:2] if walk.applied else (0.0, 0.0)
        return observation(self.static_features, t, reduced / total, rest / total, prev)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._walk = Walk()
        return self._obs(), {"layer": self.layer_names[0]}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._walk.t >= self.num_layers:
            raise RuntimeError("episode is over: call reset() before step()")
        name = self.layer_names[self._walk.t]
        requested, applied = self.wall.step(self._walk, action)
        info: dict[str, Any] = {"layer": name, "requested": requested, "applied": applied, "clipped": requested != applied}
        if self._walk.t < self.num_layers:
            return self._obs(), 0.0, False, False, info
        result = self.score(self.actions())
        info.update(result)
        self.last_result = dict(result, requested=dict(zip(self.layer_names, self._walk.requested)))
        return self._obs(), float(result["reward"]), True, False, info

    def episode_result(self, raws: Sequence[np.ndarray]) -> dict[str, Any]:
        """The end-of-episode result of one raw action per layer, walked through the wall and scored, without
        stepping this env (what :attr:`last_result` would be after stepping ``raws``): for searchers whose
        actions need no observation, whose episodes can then be scored apart (:mod:`uniprune.search.workers`)."""
        if len(raws) != self.num_layers:
            raise ConfigError(f"an episode takes {self.num_layers} actions, one per searched layer; got {len(raws)}")
        walk = Walk()
        for raw in raws:
            self.wall.step(walk, np.asarray(raw, dtype=np.float32))
        result = self.score(dict(zip(self.layer_names, walk.applied)))
        return dict(result, requested=dict(zip(self.layer_names, walk.requested)))

    # -- reward composition ----------------------------------------------------------------------

    def actions(self) -> dict[str, tuple[float, float]]:
        """The applied (prune, unify) of the layers decided so far in this episode."""
        return dict(zip(self.layer_names, self._walk.applied))

    def score(self, actions: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
        """The episode's result for ``actions``: the scorer's accuracy and size, the wall's predicted latency
        (at the block counts the projection applies, as the wall checked them) and the reward composed of them."""
        scored = self.scorer.score(actions)
        predicted = self.wall.predicted_ms(actions)
        accuracy = scored["val_accuracy"]
        if self.reward_kind == "log-latency":
            reward = -(1.0 - accuracy) * math.log1p(1000.0 * predicted)
        else:
            reward = accuracy
        return {"reward": float(reward), "val_accuracy": accuracy, "latency_ratio": latency_ratio(predicted, self.wall.dense_ms),
                "predicted_latency": float(predicted), "size_ratio": scored["size_ratio"],
                "actions": {n: (float(a[0]), float(a[1]), *a[2:]) for n, a in actions.items()}}


def _tiny_model(generator: torch.Generator) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    with torch.no_grad():
        for p in model.parameters():  # every parameter from the generator: the global RNG is not ours
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def make_tiny_env(*, latency_budget: float = 0.5, seed: int = 0, **kwargs: Any) -> CompressionEnv:
    """A small self-contained env (the default of ``uniprune/Compression-v0``): no files, no downloads.

    A 3-layer CNN with seeded random weights on 64 seeded random 3x8x8 images whose labels are the
    dense network's own predictions (so the dense model scores 1.0 and compression is what costs
    accuracy); 2x2 blocks; latency is proportional to MACs. ``kwargs`` go to :class:`CompressionEnv`.
    """
    gen = torch.Generator().manual_seed(seed)
    model = _tiny_model(gen)
    images = torch.randn((64, 3, 8, 8), generator=gen)
    with torch.no_grad():
        # Centre the logits so that the labels spread over the classes rather than all being one.
        model[-1].bias -= model(images).mean(dim=0)
        labels = model(images).argmax(dim=1)
    profile = layer_profile(model, (3, 8, 8))
    latency = LatencyModel.proportional({n: float(r["macs"]) for n, r in profile.items()}, unify_saving=0.5)
    batches = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    # Small blocks, so that even these small layers have 8-32 blocks each and fractions mean something.
    kwargs.setdefault("block_shapes", {"conv": (2, 2), "linear": (2, 2)})
    return CompressionEnv.of(
        model, latency, batches, input_shape=(3, 8, 8), latency_budget=latency_budget, model_name="tiny-cnn", **kwargs
    )
