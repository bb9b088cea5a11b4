"""AMC's environment: a network seen as a sequence of layers, one (prune, unify) decision per layer.

One episode walks the compressible layers in order (:func:`~uniprune.compressors.core.blocks.compressible_layers`).
At layer ``t`` the agent sees the layer's embedding (:mod:`uniprune.envs.embedding`) and answers with an
action ``(a_prune, a_unify)`` in [0, 1]^2, mapped to fractions of the layer's weights (taken in whole
blocks, the same fraction of every block size: :class:`~uniprune.compressors.core.projection.BlockClasses`)::

    prune = a_prune * max_prune,    unify = min(a_unify * max_unify, 1 - prune)

**The action wall** (AMC): the env then clips the action so that the budget stays reachable: the
latency of the layers decided so far, plus this layer's, plus every later layer at its *extreme point*
(the fastest feasible grid point within the caps, :meth:`LatencyModel.fastest_ms`) must not exceed
``latency_budget`` times the baseline (the latency model's ``dense_ms``: for measured tables the fastest
dense engine; see :mod:`uniprune.compressors.latency.budget`). If the request breaks that, the applied action is moved along the segment
from the request to this layer's extreme point, as little as needed (bisection). Since the budget was
reachable before the layer, the extreme point itself always satisfies it, so every finished episode
meets the budget by construction. With ``reward="size"`` a storage budget (``size_budget``, a fraction
of the dense model's storage bits) is walled the same way, and the extreme point is the maximum
compression ``(max_prune, min(max_unify, 1 - max_prune))``.

**The reward** comes at the end of the episode: a scratch copy of the network (made once) gets the
original weights back, is projected onto the policy (no fine-tuning), optionally has its BatchNorm
statistics re-estimated on a few training batches (EagleEye, Li et al. 2020), and is scored on a fixed
validation subset:

* ``"accuracy"`` (default): validation top-1 in [0, 1];
* ``"log-latency"``: AMC's ``-error * log(latency)``, with the latency model's predicted whole-model
  cost in thousandths of its unit (microseconds for measured tables) and ``log(1 + x)`` so it stays > 0;
* ``"size"``: validation top-1, with the storage budget walled as well.

Latency and size here are *predictions*: the latency table's (additive per layer) and storage counted
as :mod:`~uniprune.compressors.core.accounting` does, both at the whole block counts the projection applies
(:meth:`CompressionEnv.applied_fractions`), so a policy the wall lets through is within budget as
applied; ``info`` at the end reports the actual storage ratio of the projected model too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from uniprune.compressors.core.accounting import FLOAT_BITS, SIGN_BITS, layer_profile, model_size
from uniprune.compressors.core.blocks import compressible_layers, resolve_block_shapes
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import BlockClasses, project_model
from uniprune.compressors.core.structure import BlockShape
from uniprune.compressors.latency.budget import LatencyBudget, latency_ratio
from uniprune.compressors.latency.model import LatencyModel
from uniprune.compressors.train.training import evaluate

from .embedding import NUM_FEATURES, observation, static_features

REWARDS = ("accuracy", "log-latency", "size")
Batch = tuple[Tensor, Tensor]
_EPS = 1e-9
_BISECTION_STEPS = 40
#: Grid points of one layer within this relative distance of its fastest count as equally fast (timing noise).
_EXTREME_NOISE = 0.02


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


class CompressionEnv(gym.Env):
    """Gymnasium environment: choose (prune, unify) per compressible layer under a latency budget.

    :param model: the trained network (left untouched; a scratch copy is projected each episode).
    :param latency_model: per-layer latency tables naming every compressible layer.
    :param val_batches: the fixed validation subset, a sequence of ``(x, y)`` batches (reward source).
    :param input_shape: one sample's ``(C, H, W)`` (for the layer profile).
    :param latency_budget: in (0, 1]: predicted compressed latency over the latency model's baseline (the fastest
        dense engine, for measured tables) must not exceed it.
    :param bn_batches: training batches for BatchNorm re-estimation before scoring (empty: none).
    :param max_prune: cap in [0, 1] on a layer's pruned fraction of weights (whole blocks).
    :param max_unify: cap in [0, 1] on a layer's unified fraction of weights (``prune + unify <= 1`` always).
    :param reward: one of :data:`REWARDS`.
    :param size_budget: in (0, 1], storage budget (fraction of dense bits); needed by ``reward="size"``.
    :param block_shapes: per layer type block shapes (default :data:`DEFAULT_BLOCK_SHAPES`).
    :param model_name: recorded in the policies the env builds.
    :param skip: layer names to leave dense (not part of the episode).
    :param device: where the scratch model is scored.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module,
        latency_model: LatencyModel,
        val_batches: Sequence[Batch],
        *,
        input_shape: tuple[int, int, int],
        latency_budget: float = 0.5,
        bn_batches: Sequence[Batch] = (),
        max_prune: float = 0.8,
        max_unify: float = 1.0,
        reward: str = "accuracy",
        size_budget: float | None = None,
        block_shapes: Mapping[str, BlockShape | Sequence[int]] | None = None,
        model_name: str = "",
        skip: Collection[str] = (),
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        budget = LatencyBudget(latency_budget)  # validated once, here
        for key, cap in (("max_prune", max_prune), ("max_unify", max_unify)):
            if not 0 <= cap <= 1:
                raise ConfigError(f"{key} must be in [0, 1], got {cap}")
        if reward not in REWARDS:
            raise ConfigError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        if reward == "size" and size_budget is None:
            raise ConfigError("reward 'size' needs a storage budget: pass size_budget (--size-budget) in (0, 1]")
        if size_budget is not None and not 0 < size_budget <= 1:
            raise ConfigError(f"size budget must be in (0, 1] (a fraction of dense storage), got {size_budget}")
        if not val_batches:
            raise ConfigError("the validation subset is empty: pass at least one (x, y) batch (--val-samples > 0)")
        self.model = model
        self.latency_model = latency_model
        self.val_batches = list(val_batches)
        self.bn_batches = list(bn_batches)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.budget = budget
        self.size_budget = None if size_budget is None else float(size_budget)
        self.max_prune, self.max_unify = float(max_prune), float(max_unify)
        self.reward_kind = reward
        self.block_shapes = resolve_block_shapes(
            {k: (v.out, v.inp) if isinstance(v, BlockShape) else tuple(v) for k, v in (block_shapes or {}).items()}
        )
        self.model_name = model_name
        self.device = device

        specs = compressible_layers(model, self.block_shapes, skip=skip)
        if not specs:
            raise ConfigError("the model has no compressible layers (Conv2d or Linear) to search over")
        self.layer_names = [s.name for s in specs]
        missing = [n for n in self.layer_names if n not in latency_model.tables]
        if missing:
            raise ConfigError(
                f"the latency model has no table for layer(s) {missing[:5]}: rebuild it for this model "
                "(delete the latency cache) or use --latency-model macs"
            )
        profile = layer_profile(model, self.input_shape)
        self.profile = {n: profile[n] for n in self.layer_names}
        dense_layer = {n: float(latency_model.tables[n][0, 0]) for n in self.layer_names}
        self._dense_layer = np.asarray([dense_layer[n] for n in self.layer_names])
        self._static = static_features(self.layer_names, self.profile, dense_layer)
        self.dense_ms = latency_model.dense_ms
        # what no action changes: the table's fixed part and the layers left out of the episode, as they run
        # uncompressed in the compiled model
        self._fixed_ms = float(latency_model.fixed_ms) + sum(
            float(t[0, 0]) for n, t in latency_model.tables.items() if n not in self.layer_names)
        self._dense_layers_ms = float(self._dense_layer.sum())

        # Storage per layer (bits), as accounting counts it, for the size wall.
        self._params = np.asarray([int(s.module.weight.numel()) for s in specs], dtype=np.float64)
        self._blocks = np.asarray([s.grid.num_blocks for s in specs], dtype=np.float64)
        self._classes = [BlockClasses.of(s.grid) for s in specs]
        self.dense_bits = float(model_size(model)["total"]["dense_storage_bits"])
        self._fixed_bits = self.dense_bits - float(self._params.sum()) * FLOAT_BITS

        self._extreme = [self._extreme_point(n) for n in self.layer_names]
        self._extreme_ms = np.asarray([self._layer_ms(i, *e) for i, e in enumerate(self._extreme)])
        self._extreme_bits = np.asarray([self._layer_bits(i, *e) for i, e in enumerate(self._extreme)])
        least = latency_ratio(self._fixed_ms + float(self._extreme_ms.sum()), self.dense_ms)
        if not budget.reachable(least):
            baseline = (latency_model.meta or {}).get("baseline_engine", "dense")
            raise ConfigError(
                f"latency budget {self.latency_budget:g} cannot be met: the least reachable ratio is {least:.4f} of the "
                f"fastest dense engine ({baseline}) "
                f"(every layer at its fastest point with max_prune={self.max_prune:g}, max_unify={self.max_unify:g}); "
                f"raise --latency-budget to at least {math.ceil(least * 1000) / 1000:g} or raise the caps"
            )
        self.least_latency_ratio = least
        if self.size_budget is not None:
            least_size = (self._fixed_bits + float(self._extreme_bits.sum())) / self.dense_bits
            if least_size > self.size_budget + _EPS:
                raise ConfigError(
                    f"size budget {self.size_budget:g} cannot be met: the least reachable size ratio is {least_size:.4f}; "
                    f"raise --size-budget to at least {math.ceil(least_size * 1000) / 1000:g} or raise the caps"
                )

        self.observation_space = spaces.Box(0.0, 1.0, shape=(NUM_FEATURES,), dtype=np.float32)
        self.action_space = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self._scratch = copy.deepcopy(model).to(device)
        self._original = {k: v.detach().clone() for k, v in self._scratch.state_dict().items()}
        self.last_result: dict[str, Any] | None = None
        self._reset_episode()

    # -- sizes and latencies --------------------------------------------------------------------

    @property
    def latency_budget(self) -> float:
        """The latency budget as a ratio in (0, 1] of the baseline (see :attr:`budget`)."""
        return self.budget.ratio

    @latency_budget.setter
    def latency_budget(self, ratio: float) -> None:
        self.budget = LatencyBudget(ratio)

    @property
    def num_layers(self) -> int:
        """Steps per episode: the number of compressible layers searched."""
        return len(self.layer_names)

    def _extreme_point(self, name: str) -> tuple[float, float]:
        """Where a later layer is assumed to go when checking reachability (see the module docstring)."""
        if self.size_budget is not None:
            return self.max_prune, min(self.max_unify, 1.0 - self.max_prune)
        lm = self.latency_model
        p, u = lm.points()
        ok = (p <= self.max_prune + _EPS) & (u <= self.max_unify + _EPS)
        table = np.where(ok, lm.tables[name], np.inf)
        # Among the points within timing noise of the fastest, the least unification, then the least pruning:
        # a plain argmin over noisy points picked unification for convs, where it buys no time, and so
        # assumed the later layers unified for nothing.
        near = np.argwhere(table <= float(table.min()) * (1 + _EXTREME_NOISE))
        i, j = min(near.tolist(), key=lambda ij: (u[ij[0], ij[1]], p[ij[0], ij[1]]))
        return float(p[i, j]), float(u[i, j])

    def applied_fractions(self, i: int, prune: float, unify: float) -> tuple[float, float]:
        """The fractions of layer ``i``'s weights the projection will really prune and unify for a requested
        (prune, unify): whole blocks of each size, rounded as :class:`~uniprune.compressors.core.projection.BlockClasses`
        rounds. The wall and the reported ratios use these, not the fractional request."""
        return self._classes[i].applied(prune, unify)

    def _layer_ms(self, i: int, prune: float, unify: float) -> float:
        """Predicted ms of layer ``i`` at the block counts a (prune, unify) request applies."""
        return self.latency_model.layer_ms(self.layer_names[i], *self.applied_fractions(i, prune, unify))

    def _layer_bits(self, i: int, prune: float, unify: float) -> float:
        """Predicted storage bits of layer ``i`` at the block counts the fractions apply, the index counted as
        accounting counts it: ``ceil(log2(states used))`` bits per block."""
        classes = self._classes[i]
        pruned, unified = classes.applied(prune, unify)
        n_pruned, n_unified = classes.blocks(prune, unify)
        params, blocks = self._params[i], self._blocks[i]
        keep = max(1.0 - pruned - unified, 0.0)
        used = sum(f > _EPS for f in (keep, pruned, unified))
        index = math.ceil(math.log2(used)) * blocks if used > 1 else 0.0
        return float(params * (keep * FLOAT_BITS + unified * SIGN_BITS) + n_unified * FLOAT_BITS + index)

    def map_action(self, action: np.ndarray) -> tuple[float, float]:
        """The requested (prune, unify) fractions for a raw action in [0, 1]^2 (caps applied)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), 0.0, 1.0)
        prune = float(a[0]) * self.max_prune
        unify = min(float(a[1]) * self.max_unify, 1.0 - prune)
        return prune, max(unify, 0.0)

    def _fits(self, t: int, prune: float, unify: float) -> bool:
        ms = self._fixed_ms + self._spent_ms + self._layer_ms(t, prune, unify) + float(self._extreme_ms[t + 1 :].sum())
        if not self.budget.met_by(ms, self.dense_ms):
            return False
        if self.size_budget is None:
            return True
        bits = self._fixed_bits + self._spent_bits + self._layer_bits(t, prune, unify) + float(self._extreme_bits[t + 1 :].sum())
        return bits <= self.size_budget * self.dense_bits * (1 + _EPS)

    def clip_action(self, t: int, prune: float, unify: float) -> tuple[float, float]:
        """AMC's wall: the action nearest the request (on the segment to the extreme point) that keeps the budget reachable."""
        if self._fits(t, prune, unify):
            return prune, unify
        ep, eu = self._extreme[t]
        lo, hi = 0.0, 1.0  # invariant: lam = hi fits (the extreme point does, by reachability)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if self._fits(t, prune + mid * (ep - prune), unify + mid * (eu - unify)):
                hi = mid
            else:
                lo = mid
        p = prune + hi * (ep - prune)
        u = min(unify + hi * (eu - unify), 1.0 - p)
        return float(p), float(max(u, 0.0))

    # -- gymnasium API ---------------------------------------------------------------------------

    def _reset_episode(self) -> None:
        self._t = 0
        self._spent_ms = 0.0
        self._spent_bits = 0.0
        self._applied: list[tuple[float, float]] = []
        self._requested: list[tuple[float, float]] = []

    def _obs(self) -> np.ndarray:
        t = min(self._t, self.num_layers - 1)
        reduced = float(sum(self._dense_layer[i] - self._layer_ms(i, *a) for i, a in enumerate(self._applied)))
        rest = float(self._dense_layer[t + 1 :].sum()) if self._t < self.num_layers else 0.0
        total = self._dense_layers_ms if self._dense_layers_ms > 0 else 1.0
        prev = self._applied[-1] if self._applied else (0.0, 0.0)
        return observation(self._static, t, reduced / total, rest / total, prev)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_episode()
        return self._obs(), {"layer": self.layer_names[0]}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self.num_layers:
            raise RuntimeError("episode is over: call reset() before step()")
        t, name = self._t, self.layer_names[self._t]
        requested = self.map_action(action)
        applied = self.clip_action(t, *requested)
        self._requested.append(requested)
        self._applied.append(applied)
        self._spent_ms += self._layer_ms(t, *applied)
        self._spent_bits += self._layer_bits(t, *applied)
        self._t += 1
        info: dict[str, Any] = {"layer": name, "requested": requested, "applied": applied, "clipped": requested != applied}
        if self._t < self.num_layers:
            return self._obs(), 0.0, False, False, info
        result = self.score(self.actions())
        info.update(result)
        self.last_result = dict(result, requested={n: r for n, r in zip(self.layer_names, self._requested)})
        return self._obs(), float(result["reward"]), True, False, info

    # -- scoring ---------------------------------------------------------------------------------

    def actions(self) -> dict[str, tuple[float, float]]:
        """The applied (prune, unify) of the layers decided so far in this episode."""
        return dict(zip(self.layer_names, self._applied))

    def policy(self, actions: Mapping[str, tuple[float, float]]) -> Policy:
        """A :class:`Policy` for ``actions`` with this env's model name, block shapes and budget."""
        return Policy(
            layers={n: LayerAction(float(p), float(u)) for n, (p, u) in actions.items()},
            model=self.model_name,
            block_shape={k: (v.out, v.inp) for k, v in self.block_shapes.items()},
            latency_budget=self.latency_budget,
        )

    def score(self, actions: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
        """Project the scratch model onto ``actions`` and measure it: reward, accuracy, latency and size ratios."""
        self._scratch.load_state_dict(self._original)
        structures = project_model(self._scratch, self.policy(actions), self.block_shapes, apply=True)
        recalibrate_bn(self._scratch, self.bn_batches, device=self.device)
        accuracy = float(evaluate(self._scratch, self.val_batches, device=self.device))
        # at the block counts the projection applies, as the wall checked them
        predicted = self.latency_model.predict({n: LayerAction(*self.applied_fractions(self.layer_names.index(n), *a))
                                                for n, a in actions.items()})
        ratio = latency_ratio(predicted, self.dense_ms)
        size_ratio = float(model_size(self._scratch, structures)["total"]["size_ratio"])
        if self.reward_kind == "log-latency":
            reward = -(1.0 - accuracy) * math.log1p(1000.0 * predicted)
        else:
            reward = accuracy
        return {
            "reward": float(reward),
            "val_accuracy": accuracy,
            "latency_ratio": ratio,
            "predicted_latency": float(predicted),
            "size_ratio": size_ratio,
            "actions": {n: (float(p), float(u)) for n, (p, u) in actions.items()},
        }


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
    return CompressionEnv(
        model, latency, batches, input_shape=(3, 8, 8), latency_budget=latency_budget, model_name="tiny-cnn", **kwargs
    )
