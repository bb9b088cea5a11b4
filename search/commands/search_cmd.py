"""`uniprune search`: search a per-layer (prune, unify) policy under a latency budget (AMC).

The flags are :class:`~uniprune.search.api.SearchSpec`'s; the job is :func:`uniprune.search.api.search`.
The run directory receives the best policy so far, one CSV row and TensorBoard scalars per episode, and the
searcher's state, after every episode; Ctrl-C stops after the episode in progress (a second Ctrl-C stops at
once, losing only that episode) and ``--resume`` goes on from the last finished episode, with the run's
stored options for those not typed.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniprune.compressors.formats.run_dir import RESUMABLE_CHANGES, RunDir, read_json_object
from uniprune.search.api import SearchSpec, search
from uniprune.search.api.search import check_run_path

from .flags import add_spec_arguments, spec_from

NAME = "search"
HELP = "search a per-layer prune/unify policy under a latency budget (AMC-style DDPG, Optuna, random or uniform)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, SearchSpec)


def build_spec(args: argparse.Namespace) -> SearchSpec:
    """The spec the flags say; on ``--resume``, options not typed take the run's stored values (the episode target
    included). An option typed with another value than the stored one stays, and the run directory refuses the
    resume naming it (except those that may change, such as a new --episodes target)."""
    spec = spec_from(SearchSpec, args)
    if not spec.resume:
        return spec
    stored = read_json_object(RunDir(check_run_path(spec)).config_path, fix="start over with --force")
    keys = [k for k in stored if k not in RESUMABLE_CHANGES or k == "episodes"]
    return spec_from(SearchSpec, args, stored=stored, keys=keys)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return search(build_spec(args)).to_dict()



