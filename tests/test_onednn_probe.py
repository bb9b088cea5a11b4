"""benchmarks/onednn_probe.py: its shim gives torch's conv (fp32 and bf16, oneDNN's layout and NCHW-pinned) where
a system oneDNN is installed (skipped elsewhere), and its OpenVINO node names map onto the right conv shapes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import onednn_probe as probe  # noqa: E402
from uniprune.search.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def dnnl(tmp_path_factory):
    """The shim built against the system oneDNN (Debian's libdnnl-dev), which loads without extra library paths."""
    if probe.SYSTEM not in probe.find_installs(None):
        pytest.skip("no system oneDNN (apt-get install libdnnl-dev)")
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the probe's shim")
    return probe.Dnnl.build(probe.SYSTEM, tmp_path_factory.mktemp("onednn"))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_shims_conv_is_torchs(dnnl, bf16, plain, stride):
    g = torch.Generator().manual_seed(stride + 2 * plain + 4 * bf16)
    weight, x = torch.randn(16, 8, 3, 3, generator=g), torch.randn(2, 8, 10, 9, generator=g)
    conv = probe.DnnlConv(dnnl, bf16, x, weight, stride, plain=plain)
    y = conv.output()
    w_ref, x_ref = (weight.bfloat16().float(), x.bfloat16().float()) if bf16 else (weight, x)
    ref = F.conv2d(x_ref.double(), w_ref.double(), None, stride, 1).float()
    assert y.shape == ref.shape == (2, 16, (10 - 1) // stride + 1, (9 - 1) // stride + 1)
    # bf16: products of bf16-rounded operands are exact in float32; only the summation order differs
    assert probe.rel_err(y, ref) < 1e-5
    assert ("nchw -> nchw" in conv.impl) == plain
    for name, fn in conv.fns("x").items():
        assert fn() == 0, name  # every timed call succeeds


def test_the_shim_refuses_an_empty_batch_and_a_wrong_input_size(dnnl):
    with pytest.raises(RuntimeError, match="could not be created"):
        probe.DnnlConv(dnnl, False, torch.zeros(0, 4, 8, 8), torch.zeros(4, 4, 3, 3), 1)
    conv = probe.DnnlConv(dnnl, False, torch.zeros(1, 4, 8, 8), torch.zeros(4, 4, 3, 3), 1)
    x = torch.zeros(1, 4, 8, 7)
    assert dnnl.lib.pr_set_input(conv.handle, x.data_ptr(), x.numel()) != 0


def test_openvino_node_names_map_onto_conv_shapes():
    shapes = probe.conv_shapes(build_model("cifar-resnet20", num_classes=10).eval())
    assert len(shapes) == sum(probe.COUNTS["resnet20"]) == 19
    assert probe._node_conv(shapes, "/conv1/Conv/WithoutBiases") == (3, 16, 32, 1)
    assert probe._node_conv(shapes, "/layer1/layer1.0/conv1/Conv/WithoutBiases") == (16, 16, 32, 1)
    assert probe._node_conv(shapes, "/layer2/layer2.0/conv1/Conv/WithoutBiases") == (16, 32, 32, 2)
    assert probe._node_conv(shapes, "/layer3/layer3.2/conv2/Conv/WithoutBiases") == (64, 64, 8, 1)
    assert probe._node_conv(shapes, "/layer1/layer1.0/Relu") is None
    counted = {s: list(shapes.values()).count(s) for s in probe.SHAPES}
    assert [counted[s] for s in probe.SHAPES] == probe.COUNTS["resnet20"]
