"""`uniprune replay`: a searched agent on another architecture, a saved policy on another checkpoint, errors."""

from __future__ import annotations

import json

import pytest
import torch
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.policy import Policy
from uniprune.search.cli import main
from uniprune.search.models import build_model, save_checkpoint

FAST = ["--latency-model", "macs", "--val-samples", "48", "--eval-batch-size", "48", "--seed", "1"]


def _json(capsys, argv: list[str]) -> dict:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("uniprune replay: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err  # one line, no traceback
    return errors[0]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 4-episode DDPG search on the untrained digits CNN (the agent's weights are what replay needs)."""
    run = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", *FAST, "--searcher", "ddpg", "--episodes", "4", "--warmup", "2", "--latency-budget", "0.6", "--max-prune", "0.7",
                 "--run-dir", str(run)]) == 0
    return run


def test_agent_replays_on_another_architecture_within_budget(searched, tmp_path, capsys):
    out = tmp_path / "resnet20.json"
    result = _json(capsys, ["replay", "--agent", str(searched), "--model", "cifar-resnet20", *FAST, "--out", str(out)])
    policy = Policy.load(out)
    names = [s.name for s in compressible_layers(build_model("cifar-resnet20"))]
    assert list(policy.layers) == names[1:-1] and len(names) == 20  # the stem and the classifier stay dense
    # budget and caps come from the agent's run, so the actions mean the fractions they meant there
    assert policy.latency_budget == 0.6 and result["latency_budget"] == 0.6
    assert result["latency_ratio"] <= 0.6 + 1e-6 and policy.predicted["latency_ratio"] == result["latency_ratio"]
    assert all(a.prune <= 0.7 + 1e-6 for a in policy.layers.values())
    assert policy.search["replayed"] is True and 0 <= result["clipped_layers"] <= 20
    # deterministic: the same replay gives the same policy
    again = _json(capsys, ["replay", "--agent", str(searched), "--model", "cifar-resnet20", *FAST, "--out", str(out), "--force"])
    assert Policy.load(out).layers == policy.layers and again["latency_ratio"] == result["latency_ratio"]
    # a typed option wins over the run's, even when it equals the verb's default (0.5)
    typed = _json(capsys, ["replay", "--agent", str(searched), "--model", "cifar-resnet20", *FAST, "--latency-budget", "0.5",
                           "--out", str(out), "--force"])
    assert typed["latency_budget"] == 0.5 and Policy.load(out).latency_budget == 0.5


def test_policy_applies_to_another_checkpoint_of_the_same_architecture(searched, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.manual_seed(5)
    save_checkpoint(other, build_model("digits-cnn"), model_name="digits-cnn", dataset="digits", input_shape=(3, 32, 32), num_classes=10)
    source = Policy.load(searched / "policy.json")
    out = tmp_path / "applied.json"
    result = _json(capsys, ["replay", "--policy", str(searched / "policy.json"), "--checkpoint", str(other), *FAST, "--out", str(out)])
    applied = Policy.load(out)
    assert applied.latency_budget == source.latency_budget == 0.6
    assert set(applied.layers) == {"conv1", "conv2", "conv3", "conv4", "fc"}  # every layer walked: the ends at 0
    assert applied.layers["conv1"].prune == applied.layers["fc"].prune == 0
    for name, action in source.layers.items():  # same architecture, same table: nothing to clip
        assert applied.layers[name].prune == pytest.approx(action.prune, abs=1e-6)
        assert applied.layers[name].unify == pytest.approx(action.unify, abs=1e-6)
    assert result["clipped_layers"] == 0 and result["latency_ratio"] == pytest.approx(source.predicted["latency_ratio"])


def test_replay_errors_are_one_line_and_touch_nothing(searched, tmp_path, capsys):
    out = tmp_path / "kept.json"
    out.write_text("mine")
    err = _error(capsys, ["replay", "--agent", str(searched), *FAST, "--out", str(out)])
    assert "already exists" in err and out.read_text() == "mine"

    err = _error(capsys, ["replay", "--policy", str(searched / "policy.json"), "--model", "cifar-resnet20", *FAST,
                          "--out", str(tmp_path / "x.json")])
    assert "made for 'digits-cnn'" in err and "--agent" in err

    foreign = json.loads((searched / "policy.json").read_text())
    foreign["model"] = ""
    foreign["layers"]["layer9.conv"] = {"prune": 0.1, "unify": 0.0}
    del foreign["layers"]["conv2"]
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    err = _error(capsys, ["replay", "--policy", str(tmp_path / "foreign.json"), *FAST, "--out", str(tmp_path / "y.json")])
    assert "layer9.conv" in err and "lacks" in err

    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    err = _error(capsys, ["replay", "--agent", str(tmp_path / "bad.zip"), *FAST, "--out", str(tmp_path / "z.json")])
    assert "pickled code" in err and "--trust-pickle" in err  # an SB3 zip is refused before it is opened
    err = _error(capsys, ["replay", "--agent", str(tmp_path / "bad.zip"), "--trust-pickle", *FAST, "--out", str(tmp_path / "z.json")])
    assert "cannot be read" in err
    err = _error(capsys, ["replay", "--agent", str(tmp_path / "nothing"), *FAST, "--out", str(tmp_path / "z.json")])
    assert "does not exist" in err
    assert not any((tmp_path / n).exists() for n in ("x.json", "y.json", "z.json"))
