"""The bf16 dot-product (VDPBF16PS) block-sparse conv: every block shape the search uses, strides, windows and
tails against torch on bf16-rounded weights and inputs; where the build or CPU lacks avx512_bf16 the same
calls run on the float32 kernels (UNIPRUNE_ISA=avx2 or generic)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.core.projection import apply_structures
from uniprune.compressors.latency.table import random_structure
from uniprune.compressors.native import kernels, plan, uniprune_lean
from uniprune.compressors.native.kernels import SparseConv, panel_height
from uniprune.compressors.native.library import CSRC, only_bf16_units
from uniprune.search.models import build_model


def _case(seed: int, co: int, ci: int, k: int, bo: int, bi: int, density: float, shape: tuple[int, ...]):
    """Weight [co, ci, k, k], a keep mask of whole bo x bi blocks (each kept with probability density), bias, input."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand((co + bo - 1) // bo, (ci + bi - 1) // bi, generator=g) < density
    keep = blocks.repeat_interleave(bo, 0)[:co].repeat_interleave(bi, 1)[:, :ci].float()
    return torch.randn(co, ci, k, k, generator=g), keep, torch.randn(co, generator=g), torch.randn(*shape, generator=g)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@settings(max_examples=60, deadline=None)
@given(
    block=st.sampled_from([(8, 4), (4, 1), (2, 1), (1, 1), (16, 1)]), co=st.integers(1, 40), ci=st.integers(1, 37),
    k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2),
    n=st.sampled_from([1, 2, 5]), h=st.sampled_from([3, 8, 16, 17]), w=st.sampled_from([1, 4, 8, 16, 33]),
    density=st.sampled_from([0.0, 0.25, 0.5, 1.0]), threads=st.sampled_from([1, 2]), seed=st.integers(0, 10_000),
)
# both pairings: channel pairs (dense 8x4, a 1x1 window, an odd channel count) and tap pairs (sparse 1x1 blocks)
@example(block=(8, 4), co=24, ci=19, k=3, stride=1, pad=1, dil=1, n=2, h=16, w=17, density=1.0, threads=1, seed=1)
@example(block=(4, 1), co=16, ci=13, k=1, stride=2, pad=0, dil=1, n=1, h=8, w=8, density=0.5, threads=2, seed=2)
@example(block=(1, 1), co=9, ci=16, k=3, stride=2, pad=1, dil=1, n=5, h=16, w=16, density=0.25, threads=2, seed=3)
def test_dot_conv_matches_torch_on_bf16_values(block, co, ci, k, stride, pad, dil, n, h, w, density, threads, seed):
    """On the dot product the output is the float32 sum of exact products of bf16 weights and bf16 inputs
    (relative error 1e-5 of the output's scale: summation order only); on the float32 kernels (no avx512_bf16
    in this build) the bf16 weights times the float32 inputs."""
    if min(h + 2 * pad, w + 2 * pad) < dil * (k - 1) + 1:
        return
    bo, bi = block
    weight, keep, bias, x = _case(seed, co, ci, k, bo, bi, density, (n, ci, h, w))
    conv = SparseConv(weight, keep, bias, (stride, stride), (pad, pad), (dil, dil), rows=panel_height(bo),
                      precision="bf16", engine="dpbf16")
    assert conv.engine == ("bf16_dot" if "bf16_dot" in kernels.bf16_units() else "fp32")
    wb = (weight * keep[:, :, None, None]).bfloat16().double()
    xb = x.bfloat16().double() if conv.engine == "bf16_dot" else x.double()
    ref = F.conv2d(xb, wb, bias.double(), stride, pad, dil).float()
    out = conv(x, threads)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-5
    assert _rel(conv(x, threads), out) == 0  # a second call (geometry cached) gives the same answer


def _resnet_case(seed: int):
    """A CIFAR ResNet-20 with non-trivial BatchNorm statistics, half its compressible weights pruned in random
    blocks, and a batch of inputs; the reference is the masked dense model in torch."""
    g = torch.Generator().manual_seed(seed)
    model = build_model("cifar-resnet20").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    structures = {s.name: random_structure(s.grid, 0.5, 0.0, g) for s in compressible_layers(model)}
    reference = copy.deepcopy(model)
    apply_structures(reference, structures)
    return model, structures, reference, torch.randn(3, 3, 32, 32, generator=g)


def _with_engine(spec: plan.LeanSpec, engine: str) -> plan.LeanSpec:
    """``spec`` with every bf16 conv record's engine set to ``engine``."""
    header = copy.deepcopy(spec.header)
    for op in header["ops"]:
        if (op.get("kernel") or {}).get("type") == "conv":
            op["kernel"]["engine"] = engine
    return plan.LeanSpec(header, spec.arrays)


def test_plan_on_the_dot_product_matches_the_model(tmp_path):
    """A bf16 plan built as on a CPU with avx512_bf16 and no AMX (AMX hidden) times each conv on the dot product
    against the float32 kernels and keeps either; forced onto the dot product everywhere, the plan and the
    numpy-only artifact loader both stay within the bf16 tolerance of the float32 model, convs on the dot
    product exactly where the build and CPU have it."""
    model, structures, reference, x = _resnet_case(3)
    with only_bf16_units(("bf16_dot",)):
        assert "amx_bf16" not in kernels.bf16_units()
        spec = plan.compile_lean_spec(model, structures, example_input=x[:2], threads=1, precision="bf16")
        engines = [op["kernel"].get("engine", "auto") for op in spec.header["ops"]
                   if (op.get("kernel") or {}).get("type") == "conv"]
        assert engines and set(engines) <= {"auto", "fp32"}
        native = uniprune_lean.NativePlan(kernels.load(), spec.header, spec.arrays)
        has_dot = "bf16_dot" in kernels.bf16_units()
        assert (native.amx_convs, native.dot_convs) == (0, engines.count("auto") if has_dot else 0)
        native.close()
        with torch.no_grad():
            ref = reference(x)
            assert _rel(plan.LeanModel(spec, threads=1)(x), ref) <= plan.output_tolerance("bf16")
    forced = _with_engine(spec, "dpbf16")
    native = uniprune_lean.NativePlan(kernels.load(), forced.header, forced.arrays)
    assert native.dot_convs == (len(engines) if has_dot else 0) and native.amx_convs == 0
    native.close()
    forced.save(tmp_path)
    loader = uniprune_lean.Model(tmp_path, threads=1, source_dir=CSRC)
    got = torch.from_numpy(loader.run(x.numpy()))
    assert 0 < _rel(got, ref) <= plan.output_tolerance("bf16")
    with torch.no_grad():
        assert _rel(plan.LeanModel(forced, threads=1)(x), got) <= 1e-6  # the same kernels, library or loader


def test_unknown_engine_is_refused_in_one_line():
    """A plan record naming an engine the loader does not know is refused before anything is built."""
    model, structures, _, x = _resnet_case(4)
    spec = _with_engine(plan.compile_lean_spec(model, structures, example_input=x[:1], threads=1, precision="bf16"),
                        "tiles")
    with pytest.raises(ModelError, match="kernel.engine must be one of auto, fp32, dpbf16"):
        plan.LeanModel(spec)
    with pytest.raises(ConfigError, match="bf16 units must be among"):
        with only_bf16_units(("avx512",)):
            pass


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_bf16_linear_keeps_bf16_weights_and_matches_their_products(batch):
    """A bf16 plan's linear reads its weights in bf16 (widened as loaded, on every CPU) against float32 inputs:
    the products of the bf16-rounded weights, summed in float32, at batch 1 (one sample at a time) and in
    tiles of samples; a pruned block stays pruned."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(300, 37)).eval()
    keep = torch.rand(37, 300) > 0.5
    with torch.no_grad():
        model[1].weight.mul_(keep)
    x = torch.randn(batch, 3, 10, 10)
    lean = plan.lower(model, x, threads=2, precision="bf16")
    assert lean.precision == "bf16"
    with torch.no_grad():
        ref, exact = F.linear(x.flatten(1), model[1].weight.bfloat16().float(), model[1].bias), model(x)
    got = lean(x)
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert float((got - exact).abs().max() / ref.abs().max()) > 1e-6  # the weights were rounded to bf16
