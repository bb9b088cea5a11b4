"""`uniprune finetune`: train a model into a policy's structure (ADMM, or masked retraining) and save it.

The flags are :class:`~uniprune.search.api.FinetuneSpec`'s; the job is :func:`uniprune.search.api.finetune`.
Run it under ``torchrun --nproc_per_node N -m uniprune.search finetune ...`` to train with DDP.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.search.api import FinetuneSpec, finetune

from .flags import add_spec_arguments, spec_from

NAME = "finetune"
HELP = "fine-tune a model into a policy's structure by ADMM (or masked retraining) and save the compressed model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, FinetuneSpec)


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = finetune(spec_from(FinetuneSpec, args)).to_dict()
    if result["latency_ratio"] is None:
        del result["latency_ratio"]  # not measured (--no-latency, or not rank 0): absent, as before the API
    return result
