"""The Python API: specs check their ranges once, map to and from flags and config.json, and the jobs return
result dataclasses; a DDPG search's TensorBoard holds SB3's training scalars beside the search's."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from uniprune.agent import EpisodeRewardBuffer
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.threads import resolve_threads, torch_threads
from uniprune.search import api
from uniprune.search.cli import build_parser

FAST_ENV = api.EnvSpec(latency=api.LatencySpec(latency_model="macs"), scoring=api.ScoringSpec(val_samples=48, eval_batch_size=48),
                       seed=1)
#: the scalars SB3's logger writes into RUN/tb during a DDPG search, once the agent trains (after warm-up)
SB3_TAGS = {"train/critic_loss", "train/actor_loss", "train/actor_learning_rate", "train/critic_learning_rate",
            "train/noise_sigma"}


@pytest.mark.parametrize(("spec", "changes", "flag"), [
    (api.BudgetSpec, {"latency_budget": 0.0}, "--latency-budget"),
    (api.BudgetSpec, {"latency_budget": math.nan}, "--latency-budget"),
    (api.BudgetSpec, {"max_prune": 1.5}, "--max-prune"),
    (api.LatencySpec, {"threads": 0}, "--threads"),
    (api.LatencySpec, {"batch_size": 0}, "--batch-size"),
    (api.ScoringSpec, {"val_samples": 0}, "--val-samples"),
    (api.DataSpec, {"val_fraction": 1.0}, "--val-fraction"),
    (api.SearchSpec, {"episodes": 0}, "--episodes"),
    (api.SearchSpec, {"resume": True, "force": True}, "--resume"),
    (api.EnvSpec, {"reward": "size"}, "--size-budget"),
    (api.FinetuneSpec, {"rho": -1.0}, "--rho"),
    (api.DemoSpec, {"finetune_epochs": 1}, "--finetune-epochs"),
])
def test_a_spec_out_of_range_is_one_error_naming_the_flag(spec, changes, flag):
    with pytest.raises(ConfigError, match=flag):
        spec.from_flat(changes)


def test_specs_are_frozen_and_map_to_flat_options_and_back():
    spec = api.SearchSpec(env=FAST_ENV.replace(latency_budget=0.7, keep_dense="none"), searcher="random", episodes=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.episodes = 6  # type: ignore[misc]
    flat = spec.flat()
    assert flat["latency_budget"] == 0.7 and flat["keep_dense"] == "none" and flat["episodes"] == 5
    assert api.SearchSpec.from_flat(flat) == spec
    assert spec.replace(episodes=9).episodes == 9 and spec.episodes == 5
    with pytest.raises(ConfigError, match="no option"):
        spec.replace(epochs=3)


def test_a_specs_command_line_parses_back_to_the_same_spec():
    spec = api.SearchSpec(env=FAST_ENV.replace(latency_budget=0.7, threads=2), searcher="optuna", episodes=7, warmup=3,
                          run_dir="runs/x", force=True)
    args = build_parser().parse_args(["search", *spec.argv()])
    from uniprune.search.commands.stored import search_spec

    assert search_spec(args) == spec
    export = api.ExportSpec(compressed="c.pt", out="deploy", threads=1)
    assert export.argv() == ["--compressed", "c.pt", "--out", "deploy", "--threads", "1"]


def test_threads_mean_the_same_everywhere():
    assert resolve_threads(3) == 3 and resolve_threads(None) >= 1
    with torch_threads(1) as n:
        assert n == 1
    with pytest.raises(ConfigError, match="--threads"):
        resolve_threads(0)


def test_search_through_the_api_writes_sb3_scalars_beside_the_search_ones(tmp_path):
    spec = api.SearchSpec(env=FAST_ENV, searcher="ddpg", episodes=4, warmup=2, run_dir=str(tmp_path / "run"))
    found = api.search(spec)
    assert isinstance(found, api.SearchResult) and found.episodes == 4 and found.latency_ratio <= 0.5 + 1e-6
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"search/reward", "search/val_accuracy", "search/latency_ratio", "search/noise_sigma"} <= tags
    assert SB3_TAGS <= tags, sorted(tags)
    critic = events.Scalars("train/critic_loss")
    assert [e.step for e in critic] == [2, 3] and all(np.isfinite(e.value) for e in critic)  # trained after the warm-up
    assert events.Scalars("train/actor_learning_rate")[-1].value == pytest.approx(1e-4)
    assert events.Scalars("train/noise_sigma")[-1].value == pytest.approx(0.5 * 0.95)


def test_replay_of_the_searched_policy_through_the_api(tmp_path):
    found = api.search(api.SearchSpec(env=FAST_ENV, searcher="uniform", episodes=2, run_dir=str(tmp_path / "run")))
    again = api.replay(api.ReplaySpec(env=FAST_ENV, policy=found.policy, out=str(tmp_path / "again.json")))
    assert isinstance(again, api.ReplayResult) and again.latency_ratio <= 0.5 + 1e-6
    with pytest.raises(ConfigError, match="--agent"):
        api.ReplaySpec(env=FAST_ENV, out="x.json")


def test_the_store_time_baseline_buffer_freezes_r_minus_b_into_the_transitions():
    from gymnasium import spaces

    box = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
    buf = EpisodeRewardBuffer(16, box, box, baseline_alpha=0.5, baseline_at="store")
    obs = np.zeros((1, 2), dtype=np.float32)
    for reward in (1.0, 3.0):  # one-step episodes: R=1 stored as 0 (b=1), R=3 stored as 3-1=2 (then b=2)
        buf.add(obs, obs, obs, np.array([reward]), np.array([True]), [{}])
    assert sorted(buf.rewards[:2, 0].tolist()) == [0.0, 2.0] and buf.baseline == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="baseline_at"):
        EpisodeRewardBuffer(16, box, box, baseline_at="later")
