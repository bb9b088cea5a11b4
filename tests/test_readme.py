"""The README's Python example runs as written (on digits, in a scratch folder) and prints its summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """The README's fenced ``python`` blocks, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys, cache_dir, single_thread):
    blocks = python_blocks()
    assert len(blocks) == 1 and "api.search(" in blocks[0] and "api.finetune(" in blocks[0] and "api.export(" in blocks[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert re.search(r"\d\.\d{3} dense -> \d\.\d{3} compressed, \d\.\d{2} of the size; predicted latency ratio "
                     r"0\.[0-6]\d", printed), printed
    assert (tmp_path / "runs/py/deploy/plan.json").is_file() and (tmp_path / "runs/py/run/policy.json").is_file()
