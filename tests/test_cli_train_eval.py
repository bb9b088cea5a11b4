"""`uniprune train` and `uniprune eval` through the CLI entry point: results, files, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from uniprune.search.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


def _run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """(exit status, the --json object or None, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in argv else None), err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits CNN trained for 5 epochs through the CLI, shared by the tests below."""
    out = tmp_path_factory.mktemp("train") / "cnn.pt"
    import io
    from contextlib import redirect_stderr, redirect_stdout

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(io.StringIO()):
        code = main(["train", "--epochs", "5", "--out", str(out), "--seed", "1", "--json"])
    torch.set_num_threads(before)
    assert code == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


def test_train_reports_and_saves(trained):
    path, result = trained
    assert result["checkpoint"] == str(path) and path.is_file()
    assert result["epochs"] == 5 and result["samples"] == 1294
    assert 0.85 <= result["accuracy"] <= 1.0 and 0.8 <= result["val_accuracy"] <= 1.0
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == "uniprune.checkpoint/1" and saved["accuracy"] == pytest.approx(result["accuracy"])
    assert saved["model"] == "digits-cnn" and saved["num_classes"] == 10 and saved["input_shape"] == [3, 32, 32]


def test_eval_reproduces_the_trained_accuracy(trained, capsys):
    path, result = trained
    code, ev, _ = _run(capsys, "eval", "--checkpoint", str(path), "--json")
    assert code == 0 and ev["samples"] == 359 and ev["accuracy"] == pytest.approx(result["accuracy"])
    code, ev, _ = _run(capsys, "eval", "--checkpoint", str(path), "--split", "val", "--seed", "1", "--json")
    assert code == 0 and ev["samples"] == 144 and ev["accuracy"] == pytest.approx(result["val_accuracy"])
    code, ev, _ = _run(capsys, "eval", "--checkpoint", str(path), "--split", "train", "--limit", "100", "--threads", "2", "--json")
    assert code == 0 and ev["samples"] == 100 and ev["threads"] == 2
    assert torch.get_num_threads() == 1  # the verb restores the caller's thread setting


def test_eval_warns_when_the_data_is_normalised_otherwise(trained, tmp_path, capsys):
    path, _ = trained
    raw = torch.load(path, weights_only=True)
    assert main(["eval", "--checkpoint", str(path)]) == 0
    assert "normalised" not in capsys.readouterr().err  # the same data: no warning
    raw["mean"] = [0.485, 0.456, 0.406]  # say, a checkpoint trained on ImageNet-normalised inputs
    torch.save(raw, tmp_path / "other-norm.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "other-norm.pt")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "normalised with mean [0.485, 0.456, 0.406]" in err


def test_train_continues_a_checkpoint_and_never_overwrites_silently(trained, tmp_path, capsys, monkeypatch):
    path, _ = trained
    out = tmp_path / "more.pt"
    code, res, _ = _run(capsys, "train", "--checkpoint", str(path), "--epochs", "1", "--lr", "0.01", "--out", str(out), "--json")
    assert code == 0 and torch.load(out, weights_only=True)["epochs"] == 6
    assert res["accuracy"] >= 0.85  # started from the trained weights, not from scratch
    code, _, err = _run(capsys, "train", "--epochs", "1", "--out", str(out))
    assert code == 2 and "already exists" in _error_line(err) and "--force" in err
    assert torch.load(out, weights_only=True)["epochs"] == 6  # untouched
    code, _, _ = _run(capsys, "train", "--epochs", "1", "--out", str(out), "--force")
    assert code == 0 and torch.load(out, weights_only=True)["epochs"] == 1
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "digits-cnn-digits.pt").write_text("the user's own file")
    code, _, err = _run(capsys, "train", "--epochs", "1")
    assert code == 2 and "checkpoints/digits-cnn-digits.pt already exists" in _error_line(err)
    assert (tmp_path / "checkpoints" / "digits-cnn-digits.pt").read_text() == "the user's own file"


def test_eval_reads_compressed_checkpoints(trained, tmp_path, capsys):
    from uniprune.compressors.formats import checkpoint
    from uniprune.search.models import build_model, load_weights

    path, result = trained
    model = build_model("digits-cnn")
    load_weights(model, path)
    packed = checkpoint.save_compressed(
        tmp_path / "c.pt", model, {}, model_name="digits-cnn", num_classes=10, input_shape=(3, 32, 32),
    )
    code, ev, _ = _run(capsys, "eval", "--model", "cifar-resnet20", "--checkpoint", str(packed), "--json")
    # The file names its own model; --model is not needed for a compressed checkpoint.
    assert code == 0 and ev["compressed"] is True and ev["model"] == "digits-cnn"
    assert ev["accuracy"] == pytest.approx(result["accuracy"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--model", "resnet9000", "--epochs", "1"], "known models: cifar-resnet20"),
        (["train", "--dataset", "mnist", "--epochs", "1"], "known datasets: digits, fashion-mnist"),
        (["eval", "--checkpoint", "x.pt", "--dataset", "npz", "--data", "/no/such/file.npz"], "checkpoint x.pt does not exist"),
        (["train", "--dataset", "npz", "--data", "/no/such/file.npz", "--epochs", "1"], "path not found: /no/such/file.npz"),
        (["train", "--dataset", "cifar10", "--epochs", "1"], "needs --data"),
        (["train", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "--lr", "-1", "--epochs", "1"], "learning rate must be a positive number"),
        (["eval"], "eval needs --checkpoint"),
        (["train", "--device", "tpu", "--epochs", "1"], "unknown device"),
    ],
)
def test_cli_errors_are_one_line(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert expected in _error_line(err)
    assert not (tmp_path / "checkpoints").exists()


def test_eval_names_mismatched_keys(trained, capsys):
    path, _ = trained
    code, _, err = _run(capsys, "eval", "--model", "cifar-resnet20", "--checkpoint", str(path))
    line = _error_line(err)
    assert code == 2 and "does not fit the model" in line and "missing keys: layer1.0.conv1.weight" in line
    assert "pass --model digits-cnn" in line


def test_eval_of_the_pretrained_resnet_on_the_exact_subset(shared_file, capsys):
    ckpt = shared_file("pretrained", "resnet20-12fca82f.th")
    data = shared_file("cifar10-test-exact-first1017.npz")
    code, ev, err = _run(
        capsys, "eval", "--model", "cifar-resnet20", "--checkpoint", str(ckpt), "--dataset", "npz", "--data", str(data),
        "--limit", "256", "--json",
    )
    assert code == 0 and ev["samples"] == 256 and ev["accuracy"] == pytest.approx(233 / 256)
    assert "test split AND" in err  # the single-file npz note reaches the user


def test_model_defaults_to_the_one_the_checkpoint_names(tmp_path, capsys):
    from uniprune.search.models import build_model, save_checkpoint

    path = save_checkpoint(
        tmp_path / "r20.pt", build_model("cifar-resnet20"), model_name="cifar-resnet20", dataset="digits",
        input_shape=(3, 32, 32), num_classes=10,
    )
    code, ev, _ = _run(capsys, "eval", "--checkpoint", str(path), "--limit", "64", "--json")
    assert code == 0 and ev["model"] == "cifar-resnet20" and ev["samples"] == 64
    code, _, err = _run(capsys, "eval", "--checkpoint", str(path), "--dataset", "npz", "--data", str(tmp_path / "none.npz"))
    assert code == 2 and "path not found" in _error_line(err)
