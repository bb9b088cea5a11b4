"""`uniprune eval`: top-1 accuracy of a checkpoint (plain or compressed) on one split of a dataset.

The flags are :class:`~uniprune.search.api.EvalSpec`'s; the job is :func:`uniprune.search.api.evaluate`.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.search.api import EvalSpec, evaluate

from .flags import add_spec_arguments, spec_from

NAME = "eval"
HELP = "top-1 accuracy of a checkpoint, or of a compressed checkpoint, on a dataset split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, EvalSpec)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return evaluate(spec_from(EvalSpec, args)).to_dict()
