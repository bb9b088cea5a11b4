"""`uniprune replay`."""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.compressors.errors import NotAvailableError

NAME = "replay"
HELP = "replay (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise NotAvailableError("'uniprune replay' is not yet available in this version")
