"""`uniprune demo`, shortened: every step runs and leaves its files, and the summary adds up."""

from __future__ import annotations

import json

import pytest
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.formats.checkpoint import load_compressed
from uniprune.search.cli import main


def test_short_demo_runs_the_whole_job(tmp_path, capsys, cache_dir):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--train-epochs", "3", "--episodes", "4", "--warmup", "2",
            "--finetune-epochs", "2", "--latency-budget", "0.9", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    run = out / "run"
    for name in ("config.json", "episodes.csv", "policy.json", "compressed.pt", "finetune.json", "bench.json",
                 "report.md", "reward.png", "accuracy_vs_latency.png", "policy_layers.png", "admm.png"):
        assert (run / name).is_file(), name
    assert (out / "dense.pt").is_file() and result["episodes"] == 4
    # the latency the demo reports is the exported artifact's, run through its own loader
    assert (out / "deploy" / "plan.json").is_file() and result["runtime"] == "artifact"
    policy = Policy.load(run / "policy.json")
    assert policy.latency_budget == 0.9 and result["predicted_latency_ratio"] <= 0.9 + 1e-6
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["dense_accuracy"] <= 1.0
    assert result["latency_ratio"] == pytest.approx(1 / result["speedup"]) and result["latency_ratio"] > 0
    assert 0.0 < result["size_ratio"] <= 1.0
    name, _, structures, meta = load_compressed(run / "compressed.pt")
    assert name == "digits-cnn" and set(structures) == {"conv1", "conv2", "conv3", "conv4", "fc"}
    assert set(policy.layers) == {"conv2", "conv3", "conv4"}  # the stem and the classifier stay dense
    assert structures["conv1"].counts()["keep"] == structures["conv1"].grid.num_blocks
    # the table a person reads at the end
    assert "test accuracy" in captured.err and "size ratio" in captured.err and "latency ratio (budget)" in captured.err

    # the demo never writes into a folder that holds something
    assert main(["demo", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
