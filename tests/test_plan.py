"""The lean execution path (compressors/native/plan.py + csrc/uniprune_plan.c): one native call per forward pass.

Every test compares the plan's output with the masked dense model run by torch (relative error <= 1e-4 of
the output's scale); none asserts a timing.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.core.projection import structured_weight
from uniprune.compressors.latency.table import random_structure
from uniprune.compressors.native import plan
from uniprune.search.models import build_model

TOL = 1e-4


def _randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so folding errors show (fresh BatchNorms are identities)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return model.eval()


def _structures(model: nn.Module, prune: float, unify: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {s.name: random_structure(s.grid, prune, unify, g) for s in compressible_layers(model)}


def _masked_dense(model: nn.Module, structures: dict) -> nn.Module:
    """The reference: the model with every structure imposed on its weights, run by torch in eval mode."""
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, st in structures.items():
            m = out.get_submodule(name)
            m.weight.copy_(structured_weight(m.weight.detach(), st))
    return out


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


class VGGStack(nn.Module):
    """A plain VGG-style stack: conv-BN-ReLU, both pool kinds, functional ops, a two-layer head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.AvgPool2d(3, stride=2, padding=1),
            nn.Conv2d(32, 24, 3, padding=2, dilation=2), nn.ReLU6(),
            nn.Conv2d(24, 40, 1, stride=2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(40 * 4 * 4, 48), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(48, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.relu(x)
        return self.head(x)


class Functional(nn.Module):
    """Functional pools, view(x.size(0), -1), an unfolded BatchNorm (after an add), spatial zero padding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.a(x) + self.b(x))
        y = F.max_pool2d(F.pad(y, (1, 1, 1, 1)), 2)
        y = torch.clamp(self.c(y), min=-0.5, max=0.5)
        y = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
        return self.fc(y.view(y.size(0), -1))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("prune,unify", [(0.0, 0.0), (0.75, 0.0), (0.5, 0.25)])
@pytest.mark.parametrize("name,shape", [("digits-cnn", (1, 8, 8)), ("digits-cnn", (3, 32, 32)),
                                        ("cifar-resnet20", (3, 32, 32))])
def test_zoo_models_match_masked_dense(name, shape, prune, unify, batch, single_thread):
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model(name, input_shape=shape), 1)
    structures = _structures(model, prune, unify, 2) if prune or unify else {}
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(3))
    lean = plan.compile_lean(model, structures, example_input=x, threads=1)
    with torch.no_grad():
        ref = _masked_dense(model, structures)(x)
    out = lean(x)
    assert out.shape == ref.shape
    assert _rel_err(out, ref) <= TOL
    # one native call per pass: the whole network is in the plan, activations fused into the op before
    assert all(op.kind != plan.OP_ACT for op in lean.ops)


@pytest.mark.parametrize("impl", plan.CONV_IMPLS)
def test_every_conv_implementation_matches(impl, single_thread):
    model = _randomise_batchnorm(build_model("cifar-resnet20", input_shape=(3, 16, 16)), 4)
    structures = _structures(model, 0.6, 0.2, 5)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    lean = plan.compile_lean(model, structures, example_input=x[:1], threads=1, choose=impl)
    kinds = {op.describe().split("+")[0] for op in lean.ops}
    assert {"direct": "conv"}.get(impl, impl) in kinds
    with torch.no_grad():
        ref = _masked_dense(model, structures)(x)
    assert _rel_err(lean(x), ref) <= TOL


def test_resnet_residuals_and_shortcuts_are_fused(single_thread):
    model = build_model("cifar-resnet20").eval()
    lean = plan.lower(model, torch.randn(1, 3, 32, 32), threads=1, choose="direct")
    names = [op.describe() for op in lean.ops]
    # 19 convs, 9 residual adds (each fused with its ReLU into the conv before it), 2 option-A shortcuts
    assert names.count("conv+add+relu") == 9
    assert names.count("conv+relu") == 10
    assert names.count("slice_pad") == 2
    assert len(names) == 19 + 2 + 2  # convs, shortcuts, pool and linear
    # activations share buffers: far fewer than one per value
    assert lean.num_buffers <= 6


@pytest.mark.parametrize("batch", [1, 3])
def test_vgg_stack(batch, single_thread):
    torch.manual_seed(7)
    model = _randomise_batchnorm(VGGStack(), 8)
    structures = _structures(model, 0.5, 0.0, 9)
    x = torch.randn(batch, 3, 32, 32)
    lean = plan.compile_lean(model, structures, example_input=x, threads=1)
    with torch.no_grad():
        ref = _masked_dense(model, structures)(x)
    assert _rel_err(lean(x), ref) <= TOL
    assert {"pool"} <= {op.describe().split("+")[0] for op in lean.ops}


def test_functional_ops_and_unfolded_batchnorm(single_thread):
    torch.manual_seed(10)
    model = _randomise_batchnorm(Functional(), 11)
    x = torch.randn(3, 3, 16, 16)
    lean = plan.lower(model, x[:2], threads=1)
    with torch.no_grad():
        ref = model(x)
    assert _rel_err(lean(x), ref) <= TOL
    assert "affine" in {op.describe().split("+")[0] for op in lean.ops}


def test_mobilenet_v2_grouped_convs(single_thread):
    torch.manual_seed(12)
    model = _randomise_batchnorm(build_model("tv:mobilenet_v2", input_shape=(3, 32, 32)), 13)
    structures = _structures(model, 0.5, 0.0, 14)
    x = torch.randn(2, 3, 32, 32)
    lean = plan.compile_lean(model, structures, example_input=x[:1], threads=1)
    with torch.no_grad():
        ref = _masked_dense(model, structures)(x)
    assert _rel_err(lean(x), ref) <= TOL
    kinds = [op.describe() for op in lean.ops]
    assert sum(k.startswith("grouped_conv") for k in kinds) == 17  # the depthwise convs
    assert any("clamp(0,6)" in k for k in kinds) and any("+add" in k for k in kinds)


def test_batch_size_changes_after_lowering(single_thread):
    model = _randomise_batchnorm(build_model("digits-cnn", input_shape=(1, 8, 8)), 15)
    lean = plan.lower(model, torch.randn(1, 1, 8, 8), threads=1)
    for n in (1, 5, 2, 0):
        x = torch.randn(n, 1, 8, 8)
        out = lean(x)
        assert out.shape == (n, 10)
        if n:
            with torch.no_grad():
                assert _rel_err(out, model(x)) <= TOL
    # a non-contiguous input is read as its values, not its storage
    x = torch.randn(8, 8, 1, 4).permute(3, 2, 0, 1)
    with torch.no_grad():
        assert _rel_err(lean(x), model(x)) <= TOL


def test_profile_times_every_op(single_thread):
    lean = plan.lower(build_model("digits-cnn", input_shape=(1, 8, 8)).eval(), torch.randn(2, 1, 8, 8), threads=1)
    rows = lean.profile(torch.randn(2, 1, 8, 8))
    assert [r[0] for r in rows] == [op.node for op in lean.ops]
    assert all(ms >= 0 for *_, ms in rows)


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.conv(x))


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class InPlaceShared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.relu(y)
        return z + y  # torch adds the ReLU'd y to itself; a functional plan would not


@pytest.mark.parametrize("model,needle", [(Unsupported(), "'exp'"), (Branchy(), "torch.fx cannot trace"),
                                          (InPlaceShared(), "in place")])
def test_unsupported_graph_is_one_line_model_error(model, needle):
    with pytest.raises(ModelError) as info:
        plan.lower(model.eval(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "\n" not in message and needle in message


def test_bad_calls_are_refused():
    lean = plan.lower(build_model("digits-cnn", input_shape=(1, 8, 8)).eval(), torch.randn(1, 1, 8, 8))
    with pytest.raises(ModelError, match=r"\[N, 1, 8, 8\]"):
        lean(torch.randn(1, 1, 9, 8))
    with pytest.raises(ModelError, match="float32"):
        lean(torch.randn(1, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ConfigError):
        plan.lower(nn.Identity(), torch.randn(1, 3), choose="fastest")


def test_identity_model_copies_its_input():
    x = torch.randn(2, 3, 4, 4)
    out = plan.lower(nn.Identity(), x)(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
