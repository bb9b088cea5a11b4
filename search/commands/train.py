"""`uniprune train`: train a zoo model from scratch, or go on training a checkpoint, and save it.

The flags are :class:`~uniprune.search.api.TrainSpec`'s; the job is :func:`uniprune.search.api.train`.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.search.api import TrainSpec, train

from .flags import add_spec_arguments, spec_from

NAME = "train"
HELP = "train a model from scratch (or go on training --checkpoint) and save a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, TrainSpec)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return train(spec_from(TrainSpec, args)).to_dict()
