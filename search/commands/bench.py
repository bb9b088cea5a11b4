"""`uniprune bench`: time the dense engines against the compressed model on the real kernels.

The flags are :class:`~uniprune.search.api.BenchSpec`'s; the job is :func:`uniprune.search.api.bench`.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.search.api import BenchSpec, bench

from .flags import add_spec_arguments, spec_from

NAME = "bench"
HELP = "time the dense engines (torch, ONNX Runtime, OpenVINO) against the compressed model on the real kernels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, BenchSpec, exclude=("policy", "compressed"))
    source = parser.add_mutually_exclusive_group(required=True)
    add_spec_arguments(source, BenchSpec, only=("policy", "compressed"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    return bench(spec_from(BenchSpec, args)).to_dict()
