"""Projection onto a policy is exact (brute force), has the requested counts, and writes the right values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import PolicyError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import (
    BlockClasses,
    apply_structures,
    assign_blocks,
    block_costs,
    block_counts,
    project_layer,
    project_model,
    structure_error,
    structure_fractions,
)
from uniprune.compressors.core.structure import KEEP, PRUNE, UNIFY, BlockShape, block_grid


def _brute_force(prune_cost: np.ndarray, unify_cost: np.ndarray, n_p: int, n_u: int) -> float:
    best = np.inf
    for states in itertools.product((KEEP, UNIFY, PRUNE), repeat=len(prune_cost)):
        if states.count(PRUNE) == n_p and states.count(UNIFY) == n_u:
            cost = sum(prune_cost[i] if s == PRUNE else unify_cost[i] if s == UNIFY else 0.0 for i, s in enumerate(states))
            best = min(best, cost)
    return best


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_assignment_is_optimal_against_brute_force(data: st.DataObject) -> None:
    b = data.draw(st.integers(1, 7))
    floats = st.floats(0.0, 10.0, allow_nan=False)
    prune_cost = np.array(data.draw(st.lists(floats, min_size=b, max_size=b)))
    share = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=b, max_size=b)))
    unify_cost = prune_cost * share  # unifying never costs more than pruning
    n_p = data.draw(st.integers(0, b))
    n_u = data.draw(st.integers(0, b - n_p))
    states = assign_blocks(prune_cost, unify_cost, n_p, n_u)
    assert int((states == PRUNE).sum()) == n_p and int((states == UNIFY).sum()) == n_u
    got = float(prune_cost[states == PRUNE].sum() + unify_cost[states == UNIFY].sum())
    assert got == pytest.approx(_brute_force(prune_cost, unify_cost, n_p, n_u), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), prune=st.floats(0, 1), unify=st.floats(0, 1))
def test_project_layer_minimises_distance_on_real_weights(seed: int, prune: float, unify: float) -> None:
    unify = min(unify, 1 - prune)
    weight = torch.randn(6, 5, 2, 2, generator=torch.Generator().manual_seed(seed))
    grid = block_grid(weight.shape, BlockShape(2, 2))  # 3 x 3 = 9 blocks, with edge blocks
    structure, projected = project_layer(weight, grid, prune, unify)
    classes = BlockClasses.of(grid)
    assert classes.sizes == (16, 8)  # full blocks and the right-edge column (5 input channels in blocks of 2)
    n_p, n_u = classes.blocks(prune, unify)
    assert structure.counts() == {"keep": grid.num_blocks - n_p - n_u, "unify": n_u, "prune": n_p}
    p, u, _ = block_costs(weight, grid)
    p, u = p.flatten().numpy(), u.flatten().numpy()
    states = structure.states.flatten().numpy()
    best = 0.0
    for idx, (cp, cu) in zip(classes.indices, classes.counts(prune, unify)):
        # each size class gets its own counts, and within it the choice is the brute-force optimum
        assert int((states[idx] == PRUNE).sum()) == cp and int((states[idx] == UNIFY).sum()) == cu
        best += _brute_force(p[idx], u[idx], cp, cu)
    distance = float(((weight.double() - projected.double()) ** 2).sum())
    assert distance == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_fractions_are_of_weights_not_of_blocks() -> None:
    """The issue's case: a 10x64 linear with 8x8 blocks at prune 0.5 lost its eight 2-row edge blocks (cheap to
    prune, being small), 20 % of its weights. Each block size now gives the same fraction."""
    torch.manual_seed(0)
    weight = torch.randn(10, 64)
    grid = block_grid(weight.shape, BlockShape(8, 8))
    structure, _ = project_layer(weight, grid, 0.5, 0.0)
    sizes = grid.block_sizes()
    assert float(sizes[structure.states == PRUNE].sum()) / weight.numel() == pytest.approx(0.5)
    assert structure_fractions(structure) == pytest.approx((0.5, 0.0))
    assert int((structure.states[1] == PRUNE).sum()) == 4  # half of the eight 2-row edge blocks
    assert BlockClasses.of(grid).applied(0.5, 0.0) == (0.5, 0.0)
    # unify 0.25: two of eight full blocks and two of eight edge blocks
    assert BlockClasses.of(grid).applied(0.5, 0.25) == (0.5, 0.25)
    # a layer of equal blocks: weight fractions are block fractions, rounded half-up
    even = BlockClasses.of(block_grid((16, 8, 3, 3), BlockShape(8, 4)))
    assert even.sizes == (288,) and even.blocks(0.5, 0.3) == (2, 1) and even.applied(0.5, 0.3) == (0.5, 0.25)


def test_projected_values_and_structure() -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3)
    grid = block_grid(weight.shape, BlockShape(8, 4))
    structure, projected = project_layer(weight, grid, 0.5, 0.25)
    assert structure.counts() == {"keep": 1, "unify": 1, "prune": 2}
    state = structure.state_map()
    assert torch.equal(projected[state == KEEP], weight[state == KEEP])
    assert bool((projected[state == PRUNE] == 0).all())
    unified = state == UNIFY
    assert torch.equal(torch.sign(projected[unified]), torch.sign(weight[unified]))
    m = float(structure.magnitudes[structure.states == UNIFY])
    assert m == pytest.approx(float(weight[unified].abs().mean()), rel=1e-6)
    assert torch.allclose(projected[unified].abs(), torch.full_like(projected[unified], m))
    assert structure_error(projected, structure) == {"pruned_max_abs": 0.0, "unified_spread": 0.0}
    assert structure_error(weight, structure)["pruned_max_abs"] > 0


@pytest.mark.parametrize(("blocks", "p", "u", "expected"), [(10, 0.5, 0.25, (5, 3)), (3, 0.5, 0.5, (2, 1)), (4, 1.0, 0.3, (4, 0)), (7, 0.0, 0.0, (0, 0))])
def test_block_counts_round_half_up_and_cap(blocks: int, p: float, u: float, expected: tuple[int, int]) -> None:
    assert block_counts(blocks, p, u) == expected


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.LazyLinear(10))


def test_project_model_counts_apply_and_unknown_layers() -> None:
    model = _model()
    model(torch.zeros(1, 3, 8, 8))
    policy = Policy(layers={"2": LayerAction(0.4, 0.3), "4": LayerAction(0.6, 0.0)})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dry = project_model(model, policy, apply=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    structures = project_model(model, policy)
    assert list(structures) == [s.name for s in compressible_layers(model)]
    for name, structure in structures.items():
        action = policy.action(name)
        b = structure.grid.num_blocks
        counts = structure.counts()
        assert abs(counts["prune"] - action.prune * b) <= 1 and abs(counts["unify"] - action.unify * b) <= 1
        assert torch.equal(structure.states, dry[name].states)
        assert structure_error(model.get_submodule(name).weight, structure) == {"pruned_max_abs": 0.0, "unified_spread": 0.0}
    assert structures["0"].counts()["keep"] == structures["0"].grid.num_blocks  # not named: dense
    other = _model()
    other(torch.zeros(1, 3, 8, 8))
    apply_structures(other, structures)
    w = other.get_submodule("2").weight
    assert structure_error(w, structures["2"]) == {"pruned_max_abs": 0.0, "unified_spread": 0.0}
    with pytest.raises(PolicyError, match="not compressible layers"):
        project_model(model, Policy(layers={"layer9.conv": LayerAction(0.5, 0.0)}))


def test_a_layers_own_block_shape_wins_and_survives_the_file(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    policy = Policy(layers={"0": LayerAction(0.5, 0.0, BlockShape(1, 1)), "2": LayerAction(0.5, 0.25)},
                    block_shape={"conv": (8, 4)})
    loaded = Policy.load(policy.save(tmp_path / "policy.json"))
    assert loaded.layers["0"].block == BlockShape(1, 1) and loaded.layers["2"].block is None
    structures = project_model(model, loaded)
    assert structures["0"].grid.block_shape == BlockShape(1, 1)
    assert (structures["0"].grid.n_out, structures["0"].grid.n_in) == (16, 8)
    assert structures["2"].grid.block_shape == BlockShape(8, 4)
    # half of layer 0's 128 one-kernel blocks are pruned: its weights are zero kernel by kernel
    kernels = model[0].weight.detach().abs().sum(dim=(2, 3))
    assert int((kernels == 0).sum()) == 64


@pytest.mark.parametrize("block", [[0, 1], [1], "1x1", [1.5, 1], [True, 1]])
def test_a_bad_layer_block_is_one_policy_error(block: object) -> None:
    data = {"format": "uniprune.policy/1", "layers": {"0": {"prune": 0.5, "block": block}}}
    with pytest.raises(PolicyError, match=r"layers\.0\.block"):
        Policy.from_dict(data)
