"""A non-RL reference searcher: a multiple-choice knapsack over the latency table (in the spirit of HALP,
Shen et al. 2022).

1. **Options.** Per layer, the latency table's grid points within the caps that are on the layer's Pareto
   front: no other point is at least as fast while pruning and unifying no more (so unification that buys
   a conv no time is never an option).
2. **Sensitivity.** Each option is scored alone (that one layer compressed, every other dense) through the
   env's scorer, BatchNorm re-estimated as for every reward; its cost is the validation accuracy lost
   against the dense model. The costs are taken as additive across layers, HALP's assumption.
3. **Knapsack.** Dynamic programming over the layers picks one option each for the least summed cost whose
   predicted time (the table's, at the block counts the projection applies) fits the budget. Times are
   rounded *up* to a grid of ``resolution`` steps of the budget, so a chosen policy never overruns it.

The search's episodes are then the knapsack's policy and, for robustness to the additivity assumption,
the policies of a few tighter budgets (each played through the env's wall like any other searcher's). Where
the search picks block shapes, the knapsack is also solved with each shape alone (the same sensitivities, no
new scoring): a mix of cheap fine-block options can lose more together than their summed costs say (on
ResNet-20 the mixed plan scored 51.8 % where 4x1 alone scored 56.4 %), and the env's reward then picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm
from uniprune.compressors.core.errors import ConfigError
from uniprune.envs import Wall

#: Budget fractions of the knapsack's episodes: the budget itself, then tighter ones.
TIGHTENINGS = (1.0, 0.97, 0.94, 0.9)
#: Budget fractions of the episodes that keep one block shape for every layer (searched shapes only).
SHAPE_TIGHTENINGS = (1.0, 0.94)


@dataclass(frozen=True)
class LayerOptions:
    """The candidate ``(prune, unify)`` fractions of one layer, the predicted ms of each, and (once scored)
    the accuracy each loses alone. Option 0 is always the dense layer ``(0, 0)`` at cost 0."""

    name: str
    actions: list[tuple]
    ms: np.ndarray
    cost: np.ndarray | None = None


def pareto_options(name: str, points: Sequence[tuple[float, float]], ms: Callable[[float, float], float]) -> LayerOptions:
    """The points (``(prune, unify)`` fractions) no other point beats on time without compressing more.

    ``ms(prune, unify)``: the layer's predicted time at those fractions. The dense point ``(0, 0)`` is kept
    first whatever its time."""
    timed = [((0.0, 0.0), ms(0.0, 0.0))] + [((float(p), float(u)), ms(p, u)) for p, u in points if p + u > 0]
    kept = [timed[0]]
    for (p, u), t in sorted(timed[1:], key=lambda x: (x[1], x[0][0] + x[0][1])):
        # dominated: an option already kept is at most as slow and compresses no more
        if any(kt <= t and kp + ku <= p + u + 1e-12 for (kp, ku), kt in kept[1:]) or t >= timed[0][1]:
            continue
        kept.append(((p, u), t))
    return LayerOptions(name, [a for a, _ in kept], np.array([t for _, t in kept], dtype=np.float64))


def option_key(name: str, action: Sequence[Any]) -> str:
    """One option's key: layer, fractions to 6 decimals, block shape (where searched)."""
    shape = action[2] if len(action) > 2 else ""
    return f"{name}|{float(action[0]):.6f}|{float(action[1]):.6f}|{shape}"


def score_options(options: Sequence[LayerOptions], accuracy_of: Callable[[Mapping[str, tuple]], float],
                  dense_accuracy: float, *, progress: bool = True,
                  score_many: Callable[[list[Mapping[str, tuple]]], list[float]] | None = None,
                  known: Mapping[str, float] | None = None) -> list[LayerOptions]:
    """Each option's cost: ``dense_accuracy - accuracy_of({layer: action})`` (the layer alone compressed),
    floored at 0 so that noise does not make compression look free-plus. ``score_many``: scores a list of
    such policies at once (several processes: :class:`~uniprune.search.workers.ScorePool`), in order.
    ``known``: costs already scored, by :func:`option_key` (an earlier run's); only the other options are scored."""
    known = known or {}
    costs = [np.zeros(len(o.actions)) for o in options]
    jobs = []
    for i, o in enumerate(options):
        for j in range(1, len(o.actions)):
            key = option_key(o.name, o.actions[j])
            if key in known:
                costs[i][j] = known[key]
            else:
                jobs.append((i, j))
    policies = [{options[i].name: options[i].actions[j]} for i, j in jobs]
    if score_many is not None:
        accuracies = score_many(policies) if policies else []
    else:
        accuracies = [accuracy_of(p) for p in tqdm(policies, desc="knapsack sensitivity", disable=not progress, leave=False)]
    for (i, j), acc in zip(jobs, accuracies):
        costs[i][j] = max(0.0, dense_accuracy - acc) if math.isfinite(acc) else math.inf
    return [LayerOptions(o.name, o.actions, o.ms, c) for o, c in zip(options, costs)]


def solve(options: Sequence[LayerOptions], limit_ms: float, *, resolution: int = 4000) -> list[int]:
    """The option index per layer with the least summed cost whose summed ms is at most ``limit_ms``.

    Raises :class:`ConfigError` when even the fastest options exceed ``limit_ms``."""
    if any(o.cost is None for o in options):
        raise ConfigError("score the options (score_options) before solving the knapsack")
    if not limit_ms > 0:
        raise ConfigError(f"the time left for the compressible layers must be > 0 ms, got {limit_ms}")
    step = limit_ms / resolution
    width = resolution + 1
    best = np.full(width, math.inf)
    best[0] = 0.0
    choice = np.zeros((len(options), width), dtype=np.int32)
    for i, o in enumerate(options):
        units = np.ceil(o.ms / step - 1e-9).astype(np.int64)  # rounded up: the plan never overruns
        nxt = np.full(width, math.inf)
        for j, (u, c) in enumerate(zip(units, o.cost)):
            if u >= width:
                continue
            cand = np.full(width, math.inf)
            cand[u:] = best[: width - u] + c
            better = cand < nxt
            nxt[better] = cand[better]
            choice[i, better] = j
        best = nxt
    end = int(np.argmin(best))
    if not math.isfinite(best[end]):
        raise ConfigError(f"no combination of the layers' options fits {limit_ms:.4g} ms; raise the budget or the caps")
    picks = []
    for i in range(len(options) - 1, -1, -1):
        j = int(choice[i, end])
        picks.append(j)
        end -= int(np.ceil(options[i].ms[j] / step - 1e-9))
    return picks[::-1]


def env_options(wall: Wall) -> list[LayerOptions]:
    """Each searched layer's Pareto options on the wall's latency grid within its caps, timed at the block
    counts the projection applies (``wall``: an env's :class:`~uniprune.envs.Wall`). Where the search picks
    block shapes, each shape's Pareto options are kept (a finer shape is slower at the same fractions but may
    lose less: the sensitivity scores decide), actions then ``(prune, unify, shape key)``."""
    lm = wall.latency_model
    p, u = lm.points()
    ok = (p <= wall.max_prune + 1e-9) & (u <= wall.max_unify + 1e-9)
    grid = list(zip(p[ok].tolist(), u[ok].tolist()))
    out = []
    for i, name in enumerate(wall.layer_names):
        actions: list[tuple] = [(0.0, 0.0)]
        times = [wall.layer_ms(i, 0.0, 0.0)]
        for opt in wall.options[i]:
            key = opt.key if wall.shapes else None

            def ms(prune: float, unify: float, i: int = i, key: str | None = key) -> float:
                return wall.layer_ms(i, prune, unify, key)
            front = pareto_options(name, grid, ms)
            actions += [(*a, key) if key else a for a in front.actions[1:]]
            times += front.ms[1:].tolist()
        out.append(LayerOptions(name, actions, np.asarray(times, dtype=np.float64)))
    return out


def one_shape(options: Sequence[LayerOptions], key: str) -> list[LayerOptions]:
    """``options`` restricted to the dense option and those in block shape ``key`` (actions ``(p, u, key)``)."""
    out = []
    for o in options:
        keep = [j for j, a in enumerate(o.actions) if j == 0 or a[2:] == (key,)]
        out.append(LayerOptions(o.name, [o.actions[j] for j in keep], o.ms[keep], None if o.cost is None else o.cost[keep]))
    return out


def shape_keys(options: Sequence[LayerOptions]) -> list[str]:
    """The block shapes the options are in, in order of first appearance (none when the shape is not searched)."""
    return list(dict.fromkeys(a[2] for o in options for a in o.actions[1:] if len(a) > 2))


def plan_count(wall: Wall) -> int:
    """The most plans :func:`knapsack_plans` returns for an env's wall."""
    return len(TIGHTENINGS) + len(wall.shapes) * len(SHAPE_TIGHTENINGS)


def knapsack_plans(wall: Wall, options: Sequence[LayerOptions], tightenings: Sequence[float] = TIGHTENINGS,
                   shape_tightenings: Sequence[float] = SHAPE_TIGHTENINGS) -> list[dict[str, tuple]]:
    """The knapsack's ``{layer: (prune, unify)}`` for the wall's budget scaled by each of ``tightenings``, then,
    where the options span several block shapes, each shape alone at each of ``shape_tightenings`` (distinct
    plans only; a plan that does not fit is skipped, except the first: the budget itself raises)."""
    lm = wall.latency_model
    others = lm.predict({}) - sum(float(lm.tables[n][0, 0]) for n in wall.layer_names)
    limit = wall.budget.limit_ms(wall.dense_ms)
    keys = shape_keys(options)
    runs = [(options, t) for t in tightenings]
    if len(keys) > 1:
        runs += [(one_shape(options, key), t) for key in keys for t in shape_tightenings]
    plans: list[dict[str, tuple]] = []
    for k, (opts, tight) in enumerate(runs):
        try:
            picks = solve(opts, tight * limit - others)
        except ConfigError:
            if k == 0:
                raise
            continue
        plan = {o.name: o.actions[j] for o, j in zip(opts, picks)}
        if plan not in plans:
            plans.append(plan)
    return plans
