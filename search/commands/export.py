"""`uniprune export`: a compressed checkpoint as a deployable artifact.

The flags are :class:`~uniprune.search.api.ExportSpec`'s; the job is :func:`uniprune.search.api.export`.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.search.api import ExportSpec, export

from .flags import add_spec_arguments, spec_from

NAME = "export"
HELP = "write a compressed checkpoint as a deployable artifact: one native plan, its C sources and a numpy-only loader"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, ExportSpec)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return export(spec_from(ExportSpec, args)).to_dict()
