"""The four packages stay small: no function over 80 lines, no module over 450 (benchmarks/sizes.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sizes import MAX_FUNCTION, MAX_MODULE, oversized  # noqa: E402


def test_no_long_function_or_module_in_the_four_packages():
    functions, modules = oversized(("search", "envs", "agent", "compressors"))
    assert (MAX_FUNCTION, MAX_MODULE) == (80, 450)
    assert functions == [] and modules == [], (functions, modules)


def test_the_size_check_finds_what_it_should(tmp_path):
    pkg = tmp_path / "search"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    (pkg / "long.py").write_text(f"def long():\n{body}\n" + "\n" * 400)
    functions, modules = oversized(("search",), root=tmp_path)
    assert functions == [("search/long.py:1 long", 86)] and modules == [("search/long.py", 486)]
