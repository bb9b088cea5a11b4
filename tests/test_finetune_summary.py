"""The fine-tune's dense-against-compressed table, its layer list and warnings (search/finetune_summary.py)."""

from __future__ import annotations

from uniprune.search.finetune_summary import comparison_table, layer_table, summary_markdown

TIMING = {"engines": {"torch": 4.0, "onnxruntime": 1.0, "openvino": 0.8, "openvino:f32": 1.2},
          "precisions": {"torch": "f32", "onnxruntime": "f32", "openvino": "bf16", "openvino:f32": "f32"},
          "best_engine": "openvino", "best_dense_ms": 0.8, "compressed_ms": 0.4, "runtime": "lean", "precision": "fp32"}


def test_the_table_has_every_engine_the_compressed_row_and_the_verdict() -> None:
    summary = {"method": "admm", "accuracy": 0.851, "dense_accuracy": 0.875, "size_ratio": 0.48, "timing": TIMING,
               "latency_budget": 0.5, "budget_verdict": "meets the budget 0.5"}
    lines = comparison_table(summary)
    assert lines[2] == "| dense | torch | f32 | 87.50 % | 4.000 | 0.20x | 1.00 |"
    assert lines[4] == "| dense | openvino (baseline) | bf16 | 87.50 % | 0.800 | 1.00x | 1.00 |"
    assert lines[6] == "| **admm** | uniprune (lean) | fp32 | **85.10 %** | 0.400 | **2.00x** | 0.48 |"
    assert lines[-1] == "Latency budget 0.5: meets the budget 0.5."
    untimed = comparison_table({"method": "masked", "accuracy": 0.8, "dense_accuracy": 0.9, "size_ratio": 0.5})
    assert untimed[2] == "| dense | torch | f32 | 90.00 % | – | – | 1.00 |" and untimed[3].endswith("| – | – | 0.50 |")


def test_every_layer_is_listed_and_dense_ones_are_marked() -> None:
    rows = layer_table([{"name": "conv1", "shape": [16, 3, 3, 3], "dense": True, "block": "8x4"},
                        {"name": "layer1.0.conv1", "shape": [16, 16, 3, 3], "block": "1x1", "prune": 0.5, "unify": 0.25}])
    assert rows[2] == "| conv1 (dense) | 16x3x3x3 | 8x4 | 0 % | 0 % |"
    assert rows[3] == "| layer1.0.conv1 | 16x16x3x3 | 1x1 | 50 % | 25 % |"
    channel = layer_table([{"name": "layer1.0.conv1", "shape": [8, 16, 3, 3], "channels": [8, 16]},
                           {"name": "conv1", "shape": [16, 3, 3, 3], "channels": [16, 16], "dense": True}])
    assert channel[2:] == ["| layer1.0.conv1 | 8x16x3x3 | 8 of 16 |", "| conv1 (dense) | 16x3x3x3 | 16 of 16 |"]
    text = summary_markdown({"run": "mine", "method": "admm", "epochs_run": 2, "seconds": 61, "warnings": ["raise --epochs"],
                             "layers": [{"name": "fc", "shape": [10, 64], "dense": True}]})
    assert text.startswith("## Fine-tune: mine (admm, 2 epochs, 61 s)") and "- raise --epochs" in text and "| fc (dense) |" in text
