"""`uniprune search` end to end on digits with the MACs latency model: run dir, TensorBoard, resume, errors."""

from __future__ import annotations

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from uniprune.agent import load_agent
from uniprune.compressors.core.policy import Policy
from uniprune.envs import make_tiny_env
from uniprune.search.cli import main
from uniprune.search.searchers import agent_policy, uniform_candidates

FAST = ["--latency-model", "macs", "--val-samples", "48", "--eval-batch-size", "48", "--seed", "1"]


def _search(capsys, *args: str) -> dict:
    code = main(["search", *FAST, *args, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    return json.loads(out[-1])


def _rows(run) -> list[dict]:
    with (run / "episodes.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_ddpg_search_writes_policy_csv_and_tensorboard_then_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    result = _search(capsys, "--searcher", "ddpg", "--episodes", "3", "--warmup", "2", "--run-dir", str(run))
    assert result["episodes"] == 3 and result["latency_ratio"] <= 0.5 + 1e-6
    assert 0.0 <= result["val_accuracy"] <= 1.0 and result["policy"] == str(run / "policy.json")
    policy = Policy.load(run / "policy.json")
    assert policy.latency_budget == 0.5 and policy.model == "digits-cnn"
    assert set(policy.predicted) >= {"latency_ratio", "size_ratio", "val_accuracy"}
    assert policy.search["searcher"] == "ddpg" and 0 <= policy.search["episode"] < 3
    assert policy.block_shape == {"conv": (8, 4), "linear": (8, 8)}
    assert [r["episode"] for r in _rows(run)] == ["0", "1", "2"]
    assert [float(r["noise_sigma"]) for r in _rows(run)] == [0.0, 0.0, 0.5]
    assert (run / "agent.json").is_file() and (run / "agent.pt").is_file() and (run / "config.json").is_file()
    assert not list(run.glob("*.zip")) and not list(run.glob("*.pkl"))  # nothing pickled

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("search/reward", "search/val_accuracy", "search/latency_ratio", "search/size_ratio", "search/noise_sigma"):
        assert tag in tags
        assert [e.step for e in acc.Scalars(tag)] == [0, 1, 2]
    assert len(acc.Scalars("best_policy/prune")) == len(policy.layers)
    assert "search/hparams/text_summary" in acc.Tags()["tensors"]

    # An existing run is never overwritten without --resume/--force.
    assert main(["search", *FAST, "--episodes", "3", "--run-dir", str(run), "--json"]) == 2
    assert "already holds a run" in capsys.readouterr().err

    # Options left out on --resume come from the run's config.json (here --warmup 2 and the FAST options), the
    # episode target too: without --episodes a resume stops at the run's own target, not the default 300.
    assert main(["search", "--run-dir", str(run), "--resume", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["episodes"] == 3 and resumed["episodes_this_run"] == 0
    assert main(["search", "--episodes", "5", "--run-dir", str(run), "--resume", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["episodes"] == 5 and resumed["episodes_this_run"] == 2
    rows = _rows(run)
    assert [r["episode"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert float(rows[4]["noise_sigma"]) == pytest.approx(0.5 * 0.95**2)
    agent = load_agent(run)
    assert agent.episode == 5
    # The agent trained on digits-cnn runs on another network (per-network observations), within its budget.
    replayed = agent_policy(agent, make_tiny_env(latency_budget=0.7))
    assert list(replayed["actions"]) == ["0", "3", "8"] and replayed["latency_ratio"] <= 0.7 + 1e-6
    # Each event file on its own: two writers of one process within one second get names that sort by a counter
    # as text ("...10" before "...9"), and a reader of the folder would then take the first run's steps for a restart.
    steps = []
    for events in sorted((run / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        steps += [e.step for e in acc.Scalars("search/reward")] if "search/reward" in acc.Tags()["scalars"] else []
    assert sorted(steps) == [0, 1, 2, 3, 4]
    # Resuming with a different budget is refused, naming the option.
    assert main(["search", *FAST, "--episodes", "6", "--latency-budget", "0.4", "--run-dir", str(run), "--resume"]) == 2
    assert "--latency-budget" in capsys.readouterr().err


@pytest.mark.parametrize("searcher", ["optuna", "random", "uniform", "knapsack"])
def test_other_searchers_meet_the_budget(tmp_path, capsys, searcher):
    run = tmp_path / searcher
    result = _search(capsys, "--searcher", searcher, "--episodes", "2", "--warmup", "1", "--run-dir", str(run), "--latency-budget", "0.6")
    assert result["episodes"] == 2 and result["searcher"] == searcher
    for row in _rows(run):
        assert float(row["latency_ratio"]) <= 0.6 + 1e-6
    if searcher == "optuna":
        assert (run / "optuna.db").is_file()


def test_uniform_candidates_are_the_least_pruning_meeting_the_budget():
    env = make_tiny_env(latency_budget=0.5)  # MACs-proportional, unify saves half a block's time
    cands = uniform_candidates(env, 3)
    # Prune only: 0.5 of every layer (a_prune = 0.5 / max_prune 0.8). Half and half: prune 0.8 s, unify s
    # with 0.8 s + 0.5 s = 2 * 0.5 (a = s/2 each) -> s = 1/1.3. Unify only: every block (saves half).
    assert cands[0] == pytest.approx([0.625, 0.0], abs=1e-5)
    assert cands[1] == pytest.approx([0.5 / 1.3, 0.5 / 1.3], abs=1e-5)
    assert cands[2] == pytest.approx([0.0, 1.0], abs=1e-5)
    for a in cands:
        prune, unify = env.map_action(a)
        assert prune + 0.5 * unify == pytest.approx(0.5, abs=1e-5)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["search", *FAST, "--latency-budget", "0.01", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "least reachable ratio" in err[-1]
    assert main(["search", *FAST, "--episodes", "0", "--run-dir", str(tmp_path / "r2")]) == 2
    assert "--episodes must be >= 1" in capsys.readouterr().err
    assert main(["search", *FAST, "--resume", "--run-dir", str(tmp_path / "none")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["search", *FAST, "--reward", "size", "--run-dir", str(tmp_path / "r3")]) == 2
    assert "--size-budget" in capsys.readouterr().err


def test_ctrl_c_stops_after_the_episode_and_resume_goes_on(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from uniprune.search import searchers

    real = searchers.RandomSearcher.run_episode

    def interrupted(self, episode):
        if episode == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends, mid-episode
        return real(self, episode)

    monkeypatch.setattr(searchers.RandomSearcher, "run_episode", interrupted)
    run = tmp_path / "run"
    assert main(["search", *FAST, "--searcher", "random", "--episodes", "4", "--run-dir", str(run)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert json.loads((run / "state.json").read_text())["episodes"] == 2
    assert [r["episode"] for r in _rows(run)] == ["0", "1"]
    monkeypatch.setattr(searchers.RandomSearcher, "run_episode", real)
    result = _search(capsys, "--searcher", "random", "--episodes", "4", "--run-dir", str(run), "--resume")
    assert result["episodes"] == 4 and result["episodes_this_run"] == 2
    assert [r["episode"] for r in _rows(run)] == ["0", "1", "2", "3"]


def test_keep_dense_picks_the_ends_or_named_layers(tmp_path, capsys):
    from uniprune.compressors.core.errors import ConfigError, ModelError
    from uniprune.search.api.env import dense_layers

    names = ["conv1", "conv2", "conv3", "fc"]
    assert dense_layers("ends", names) == ["conv1", "fc"]
    assert dense_layers("none", names) == [] and dense_layers("conv2, conv3", names) == ["conv2", "conv3"]
    assert dense_layers("ends", ["a", "b"]) == []  # two layers: both would be ends, search them
    with pytest.raises(ModelError, match="conv9"):
        dense_layers("conv9", names)
    with pytest.raises(ConfigError, match="no layer"):
        dense_layers("conv1,conv2,conv3,fc", names)
    # through the CLI: one line naming the bad layer, and no run directory left behind
    assert main(["search", *FAST, "--keep-dense", "conv9", "--episodes", "1", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "conv9" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "r").exists()


def test_a_warmup_that_leaves_no_ddpg_episode_is_scaled_and_noise_is_an_option(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["search", *FAST, "--searcher", "ddpg", "--episodes", "6", "--warmup", "100", "--noise-sigma", "0.3", "--noise-decay", "0.5",
                 "--noise-floor", "0.1", "--run-dir", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "warming up for 2 instead" in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["episodes"] == 6 and 0.0 <= result["dense_val_accuracy"] <= 1.0
    assert result["baseline_engine"].startswith("MACs")  # the macs latency model times no engine
    sigmas = [float(r["noise_sigma"]) for r in _rows(run)]
    assert sigmas == pytest.approx([0.0, 0.0, 0.3, 0.15, 0.1, 0.1])  # decay x0.5 from 0.3, floored at 0.1
    config = json.loads((run / "config.json").read_text())
    assert (config["warmup"], config["noise_floor"], config["block_shape"]) == (2, 0.1, "8x4")
    assert main(["search", *FAST, "--noise-floor", "0.6", "--run-dir", str(tmp_path / "r2")]) == 2
    assert "--noise-floor must be in [0, --noise-sigma = 0.5]" in capsys.readouterr().err


@pytest.mark.parametrize("searcher", ["random", "knapsack"])
def test_two_workers_find_what_one_finds(tmp_path, capsys, searcher: str) -> None:
    runs = {}
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        _search(capsys, "--searcher", searcher, "--episodes", "5", "--workers", str(workers), "--latency-budget", "0.8",
                "--run-dir", str(run))
        runs[workers] = [(r["reward"], r["latency_ratio"]) for r in _rows(run)]
    assert len(runs[1]) >= 1 and runs[1] == runs[2]
    assert main(["search", *FAST, "--workers", "0", "--run-dir", str(tmp_path / "w0")]) == 2
    assert "--workers must be in [1, 64]" in capsys.readouterr().err
