"""The knapsack searcher's pieces (search/knapsack.py): Pareto options, the DP against brute force, the env's plans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.structure import BlockShape
from uniprune.envs import make_tiny_env
from uniprune.search.knapsack import (
    SHAPE_TIGHTENINGS,
    TIGHTENINGS,
    LayerOptions,
    env_options,
    knapsack_plans,
    one_shape,
    pareto_options,
    plan_count,
    score_options,
    solve,
)


def test_pareto_options_drop_compression_that_buys_no_time() -> None:
    # unify saves nothing here: only pruning points survive, fastest last
    options = pareto_options("conv", [(0.0, 0.5), (0.5, 0.0), (0.5, 0.25), (0.9, 0.0)], lambda p, u: 1.0 - p)
    assert options.actions == [(0.0, 0.0), (0.9, 0.0), (0.5, 0.0)]
    assert options.ms.tolist() == pytest.approx([1.0, 0.1, 0.5])


def test_solve_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        options = []
        for i in range(4):
            ms = np.concatenate([[1.0], np.sort(rng.uniform(0.1, 1.0, 3))[::-1]])
            cost = np.concatenate([[0.0], np.sort(rng.uniform(0.0, 0.3, 3))])
            options.append(LayerOptions(f"l{i}", [(0.0, 0.0)] * 4, ms, cost))
        limit = float(rng.uniform(1.5, 3.5))
        feasible = [(sum(o.cost[j] for o, j in zip(options, js)), js) for js in itertools.product(range(4), repeat=4)
                    if sum(o.ms[j] for o, j in zip(options, js)) <= limit]
        if not feasible:
            with pytest.raises(ConfigError):
                solve(options, limit)
            continue
        best = min(feasible)
        picks = solve(options, limit, resolution=20000)
        assert sum(o.ms[j] for o, j in zip(options, picks)) <= limit  # never over
        # rounding times up may cost a little optimality, never feasibility
        assert sum(o.cost[j] for o, j in zip(options, picks)) <= best[0] + 0.02, trial


def test_solve_refuses_an_impossible_budget() -> None:
    options = [LayerOptions("a", [(0.0, 0.0), (0.5, 0.0)], np.array([1.0, 0.6]), np.array([0.0, 0.1]))]
    with pytest.raises(ConfigError, match="no combination"):
        solve(options, 0.5)
    with pytest.raises(ConfigError, match="score the options"):
        solve([LayerOptions("a", [(0.0, 0.0)], np.array([1.0]))], 2.0)


def test_env_plans_meet_the_budget_and_prefer_the_insensitive_layer() -> None:
    env = make_tiny_env(latency_budget=0.6)
    options = env_options(env.wall)
    assert [o.name for o in options] == env.layer_names and all(o.actions[0] == (0.0, 0.0) for o in options)
    dense = env.scorer.score({})["val_accuracy"]
    scored = score_options(options, lambda a: env.scorer.score(a)["val_accuracy"], dense, progress=False)
    plans = knapsack_plans(env.wall, scored)
    assert plans
    for plan in plans:
        result = env.score(plan)
        assert result["latency_ratio"] <= 0.6 + 1e-9
    # the first plan has the least summed sensitivity of every combination of options that fits (brute force)
    costs = {o.name: dict(zip(o.actions, o.cost)) for o in scored}
    limit = env.wall.budget.limit_ms(env.wall.dense_ms) - (env.latency_model.predict({}) - sum(o.ms[0] for o in scored))
    fits = [sum(o.cost[j] for o, j in zip(scored, js)) for js in itertools.product(*(range(len(o.actions)) for o in scored))
            if sum(o.ms[j] for o, j in zip(scored, js)) <= limit]
    assert sum(costs[n][a] for n, a in plans[0].items()) <= min(fits) + 1e-9


def test_searched_shapes_add_one_plan_per_shape_alone() -> None:
    """With block shapes searched, the mixed plans come first, then plans that keep one shape for every layer,
    all within the budget, and no more than plan_count of them."""
    env = make_tiny_env(latency_budget=0.8, shapes=[BlockShape(2, 2), BlockShape(1, 1)])
    options = env_options(env.wall)
    dense = env.scorer.score({})["val_accuracy"]
    scored = score_options(options, lambda a: env.scorer.score(a)["val_accuracy"], dense, progress=False)
    assert plan_count(env.wall) == len(TIGHTENINGS) + 2 * len(SHAPE_TIGHTENINGS)
    mixed = knapsack_plans(env.wall, scored, shape_tightenings=())
    plans = knapsack_plans(env.wall, scored)
    assert plans[:len(mixed)] == mixed and len(mixed) < len(plans) <= plan_count(env.wall)
    single = [{a[2] for a in plan.values() if a[0] + a[1] > 0} for plan in plans[len(mixed):]]
    assert all(len(keys) == 1 for keys in single) and {k for keys in single for k in keys} <= set(env.wall.shapes)
    for plan in plans:
        assert env.score(plan)["latency_ratio"] <= 0.8 + 1e-9
    # one shape's options keep the dense option first and only that shape's
    only = one_shape(scored, env.wall.shapes[1])
    assert all(o.actions[0] == (0.0, 0.0) and all(a[2] == env.wall.shapes[1] for a in o.actions[1:]) for o in only)
    assert all(len(o.cost) == len(o.actions) == len(o.ms) for o in only)
