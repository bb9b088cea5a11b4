"""Vision transformers: attention rewritten as prunable Linears (compressors/core/attention.py), lowered to the native
plan (compressors/native/lower_tokens.py), exported and run by the artifact's numpy-only loader.

A small torchvision ``VisionTransformer`` (32x32 images, 8x8 patches, 2 layers, 4 heads) keeps it fast; every plan
must match torch within 1e-4 of the output's scale. No test asserts a timing.
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from uniprune.compressors.core.attention import SplitAttention, split_attention
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import CheckpointError, ModelError
from uniprune.compressors.core.projection import apply_structures
from uniprune.compressors.latency.table import random_structure
from uniprune.compressors.native import plan
from uniprune.search.cli import main
from uniprune.search.models import build_model, load_state

TOL = 1e-4
SMALL = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 4, "hidden_dim": 64, "mlp_dim": 128}


def small_vit(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> nn.Module:
    """The test's ViT (a ``package.module:factory`` for the CLI): random init, a classifier that is not all zeros."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(**SMALL, num_classes=num_classes)
    nn.init.normal_(model.heads.head.weight, std=0.1)
    return model


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("batch_first,kdim", [(True, None), (False, None), (True, 24)])
def test_split_attention_computes_what_multihead_attention_does(batch_first, kdim):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    split = split_attention(nn.Sequential(copy.deepcopy(mha)))[0]
    assert isinstance(split, SplitAttention)
    assert {n for n, m in split.named_modules() if type(m) is nn.Linear} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    q = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    kv = torch.randn(*q.shape[:2], kdim or 32)
    with torch.no_grad():
        for need in (False, True):
            want, got = mha(q, kv, kv, need_weights=need), split(q, kv, kv, need_weights=need)
            assert _rel_err(got[0], want[0]) <= 1e-5
            assert (got[1] is None) == (want[1] is None) and (want[1] is None or _rel_err(got[1], want[1]) <= 1e-5)
    with pytest.raises(ValueError, match="no attention masks"):
        split(q, kv, kv, attn_mask=torch.zeros(5, 5))


def test_vit_attention_is_four_prunable_linears_and_fused_checkpoints_load():
    """A torchvision ViT built by name: its attention projections are compressible layers, and a state dict saved
    with torch's fused in_proj_weight loads into the rewritten model and gives the same outputs."""
    model = build_model("tv:vit_b_16", num_classes=10, input_shape=(3, 224, 224))
    names = [s.name for s in compressible_layers(model)]
    block = "encoder.layers.encoder_layer_0"
    assert [n for n in names if n.startswith(block + ".")] == [f"{block}.self_attention.{p}" for p in
                                                               ("q_proj", "k_proj", "v_proj", "out_proj")] + \
        [f"{block}.mlp.0", f"{block}.mlp.3"]
    assert len(names) == 1 + 12 * 6 + 1  # patch embedding, 6 per block, the classifier
    original = small_vit().eval()
    rebuilt = split_attention(torchvision.models.VisionTransformer(**SMALL, num_classes=10)).eval()
    load_state(rebuilt, original.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel_err(rebuilt(x), original(x)) <= 1e-5
    bad = {k: v[:-1] if k.endswith("in_proj_weight") else v for k, v in original.state_dict().items()}
    with pytest.raises(CheckpointError, match="in_proj_weight"):
        load_state(split_attention(torchvision.models.VisionTransformer(**SMALL, num_classes=10)), bad)


def test_vit_lowers_entirely_and_matches_torch():
    model = split_attention(small_vit()).eval()
    x = torch.randn(3, 3, 32, 32)
    lean = plan.lower(model, x, threads=1)
    kinds = [op.describe().split("+")[0] for op in lean.ops]
    assert kinds.count("attention") == 2 and "row_concat" in kinds and "add_constant" in kinds
    with torch.no_grad():
        ref = model(x)
    for batch in (1, 3):
        assert _rel_err(lean(x[:batch]), ref[:batch]) <= TOL
    lean.threads = 2  # the heads shared out over the pool, each with its own scratch
    assert _rel_err(lean(x), ref) <= TOL


def test_pruned_vit_plan_matches_the_masked_model():
    """75 % of every projection's and MLP layer's blocks pruned (1x1 and 8x4 blocks), some unified; the plan
    runs them on the block-sparse kernels at batch x tokens rows."""
    model = split_attention(small_vit()).eval()
    g = torch.Generator().manual_seed(2)
    layers = compressible_layers(model)[1:-1]
    structures = {s.name: random_structure(s.grid, 0.75, 0.1, g) for s in layers}
    ref = copy.deepcopy(model)
    apply_structures(ref, structures)
    x = torch.randn(2, 3, 32, 32)
    lean = plan.compile_lean(model, structures, example_input=x, threads=1)
    assert {op.layer for op in lean.ops if op.layer} >= set(structures)
    with torch.no_grad():
        assert _rel_err(lean(x), ref(x)) <= TOL


def test_cross_attention_is_named_as_a_blocker():
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = split_attention(nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True)))[0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x.flatten(2).transpose(1, 2)
            kv = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)
            return self.attn(t, kv, kv, need_weights=False)[0][:, 0]

    with pytest.raises(ModelError, match="only self-attention") as info:
        plan.lower(Cross().eval(), torch.randn(1, 8, 2, 2))
    assert "attn_attention" in info.value.blockers[0]


def test_pruned_vit_exports_and_runs_in_the_artifacts_loader(tmp_path, capsys, monkeypatch, single_thread):
    """``export --policy`` of a ViT (a user's factory), run by the artifact's own loader: matches torch."""
    from test_export import import_loader, inner_policy

    monkeypatch.setitem(sys.modules, "vit_factory", sys.modules[__name__])
    model = build_model("vit_factory:small_vit", num_classes=10, input_shape=(3, 32, 32)).eval()
    ckpt, policy = inner_policy(tmp_path, model, "vit_factory:small_vit")
    out = tmp_path / "art"
    code = main(["export", "--policy", str(policy), "--model", "vit_factory:small_vit", "--checkpoint", str(ckpt),
                 "--input-shape", "3,32,32", "--num-classes", "10", "--precision", "fp32", "--out", str(out), "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["max_rel_error"] <= TOL
    header = json.loads((out / "plan.json").read_text())
    assert sum(op["kind"] == plan.OP_ATTN for op in header["ops"]) == SMALL["num_layers"]
    from uniprune.search.api.inputs import policy_model

    projected = policy_model(str(policy), "vit_factory:small_vit", str(ckpt), (3, 32, 32), 10)[0].eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = import_loader(out).Model(out, cache_dir=tmp_path / "cache").run(x)
    with torch.no_grad():
        assert _rel_err(torch.from_numpy(got), projected(torch.from_numpy(x))) <= TOL


def test_split_vit_exports_to_onnx_runtime(tmp_path):
    """The dense engines can be built for a ViT: the rewritten attention has no fused op ONNX export refuses."""
    from uniprune.compressors.latency.engines import dense_engines

    model = split_attention(small_vit()).eval()
    x = torch.randn(1, 3, 32, 32)
    engines = dense_engines(model, x, threads=1, engines=["onnxruntime"])
    with torch.no_grad():
        ref = model(x).numpy()
    got = engines.infer["onnxruntime"](x.numpy())
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) <= TOL


def test_vit_plan_in_bf16_matches_within_its_tolerance():
    if plan.resolve_precision("auto") != "bf16":
        pytest.skip("this CPU has no bf16 units")
    model = split_attention(small_vit()).eval()
    x = torch.randn(2, 3, 32, 32)
    lean = plan.lower(model, x, threads=1, precision="bf16")
    assert lean.precision == "bf16"
    with torch.no_grad():
        assert _rel_err(lean(x), model(x)) <= plan.output_tolerance("bf16")


def test_attention_weights_nothing_reads_cost_no_op():
    """``out, _ = mha(x, x, x)`` asks for the weights (need_weights defaults to True) and drops them: the plan
    lowers without them."""
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x.flatten(2).transpose(1, 2)
            out, _ = self.attn(t, t, t)
            return self.fc(out[:, 0])

    model = split_attention(Block()).eval()
    x = torch.randn(2, 16, 3, 3)
    lean = plan.lower(model, x, threads=1)
    with torch.no_grad():
        assert _rel_err(lean(x), model(x)) <= TOL


class _AttentionOnly(nn.Module):
    """Self-attention over a feature map's pixels as tokens, the tokens returned flat."""

    def __init__(self, embed: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        out, _ = self.attn(t, t, t)
        return out.transpose(1, 2).reshape(x.size(0), -1)


@pytest.mark.parametrize("embed,heads,h,w", [(48, 2, 5, 7), (96, 1, 17, 1), (64, 4, 14, 14), (40, 5, 3, 3)])
def test_attention_in_bf16_matches_torch_for_odd_heads_and_token_counts(embed, heads, h, w):
    """A bf16 plan runs attention in bf16 (on AMX tiles where the CPU has them: heads of 8 to 96 channels, token
    counts that are no multiple of 16, padding dropped), within bf16's error; an fp32 plan's attention is fp32."""
    torch.manual_seed(0)
    model = split_attention(_AttentionOnly(embed, heads)).eval()
    x = torch.randn(2, embed, h, w) * 2
    with torch.no_grad():
        ref = model(x)
    for precision, tol in (("fp32", TOL), ("bf16", 2e-2)):
        if precision == "bf16" and plan.resolve_precision("auto") != "bf16":
            continue
        lean = plan.lower(model, x, threads=2, precision=precision)
        attn = [op for op in lean.ops if op.kind == plan.OP_ATTN]
        assert len(attn) == 1 and attn[0].params == [heads, int(precision == "bf16")]
        assert _rel_err(lean(x), ref) <= tol


def zero_head_vit(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> nn.Module:
    """The test's ViT with torchvision's own classifier initialisation (all zeros)."""
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(**SMALL, num_classes=num_classes)


def test_export_says_when_its_check_compares_nothing(tmp_path, capsys, monkeypatch, single_thread):
    """A random-init torchvision ViT answers zeros for every input: export still writes it, and says in one note
    that its plan-against-model check compared nothing; a model with a non-zero head gets no such note."""
    from test_export import inner_policy

    monkeypatch.setitem(sys.modules, "vit_factory", sys.modules[__name__])
    for factory, noted in (("zero_head_vit", True), ("small_vit", False)):
        (tmp_path / factory).mkdir()
        policy = inner_policy(tmp_path / factory, build_model(f"vit_factory:{factory}", num_classes=10),
                               f"vit_factory:{factory}")[1]
        out = tmp_path / factory / "art"
        code = main(["export", "--policy", str(policy), "--model", f"vit_factory:{factory}", "--input-shape", "3,32,32",
                     "--num-classes", "10", "--precision", "fp32", "--out", str(out), "--json"])
        _, err = capsys.readouterr()
        assert code == 0 and (out / "plan.json").is_file(), err
        assert ("the check below compares nothing" in err) is noted
