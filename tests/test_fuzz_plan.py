"""The plan fuzzer (benchmarks/fuzz_plan.py), bounded to a few seconds: mutated plan.json, weights.bin (sha256
updated, so the verifier's deeper checks run) and policy files. Any exception other than the project's
one-line errors, any crash or hang of the native worker that runs the plans the verifier accepts, fails it.
The long run, on the AddressSanitizer build, is ``benchmarks/fuzz_plan.py --asan`` (docs/RESULTS.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_plan  # noqa: E402
from uniprune.compressors.native import uniprune_lean  # noqa: E402


@pytest.fixture(scope="module")
def library() -> Path:
    return fuzz_plan.build_library(asan=False)


@pytest.fixture(scope="module")
def seeds() -> list:
    return fuzz_plan.seed_plans()


def test_mutated_plans_and_policies_give_one_line_errors_or_run(library, seeds):
    counts = fuzz_plan.fuzz(6.0, 10**9, library, seed=21, seeds=seeds)  # findings_dir None: the first finding raises
    assert counts["findings"] == 0
    assert counts["tried"] >= 300, dict(counts)
    assert counts["policies"] >= 20 and counts["rejected"] >= 100, dict(counts)
    assert counts["run"] >= 10 and counts["ran_ok"] >= 1, dict(counts)  # the native path was exercised


def test_every_seed_plan_verifies_and_every_op_kind_is_seeded(seeds):
    kinds = set()
    for header, blob in seeds:
        text = uniprune_lean.json.dumps(header).encode()
        assert fuzz_plan.check_plan(text, blob)
        kinds |= {op["kind"] for op in header["ops"]}
    # every kind the lowering emits but copy (only for an identity model), channel_mul and channel_shuffle
    assert kinds == set(range(1, 19)) - {10, 12, 14}


def test_an_arrays_shape_is_only_its_element_count(seeds):
    """The long fuzz run's one finding (a traceback): a kernel's panel_ptr indexed as [1, P + 1] instead of
    [P + 1]. Its elements are what counts, so the plan is accepted, and runs."""
    header, blob = seeds[2]  # ResNet-20: direct convs
    rec = header["arrays"]["op0.panel_ptr"]
    edited = {**header, "arrays": {**header["arrays"], "op0.panel_ptr": {**rec, "shape": [1, *rec["shape"]]}}}
    assert fuzz_plan.check_plan(uniprune_lean.json.dumps(edited).encode(), blob)
