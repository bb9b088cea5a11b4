"""Every torchvision classifier of issue 22 on the lean plan, and the plan ops they brought (smooth activations,
squeeze-excitation, concat and chunks, channel shuffle, channels-last LayerNorm and Linear, layer scale,
ceil-mode pools, grouped convs): each lowered model must match torch within 1e-4 relative error, entirely on
the native plan (``lower`` raises rather than fall back). None asserts a timing.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from uniprune.compressors.core.errors import ModelError
from uniprune.compressors.native import kernels, plan
from uniprune.compressors.native import uniprune_lean as lean_rt

TOL = 1e-4
pytestmark = pytest.mark.usefixtures("single_thread")


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


class Everything(nn.Module):
    """One of each op the torchvision classifiers need, in the arrangements they use them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.se_fc1, self.se_fc2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)  # 13x13 -> 6x6 only with ceil mode
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)  # RegNet's group width 8
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(32, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(32, 48), nn.Linear(48, 32)
        self.layer_scale = nn.Parameter(torch.rand(32, 1, 1) + 0.5)
        self.head_norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        gate = F.hardsigmoid(self.se_fc2(F.silu(self.se_fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = gate * x  # squeeze-excitation
        x = self.pool(x)
        x = torch.sigmoid(self.grouped(x)) * x.mean((2, 3), keepdim=True)  # gate on the right
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, F.gelu(self.dw(b))], 1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)  # channel shuffle
        x = torch.cat([x, x * 0.5], dim=1)  # 32 channels
        y = x.permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)), approximate="tanh"))
        x = x + self.layer_scale * y.permute(0, 3, 1, 2)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.head(self.head_norm(x))


def _everything() -> nn.Module:
    torch.manual_seed(0)
    return Everything().eval()


def test_every_new_op_matches_torch_at_any_batch():
    model = _everything()
    lean = plan.lower(model, torch.randn(2, 3, 13, 13), threads=1, choose="direct")
    kinds = {op.kind for op in lean.ops}
    assert {plan.OP_CHMUL, plan.OP_CHCOPY, plan.OP_SHUFFLE, plan.OP_CHNORM, plan.OP_AFFINE} <= kinds
    acts = {op.act for op in lean.ops}
    assert {plan.ACT_HARDSWISH, plan.ACT_HARDSIGMOID, plan.ACT_SILU, plan.ACT_SIGMOID, plan.ACT_GELU,
            plan.ACT_GELU_TANH} <= acts
    for batch in (1, 3):
        x = torch.randn(batch, 3, 13, 13)
        with torch.no_grad():
            ref = model(x)
        assert _rel_err(lean(x), ref) <= TOL


def test_threads_give_the_same_output():
    """Large enough maps that the elementwise ops, pools and copies split over the pool's threads."""
    model = _everything()
    x = torch.randn(2, 3, 96, 96)
    lean = plan.lower(model, x, threads=1, choose="direct")
    one = lean(x)
    lean.threads = 2
    two = lean(x)
    with torch.no_grad():
        ref = model(x)
    assert _rel_err(two, ref) <= TOL
    assert torch.allclose(one, two, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x", [torch.linspace(-30, 30, 4001), torch.tensor([-200.0, -87.5, 0.0, 88.5, 200.0])])
def test_smooth_activations_match_torch_over_their_range(x):
    fns = [nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(), nn.Sigmoid(), nn.GELU(), nn.GELU(approximate="tanh")]
    for fn in fns:
        lean = plan.lower(nn.Sequential(fn), x.reshape(1, -1), threads=1)
        got = lean(x.reshape(1, -1)).reshape(-1)
        assert torch.isfinite(got).all()
        assert float((got - fn(x)).abs().max()) <= 1e-5 * max(1.0, float(x.abs().max())), type(fn).__name__


def test_a_channels_last_view_is_refused_where_it_would_be_read_as_nchw():
    class Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.permute(0, 2, 3, 1))

    with pytest.raises(ModelError, match="channels-last") as info:
        plan.lower(Wrong().eval(), torch.randn(1, 4, 4, 4))
    assert "\n" not in str(info.value)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


@pytest.mark.parametrize("field,value", [(10, 5), (11, 1), (3, 1), (12, 0)])  # ooff, ioff, act, cnt
def test_out_of_range_channel_copies_are_refused(field, value):
    """A channel_copy reaching past either tensor is refused before it runs (the verifier and the executor)."""
    spec = plan.lower_spec(Concat().eval(), torch.randn(1, 3, 3, 3), threads=1)
    header = copy.deepcopy(spec.header)
    op = next(op for op in header["ops"] if op["kind"] == plan.OP_CHCOPY)
    op["ints"][field] = value
    with pytest.raises(lean_rt.LeanError):
        lean_rt.NativePlan(kernels.load(), header, spec.arrays)
    assert lean_rt.NativePlan(kernels.load(), spec.header, spec.arrays).n_ops == len(spec.header["ops"])


# resnet18 and mobilenet_v2 ran on the plan before issue 22; the others need its ops. The big ones are slow.
_FAST = ["mobilenet_v3_small", "squeezenet1_1"]
_SLOW = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
         "shufflenet_v2_x1_0", "densenet121", "convnext_tiny"]


@pytest.mark.parametrize("name", _FAST + [pytest.param(n, marks=pytest.mark.slow) for n in _SLOW])
def test_torchvision_classifier_lowers_entirely_and_matches_torch(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    lean = plan.lower(model, x, threads=1, choose="direct")
    with torch.no_grad():
        ref = model(x)
    assert _rel_err(lean(x), ref) <= TOL


class TwoBlockers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(self.conv(x))
        return torch.tanh(y.mean((2, 3)))


def test_every_blocker_is_listed_in_one_line():
    with pytest.raises(ModelError) as info:
        plan.lower(TwoBlockers().eval(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "\n" not in message and "'exp'" in message and "1 more node" in message and "'tanh'" in message
    assert [b.split()[1] for b in info.value.blockers] == ["'exp'", "'tanh'"]


def test_timing_runs_every_blocker_on_onnx_runtime_inside_the_plan():
    from uniprune.compressors.latency.table import compile_for_timing

    fallback: dict = {}
    x = torch.randn(1, 3, 8, 8)
    model = TwoBlockers().eval()
    lean, runtime, notes = compile_for_timing(model, {}, x, 1, "lean", fallback=fallback)
    assert runtime == "lean" and notes == [] and fallback == {}
    assert [(r, n) for r, n in lean.segments if r == "onnxruntime"] == [("onnxruntime", ["exp"]), ("onnxruntime", ["tanh"])]
    with torch.no_grad():
        assert _rel_err(lean(x), model(x)) <= TOL


@pytest.mark.parametrize("name", ["mobilenet_v3_small", pytest.param("regnet_y_400mf", marks=pytest.mark.slow),
                                  pytest.param("convnext_tiny", marks=pytest.mark.slow)])
def test_pruned_classifier_matches_the_masked_dense_model(name):
    """75 % of the blocks of every compressible layer but the stem and the classifier pruned, through
    compile_model's layers (grouped convs, channels-last Linears and squeeze-excitation convs among them)."""
    from uniprune.compressors.core.blocks import compressible_layers
    from uniprune.compressors.core.projection import apply_structures
    from uniprune.compressors.latency.table import random_structure

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    g = torch.Generator().manual_seed(1)
    structures = {s.name: random_structure(s.grid, 0.75, 0.0, g) for s in compressible_layers(model)[1:-1]}
    ref = copy.deepcopy(model)
    apply_structures(ref, structures)
    x = torch.randn(2, 3, 64, 64)
    lean = plan.compile_lean(model, structures, example_input=x, threads=1, choose="direct")
    with torch.no_grad():
        expected = ref(x)
    assert _rel_err(lean(x), expected) <= TOL
