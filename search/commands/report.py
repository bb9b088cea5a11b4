"""`uniprune report`: PNG plots and report.md for a run directory."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "report"
HELP = "write plots (reward, accuracy vs latency, per-layer policy, ADMM curves) and report.md for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="the run directory a search (and fine-tune) wrote")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from uniprune.search.report import write_report

    files = write_report(args.run_dir)
    return {"files": [str(f) for f in files], "report": str(files[-1])}
