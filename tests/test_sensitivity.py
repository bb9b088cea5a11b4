"""The knapsack's per-layer scores kept in a run's sensitivity.json: reused at another budget and on resume, only
where they were scored the same way; a damaged file or a mismatched run is one line; the report reads them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from uniprune.compressors.core.errors import ConfigError, RunDirError
from uniprune.search import api, sensitivity
from uniprune.search.knapsack import LayerOptions, option_key, score_options
from uniprune.search.report import write_report

FAST_ENV = api.EnvSpec(latency=api.LatencySpec(latency_model="macs"), scoring=api.ScoringSpec(val_samples=48, eval_batch_size=48),
                       seed=1)


def _options() -> list[LayerOptions]:
    return [LayerOptions("a", [(0.0, 0.0), (0.5, 0.0), (0.9, 0.0)], np.array([1.0, 0.5, 0.1])),
            LayerOptions("b", [(0.0, 0.0), (0.5, 0.0, "1x1")], np.array([1.0, 0.6]))]


def test_known_costs_are_not_scored_again() -> None:
    asked = []

    def accuracy_of(policy):
        asked.append(policy)
        return 0.7

    known = {option_key("a", (0.5, 0.0)): 0.05, option_key("b", (0.5, 0.0, "1x1")): math.inf}
    scored = score_options(_options(), accuracy_of, 0.9, progress=False, known=known)
    assert asked == [{"a": (0.9, 0.0)}]  # the one option nobody scored
    assert scored[0].cost.tolist() == pytest.approx([0.0, 0.05, 0.2]) and scored[1].cost[1] == math.inf


def test_the_file_round_trips_and_refuses_damage(tmp_path) -> None:
    scored = score_options(_options(), lambda p: math.nan if "b" in p else 0.8, 0.9, progress=False)
    path = sensitivity.write(tmp_path / sensitivity.FILE, scored, 0.9, {"seed": 0})
    data = sensitivity.read(path)
    assert data["layers"]["b"][1] == {"prune": 0.5, "unify": 0.0, "shape": "1x1", "ms": 0.6, "val_accuracy_lost": None}
    costs = sensitivity.known_costs(data)
    assert costs[option_key("a", (0.9, 0.0))] == pytest.approx(0.1) and costs[option_key("b", (0.5, 0.0, "1x1"))] == math.inf
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    for damage in ("{", json.dumps({"format": "other"}),
                   json.dumps({**data, "layers": {"a": [{"prune": "x", "unify": 0}]}}),
                   json.dumps({**data, "layers": {"a": [{"prune": 0.5, "unify": 0, "val_accuracy_lost": "lots"}]}})):
        path.write_text(damage)
        with pytest.raises(RunDirError, match="sensitivity.json"):
            sensitivity.read(path)


def test_another_budget_reuses_the_scores_and_a_different_scoring_is_refused(tmp_path, monkeypatch) -> None:
    first = api.search(api.SearchSpec(env=FAST_ENV.replace(latency_budget=0.8), episodes=3, run_dir=str(tmp_path / "a")))
    scores = json.loads((tmp_path / "a" / sensitivity.FILE).read_text())
    assert set(scores["layers"]) and scores["scoring"]["seed"] == 1

    from uniprune.search import knapsack

    real, asked = knapsack.score_options, []

    def counting(options, accuracy_of, dense, **kw):
        return real(options, lambda p: asked.append(p) or accuracy_of(p), dense, **kw)

    monkeypatch.setattr(knapsack, "score_options", counting)
    second = api.search(api.SearchSpec(env=FAST_ENV.replace(latency_budget=0.6), episodes=3, run_dir=str(tmp_path / "b"),
                                       sensitivity_from=first.run_dir))
    assert asked == [] and json.loads((tmp_path / "b" / sensitivity.FILE).read_text())["layers"] == scores["layers"]
    assert second.latency_ratio <= 0.6 + 1e-9

    with pytest.raises(ConfigError, match=r"scored another way \(seed: 1 against 2\)"):
        api.search(api.SearchSpec(env=FAST_ENV.replace(latency_budget=0.6, seed=2), episodes=3,
                                  run_dir=str(tmp_path / "c"), sensitivity_from=str(tmp_path / "a" / sensitivity.FILE)))
    assert not (tmp_path / "c").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="no sensitivity.json"):
        api.search(api.SearchSpec(env=FAST_ENV, episodes=3, run_dir=str(tmp_path / "d"), sensitivity_from=str(tmp_path)))
    with pytest.raises(ConfigError, match="--searcher knapsack"):
        api.SearchSpec(env=FAST_ENV, searcher="random", sensitivity_from=first.run_dir)

    resumed = api.search(api.SearchSpec(env=FAST_ENV.replace(latency_budget=0.6), episodes=4, run_dir=str(tmp_path / "b"),
                                        resume=True))
    assert resumed.episodes_this_run == 1 and asked == []  # a resumed run reads its own scores back

    report = write_report(tmp_path / "b")[-1].read_text()
    assert "val top-1 lost alone (points)" in report


def test_the_report_names_the_layers_that_cost_the_most(tmp_path) -> None:
    api.search(api.SearchSpec(env=FAST_ENV.replace(latency_budget=0.5), episodes=3, run_dir=str(tmp_path / "a")))
    data = json.loads((tmp_path / "a" / sensitivity.FILE).read_text())
    for options in data["layers"].values():  # make every option cost: the chosen ones must then be named
        for i, o in enumerate(options):
            o["val_accuracy_lost"] = 0.0 if o["prune"] + o["unify"] == 0 else 0.01 * (i + 1)
    (tmp_path / "a" / sensitivity.FILE).write_text(json.dumps(data))
    report = write_report(tmp_path / "a")[-1].read_text()
    rows = [r for r in report.splitlines() if r.startswith("| ") and "---" not in r and "layer" not in r]
    lost = [r.split("|")[-2].strip() for r in rows]
    assert rows and all(v == "0.00" or float(v) > 0 for v in lost) and "Where the accuracy goes" in report


def test_a_plan_that_loses_much_before_fine_tuning_is_warned_about() -> None:
    from uniprune.search.api.search import PLAN_LOSS_WARNING, plan_warnings

    assert plan_warnings(0.80, 0.85, 0.75, 0.66) == [] and plan_warnings(None, 0.85, 0.75, 0.66) == []
    (w,) = plan_warnings(0.276, 0.879, 0.75, 0.6626)
    assert "27.6% validation top-1 against 87.9% dense" in w and "60.3 points lost" in w and "--latency-budget" in w
    assert plan_warnings(0.85 - PLAN_LOSS_WARNING - 0.01, 0.85, 0.5, 0.4)
