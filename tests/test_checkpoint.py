"""The compressed checkpoint round-trips, loads with weights_only=True, and rejects bad files in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from uniprune.compressors.core.constraints import constrain
from uniprune.compressors.core.errors import CheckpointError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import project_model, structure_error
from uniprune.compressors.formats.checkpoint import COMPRESSED_FORMAT, load_compressed, save_compressed


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _saved(tmp_path: Path) -> tuple[Path, nn.Module, dict, Policy]:
    model = _model()
    policy = Policy(layers={"3": LayerAction(0.5, 0.25), "6": LayerAction(0.5, 0.5)}, model="toy")
    structures = project_model(model, policy)
    path = save_compressed(tmp_path / "c.pt", model, structures, model_name="toy", num_classes=10,
                           input_shape=(3, 8, 8), policy=policy, meta={"accuracy": 0.5})
    return path, model, structures, policy


def test_round_trip(tmp_path: Path) -> None:
    path, model, structures, policy = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == COMPRESSED_FORMAT
    name, state, loaded, meta = load_compressed(path)
    assert name == "toy"
    assert meta["num_classes"] == 10 and meta["input_shape"] == [3, 8, 8] and meta["accuracy"] == 0.5
    assert meta["policy"]["layers"]["3"] == {"prune": 0.5, "unify": 0.25}
    assert list(loaded) == list(structures)
    for layer, s in structures.items():
        assert torch.equal(loaded[layer].states, s.states) and torch.equal(loaded[layer].magnitudes, s.magnitudes)
        assert loaded[layer].grid.weight_shape == s.grid.weight_shape and loaded[layer].grid.groups == s.grid.groups
        assert structure_error(state[f"{layer}.weight"], loaded[layer]) == {"pruned_max_abs": 0.0, "unified_spread": 0.0}
    fresh = _model()
    fresh.load_state_dict(state)
    fresh.eval()
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh(x), model(x))


def test_bad_files_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_compressed(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        load_compressed(junk)
    foreign = tmp_path / "plain.pt"
    torch.save(_model().state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a uniprune compressed checkpoint"):
        load_compressed(foreign)
    path, *_ = _saved(tmp_path)
    data = torch.load(path, weights_only=True)
    data["state_dict"]["3.weight"] = torch.zeros(4, 4)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no weight of shape"):
        load_compressed(tmp_path / "bad.pt")
    data = torch.load(path, weights_only=True)
    del data["structures"]["3"]["states"]
    torch.save(data, tmp_path / "bad2.pt")
    with pytest.raises(CheckpointError, match="malformed"):
        load_compressed(tmp_path / "bad2.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_compressed(truncated)


def test_constrained_model_is_refused(tmp_path: Path) -> None:
    model = _model()
    structures = project_model(model, Policy(layers={"3": LayerAction(0.5, 0.25)}))
    constrain(model, structures)
    with pytest.raises(CheckpointError, match="bake"):
        save_compressed(tmp_path / "c.pt", model, structures, model_name="toy", num_classes=10, input_shape=(3, 8, 8))
