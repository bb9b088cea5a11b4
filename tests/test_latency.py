"""Latency measurement: interleaved medians, the per-layer table and its cache, whole-model timing against the
dense engines."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.policy import LayerAction
from uniprune.compressors.core.structure import KEEP, PRUNE, UNIFY, BlockShape, block_grid
from uniprune.compressors.latency.engines import available_engines, default_modes
from uniprune.compressors.latency.table import (
    build_latency_model,
    check_latency_model,
    measure_model_ms,
    random_structure,
    without_zeros,
)
from uniprune.compressors.latency.timing import interleaved_samples, time_interleaved


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def test_time_interleaved_orders_and_scales():
    # the least of the rounds: a sleep never returns early, so the bounds below hold however busy the machine
    t = time_interleaved({"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.001)},
                         warmup=1, repeats=7, threads=1, statistic="min")
    assert set(t) == {"slow", "fast"}
    assert t["slow"] >= 4.0 and t["fast"] >= 1.0  # milliseconds
    with pytest.raises(ConfigError):
        time_interleaved({"a": lambda: None}, repeats=0)
    with pytest.raises(ConfigError, match="threads"):
        time_interleaved({"a": lambda: None}, threads=0)


def test_random_structure_has_exact_counts():
    grid = block_grid((24, 16, 3, 3), BlockShape(8, 4))
    s = random_structure(grid, 0.5, 0.25, torch.Generator().manual_seed(0))
    assert s.counts() == {"keep": 3, "unify": 3, "prune": 6}
    assert bool((s.magnitudes[s.states == UNIFY] >= 0.5).all())
    assert bool((s.magnitudes[s.states != UNIFY] == 0).all())
    assert set(s.states.unique().tolist()) <= {KEEP, UNIFY, PRUNE}


def test_table_columns_unify_a_fraction_of_the_rest():
    """On an absolute (p, u) grid stopping at 0.9, unify above 0.9 read 0.9's time and the p = 0.9 row ignored
    unification. Columns now unify a fraction of what pruning left: a time linear in the kept fraction is
    exact everywhere, the corner p + u = 1 included."""
    from uniprune.compressors.latency.model import LatencyModel

    lm = LatencyModel.proportional({"a": 1.0}, unify_saving=1.0, grid=(0.0, 0.5, 0.9, 1.0))
    for prune, unify in [(0.0, 0.95), (0.0, 1.0), (0.9, 0.1), (0.9, 0.05), (0.3, 0.6), (0.7, 0.0), (0.2, 0.0)]:
        assert lm.layer_ms("a", prune, unify) == pytest.approx(1.0 - prune - unify)
    assert lm.fastest_ms("a", max_prune=0.5, max_unify=0.25) == pytest.approx(0.25)
    again = LatencyModel.from_dict(lm.to_dict())
    assert np.array_equal(again.tables["a"], lm.tables["a"])
    old = {k: v for k, v in lm.to_dict().items() if k != "format"}  # a table of the absolute-unify format
    with pytest.raises(ValueError, match="format"):
        LatencyModel.from_dict(old)


def test_latency_table_is_measured_then_cached(tmp_path):
    model = _small_cnn()
    grid = (0.0, 0.5, 0.9)
    lm = build_latency_model(model, (3, 16, 16), threads=1, grid=grid, cache_dir=tmp_path, progress=False,
                             warmup=1, repeats=3, min_seconds=0)
    assert lm.layer_names == ["0", "3", "7"]
    for table in lm.tables.values():
        assert table.shape == (3, 3) and bool(np.all(table > 0))
    p, u = lm.points()  # every grid point a feasible policy; the last column unifies all that is left
    assert p[2, 2] == 0.9 and u[2, 2] == pytest.approx(0.1) and u[0, 2] == 1.0 and bool(np.all(p + u <= 1 + 1e-12))
    assert lm.fixed_ms >= 0 and set(lm.meta["engines"]) == set(default_modes()) and lm.meta["runtime"] == "lean"
    assert lm.meta["baseline_engine"] in available_engines() and all(ms > 0 for ms in lm.meta["engines"].values())
    assert lm.meta["baseline_precision"] == lm.meta["precisions"][lm.meta["baseline_engine"]]
    files = list(tmp_path.glob("latency-*.json"))
    assert len(files) == 1
    again = build_latency_model(model, (3, 16, 16), threads=1, grid=grid, cache_dir=tmp_path, progress=False,
                                warmup=1, repeats=3, min_seconds=0, check_cache=False)
    assert all(np.array_equal(again.tables[k], lm.tables[k]) for k in lm.tables)
    other = build_latency_model(model, (3, 16, 16), batch_size=2, threads=1, grid=grid, cache_dir=tmp_path,
                                progress=False, warmup=1, repeats=3, min_seconds=0)
    assert len(list(tmp_path.glob("latency-*.json"))) == 2  # another batch size is another key
    dense = {k: LayerAction() for k in lm.layer_names}
    # nothing compressed: the compiled model's own time; ratios divide by the fastest dense engine's
    assert lm.predict(dense) == pytest.approx(lm.fixed_ms + sum(t[0, 0] for t in lm.tables.values()))
    # the baseline: the fastest engine at its default precision (OpenVINO pinned to f32 is a reported rival only)
    assert lm.dense_ms == min(lm.meta["engines"][e] for e in available_engines()) == lm.baseline_ms
    assert other.dense_ms > 0
    with pytest.raises(ConfigError, match="grid"):
        build_latency_model(model, (3, 16, 16), grid=(0.5, 0.9), cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="min_seconds"):
        build_latency_model(model, (3, 16, 16), cache_dir=tmp_path, progress=False, min_seconds=-1)


def test_tables_time_the_structure_not_the_weights_zeros():
    model = _small_cnn()
    specs = compressible_layers(model)
    with torch.no_grad():
        model[0].weight[:, :2] = 0  # a pruned checkpoint: the plan would skip these windows at every grid point
    copy = without_zeros(model, specs)
    for spec in specs:
        w, original = copy.get_submodule(spec.name).weight, model.get_submodule(spec.name).weight
        assert bool((w != 0).all())
        assert torch.equal(w[original != 0], original[original != 0])  # only the zeros change
    assert int((model[0].weight == 0).sum()) == 16 * 2 * 9  # the caller's model is left as it was


def test_measure_and_check_whole_model(tmp_path):
    model = _small_cnn()
    g = torch.Generator().manual_seed(0)
    structures = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            shape = BlockShape(8, 4) if isinstance(m, nn.Conv2d) else BlockShape(8, 8)
            structures[name] = random_structure(block_grid(tuple(m.weight.shape), shape), 0.75, 0.0, g)
    r = measure_model_ms(model, structures, (3, 16, 16), batch_size=2, threads=1, warmup=2, repeats=5, min_seconds=0)
    assert set(r) == {"engines", "precisions", "baseline", "best_engine", "best_dense_ms", "compressed_ms",
                      "latency_ratio", "speedup", "rivals", "runtime", "precision", "fallback", "segments", "notes"}
    assert r["precision"] == "fp32"  # the library's default; the CLI's is auto
    assert r["fallback"] is None and r["segments"] is None  # one native plan, no node on ONNX Runtime
    assert r["runtime"] == "lean"  # the small CNN lowers to one native plan
    assert set(r["engines"]) == set(default_modes()) and r["notes"] == []
    assert r["best_dense_ms"] == min(r["engines"][e] for e in available_engines()) == r["engines"][r["best_engine"]]
    assert r["rivals"]["default"]["engine"] == r["best_engine"] and r["rivals"]["f32"]["precision"] == "f32"
    assert r["compressed_ms"] > 0 and r["latency_ratio"] == pytest.approx(1 / r["speedup"])
    # a median of per-round ratios against the fastest engine: near, not equal to, the ratio of the medians
    assert 0.5 < r["latency_ratio"] / (r["compressed_ms"] / r["best_dense_ms"]) < 2
    lm = build_latency_model(model, (3, 16, 16), threads=1, grid=(0.0, 0.5, 0.9), cache_dir=tmp_path,
                             progress=False, warmup=1, repeats=3, min_seconds=0)
    check = check_latency_model(model, lm, (3, 16, 16), threads=1, policies=3, repeats=3, progress=False, min_seconds=0)
    assert len(check["rows"]) == 3
    assert check["max_error"] >= check["median_error"] >= 0
    assert check["max_ms_error"] >= check["median_ms_error"] >= 0
    for row in check["rows"]:
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0 and row["dense_ms"] > 0
        assert row["predicted_ratio"] == pytest.approx(row["predicted_ms"] / lm.dense_ms)
        assert 0 < row["measured_ratio"] < 100 and row["ratio_error"] >= 0
    with pytest.raises(ConfigError, match="input shape"):
        measure_model_ms(model, structures, (3, 0, 16))


def test_rounds_span_at_least_min_seconds():
    """Rounds go on past ``repeats`` until ``min_seconds`` have passed, so a table sees more than one phase
    of a drifting machine; without it, exactly ``repeats`` rounds."""
    nap = lambda: time.sleep(0.01)  # noqa: E731
    spread = interleaved_samples({"a": nap, "b": nap}, warmup=0, repeats=2, warm=False, min_seconds=0.3)
    # every round takes at least 20 ms (two naps): the rounds before the last took less than 0.3 s in all (else
    # the loop had stopped), and all of them at least 0.3 s less the timer's own share, so it went past repeats
    before_last = sum(spread["a"][:-1]) + sum(spread["b"][:-1])
    assert len(spread["a"]) == len(spread["b"]) > 2 and 20.0 * (len(spread["a"]) - 1) <= before_last < 300.0
    assert len(interleaved_samples({"a": nap}, warmup=0, repeats=2, warm=False)["a"]) == 2


def test_cached_table_is_checked_against_a_quick_timing(tmp_path, capsys):
    """A cached table whose nothing-compressed ratio no longer matches a quick timing is measured again."""
    import json

    model = _small_cnn()
    kwargs = dict(threads=1, grid=(0.0, 0.5), cache_dir=tmp_path, warmup=1, repeats=3, min_seconds=0)
    lm = build_latency_model(model, (3, 16, 16), progress=False, **kwargs)
    (path,) = tmp_path.glob("latency-*.json")
    data = json.loads(path.read_text())
    data["tables"] = {k: (np.asarray(v) * 5).tolist() for k, v in data["tables"].items()}  # a table from another world
    data["fixed_ms"] *= 5
    path.write_text(json.dumps(data))
    again = build_latency_model(model, (3, 16, 16), progress=True, **kwargs)
    assert "measuring it again" in capsys.readouterr().err
    first = next(iter(lm.tables))
    assert again.tables[first][0, 0] < 3 * lm.tables[first][0, 0]  # measured anew, not the tampered 5x
    unchecked = build_latency_model(model, (3, 16, 16), progress=False, check_cache=False, **kwargs)
    assert all(np.array_equal(unchecked.tables[k], again.tables[k]) for k in again.tables)  # the cache as written


def test_a_table_disturbed_while_measured_is_measured_again(tmp_path, capsys, monkeypatch):
    """A fresh table whose sum for the nothing-compressed model disagrees with that model timed whole beside the
    engines (the machine's speed changed between the two) is measured again; one that agrees is kept at once."""
    from uniprune.compressors.latency import table

    real, calls = table.baseline_rounds, []

    def disturbed_once(*args, **kwargs):
        base = real(*args, **kwargs)
        calls.append(base["compressed_ms"])
        return {**base, "compressed_ms": base["compressed_ms"] * (3.0 if len(calls) == 1 else 1.0)}

    monkeypatch.setattr(table, "baseline_rounds", disturbed_once)
    monkeypatch.setattr(table, "table_agreement", lambda lm, base: base["compressed_ms"] / calls[-1])
    kwargs = dict(threads=1, grid=(0.0, 0.5), cache_dir=tmp_path, warmup=1, repeats=3, min_seconds=0)
    lm = build_latency_model(_small_cnn(), (3, 16, 16), progress=False, **kwargs)
    assert len(calls) == 2 and "3.00x that model timed whole" in capsys.readouterr().err
    assert lm.meta["agreement"] == 1.0
    build_latency_model(_small_cnn(), (3, 16, 16), progress=False, **kwargs, check_cache=False)  # cached: no rounds
    assert len(calls) == 2

    monkeypatch.setattr(table, "table_agreement", lambda lm, base: 2.0)  # never agrees: kept after the last try
    lm = build_latency_model(_small_cnn(), (3, 16, 16), progress=False, **kwargs | {"cache_dir": tmp_path / "b"})
    assert len(calls) == 2 + table.TABLE_ATTEMPTS and "kept after 3 measurements" in capsys.readouterr().err
    assert lm.meta["agreement"] == 2.0


def test_python_runtime_and_the_fallback():
    """The Python path is still there on request; a model with a node the plan cannot lower runs it on ONNX Runtime
    inside the plan (tests/test_plan_fallback.py: the Python path only where ONNX cannot export it either)."""
    model = _small_cnn()
    r = measure_model_ms(model, {}, (3, 16, 16), threads=1, warmup=1, repeats=2, min_seconds=0, runtime="python")
    assert r["runtime"] == "python" and r["notes"] == []
    r = measure_model_ms(model, {}, (3, 16, 16), threads=1, warmup=1, repeats=2, min_seconds=0, runtime="artifact")
    assert r["runtime"] == "artifact" and r["compressed_ms"] > 0  # exported, run through the artifact's own loader

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.exp(self.conv(x)).mean((2, 3))  # the plan has no exp

    r = measure_model_ms(Gated().eval(), {}, (3, 8, 8), threads=1, warmup=1, repeats=2, min_seconds=0)
    assert r["runtime"] == "lean" and r["fallback"] is None  # exp runs on ONNX Runtime inside the plan
    assert r["segments"] == [{"runs_on": "native", "nodes": ["conv"]}, {"runs_on": "onnxruntime", "nodes": ["exp"]},
                             {"runs_on": "native", "nodes": ["mean"]}]
    r = measure_model_ms(Gated().eval(), {}, (3, 8, 8), threads=1, warmup=1, repeats=2, min_seconds=0, runtime="python")
    assert r["runtime"] == "python" and r["segments"] is None
    with pytest.raises(ConfigError, match="runtime"):
        measure_model_ms(model, {}, (3, 16, 16), runtime="jit")


def test_a_layer_is_priced_in_its_own_block_shape(tmp_path):
    from uniprune.compressors.core.structure import BlockShape
    from uniprune.compressors.latency.model import LatencyModel
    from uniprune.compressors.latency.shaped import build_shaped_latency_model

    model = _small_cnn()
    shapes = [BlockShape(8, 4), BlockShape(1, 1)]
    lm = build_shaped_latency_model(model, (3, 16, 16), shapes, threads=1, grid=(0.0, 0.5, 0.9), cache_dir=tmp_path,
                                    progress=False, warmup=1, repeats=3, min_seconds=0)
    assert lm.shapes == ["1x1"] and lm.meta["shapes"] == ["8x4", "1x1"]
    convs = [n for n in lm.layer_names if n != "7"]  # "7" is the linear: priced in its own shape only
    assert set(lm.shape_tables["1x1"]) == set(convs)
    fine = {n: LayerAction(0.5, 0.0, BlockShape(1, 1)) for n in convs}
    coarse = {n: LayerAction(0.5, 0.0) for n in convs}
    expect = lm.fixed_ms + lm.tables["7"][0, 0] + sum(lm.shape_tables["1x1"][n][1, 0] for n in convs)
    assert lm.predict(fine) == pytest.approx(expect)
    assert lm.predict(coarse) == pytest.approx(lm.fixed_ms + sum(lm.tables[n][0 if n == "7" else 1, 0] for n in lm.layer_names))
    assert lm.fastest_ms(convs[0]) == pytest.approx(min(lm.tables[convs[0]].min(), lm.shape_tables["1x1"][convs[0]].min()))
    again = LatencyModel.from_dict(lm.to_dict())
    assert again.predict(fine) == pytest.approx(lm.predict(fine))
    with pytest.raises(KeyError, match="4x1"):
        lm.layer_ms(convs[0], 0.5, 0.0, BlockShape(4, 1))
    with pytest.raises(ValueError, match="not a layer"):
        LatencyModel(lm.prune_grid, lm.unify_grid, lm.tables, lm.fixed_ms, shape_tables={"1x1": {"nope": lm.tables["0"]}})
