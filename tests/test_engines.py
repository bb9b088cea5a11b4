"""The dense engines (the baseline of every latency ratio) and the budget that ratios are held to."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.latency.budget import TOLERANCE, LatencyBudget, latency_ratio, paired_ratio
from uniprune.compressors.latency.engines import ENGINES, available_engines, dense_engines, engine_versions
from uniprune.compressors.latency.timing import fastest


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


def test_every_installed_engine_computes_what_torch_computes():
    model, x = _net(), torch.randn(2, 3, 12, 12)
    engines = dense_engines(model, x, threads=1)
    assert list(engines.runners) == available_engines() and engines.notes == []
    assert "onnxruntime" in engines.runners  # a dependency, so always there
    with torch.no_grad():
        reference = model(x)
    for name, run in engines.runners.items():
        out = torch.as_tensor(run())
        assert out.shape == (2, 4), name
        assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5), name
    assert set(engine_versions()) == set(available_engines())


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
