"""`uniprune demo`: the whole job on the embedded digits data, in a few minutes on a laptop.

The flags are :class:`~uniprune.search.api.DemoSpec`'s; the job is :func:`uniprune.search.api.demo`, which
runs every step through the Python API and logs the command line that runs it alone.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.search.api import DemoSpec, demo

from .flags import add_spec_arguments, spec_from

NAME = "demo"
HELP = "the whole job on the embedded digits data: train, search, ADMM fine-tune, export, bench, report (a few minutes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, DemoSpec)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return demo(spec_from(DemoSpec, args))
