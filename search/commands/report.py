"""`uniprune report`: PNG plots and report.md for a run directory."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "report"
HELP = "write plots (reward, accuracy vs latency, per-layer policy, ADMM curves) and report.md for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="the run directory a search (and fine-tune) wrote")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from uniprune.search.report import write_report
    from uniprune.search.run_dir import lock_run_dir

    if Path(args.run_dir).is_dir():
        lock_run_dir(args.run_dir)  # not while another process writes the run
    files = write_report(args.run_dir)
    return {"files": [str(f) for f in files], "report": str(files[-1])}
