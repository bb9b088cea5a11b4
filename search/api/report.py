"""``report``: plots and ``report.md`` for a run directory."""

from __future__ import annotations

from dataclasses import dataclass

from .result import Result
from .spec import REQUIRED, Spec, option


@dataclass(frozen=True, kw_only=True)
class ReportSpec(Spec):
    """The run directory a search (and fine-tune) wrote."""

    run_dir: str = option(REQUIRED, "the run directory a search (and fine-tune) wrote")


@dataclass(frozen=True)
class ReportResult(Result):
    """The files written, the markdown report last."""

    files: list[str]
    report: str


def report(spec: ReportSpec) -> ReportResult:
    """Write the run's plots and ``report.md``."""
    from pathlib import Path

    from uniprune.compressors.formats.run_dir import lock_run_dir
    from uniprune.search.report import write_report

    if Path(spec.run_dir).is_dir():
        lock_run_dir(spec.run_dir)  # not while another process writes the run
    files = [str(f) for f in write_report(spec.run_dir)]
    return ReportResult(files=files, report=files[-1])
