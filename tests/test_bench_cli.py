"""`uniprune bench` end to end on the small default CNN: the --json contract and one-line errors."""

from __future__ import annotations

import json

import pytest
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.latency.engines import available_engines, default_modes
from uniprune.search.cli import main
from uniprune.search.models import build_model


@pytest.fixture()
def policy_file(tmp_path):
    model = build_model("digits-cnn", num_classes=10, input_shape=(1, 8, 8))
    policy = Policy(layers={s.name: LayerAction(0.75, 0.1) for s in compressible_layers(model)}, model="digits-cnn")
    return policy.save(tmp_path / "policy.json")


def test_bench_json(policy_file, tmp_path, capsys):
    rc = main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--threads", "1", "--batch-size", "4",
               "--repeats", "5", "--statistic", "min", "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("best_dense_ms", "compressed_ms", "speedup", "predicted_ms", "predicted_latency_ratio"):
        assert isinstance(out[key], float) and out[key] > 0
    assert set(out["engines"]) == set(default_modes()) and out["best_engine"] in available_engines()
    assert out["best_dense_ms"] == min(out["engines"][e] for e in available_engines())  # each at its default precision
    assert out["precisions"]["onnxruntime"] == "f32" and out["top1"] is None and out["budget_verdict"] == "no budget"
    # the speedup is a statistic of per-round ratios (no timed bound here: a shared machine's rounds vary)
    assert out["latency_ratio"] == pytest.approx(1 / out["speedup"])
    assert out["batch_size"] == 4 and out["input_shape"] == [1, 8, 8] and out["runtime"] == "lean"


def test_bench_named_engines(policy_file, capsys):
    rc = main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--threads", "1", "--repeats", "3",
               "--engines", "torch", "--no-table", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out["engines"]) == ["torch"] and out["best_engine"] == "torch"
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--engines", "tensorrt"])
    assert exc.value.code == 2 and "onnxruntime" in capsys.readouterr().err


def test_bench_scores_every_mode_and_int8_on_held_out_images(policy_file, capsys):
    rc = main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--threads", "1", "--repeats", "3",
               "--no-table", "--dataset", "digits", "--input-shape", "3,32,32", "--int8", "--calibration", "64",
               "--latency-budget", "0.05",
               "--engines", "torch,onnxruntime,onnxruntime:int8", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert list(out["engines"]) == ["torch", "onnxruntime", "onnxruntime:int8"]
    assert out["precisions"] == {"torch": "f32", "onnxruntime": "f32", "onnxruntime:int8": "int8"}
    assert set(out["top1"]) == {"torch", "onnxruntime", "onnxruntime:int8", "compressed"}
    # the same float32 model in torch and ONNX Runtime: the same answers on the same images
    assert out["top1"]["torch"] == out["top1"]["onnxruntime"] and all(0 <= a <= 1 for a in out["top1"].values())
    assert out["best_engine"] in ("torch", "onnxruntime") and out["rivals"]["int8"]["engine"] == "onnxruntime:int8"
    assert 0 < out["scored_images"] <= 360  # the digits test split
    assert out["latency_budget"] == 0.05 and out["budget_verdict"].startswith("misses the budget 0.05 by")
    assert "int8: calibrating" in captured.err and "misses the budget" in captured.err


def test_bench_int8_needs_data(policy_file, capsys):
    assert main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--int8", "--no-table"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--baseline", "int8", "--no-table"]) == 2
    assert "--int8" in capsys.readouterr().err


def test_bench_f32_baseline_on_request(policy_file, capsys):
    rc = main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--threads", "1", "--repeats", "3",
               "--no-table", "--baseline", "f32", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    f32 = [m for m, p in out["precisions"].items() if p == "f32"]
    assert out["baseline"] == "f32" and out["best_engine"] in f32
    assert out["best_dense_ms"] == min(out["engines"][m] for m in f32) == out["rivals"]["f32"]["ms"]
    assert out["rivals"]["default"]["engine"] in available_engines()


def test_bench_no_table(policy_file, capsys):
    rc = main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--threads", "1", "--repeats", "3",
               "--no-table", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["predicted_ms"] is None and out["compressed_ms"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--policy", "/no/such/policy.json"], "does not exist"),
    (["--compressed", "/no/such.pt"], "does not exist"),
])
def test_bench_bad_input_is_one_line(argv, message, capsys):
    rc = main(["bench", "--model", "digits-cnn", *argv, "--json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1


def test_bench_bad_shape_is_usage_error(policy_file, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "digits-cnn", "--policy", str(policy_file), "--input-shape", "3,x"])
    assert exc.value.code == 2
    assert "C,H,W" in capsys.readouterr().err


def test_bench_compressed_checkpoint(tmp_path, capsys):
    from uniprune.compressors.core.projection import project_model
    from uniprune.compressors.formats.checkpoint import save_compressed

    model = build_model("digits-cnn", num_classes=10, input_shape=(1, 8, 8))
    policy = Policy(layers={s.name: LayerAction(0.5, 0.25) for s in compressible_layers(model)}, model="digits-cnn")
    structures = project_model(model, policy)
    path = save_compressed(tmp_path / "c.pt", model, structures, model_name="digits-cnn", num_classes=10,
                           input_shape=(1, 8, 8))
    rc = main(["bench", "--compressed", str(path), "--threads", "1", "--repeats", "3", "--no-table", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model"] == "digits-cnn" and out["input_shape"] == [1, 8, 8]
    assert out["best_dense_ms"] > 0 and out["compressed_ms"] > 0
