"""`uniprune report`."""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.compressors.errors import NotAvailableError

NAME = "report"
HELP = "report (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise NotAvailableError("'uniprune report' is not yet available in this version")
