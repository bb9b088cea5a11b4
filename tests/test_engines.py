"""The dense engines (the baseline of every latency ratio) and the budget that ratios are held to."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.latency.budget import (
    TOLERANCE,
    LatencyBudget,
    budget_verdict,
    latency_ratio,
    paired_ratio,
)
from uniprune.compressors.latency.engines import (
    ENGINES,
    OUTPUT_TOLERANCE,
    SIGNAL_STACK_BYTES,
    available_engines,
    default_modes,
    dense_engines,
    engine_versions,
    race,
    signal_stack_bytes,
    top1,
)
from uniprune.compressors.latency.timing import fastest


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


def test_every_installed_engine_computes_what_torch_computes():
    model, x = _net(), torch.randn(2, 3, 12, 12)
    engines = dense_engines(model, x, threads=1)
    assert list(engines.runners) == default_modes() and engines.notes == []
    assert set(available_engines()) <= set(engines.runners)  # each engine at its default precision
    assert "onnxruntime" in engines.runners  # a dependency, so always there
    with torch.no_grad():
        reference = model(x)
    for name, run in engines.runners.items():
        out = torch.as_tensor(run()).detach()
        assert out.shape == (2, 4), name
        # each mode within the tolerance of the precision it says it computes in (OpenVINO: bf16 on CPUs with it)
        precision = engines.precisions[name]
        assert float((out - reference).abs().max()) <= OUTPUT_TOLERANCE[precision] * float(reference.abs().max()), name
        if precision == "f32":
            assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5), name
    assert engines.precisions["torch"] == engines.precisions["onnxruntime"] == "f32"
    if "openvino" in engines.runners:
        assert engines.precisions["openvino:f32"] == "f32"
    assert set(engine_versions()) == set(available_engines())
    # no engine leaves this thread a signal stack too small for a signal frame with AMX state (Ctrl-C: SIGSEGV)
    assert signal_stack_bytes() in (None, 0) or signal_stack_bytes() >= SIGNAL_STACK_BYTES


def test_int8_modes_quantize_statically_and_score():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    x = torch.randn(4, 3, 8, 8)
    calibration = torch.randn(10, 3, 8, 8).numpy()  # not a multiple of the batch: the last batch is filled up
    engines = dense_engines(model, x, threads=1, int8_calibration=calibration)
    int8 = [m for m in engines.runners if m.endswith(":int8")]
    assert "onnxruntime:int8" in int8 and all(engines.precisions[m] == "int8" for m in int8), engines.notes
    assert engines.group("int8") == int8 and "onnxruntime:int8" not in engines.group("default")
    with torch.no_grad():
        labels = model(torch.from_numpy(calibration)).argmax(1).numpy()
    # scoring fills the last short batch up and cuts the answers back: f32 modes agree with torch exactly
    assert top1(engines.infer["onnxruntime"], [(calibration, labels)], 4) == 1.0
    assert 0.5 <= top1(engines.infer["onnxruntime:int8"], [(calibration, labels)], 4) <= 1.0
    result = race(engines, engines.runners["torch"], threads=1, warmup=1, repeats=2)
    assert result["baseline"] == "default" and result["best_engine"] in engines.group("default")
    assert set(result["rivals"]) == {"default", "f32", "int8"} and result["rivals"]["int8"]["engine"] in int8
    assert result["best_dense_ms"] == min(result["engines"][m] for m in engines.group("default"))
    with pytest.raises(ConfigError, match="calibration"):
        dense_engines(model, x, engines=["onnxruntime:int8"])


def test_engines_left_out_are_explained():
    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x, dim=-1).abs()  # no ONNX symbolic for FFT in the exporter

    engines = dense_engines(Unexportable(), torch.randn(1, 3, 8, 8), threads=1)
    assert list(engines.runners) == ["torch"]
    assert len(engines.notes) == 1 and "ONNX" in engines.notes[0] and "left out" in engines.notes[0]


def test_unknown_or_missing_engines_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown dense engine"):
        dense_engines(_net(), torch.randn(1, 3, 8, 8), engines=["tensorrt"])
    with pytest.raises(ConfigError, match="unknown dense engine mode"):
        dense_engines(_net(), torch.randn(1, 3, 8, 8), engines=["openvino:fp64"])
    assert set(available_engines()) <= set(ENGINES) and available_engines()[0] == "torch"
    only = dense_engines(_net(), torch.randn(1, 3, 8, 8), threads=1, engines=["torch"])
    assert list(only.runners) == ["torch"]


def test_budget_is_validated_once_and_turned_into_ms_once():
    budget = LatencyBudget(0.5)
    assert budget.limit_ms(10.0) == pytest.approx(5.0 * (1 + TOLERANCE))
    assert budget.met_by(5.0, 10.0) and not budget.met_by(5.01, 10.0)
    assert budget.reachable(0.5) and not budget.reachable(0.51)
    for bad in (0, -0.1, 1.5, math.nan, "0.5", True):
        with pytest.raises(ConfigError, match="latency budget"):
            LatencyBudget(bad)
    with pytest.raises(ConfigError, match="baseline"):
        budget.limit_ms(0.0)


def test_the_budget_verdict_says_met_or_missed_by_how_much():
    assert LatencyBudget(0.5).verdict(0.5) == "meets the budget 0.5"
    assert LatencyBudget(0.5).verdict(0.522) == "misses the budget 0.5 by 4.4 %"
    assert budget_verdict(0.3, None) == "no budget" and budget_verdict(None, 0.5) == "not measured"
    assert budget_verdict(0.49, 0.5) == "meets the budget 0.5"


def test_latency_ratio_is_one_definition():
    assert latency_ratio(2.0, 8.0) == 0.25
    with pytest.raises(ConfigError):
        latency_ratio(1.0, 0.0)
    with pytest.raises(ConfigError):
        latency_ratio(math.inf, 1.0)
    # median: of the rounds' own ratios (each round shares the machine's phase); min: of the fastest runs
    compressed, baseline = [1.0, 2.0, 4.0], [2.0, 4.0, 4.0]
    assert paired_ratio(compressed, baseline, "median") == 0.5
    assert paired_ratio(compressed, baseline, "min") == 0.5
    assert paired_ratio([3.0, 1.0], [2.0, 4.0], "min") == 0.5
    with pytest.raises(ConfigError):
        paired_ratio([1.0], [1.0, 2.0], "median")


def test_fastest_picks_the_quicker_function():
    import time

    # the least of 7 rounds: a 3 ms sleep never returns early, and a call that does nothing is never as slow 7 times
    assert fastest({"slow": lambda: time.sleep(0.003), "quick": lambda: None}) == "quick"
    assert fastest({"only": lambda: None}) == "only"
