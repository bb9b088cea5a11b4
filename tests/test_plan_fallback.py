"""A node the plan cannot lower runs on ONNX Runtime inside the plan (compressors/native/segments.py,
uniprune_lean/ort_segment.py): in process, through an exported artifact's own loader without torch, and in
bench's report; a damaged ONNX segment is one line; a node ONNX cannot export either sends the model to the
Python path with the reason."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import CheckpointError, ModelError
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import apply_structures
from uniprune.compressors.formats.artifact import open_artifact, write_artifact
from uniprune.compressors.latency.table import compile_for_timing, random_structure
from uniprune.compressors.native import kernels, plan
from uniprune.compressors.native import uniprune_lean as lean_rt
from uniprune.search.cli import main

TOL = 1e-4
ORT_NODES = ["softplus", "tanh", "mul"]  # Mish as its three functions: the plan has none of them


class Mish(nn.Module):
    """A user's own activation: x * tanh(softplus(x)), none of whose functions the plan lowers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class MishNet(nn.Module):
    """A small CNN with the custom op after its stem (``inner=False``) or inside its residual block."""

    def __init__(self, inner: bool = False, act: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.act = act if act is not None else Mish()
        self.conv2, self.conv3 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = F.relu(x) if self.inner else self.act(x)
        y = self.conv2(x)
        y = self.act(y) if self.inner else F.relu(y)
        x = F.relu(self.conv3(y) + x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _pruned(inner: bool = False) -> tuple[nn.Module, dict, nn.Module]:
    """The model (BatchNorm statistics drawn), 60 % of each layer's blocks pruned, and the masked dense reference."""
    torch.manual_seed(0)
    model = MishNet(inner).eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    structures = {s.name: random_structure(s.grid, 0.6, 0.0, g) for s in compressible_layers(model)}
    ref = copy.deepcopy(model)
    apply_structures(ref, structures)
    return model, structures, ref


def _rel(got: torch.Tensor | np.ndarray, ref: torch.Tensor) -> float:
    got = torch.as_tensor(got)
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def segmented() -> tuple[plan.LeanSpec, nn.Module]:
    model, structures, ref = _pruned()
    spec = plan.compile_lean_spec(model, structures, example_input=torch.randn(2, 3, 12, 12), threads=1,
                                  choose="direct", onnx_fallback=True)
    return spec, ref


def test_the_custom_op_runs_on_onnx_runtime_between_native_segments(segmented):
    spec, ref = segmented
    lean = plan.LeanModel(spec, threads=1)
    assert [r for r, _ in lean.segments] == ["native", "onnxruntime", "native"]
    assert lean.segments[1][1] == ORT_NODES and "conv1" in lean.segments[0][1] and "fc" in lean.segments[2][1]
    x = torch.randn(5, 3, 12, 12)  # another batch than the plan was lowered at
    with torch.no_grad():
        assert _rel(lean(x), ref(x)) <= TOL
    # the native segments' ops are the plan's ops; every conv kept its sparse kernel
    assert sum(op.describe().startswith("conv") for op in lean.ops) == 3
    with pytest.raises(ModelError, match="cannot lower node 'softplus'"):  # without the fallback: as before
        plan.lower(MishNet().eval(), torch.randn(1, 3, 12, 12))


def test_a_node_inside_a_residual_block_takes_the_block_to_onnx_runtime():
    model, structures, ref = _pruned(inner=True)
    lean = plan.compile_lean(model, structures, example_input=torch.randn(1, 3, 12, 12), threads=1, choose="direct",
                             onnx_fallback=True)
    runs_on = dict((r, n) for r, n in lean.segments)
    # the shortcut is live beside the branch: the ONNX segment spans conv2 .. the add (its convs dense, masked)
    assert [r for r, _ in lean.segments] == ["native", "onnxruntime", "native"]
    assert runs_on["onnxruntime"][0] == "conv2" and set(ORT_NODES) <= set(runs_on["onnxruntime"])
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert _rel(lean(x), ref(x)) <= TOL


def test_onnx_segments_at_both_ends_take_the_input_and_write_the_output():
    torch.manual_seed(0)
    model = nn.Sequential(Mish(), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), Mish()).eval()
    lean = plan.lower(model, torch.randn(1, 3, 6, 6), threads=1, choose="direct", onnx_fallback=True)
    assert [r for r, _ in lean.segments] == ["onnxruntime", "native", "onnxruntime"]
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert _rel(lean(x), model(x)) <= TOL
        assert lean(x[:0]).shape == (0, 4, 6, 6)


def test_the_artifact_runs_its_onnx_segment_through_its_own_loader_without_torch(segmented, tmp_path):
    spec, ref = segmented
    write_artifact(tmp_path / "art", spec, source={"model_name": "mishnet"})
    assert "softplus, tanh, mul" in (tmp_path / "art" / "README.md").read_text()
    x = torch.randn(3, 3, 12, 12)
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # the loader must not need it
        sys.path.insert(0, {str(tmp_path / 'art')!r})
        import numpy as np, uniprune_lean
        model = uniprune_lean.Model({str(tmp_path / 'art')!r}, threads=1)
        np.save({str(tmp_path / 'y.npy')!r}, model.run(np.load({str(tmp_path / 'x.npy')!r})))
        print([r for r, _ in model.segments])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['native', 'onnxruntime', 'native']"
    with torch.no_grad():
        assert _rel(np.load(tmp_path / "y.npy"), ref(x)) <= TOL
        art = open_artifact(tmp_path / "art", threads=1)  # uniprune's own reader of the same files
        assert _rel(art(x), ref(x)) <= TOL and art.segments[1] == ("onnxruntime", ORT_NODES)


def test_a_damaged_or_missing_onnx_segment_is_one_line(segmented, tmp_path):
    spec, _ = segmented
    header, arrays = spec.header, dict(spec.arrays)
    name = header["segments"][1]["onnx"]
    bad = arrays[name].copy()
    bad[len(bad) // 2:] ^= 0x5A  # flipped bytes under the sha256 the segment records
    cases = {"flipped": ({**arrays, name: bad}, header, "do not match the segment's sha256"),
             "missing": ({k: v for k, v in arrays.items() if k != name}, header, "which the plan's arrays do not hold")}
    resealed = copy.deepcopy(header)  # the same garbage with its own sha256: ONNX Runtime itself refuses it
    import hashlib

    resealed["segments"][1]["sha256"] = hashlib.sha256(bad.tobytes()).hexdigest()
    cases["resealed"] = ({**arrays, name: bad}, resealed, "ONNX Runtime cannot load its ONNX model")
    for case, (arr, head, why) in cases.items():
        folder = tmp_path / case
        lean_rt.write_plan(folder, head, arr)
        with pytest.raises(lean_rt.LeanError) as info:
            lean_rt.Model(folder, threads=1, source_dir=kernels.SOURCES[0].parent)
        message = str(info.value)
        assert "\n" not in message and why in message and "plan segment 1" in message, (case, message)
        with pytest.raises((CheckpointError, ModelError)) as info:
            open_artifact(folder, threads=1)
        assert "\n" not in str(info.value) and why in str(info.value)


@pytest.mark.parametrize("change, why", [
    (lambda h: h["segments"][1].update(runs_on="cuda"), "field 'runs_on' must be one of native, onnxruntime"),
    (lambda h: h["segments"][1].update(nodes="softplus"), "field 'nodes' must be a list"),
    (lambda h: h["segments"][1].update(input_shape=[8, 12, 12]), "takes [8, 12, 12] per sample"),
    (lambda h: h["segments"][1].update(onnx="s0.op0.floats"), "must be non-empty 1-D uint8"),
    (lambda h: h["segments"][0].update(plan=None), "field 'plan' must be a plan header"),
    (lambda h: h["segments"][0]["plan"].update(segments=[]), "field 'plan' must be a plan header without segments"),
    (lambda h: h["segments"][2]["plan"]["ops"][0].update(kind=99), "plan segment 2 (native): op 0 field 'kind'"),
    (lambda h: h.update(output_shape=[11]), "the last segment gives [10]"),
    (lambda h: h.update(ops=[]), "not in fields 'ops' or 'buffers'"),
    (lambda h: h.update(segments={}), "plan field 'segments' must be a list"),
])
def test_a_malformed_segmented_header_is_one_line(segmented, change, why):
    spec, _ = segmented
    header = copy.deepcopy(spec.header)
    change(header)
    with pytest.raises(lean_rt.LeanError) as info:
        lean_rt.verify_plan(header, spec.arrays)
    assert "\n" not in str(info.value) and why in str(info.value)


def test_an_onnx_model_whose_shapes_contradict_its_segment_is_refused(segmented):
    spec, _ = segmented
    header = copy.deepcopy(spec.header)
    header["segments"][1]["output_shape"] = header["segments"][2]["plan"]["input_shape"] = [16, 6, 24]
    lean_rt.verify_plan(header, spec.arrays)  # the header agrees with itself; only the ONNX model says otherwise
    with pytest.raises(ModelError, match=r"plan segment 1: its ONNX model gives \[16, 12, 12\] per sample, but the "
                                         r"segment says \[16, 6, 24\]"):
        plan.LeanModel(plan.LeanSpec(header, spec.arrays), threads=1)


def test_bench_and_export_say_which_nodes_ran_where(tmp_path, monkeypatch, capsys):
    (tmp_path / "mish_nets.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn, torch.nn.functional as F
        class Mish(nn.Module):
            def forward(self, x):
                return x * torch.tanh(F.softplus(x))
        def mishnet(num_classes, input_shape):
            return nn.Sequential(nn.Conv2d(input_shape[0], 8, 3, padding=1), Mish(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from uniprune.search.models import build_model

    model = build_model("mish_nets:mishnet", num_classes=10, input_shape=(1, 8, 8))
    policy = Policy(layers={s.name: LayerAction(0.5, 0.0) for s in compressible_layers(model)}, model="mish_nets:mishnet")
    policy.save(tmp_path / "policy.json")
    rc = main(["bench", "--model", "mish_nets:mishnet", "--input-shape", "1,8,8", "--policy", str(tmp_path / "policy.json"),
               "--threads", "1", "--repeats", "3", "--engines", "torch", "--no-table", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["runtime"] == "lean" and out["fallback"] is None
    assert [s["runs_on"] for s in out["segments"]] == ["native", "onnxruntime", "native"]
    assert out["segments"][1]["nodes"] == ORT_NODES and out["segments"][0]["nodes"] == ["_0"]  # Sequential's names
    assert "bench: 3 node(s) ran on ONNX Runtime inside the plan: softplus, tanh, mul" in captured.err
    rc = main(["export", "--model", "mish_nets:mishnet", "--input-shape", "1,8,8", "--policy", str(tmp_path / "policy.json"),
               "--threads", "1", "--precision", "fp32", "--out", str(tmp_path / "art"), "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["segments"][1] == {"runs_on": "onnxruntime", "nodes": ORT_NODES} and out["max_rel_error"] <= TOL
    assert "export: 3 node(s) run on ONNX Runtime inside the plan: softplus, tanh, mul" in captured.err


class Bessel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(self.conv(x)).mean((2, 3))  # neither the plan nor ONNX (opset 17) has i0


def test_a_node_onnx_cannot_export_either_keeps_the_python_path_and_says_why(capfd):
    fallback: dict = {}
    compiled, runtime, notes = compile_for_timing(Bessel().eval(), {}, torch.randn(1, 3, 8, 8), 1, "lean",
                                                  fallback=fallback)
    assert runtime == "python" and len(notes) == 1 and "\n" not in notes[0]
    assert "'special_i0'" in notes[0] and "nor can it run on ONNX Runtime inside the plan" in notes[0]
    assert "cannot be exported to ONNX either" in notes[0] and fallback["blockers"][0].startswith("node 'special_i0'")
    assert "Torch IR" not in capfd.readouterr().out  # the exporter's dump stays off stdout (--json's)
