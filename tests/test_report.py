"""The run report: plots and report.md from a run directory's files."""

from __future__ import annotations

import csv
import json

import matplotlib.image as mpimg
import pytest
from uniprune.compressors.core.errors import RunDirError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.search.cli import main
from uniprune.search.report import write_report


def _fake_run(tmp_path, with_admm: bool):
    run = tmp_path / "run"
    run.mkdir()
    with (run / "episodes.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["episode", "reward", "val_accuracy", "latency_ratio", "size_ratio", "noise_sigma", "warmup"])
        for e in range(12):
            w.writerow([e, 0.5 + 0.02 * e, 0.5 + 0.02 * e, 0.45 + 0.004 * e, 0.6, 0.5, int(e < 4)])
    Policy(
        layers={"conv1": LayerAction(0.5, 0.25), "fc": LayerAction(0.1, 0.0)}, model="digits-cnn", latency_budget=0.5,
        predicted={"latency_ratio": 0.49, "val_accuracy": 0.72},
    ).save(run / "policy.json")
    (run / "config.json").write_text(json.dumps({"model": "digits-cnn", "dataset": "digits", "searcher": "ddpg"}))
    if with_admm:  # what 'uniprune finetune --run-dir' writes
        admm = [{"iteration": i, "epoch": i, "rho": 1e-3 * 2**i, "loss": 1.0 / (i + 1), "residual": 0.5 / (i + 1),
                 "val_accuracy": 0.8 + 0.01 * i} for i in range(4)]
        retrain = [{"epoch": 4 + i, "loss": 0.3, "val_accuracy": 0.9 + 0.01 * i} for i in range(2)]
        (run / "finetune.json").write_text(json.dumps({"method": "admm", "accuracy": 0.91, "projected_val_accuracy": 0.6,
                                                        "admm_history": admm, "retrain_history": retrain}))
    return run


@pytest.mark.parametrize("with_admm", [False, True])
def test_report_writes_plots_and_markdown(tmp_path, with_admm):
    run = _fake_run(tmp_path, with_admm)
    files = write_report(run)
    names = [f.name for f in files]
    expected = ["reward.png", "accuracy_vs_latency.png", "policy_layers.png"] + (["admm.png"] if with_admm else [])
    assert names == expected + ["report.md"]
    for f in files[:-1]:
        img = mpimg.imread(f)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    text = (run / "report.md").read_text()
    for name in expected:
        assert f"]({name})" in text
    assert "| conv1 | 0.500 | 0.250 |" in text
    assert ("after fine-tuning: accuracy 0.9100" in text) == with_admm


def test_report_cli_errors_name_the_missing_run(tmp_path, capsys):
    assert main(["report", "--run-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    with pytest.raises(RunDirError, match="episodes.csv"):
        write_report(tmp_path)
