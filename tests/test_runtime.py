"""compile_model against the masked dense model: every implementation, BN folding, groups, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.core.projection import structured_weight
from uniprune.compressors.core.structure import BlockShape, block_grid
from uniprune.compressors.latency.table import random_structure
from uniprune.compressors.native.runtime import (
    CompiledConv2d,
    CompiledLinear,
    compile_model,
    fold_batchnorm,
    implementations,
)


class Net(nn.Module):
    def __init__(self, c: int, k: int, stride: int, pad: int, dil: int, groups: int, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, k, stride=stride, padding=pad, dilation=dil, bias=True)
        self.conv3 = nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.bn3(self.conv3(x)) + x)
        return self.fc(x.mean((2, 3)))


def _net(seed: int, **kw) -> Net:
    torch.manual_seed(seed)
    net = Net(**kw).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding is really tested
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return net


def _structures(net: nn.Module, prune: float, unify: float, seed: int, shapes=None):
    shapes = shapes or {"conv": BlockShape(8, 4), "linear": BlockShape(8, 8)}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            kind = "linear" if isinstance(m, nn.Linear) else "conv"
            grid = block_grid(tuple(m.weight.shape), shapes[kind], getattr(m, "groups", 1))
            out[name] = random_structure(grid, prune, unify, g)
    return out


def _masked(net: nn.Module, structures) -> nn.Module:
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for name, s in structures.items():
            m = ref.get_submodule(name)
            m.weight.copy_(structured_weight(m.weight, s))
    return ref


def _rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@settings(max_examples=12, deadline=None)
@given(c=st.sampled_from([8, 12, 19]), k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1),
       dil=st.integers(1, 2), groups=st.sampled_from([1, 4]), prune=st.sampled_from([0.0, 0.5, 0.9]),
       unify=st.sampled_from([0.0, 0.1, 0.5]), batch=st.sampled_from([1, 3, 6]), hw=st.sampled_from([7, 10]),
       choose=st.sampled_from(["sparse", "measure"]), seed=st.integers(0, 1000))
def test_compiled_matches_masked_dense(c, k, stride, pad, dil, groups, prune, unify, batch, hw, choose, seed):
    if c % groups:
        groups = 1
    net = _net(seed, c=c, k=k, stride=stride, pad=pad, dil=dil, groups=groups)
    structures = _structures(net, prune, min(unify, 1 - prune), seed)
    compiled = compile_model(net, structures, threads=2, choose=choose)
    x = torch.randn(batch, 3, hw, hw, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = _masked(net, structures)(x)
        out = compiled(x)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-4
    impl = implementations(compiled)
    assert set(impl) == set(structures)
    if choose == "sparse":
        assert impl["conv1"] == "sparse"
        assert impl["conv3"] == ("sparse" if groups == 1 else "dense")  # grouped convs run on torch dense


def test_every_linear_implementation_agrees():
    net = _net(1, c=16, k=3, stride=1, pad=1, dil=1, groups=1, classes=19)
    structures = _structures(net, 0.25, 0.5, 2)
    with torch.no_grad():  # the compiled layers take a weight that already obeys its structure
        net.fc.weight.copy_(structured_weight(net.fc.weight, structures["fc"]))
    lin = CompiledLinear(net.fc, structures["fc"], threads=2)
    assert lin.gemv_compact is not None and lin.gemv_compact.n_unified > 0
    effective = structured_weight(net.fc.weight.detach(), structures["fc"])
    for batch in (1, 4, 9):
        x = torch.randn(batch, 16)
        ref = x @ effective.t() + net.fc.bias.detach()
        cands = lin._candidates(x)
        assert ("gemv_compact" in cands) == (batch <= 4)
        for name, fn in cands.items():
            assert _rel(fn(x), ref) <= 1e-4, name


def test_shrunk_conv_when_output_channels_are_gone():
    conv = nn.Conv2d(16, 24, 3, padding=1).eval()
    grid = block_grid(tuple(conv.weight.shape), BlockShape(8, 4))
    s = random_structure(grid, 0.0, 0.0, torch.Generator().manual_seed(0))
    s.states[1] = 2  # output channels 8..15 are gone
    with torch.no_grad():
        conv.weight.copy_(structured_weight(conv.weight, s))
    layer = CompiledConv2d(conv, s, threads=1)
    assert layer.shrink is not None and layer.shrink[0].numel() == 16
    x = torch.randn(2, 16, 6, 6)
    w = structured_weight(conv.weight.detach(), s)
    ref = torch.nn.functional.conv2d(x, w, conv.bias, padding=1)
    for name, fn in layer._candidates(x).items():
        assert _rel(fn(x), ref) <= 1e-4, name


def test_fold_batchnorm_keeps_outputs_and_names():
    net = _net(4, c=8, k=3, stride=1, pad=1, dil=1, groups=2)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = net(x)
        folded = fold_batchnorm(copy.deepcopy(net))
        out = folded(x)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn3, nn.Identity)
    assert folded.conv1.bias is not None
    assert _rel(out, ref) <= 1e-5


def test_compile_errors_are_project_errors():
    net = _net(0, c=8, k=3, stride=1, pad=1, dil=1, groups=1)
    structures = _structures(net, 0.5, 0.0, 0)
    with pytest.raises(ModelError, match="no layer 'nope'"):
        compile_model(net, {"nope": structures["conv1"]})
    with pytest.raises(ModelError, match="weight shape"):
        compile_model(net, {"conv2": structures["conv1"]})
    with pytest.raises(ConfigError, match="threads"):
        compile_model(net, structures, threads=0)
    compiled = compile_model(net, structures)
    with pytest.raises(ModelError, match="float32 on CPU"):
        compiled(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert not compiled.training
    assert net.conv1.weight.requires_grad  # the original model is untouched


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path needs a CUDA GPU; none here")
def test_cuda_path_matches_masked_dense():
    from uniprune.compressors.native.cuda_path import compile_model_cuda

    net = _net(5, c=16, k=3, stride=2, pad=1, dil=1, groups=1, classes=8)
    structures = _structures(net, 0.5, 0.25, 5)
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        ref = _masked(net, structures)(x)
        out = compile_model_cuda(net, structures)(x.cuda()).cpu()
    assert _rel(out, ref) <= 1e-4


def test_cuda_path_says_when_unavailable(monkeypatch):
    from uniprune.compressors.core.errors import NotAvailableError
    from uniprune.compressors.native import cuda_path

    monkeypatch.setattr(cuda_path.torch.cuda, "is_available", lambda: False)
    with pytest.raises(NotAvailableError, match="CUDA GPU"):
        cuda_path.compile_model_cuda(_net(0, c=8, k=3, stride=1, pad=1, dil=1, groups=1), {})


def test_compiled_model_can_be_deep_copied():
    net = _net(2, c=8, k=3, stride=1, pad=1, dil=1, groups=1)
    structures = _structures(net, 0.5, 0.25, 2)
    compiled = compile_model(net, structures, threads=1, choose="sparse")
    twin = copy.deepcopy(compiled)
    del compiled
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert _rel(twin(x), _masked(net, structures)(x)) <= 1e-4


@settings(max_examples=16, deadline=None)
@given(bo=st.sampled_from([1, 2, 3, 4, 8]), bi=st.sampled_from([1, 4]), stride=st.integers(1, 2),
       pad=st.integers(0, 1), dil=st.integers(1, 2), batch=st.sampled_from([1, 5]), prune=st.sampled_from([0.0, 0.75]),
       isa=st.sampled_from(["avx2", "generic"]), choose=st.sampled_from(["sparse", "measure"]),
       seed=st.integers(0, 1000))
def test_fine_blocks_every_panel_height_and_forced_isa(bo, bi, stride, pad, dil, batch, prune, isa, choose, seed):
    from uniprune.compressors.native import kernels

    if isa == "avx2" and not {"avx2", "fma"} <= kernels.cpu_flags():
        isa = "generic"
    net = _net(seed, c=12, k=3, stride=stride, pad=pad, dil=dil, groups=1)
    structures = _structures(net, prune, 0.1, seed, shapes={"conv": BlockShape(bo, bi), "linear": BlockShape(bo, bi)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIPRUNE_ISA", isa)
        compiled = compile_model(net, structures, threads=2, choose=choose)
    conv2 = compiled.conv2
    assert conv2.sparse.rows == kernels.panel_height(bo)
    assert (conv2.sparse8 is None) == (kernels.panel_height(bo) == 8)
    x = torch.randn(batch, 3, 9, 9, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = _masked(net, structures)(x)
        out = compiled(x)
        cands = conv2._candidates(torch.randn(batch, 12, 9, 9))
        every = {name: fn(torch.ones(batch, 12, 9, 9)) for name, fn in cands.items()}
    assert _rel(out, ref) <= 1e-4
    for name, y in every.items():  # every candidate of a fine-block conv, not only the one picked
        assert _rel(y, every["dense"]) <= 1e-4, name
