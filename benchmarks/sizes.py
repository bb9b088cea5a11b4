"""Functions over 80 lines and modules over 450 lines in uniprune's four packages (issue 19's size check).

    python benchmarks/sizes.py [--packages search envs agent compressors]

Lines are physical lines of the function's definition (decorators to the last line of its body) and of
the module file. Prints one line per offender and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "envs", "agent", "compressors")
MAX_FUNCTION, MAX_MODULE = 80, 450


def oversized(packages: tuple[str, ...] = PACKAGES, *, root: Path = ROOT) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(functions, modules)`` over the limits: ``("path:line name", lines)`` and ``("path", lines)``."""
    functions, modules = [], []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            rel = str(path.relative_to(root))
            lines = len(text.splitlines())
            if lines > MAX_MODULE:
                modules.append((rel, lines))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    length = node.end_lineno - start + 1
                    if length > MAX_FUNCTION:
                        functions.append((f"{rel}:{node.lineno} {node.name}", length))
    return functions, modules


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packages", nargs="+", default=list(PACKAGES))
    args = p.parse_args(argv)
    functions, modules = oversized(tuple(args.packages))
    for name, n in functions:
        print(f"function {name}: {n} lines (> {MAX_FUNCTION})")
    for name, n in modules:
        print(f"module {name}: {n} lines (> {MAX_MODULE})")
    print(f"{len(functions)} function(s) over {MAX_FUNCTION} lines, {len(modules)} module(s) over {MAX_MODULE} in {', '.join(args.packages)}")
    return 1 if functions or modules else 0


if __name__ == "__main__":
    sys.exit(main())
