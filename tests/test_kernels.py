"""The native kernels against torch on random shapes: relative error <= 1e-4, and the build's caching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from uniprune.compressors.core.errors import ConfigError, KernelBuildError
from uniprune.compressors.native import kernels
from uniprune.compressors.native.kernels import ROWS, SparseConv, SparseGemv, pack_panels, panel_height

# the builds every CPU here can run; avx512 only where the CPU has it
FORCED_ISAS = ["avx2", "generic"] if {"avx2", "fma"} <= kernels.cpu_flags() else ["generic"]
if "avx512f" in kernels.cpu_flags():
    FORCED_ISAS.insert(0, "avx512")


def _block_keep(co: int, ci: int, bo: int, bi: int, density: float, g: torch.Generator) -> torch.Tensor:
    """A random keep mask of whole bo x bi blocks, as the runtime gets it from a structure."""
    nbo, nbi = -(-co // bo), -(-ci // bi)
    blocks = torch.rand(nbo, nbi, generator=g) < density
    return blocks.repeat_interleave(bo, 0)[:co].repeat_interleave(bi, 1)[:, :ci]


def _block_case(seed: int, co: int, ci: int, k: int, bo: int, bi: int, density: float,
                input_shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, ...]:
    """A random conv case: weight [co, ci, k, k], a keep mask of whole bo x bi blocks, bias, input."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(co, ci, k, k, generator=g)
    keep = _block_keep(co, ci, bo, bi, density, g)
    return weight, keep, torch.randn(co, generator=g), torch.randn(*input_shape, generator=g)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@settings(max_examples=30, deadline=None)
@given(
    co=st.integers(1, 21), ci=st.integers(1, 13), k=st.integers(1, 4), stride=st.integers(1, 3),
    pad=st.integers(0, 2), dil=st.integers(1, 2), n=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
    density=st.sampled_from([0.0, 0.3, 0.7, 1.0]), threads=st.sampled_from([1, 2]), seed=st.integers(0, 10_000),
)
def test_sparse_conv_matches_masked_dense(co, ci, k, stride, pad, dil, n, h, w, density, threads, seed):
    if h + 2 * pad < dil * (k - 1) + 1 or w + 2 * pad < dil * (k - 1) + 1:
        return  # torch rejects inputs smaller than the dilated kernel too
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(co, ci, k, k, generator=g)
    keep = torch.rand(co, ci, generator=g) < density
    bias = torch.randn(co, generator=g)
    x = torch.randn(n, ci, h, w, generator=g)
    conv = SparseConv(weight, keep, bias, (stride, stride), (pad, pad), (dil, dil))
    ref = F.conv2d(x, weight * keep[:, :, None, None], bias, stride, pad, dil)
    out = conv(x, threads)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-4


@settings(max_examples=40, deadline=None)
@given(
    bo=st.sampled_from([1, 2, 3, 4, 8, 16]), bi=st.sampled_from([1, 4]), co=st.integers(1, 37), ci=st.integers(1, 19),
    k=st.sampled_from([1, 3]), stride=st.integers(1, 2), pad=st.integers(0, 1), dil=st.integers(1, 2),
    n=st.sampled_from([1, 3, 5, 17]), hw=st.sampled_from([5, 8, 9, 16, 19]), density=st.sampled_from([0.1, 0.5, 1.0]),
    isa=st.sampled_from(FORCED_ISAS), threads=st.sampled_from([1, 2]), seed=st.integers(0, 10_000),
)
def test_every_panel_height_and_isa_matches_masked_dense(bo, bi, co, ci, k, stride, pad, dil, n, hw, density, isa,
                                                         threads, seed):
    if hw + 2 * pad < dil * (k - 1) + 1:
        return
    weight, keep, bias, x = _block_case(seed, co, ci, k, bo, bi, density, (n, ci, hw, hw))
    rows = panel_height(bo)
    assert rows == (bo if bo in (1, 2, 4, 8) else 8)
    conv = SparseConv(weight, keep, bias, (stride, stride), (pad, pad), (dil, dil), rows=rows, isa=isa)
    ref = F.conv2d(x, weight * keep[:, :, None, None], bias, stride, pad, dil)
    out = conv(x, threads)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-4


@pytest.mark.parametrize("rows", [1, 2, 4, 8])
def test_panels_of_every_height_skip_exactly_the_pruned_blocks(rows):
    g = torch.Generator().manual_seed(rows)
    keep = _block_keep(16, 12, rows, 1, 0.3, g)
    packed = pack_panels(torch.randn(16, 12, 3, 3, generator=g), keep, rows)
    # a panel is one block row: it lists exactly the input channels its block row keeps
    assert packed.nnz == int(keep[::rows].sum())
    assert packed.w.shape == (packed.nnz, 9, rows)
    assert packed.panel_ptr.numel() == 16 // rows + 1


def test_asymmetric_geometry_and_empty_output_block():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(19, 6, 3, 2, generator=g)
    keep = torch.ones(19, 6, dtype=torch.bool)
    keep[ROWS:2 * ROWS] = False  # a whole panel of output channels is gone: only its bias remains
    bias = torch.randn(19, generator=g)
    x = torch.randn(2, 6, 9, 7, generator=g)
    out = SparseConv(weight, keep, bias, (2, 1), (1, 0), (1, 2))(x, 2)
    ref = F.conv2d(x, weight * keep[:, :, None, None], bias, (2, 1), (1, 0), (1, 2))
    assert _rel(out, ref) <= 1e-4
    assert torch.equal(out[:, ROWS:2 * ROWS], bias[ROWS:2 * ROWS].reshape(1, -1, 1, 1).expand(2, -1, *out.shape[2:]))


@settings(max_examples=25, deadline=None)
@given(co=st.integers(1, 40), ci=st.integers(1, 40), n=st.integers(1, 4), seed=st.integers(0, 10_000),
       threads=st.sampled_from([1, 2]))
def test_gemv_with_compact_unified_blocks(co, ci, n, seed, threads):
    g = torch.Generator().manual_seed(seed)
    bi = 8
    weight = torch.randn(co, ci, generator=g)
    panels, nb_in = (co + ROWS - 1) // ROWS, (ci + bi - 1) // bi
    state = torch.randint(0, 3, (panels, nb_in), generator=g)  # 0 keep, 1 unify, 2 prune
    mags = torch.rand(panels, nb_in, generator=g) + 0.1
    full_state = state.repeat_interleave(ROWS, 0)[:co].repeat_interleave(bi, 1)[:, :ci]
    full_mag = mags.repeat_interleave(ROWS, 0)[:co].repeat_interleave(bi, 1)[:, :ci]
    sign = torch.where(weight < 0, -1.0, 1.0)
    effective = torch.where(full_state == 0, weight, torch.where(full_state == 1, sign * full_mag, 0.0))
    unified = [(p, j * bi, min(bi, ci - j * bi), float(mags[p, j])) for p, j in (state == 1).nonzero().tolist()]
    bias = torch.randn(co, generator=g)
    x = torch.randn(n, ci, generator=g)
    ref = x @ effective.t() + bias
    compact = SparseGemv(weight, full_state == 0, bias, unified)
    materialised = SparseGemv(effective, full_state != 2, bias)
    assert compact.n_unified == len(unified)
    assert _rel(compact(x, threads), ref) <= 1e-4
    assert _rel(materialised(x, threads), ref) <= 1e-4


def test_pack_panels_keeps_exactly_the_used_channels():
    weight = torch.arange(10 * 5, dtype=torch.float32).reshape(10, 5) + 1
    keep = torch.zeros(10, 5, dtype=torch.bool)
    keep[0, 1] = keep[3, 4] = keep[9, 0] = True
    packed = pack_panels(weight, keep)
    assert packed.panel_ptr.tolist() == [0, 2, 3]
    assert packed.ch.tolist() == [1, 4, 0]
    assert packed.w.shape == (3, 1, ROWS)
    # row 3 of panel 0 does not keep channel 1: packed as zero, not as its weight
    assert packed.w[0, 0].tolist() == [weight[0, 1].item()] + [0.0] * 7
    assert packed.w[2, 0, 1].item() == weight[9, 0].item()


def test_build_is_cached_by_source_and_flags():
    first = kernels.build()
    assert first.exists() and first.name.startswith("uniprune_kernels-")
    assert kernels.build() == first  # second call finds the cached library
    assert kernels.isa() in {"avx512f", "avx2", "neon", "generic"}


@pytest.mark.parametrize("isa", FORCED_ISAS)
def test_forced_isa_builds_report_their_isa_and_id(isa):
    path = kernels.build(isa=isa)
    assert f"-{isa}-" in path.name  # the cache file name carries the ISA
    reported = {"avx512": "avx512f", "avx2": "avx2", "generic": "generic"}[isa]
    assert kernels.isa(isa) == reported
    bid = kernels.build_id(isa)
    assert bid.startswith(kernels.source_hash()[:12]) and f"-{reported}-" in bid
    assert len({kernels.build_id(i) for i in FORCED_ISAS}) == len(FORCED_ISAS)


def test_isa_from_the_environment_and_bad_names(monkeypatch):
    monkeypatch.setenv("UNIPRUNE_ISA", "generic")
    assert kernels.resolve_isa() == "generic" and kernels.isa() == "generic"
    monkeypatch.setenv("UNIPRUNE_ISA", "sse9")
    with pytest.raises(ConfigError, match="UNIPRUNE_ISA must be one of"):
        kernels.resolve_isa()
    monkeypatch.delenv("UNIPRUNE_ISA")
    assert kernels.resolve_isa() in {"avx512", "avx2", "generic", "native"}


def test_isa_the_cpu_lacks_is_refused(monkeypatch):
    from uniprune.compressors.native.uniprune_lean import (
        build as lean_build,  # the one place the build reads flags
    )

    monkeypatch.setattr(lean_build, "cpu_flags", lambda: frozenset({"sse2", "avx", "avx2", "fma"}))
    with pytest.raises(KernelBuildError, match="avx512f") as err:
        kernels.build(isa="avx512")
    assert "\n" not in str(err.value) and "use auto" in str(err.value)
    assert kernels.resolve_isa("auto") in {"avx2", "native"}


def test_fma_peak_is_measured_and_cached():
    peak = kernels.fma_peak_gflops(1, isa="generic")
    assert 0.5 < peak < 10_000  # GFLOP/s of one core: any real CPU lies in between
    assert kernels.fma_peak_gflops(1, isa="generic") == peak  # measured once per process
    with pytest.raises(ConfigError, match="threads"):
        kernels.fma_peak_gflops(0)


def test_missing_compiler_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(KernelBuildError, match="no C compiler found"):
        kernels.build(force=True, isa="generic")


def test_concurrent_calls_from_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(7)
    convs, inputs, refs = [], [], []
    for c, hw in ((8, 11), (16, 6), (12, 9)):
        weight = torch.randn(c, c, 3, 3, generator=g)
        keep = torch.rand(c, c, generator=g) < 0.5
        x = torch.randn(2, c, hw, hw, generator=g)
        convs.append(SparseConv(weight, keep, None, (1, 1), (1, 1), (1, 1)))
        inputs.append(x)
        refs.append(F.conv2d(x, weight * keep[:, :, None, None], None, 1, 1))
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda i: [convs[i](inputs[i], 2) for _ in range(20)][-1], range(3)))
    for out, ref in zip(outs, refs):
        assert _rel(out, ref) <= 1e-4


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(list(kernels.CONV_LAYOUTS)), isa=st.sampled_from(FORCED_ISAS), rows=st.sampled_from([1, 4, 8]),
    co=st.integers(1, 19), ci=st.integers(1, 11), kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.integers(1, 3),
    pad=st.integers(0, 2), dil=st.integers(1, 2), n=st.sampled_from([1, 2, 5]), h=st.integers(1, 21),
    w=st.integers(1, 21), density=st.sampled_from([0.2, 0.6, 1.0]), threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 10_000),
)
def test_every_conv_layout_matches_masked_dense(layout, isa, rows, co, ci, kh, kw, stride, pad, dil, n, h, w, density,
                                                threads, seed):
    """Each input layout of the direct conv (forced; a layout that cannot run a call falls back to the automatic
    choice), every build, odd sizes, strides, padding wider than the kernel, odd batches."""
    if h + 2 * pad < dil * (kh - 1) + 1 or w + 2 * pad < dil * (kw - 1) + 1:
        return
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(co, ci, kh, kw, generator=g)
    keep = _block_keep(co, ci, rows, 1, density, g)
    bias = torch.randn(co, generator=g)
    x = torch.randn(n, ci, h, w, generator=g)
    conv = SparseConv(weight, keep, bias, (stride, stride), (pad, pad), (dil, dil), rows=rows, isa=isa)
    ref = F.conv2d(x, weight * keep[:, :, None, None], bias, stride, pad, dil)
    kernels.force_conv_layout(layout, isa)
    try:
        out = conv(x, threads)
    finally:
        kernels.force_conv_layout("auto", isa)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-4


@pytest.mark.parametrize("isa", FORCED_ISAS)
def test_one_plan_alternating_input_sizes_and_layouts(isa):
    """The masked layout caches its lane masks per input size: a plan called with other sizes in between, and
    with layouts switched under it, must recompute them rather than reuse stale ones."""
    g = torch.Generator().manual_seed(11)
    weight = torch.randn(16, 16, 3, 3, generator=g)
    keep = _block_keep(16, 16, 8, 4, 0.4, g)  # sparse enough for the automatic masked layout at small inputs
    conv = SparseConv(weight, keep, None, (1, 1), (1, 1), (1, 1), rows=8, isa=isa)
    try:
        for layout, hw in [("auto", 8), ("auto", 16), ("direct", 16), ("auto", 16), ("masked", 9), ("auto", 8),
                           ("shifted", 8), ("masked", 8), ("auto", 20)]:
            kernels.force_conv_layout(layout, isa)
            x = torch.randn(3, 16, hw, hw, generator=g)
            ref = F.conv2d(x, weight * keep[:, :, None, None], None, 1, 1)
            assert _rel(conv(x, 1), ref) <= 1e-4, (layout, hw)
    finally:
        kernels.force_conv_layout("auto", isa)


def test_force_conv_layout_rejects_unknown_names():
    with pytest.raises(ConfigError, match="conv layout"):
        kernels.force_conv_layout("tiled")


@settings(max_examples=60, deadline=None)
@given(
    isa=st.sampled_from(FORCED_ISAS), c=st.integers(1, 13), kh=st.integers(1, 5), kw=st.integers(1, 5),
    sh=st.integers(1, 3), sw=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2),
    n=st.sampled_from([1, 2, 3]), h=st.integers(1, 23), w=st.integers(1, 23), has_bias=st.booleans(),
    clamp=st.sampled_from([None, (0.0, 6.0), (-0.5, 0.25)]), threads=st.sampled_from([1, 2]), seed=st.integers(0, 10_000),
)
def test_depthwise_conv_matches_torch(isa, c, kh, kw, sh, sw, pad, dil, n, h, w, has_bias, clamp, threads, seed):
    if h + 2 * pad < dil * (kh - 1) + 1 or w + 2 * pad < dil * (kw - 1) + 1:
        return
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c, 1, kh, kw, generator=g)
    bias = torch.randn(c, generator=g) if has_bias else None
    x = torch.randn(n, c, h, w, generator=g)
    ref = F.conv2d(x, weight, bias, (sh, sw), pad, dil, groups=c)
    if clamp is not None:
        ref = ref.clamp(*clamp)
    out = kernels.depthwise_conv2d(x, weight, bias, (sh, sw), (pad, pad), (dil, dil), clamp, threads, isa)
    assert out.shape == ref.shape
    scale = max(float(ref.abs().max()), 1.0)  # clamped outputs can be all zeros
    assert float((out - ref).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize("isa", FORCED_ISAS)
@pytest.mark.parametrize("h,w,k,stride,pad,dil", [(9, 40, 3, 1, 1, 1), (8, 45, 3, 1, 2, 2), (6, 64, 5, 1, 2, 1),
                                                  (11, 37, 3, 2, 1, 1), (7, 50, 5, 3, 2, 2), (16, 16, 3, 1, 1, 1),
                                                  (6, 9, 3, 1, 0, 1), (5, 7, 3, 1, 1, 1)])
def test_depthwise_conv_on_rows_and_on_channels_match_torch(isa, h, w, k, stride, pad, dil):
    """Stride-1 output rows of two vectors or more run channel by channel along the rows (their tails, paddings
    and dilations included), the rest vectorised over channels: both match torch, on every thread count."""
    g = torch.Generator().manual_seed(h * w)
    weight, bias = torch.randn(19, 1, k, k, generator=g), torch.randn(19, generator=g)
    x = torch.randn(2, 19, h, w, generator=g)
    ref = F.conv2d(x, weight, bias, stride, pad, dil, groups=19).clamp(0.0, 6.0)
    for threads in (1, 2):
        out = kernels.depthwise_conv2d(x, weight, bias, (stride, stride), (pad, pad), (dil, dil), (0.0, 6.0), threads, isa)
        assert out.shape == ref.shape
        assert float((out - ref).abs().max()) <= 1e-4 * max(float(ref.abs().max()), 1.0)


def test_depthwise_conv_rejects_bad_weights_and_small_inputs():
    with pytest.raises(ConfigError, match="depthwise weight"):
        kernels.depthwise_conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3))
    with pytest.raises(ConfigError, match="smaller than"):
        kernels.depthwise_conv2d(torch.randn(1, 4, 2, 2), torch.randn(4, 1, 5, 5))


@settings(max_examples=40, deadline=None)
@given(
    bo=st.sampled_from([1, 2, 4, 8, 16]), bi=st.sampled_from([1, 2, 4]), co=st.integers(1, 40), ci=st.integers(1, 37),
    k=st.sampled_from([1, 2, 3]), stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
    n=st.sampled_from([1, 2, 9]), h=st.sampled_from([3, 8, 16, 17]), w=st.sampled_from([4, 8, 16, 33]),
    density=st.sampled_from([0.0, 0.25, 0.5, 1.0]), amx=st.booleans(), threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 10_000),
)
def test_bf16_conv_matches_bf16_rounded_dense(bo, bi, co, ci, k, stride, pad, dil, n, h, w, density, amx, threads, seed):
    """Every block shape, stride, window and tail in bf16: on AMX tiles or the bf16 dot product (where the CPU has
    them) the exact products of bf16 weights and bf16 inputs summed in float32; on the float32 kernels the bf16
    weights with float32 inputs."""
    if min(h, w) + 2 * pad < dil * (k - 1) + 1:
        return
    weight, keep, bias, x = _block_case(seed, co, ci, k, bo, bi, density, (n, ci, h, w))
    conv = SparseConv(weight, keep, bias, (stride, stride), (pad, pad), (dil, dil), rows=panel_height(bo),
                      precision="bf16", amx=amx)
    units = kernels.bf16_units()  # auto: AMX, else the dot product (a CPU with avx512_bf16 and no AMX), else fp32
    assert conv.engine == (("amx_bf16" if "amx_bf16" in units else "bf16_dot" if "bf16_dot" in units else "fp32")
                           if amx else "fp32")
    wb = (weight * keep[:, :, None, None]).bfloat16().float()
    xb = x.bfloat16().float() if conv.engine != "fp32" else x
    ref = F.conv2d(xb, wb, bias, stride, pad, dil)
    out = conv(x, threads)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-5


def test_bf16_units_and_peaks_follow_the_cpu():
    """The bf16 probes run exactly where the build and CPU have the unit; a unit's peak is a plausible rate."""
    flags = kernels.cpu_flags()
    units = kernels.bf16_units()
    assert set(units) <= {"bf16_dot", "amx_bf16"}
    assert ("bf16_dot" in units) <= ("avx512_bf16" in flags) and ("amx_bf16" in units) <= ("amx_bf16" in flags)
    for unit in ("bf16_dot", "amx_bf16"):
        peak = kernels.peak_gflops(unit)
        assert (peak is None) == (unit not in units)
        assert peak is None or 1 < peak < 100_000
    assert kernels.peak_gflops("bf16_dot", isa="generic") is None  # a generic build has no bf16 instructions
    assert kernels.peak_gflops("fma") == kernels.fma_peak_gflops()
    with pytest.raises(ConfigError, match="unit must be one of"):
        kernels.peak_gflops("fp8")
    with pytest.raises(ConfigError, match="precision"):
        SparseConv(torch.randn(4, 4, 3, 3), torch.ones(4, 4, dtype=torch.bool), None, (1, 1), (1, 1), (1, 1),
                   precision="fp16")


@pytest.mark.parametrize("precision,engine", [("fp32", None), ("bf16", None), ("bf16", "dpbf16")])
@pytest.mark.parametrize("n,h,w", [(1, 197, 1), (2, 37, 1), (3, 1, 50), (2, 5, 7), (1, 2, 2)])
def test_pointwise_conv_runs_a_plane_as_one_row(precision, engine, n, h, w):
    """A 1x1 conv at stride 1 without padding runs its plane as one row (a transformer's (L, 1) tokens get the
    long-row layouts): the same values as torch for every plane shape, batch and engine."""
    g = torch.Generator().manual_seed(h * 100 + w)
    weight, bias = torch.randn(40, 24, 1, 1, generator=g), torch.randn(40, generator=g)
    keep = _block_keep(40, 24, 8, 8, 0.5, g)
    x = torch.randn(n, 24, h, w, generator=g)
    kw = {"engine": engine} if engine else {}
    conv = SparseConv(weight, keep, bias, (1, 1), (0, 0), (1, 1), rows=panel_height(8), precision=precision, **kw)
    wk = weight * keep[:, :, None, None]
    bf = conv.engine != "fp32"
    ref = F.conv2d(x.bfloat16().float() if bf else x, wk.bfloat16().float() if precision == "bf16" else wk, bias)
    out = conv(x, 2)
    assert out.shape == (n, 40, h, w)
    assert _rel(out, ref) <= 1e-5


@pytest.mark.parametrize("how", ["panels", "pixels"])
@pytest.mark.parametrize("co,ci,k,n,h,w", [(64, 64, 3, 1, 16, 16), (40, 24, 1, 1, 197, 1), (24, 8, 3, 2, 9, 7),
                                           (48, 32, 3, 1, 8, 8)])
def test_bf16_conv_split_by_panels_or_pixels_gives_the_same_output(how, co, ci, k, n, h, w):
    """Fewer images than threads: the AMX conv splits by panels or by ranges of output pixels (direct rows and the
    flat layout's wrap-around columns alike), with the values of one thread."""
    if "amx_bf16" not in kernels.bf16_units():
        pytest.skip("this CPU has no AMX tiles")
    weight, keep, bias, x = _block_case(3, co, ci, k, 8, 4, 0.6, (n, ci, h, w))
    conv = SparseConv(weight, keep, bias, (1, 1), (k // 2, k // 2), (1, 1), rows=panel_height(8), precision="bf16")
    one = conv(x, 1)
    kernels.force_amx_split(how)
    try:
        two = conv(x, 2)
    finally:
        kernels.force_amx_split("auto")
    assert torch.equal(one, two)
    with pytest.raises(ConfigError, match="AMX split"):
        kernels.force_amx_split("rows")


def test_amx_tile_probe_times_every_shape_and_refuses_others():
    """up_amx_tile_ns: a plausible time for any tile of 1..16 rows and 2..32 even products where the CPU has AMX,
    0 elsewhere and for shapes out of range."""
    lib = kernels.load()
    amx = "amx_bf16" in kernels.bf16_units()
    for m, k in ((16, 32), (8, 8), (1, 2)):
        ns = lib.up_amx_tile_ns(m, k, 0.02)
        assert (0.1 < ns < 1000) if amx else ns == 0
    for m, k in ((0, 32), (17, 32), (16, 33), (16, 3), (16, 0)):
        assert lib.up_amx_tile_ns(m, k, 0.02) == 0
