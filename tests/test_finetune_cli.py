"""`uniprune finetune` end to end on the embedded digits data (tiny budgets), its run-dir mode and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from uniprune.compressors.core.accounting import model_size
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import BlockClasses, structure_error
from uniprune.compressors.formats.checkpoint import load_compressed
from uniprune.compressors.train.baselines import uniform_policy
from uniprune.search.cli import main
from uniprune.search.models import build_model

FAST = ["--limit", "64", "--batch-size", "32", "--val-fraction", "0.05", "--no-latency"]


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Policy]:
    torch.manual_seed(0)
    model = build_model("digits-cnn", num_classes=10, input_shape=(3, 32, 32))
    dense = tmp_path / "dense.pt"
    torch.save(model.state_dict(), dense)
    policy = uniform_policy(model, 0.5, 0.25, model_name="digits-cnn")
    policy.layers["conv1"] = LayerAction(0.0, 0.0)
    policy_path = policy.save(tmp_path / "policy.json")
    return dense, policy_path, policy


def _json(capsys: pytest.CaptureFixture) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_admm_finetune_writes_a_valid_compressed_model(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dense, policy_path, policy = setup
    out = tmp_path / "c.pt"
    rc = main(["finetune", "--policy", str(policy_path), "--model", "digits-cnn", "--checkpoint", str(dense),
               "--epochs", "2", "--out", str(out), "--json", *FAST])
    assert rc == 0
    result = _json(capsys)
    assert result["checkpoint"] == str(out) and result["method"] == "admm" and result["epochs"] == 2
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["val_accuracy"] <= 1.0
    name, state, structures, meta = load_compressed(out)
    assert name == "digits-cnn" and meta["input_shape"] == [3, 32, 32] and meta["policy"]["model"] == "digits-cnn"
    for layer, structure in structures.items():
        action = policy.action(layer)
        n_p, n_u = BlockClasses.of(structure.grid).blocks(action.prune, action.unify)
        assert structure.counts()["prune"] == n_p and structure.counts()["unify"] == n_u
        err = structure_error(state[f"{layer}.weight"], structure)
        assert err["pruned_max_abs"] == 0.0 and err["unified_spread"] <= 1e-6
    model = build_model("digits-cnn", num_classes=10, input_shape=(3, 32, 32))
    model.load_state_dict(state)
    total = model_size(model, structures, input_shape=(3, 32, 32))["total"]
    assert result["size_ratio"] == pytest.approx(total["size_ratio"]) and 0.2 < result["size_ratio"] < 0.6
    assert result["mac_ratio"] == pytest.approx(total["mac_ratio"]) and 0.4 < result["mac_ratio"] < 0.8


def _run_dir(tmp_path: Path, dense: Path, policy_path: Path) -> Path:
    """A run directory as a search leaves it, as far as finetune reads it: its policy and config."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "policy.json").write_text(policy_path.read_text())
    (run / "config.json").write_text(json.dumps({"model": "digits-cnn", "checkpoint": str(dense), "dataset": "digits", "data": None}))
    return run


def test_run_dir_mode(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dense, policy_path, _ = setup
    run = _run_dir(tmp_path, dense, policy_path)
    assert main(["finetune", "--run-dir", str(run), "--method", "masked", "--epochs", "1", "--json", *FAST]) == 0
    result = _json(capsys)
    assert result["checkpoint"] == str(run / "compressed.pt") and (run / "compressed.pt").is_file()
    saved = json.loads((run / "finetune.json").read_text())
    assert saved["method"] == "masked" and len(saved["retrain_history"]) == 1 and saved["admm_history"] == []
    assert saved["collapsed_blocks"] == 0 and result["collapsed_blocks"] == 0
    assert list((run / "tb").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy", "missing.json", "--out", "x.pt"], "does not exist"),
        (["--epochs", "1", "--out", "x.pt"], "at least one ADMM epoch"),
        (["--run-dir", "no-such-run"], "does not exist"),
        (["--out", "x.pt", "--iterations", "2", "--epochs", "4"], "must divide"),
        (["--out", "x.pt", "--time-budget", "-1"], "--time-budget must be a positive number of minutes, got -1"),
        (["--out", "x.pt", "--time-budget", "0"], "--time-budget must be a positive number of minutes"),
        (["--out", "x.pt", "--distill-weight", "1.5"], "--distill-weight must be in [0, 1], got 1.5"),
        (["--out", "x.pt", "--distill-temperature", "0"], "--distill-temperature must be a positive number"),
        (["--out", "x.pt", "--method", "channel", "--channel-target", "1"], "--channel-target must be a ratio in (0, 1)"),
        (["--out", "x.pt", "--method", "channel"], "needs a target ratio"),  # the policy has no latency budget
        (["--out", "x.pt", "--method", "masked", "--time-budget", "0.000001"], "raise --time-budget to at least"),  # 60 us
    ],
)
def test_bad_input_is_one_line(setup, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                               extra: list[str], message: str) -> None:
    dense, policy_path, _ = setup
    monkeypatch.chdir(tmp_path)
    args = ["finetune", "--model", "digits-cnn", "--checkpoint", str(dense), *FAST, *extra]
    if "--policy" not in extra and "--run-dir" not in extra:
        args += ["--policy", str(policy_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("uniprune finetune: error:")


def test_policy_for_another_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    policy = Policy(layers={"layer1.0.conv1": LayerAction(0.5, 0.0)}, model="cifar-resnet20")
    path = policy.save(tmp_path / "p.json")
    assert main(["finetune", "--policy", str(path), "--model", "digits-cnn", "--out", str(tmp_path / "x.pt"), *FAST]) == 2
    assert "made for 'cifar-resnet20', not 'digits-cnn'" in capsys.readouterr().err
    unnamed = Policy(layers={"layer1.0.conv1": LayerAction(0.5, 0.0)})  # a policy naming no model: its layers decide
    assert main(["finetune", "--policy", str(unnamed.save(tmp_path / "q.json")), "--model", "digits-cnn", "--out",
                 str(tmp_path / "y.pt"), *FAST]) == 2
    assert "not compressible layers" in capsys.readouterr().err


def test_divergence_stops_with_one_line_and_keeps_the_good_model(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dense, policy_path, _ = setup
    run = _run_dir(tmp_path, dense, policy_path)
    assert main(["finetune", "--run-dir", str(run), "--method", "masked", "--epochs", "1", *FAST]) == 0
    good = (run / "compressed.pt").read_bytes()
    capsys.readouterr()
    # a second run into the same place needs --force
    assert main(["finetune", "--run-dir", str(run), "--method", "masked", "--epochs", "1", *FAST]) == 2
    assert "--force" in capsys.readouterr().err
    for extra in (["--method", "masked", "--lr", "1e9"], ["--method", "admm", "--epochs", "2", "--rho", "1e30", "--lr", "1e6"]):
        assert main(["finetune", "--run-dir", str(run), "--force", *extra, *FAST]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # progress bars aside
        assert len(errors) == 1 and "diverged" in errors[0] and "--lr" in errors[0] and "nothing was written" in errors[0]
        assert (run / "compressed.pt").read_bytes() == good  # the earlier model is intact


def test_non_finite_checkpoints_are_never_written_nor_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from uniprune.compressors.core.errors import CheckpointError, NonFiniteError
    from uniprune.compressors.core.projection import project_model
    from uniprune.compressors.formats.checkpoint import save_compressed
    from uniprune.search.models import build_model

    model = build_model("digits-cnn", num_classes=10, input_shape=(1, 8, 8))
    structures = project_model(model, Policy(layers={"conv2": LayerAction(0.5, 0.0)}, model="digits-cnn"))
    with torch.no_grad():
        model.bn2.running_var[0] = float("inf")
    with pytest.raises(NonFiniteError, match="bn2.running_var"):
        save_compressed(tmp_path / "c.pt", model, structures, model_name="digits-cnn", num_classes=10, input_shape=(1, 8, 8))
    assert not (tmp_path / "c.pt").exists()
    # a file written by something else with a NaN in it: eval refuses it in one line
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"format": "uniprune.compressed/1", "model_name": "digits-cnn", "num_classes": 10, "input_shape": [1, 8, 8],
                "state_dict": state, "structures": {}, "policy": None, "meta": {}}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_compressed(tmp_path / "nan.pt")
    torch.save(state, tmp_path / "nan-dense.pt")
    assert main(["eval", "--model", "digits-cnn", "--checkpoint", str(tmp_path / "nan-dense.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or inf" in err[0]


def test_distill_needs_the_dense_checkpoint_and_is_on_when_it_is_known(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dense, policy_path, _ = setup
    base = ["finetune", "--policy", str(policy_path), "--model", "digits-cnn", "--method", "masked", "--epochs", "1", *FAST]
    assert main([*base, "--distill", "--out", str(tmp_path / "a.pt")]) == 2
    assert "--distill learns from the dense model: give its --checkpoint" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.pt"), "--json"]) == 0  # no checkpoint: nothing to learn from
    assert _json(capsys)["distill"] is None
    assert main([*base, "--checkpoint", str(dense), "--out", str(tmp_path / "c.pt"), "--json", "--distill-temperature", "2"]) == 0
    assert _json(capsys)["distill"] == {"temperature": 2.0, "weight": 0.7}
    assert main([*base, "--checkpoint", str(dense), "--out", str(tmp_path / "d.pt"), "--json", "--no-distill"]) == 0
    assert _json(capsys)["distill"] is None


def test_finetune_prints_the_table_the_layers_and_the_warnings(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dense, policy_path, _ = setup
    run = _run_dir(tmp_path, dense, policy_path)
    assert main(["finetune", "--run-dir", str(run), "--epochs", "2", "--json", *FAST[:-1]]) == 0  # with the latency race
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    err = captured.err
    assert f"## Fine-tune: {run.name} (admm, 2 epochs" in err
    assert "| dense | " in err and "(baseline)" in err and "| **admm** | uniprune" in err
    assert "| conv1 (dense) | 32x3x3x3 | 8x4 | 0 % | 0 % |" in err and "| conv2 | 32x32x3x3 | 8x4 |" in err
    # a random 'dense' model and 64 samples: ADMM is far from converged, and says what to raise
    assert any(w.startswith("ADMM's primal residual is") and w.endswith("raise --epochs or --rho-growth") for w in result["warnings"])
    assert all(f"- {w}" in err for w in result["warnings"])
    assert set(result["timing"]["engines"]) and result["latency_ratio"] == pytest.approx(result["timing"]["latency_ratio"])
    (run / "episodes.csv").write_text("episode,reward,val_accuracy,latency_ratio\n0,0.5,0.5,0.4\n")  # as a search leaves it
    assert main(["report", "--run-dir", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert f"## Fine-tune: {run.name}" in report and "| **admm** | uniprune" in report and "conv1 (dense)" in report


def test_a_time_budget_plans_the_epochs(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dense, policy_path, _ = setup
    assert main(["finetune", "--policy", str(policy_path), "--model", "digits-cnn", "--checkpoint", str(dense),
                 "--method", "masked", "--time-budget", "0.15", "--out", str(tmp_path / "t.pt"), "--json", *FAST]) == 0
    result = _json(capsys)
    budget = result["time_budget"]
    # invariants, not wall-clock bounds (a shared machine's epochs vary): the plan is what ran, and the verdict is
    # the time used against the budget's 9 s
    assert budget["planned_epochs"] == result["epochs"] >= 1 and budget["met"] == (budget["seconds_used"] <= 9.0)
    assert 1 <= result["epochs_run"] <= result["epochs"]
    assert budget["stopped_early"] == (result["epochs_run"] < result["epochs"])


def test_channel_method_writes_a_pruned_model_that_bench_races_on_the_engines(setup, tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    from uniprune.compressors.formats.channel_checkpoint import load_channel_pruned
    from uniprune.compressors.train.channel import rebuild

    dense, policy_path, _ = setup
    out = tmp_path / "ch.pt"
    assert main(["finetune", "--policy", str(policy_path), "--model", "digits-cnn", "--checkpoint", str(dense),
                 "--method", "channel", "--channel-target", "0.5", "--epochs", "1", "--out", str(out), "--json", *FAST]) == 0
    result = _json(capsys)
    assert result["method"] == "channel" and 0.3 < result["mac_ratio"] <= 0.5 and result["size_ratio"] < 0.7
    assert result["distill"] == {"temperature": 4.0, "weight": 0.7}  # the dense checkpoint is known: it teaches
    saved = load_channel_pruned(out)
    assert saved.meta["dense_checkpoint"] == str(dense.resolve()) and saved.meta["channels"]["mac_ratio"] == result["mac_ratio"]
    model = rebuild(build_model("digits-cnn", num_classes=10, input_shape=(3, 32, 32)), saved.channels, saved.state_dict)
    assert model.conv2.out_channels < 32 and any(r["channels"][0] < r["channels"][1] for r in result["layers"])
    assert main(["eval", "--checkpoint", str(out), "--split", "test", "--json"]) == 0
    assert _json(capsys)["accuracy"] == pytest.approx(result["accuracy"])
    assert main(["bench", "--compressed", str(out), "--repeats", "3", "--json"]) == 0
    bench = _json(capsys)
    assert bench["runtime"] == f"engine {bench['compressed_engine']}" and bench["compressed_engine"] in bench["engines"]
    assert bench["predicted_ms"] is None and bench["speedup"] == pytest.approx(1 / bench["latency_ratio"])


def test_bench_of_a_compressed_checkpoint_races_the_dense_model_it_came_from(setup, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """The fine-tune records its dense checkpoint; bench's engine rows then run (and score) that dense model, as a
    bench of the policy on the dense checkpoint does; without it, they run the compressed weights, and say so."""
    dense, policy_path, _ = setup
    out = tmp_path / "c.pt"
    assert main(["finetune", "--policy", str(policy_path), "--model", "digits-cnn", "--checkpoint", str(dense),
                 "--method", "masked", "--epochs", "1", "--out", str(out), "--json", *FAST]) == 0
    capsys.readouterr()
    bench = ["bench", "--threads", "1", "--repeats", "3", "--no-table", "--dataset", "digits", "--engines", "torch", "--json"]
    assert main([*bench, "--policy", str(policy_path), "--model", "digits-cnn", "--checkpoint", str(dense),
                 "--input-shape", "3,32,32"]) == 0
    of_policy = _json(capsys)["top1"]
    assert main([*bench, "--compressed", str(out)]) == 0
    captured = capsys.readouterr()
    of_checkpoint = json.loads(captured.out.strip().splitlines()[-1])["top1"]
    assert of_checkpoint["torch"] == of_policy["torch"] and "ran the compressed weights" not in captured.err
    dense.unlink()
    assert main([*bench, "--compressed", str(out)]) == 0
    captured = capsys.readouterr()
    alone = json.loads(captured.out.strip().splitlines()[-1])["top1"]
    assert alone["torch"] == alone["compressed"] == of_checkpoint["compressed"]
    assert "ran the compressed weights dense" in captured.err


def test_threads_set_torch_for_the_fine_tune_and_are_restored(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    import sys

    api_finetune = sys.modules["uniprune.search.api.finetune"]  # the package's name ``finetune`` is the function
    dense, policy_path, _ = setup
    seen = []
    real = api_finetune.train_into

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(api_finetune, "train_into", spy)
    before = torch.get_num_threads()
    assert main(["finetune", "--policy", str(policy_path), "--model", "digits-cnn", "--checkpoint", str(dense),
                 "--method", "masked", "--epochs", "1", "--threads", str(before + 1), "--out", str(tmp_path / "t.pt"), "--json",
                 *FAST]) == 0
    assert seen == [before + 1] and torch.get_num_threads() == before
    _json(capsys)
