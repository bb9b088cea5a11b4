"""The model zoo: forward shapes, the reference ResNet layout, checkpoints and their errors."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn
from uniprune.compressors.core.errors import CheckpointError, ModelError
from uniprune.compressors.train.training import evaluate
from uniprune.search.datasets import load_dataset
from uniprune.search.models import CHECKPOINT_FORMAT, KNOWN_MODELS, build_model, load_weights, save_checkpoint

# Parameter counts of akamaster/pytorch_resnet_cifar10 (0.27 M, 0.46 M, 0.66 M, 0.85 M).
RESNET_PARAMS = {"cifar-resnet20": 269_722, "cifar-resnet32": 464_154, "cifar-resnet44": 658_586, "cifar-resnet56": 853_018}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", sorted(RESNET_PARAMS))
def test_cifar_resnets_match_the_reference(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == RESNET_PARAMS[name]
    depth = int(name.removeprefix("cifar-resnet"))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth - 1 and convs[0] == "conv1" and "layer1.0.conv1" in convs
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] == ["linear"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_vgg16_is_the_literature_s():
    model = build_model("cifar-vgg16")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and [c.out_channels for c in convs][-3:] == [512] * 3
    # 3x3 conv weights 14,710,464 + BatchNorm weight and bias 8,448 + linear 5,130
    assert sum(p.numel() for p in model.parameters()) == 14_724_042
    with pytest.raises(ModelError, match="32x32"):
        build_model("cifar-vgg16", input_shape=(3, 16, 16))


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("digits-cnn", (3, 32, 32), 10),
        ("digits-cnn", (1, 28, 28), 10),
        ("cifar-resnet20", (1, 28, 28), 7),
        ("cifar-vgg16", (3, 32, 32), 10),
        ("tv:resnet18", (3, 32, 32), 5),
        ("torchvision.models:squeezenet1_1", (3, 64, 64), 4),
    ],
)
def test_every_kind_of_model_gives_logits(name, shape, classes):
    model = build_model(name, num_classes=classes, input_shape=shape).eval()
    with torch.no_grad():
        assert model(torch.randn(3, *shape)).shape == (3, classes)


def test_user_factory_gets_num_classes_and_input_shape(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def tiny(num_classes, input_shape):
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
        def wrong_output(num_classes):
            return nn.Flatten()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_nets:tiny", num_classes=3, input_shape=(1, 4, 4))
    assert model[1].in_features == 16 and model[1].out_features == 3
    with pytest.raises(ModelError, match=r"logits of shape \[batch, 3\]"):
        build_model("my_nets:wrong_output", num_classes=3, input_shape=(1, 4, 4))
    with pytest.raises(ModelError, match="has no callable 'nope'"):
        build_model("my_nets:nope")
    with pytest.raises(ModelError, match="cannot import 'not_a_module_xyz'"):
        build_model("not_a_module_xyz:f")


def test_unknown_models_list_the_known_names():
    with pytest.raises(ModelError) as err:
        build_model("resnet9000")
    for name in KNOWN_MODELS:
        assert name in str(err.value)
    with pytest.raises(ModelError, match="torchvision"):
        build_model("tv:no_such_net")
    with pytest.raises(ModelError, match="3-channel"):
        build_model("tv:resnet18", input_shape=(1, 28, 28))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("digits-cnn")
    model.bn1.running_mean.normal_()  # buffers travel too
    path = save_checkpoint(
        tmp_path / "sub" / "m.pt", model, model_name="digits-cnn", dataset="digits", input_shape=(3, 32, 32),
        num_classes=10, accuracy=0.975, extra={"epochs": 3, "history": [0.5, 0.9]},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["model"] == "digits-cnn" and raw["input_shape"] == [3, 32, 32]
    fresh = build_model("digits-cnn")
    meta = load_weights(fresh, path)
    assert meta["accuracy"] == 0.975 and meta["epochs"] == 3 and meta["history"] == [0.5, 0.9]
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", model, model_name="d", dataset="d", input_shape=(3, 32, 32), num_classes=10, extra={"model": 1})
    with pytest.raises(TypeError, match="plain values"):
        save_checkpoint(tmp_path / "x.pt", model, model_name="d", dataset="d", input_shape=(3, 32, 32), num_classes=10, extra={"f": object()})


def test_plain_and_prefixed_state_dicts_load(tmp_path):
    source = build_model("cifar-resnet20")
    state = source.state_dict()
    torch.save({f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")} | {}, tmp_path / "dp.th")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 91.0}, tmp_path / "wrapped.th")
    torch.save(state, tmp_path / "plain.pt")
    for name, expected_meta in (("dp.th", {}), ("wrapped.th", {"best_prec1": 91.0}), ("plain.pt", {})):
        target = build_model("cifar-resnet20")
        assert load_weights(target, tmp_path / name) == expected_meta
        assert torch.equal(target.linear.weight, source.linear.weight)


def test_mismatched_checkpoints_name_the_keys(tmp_path):
    small = build_model("cifar-resnet20")
    path = save_checkpoint(tmp_path / "r20.pt", small, model_name="cifar-resnet20", dataset="cifar10", input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(CheckpointError) as err:
        load_weights(build_model("cifar-resnet32"), path)
    message = str(err.value)
    assert "missing keys: layer1.3.conv1.weight" in message and "more)" in message
    assert "pass --model cifar-resnet20" in message and "\n" not in message
    digits = save_checkpoint(tmp_path / "d.pt", build_model("digits-cnn"), model_name="digits-cnn", dataset="digits", input_shape=(3, 32, 32), num_classes=10)
    # only the classifier's output count differs: the data has other classes, which is what the message says
    with pytest.raises(CheckpointError, match=r"has 10 output classes, the data 5"):
        load_weights(build_model("digits-cnn", num_classes=5), digits)
    torch.save({"state_dict": small.state_dict(), "extra_layer.weight": torch.zeros(1)} | {"state_dict": {"bogus.weight": torch.zeros(1)}}, tmp_path / "bad.th")
    with pytest.raises(CheckpointError, match="unexpected keys: bogus.weight"):
        load_weights(build_model("cifar-resnet20"), tmp_path / "bad.th")


def test_unsafe_or_missing_checkpoints_are_refused(tmp_path):
    torch.save({"state_dict": {}, "opt": torch.optim.SGD}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match=r"pickled torch\.optim\.sgd\.SGD, which cannot be loaded safely"):
        load_weights(build_model("digits-cnn"), tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(build_model("digits-cnn"), tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(build_model("digits-cnn"), tmp_path / "junk.pt")


def test_pretrained_resnets_reproduce_the_sanity_figures(shared_file):
    data = load_dataset("npz", str(shared_file("cifar10-test-exact-first1017.npz")))
    r20 = build_model("cifar-resnet20")
    assert load_weights(r20, shared_file("pretrained", "resnet20-12fca82f.th"))["best_prec1"] == pytest.approx(91.78, abs=0.01)
    assert evaluate(r20, data.batches("test", 256)) == pytest.approx(932 / 1017)  # 91.6 %
    r56 = build_model("cifar-resnet56")
    load_weights(r56, shared_file("pretrained", "resnet56-4bfd9763.th"))
    assert evaluate(r56, data.batches("test", 256, limit=256)) == pytest.approx(240 / 256)
