"""Specs filled from what a run stored: options the user did not type take the run's values.

``search --resume`` takes the run's ``config.json`` (the episode target included; an option typed with
another value stays, and the run directory refuses the resume naming it, except those that may change such
as a new ``--episodes``). ``replay --agent`` takes the agent's run options (:data:`FROM_RUN`), so the actions
mean the fractions they meant in the search; ``replay --policy`` takes the policy's budget.
"""

from __future__ import annotations

import argparse
import sys

from uniprune.compressors.core.policy import Policy
from uniprune.compressors.formats.run_dir import RESUMABLE_CHANGES, RunDir, read_json_object
from uniprune.search.api import EnvSpec, ReplaySpec, SearchSpec
from uniprune.search.api.paths import check_out_file
from uniprune.search.api.replay import FROM_RUN, agent_run_options
from uniprune.search.api.search import check_run_path

from .flags import spec_from, taken_from


def search_spec(args: argparse.Namespace) -> SearchSpec:
    """The search the flags say, over the run's stored options on ``--resume``."""
    spec = spec_from(SearchSpec, args)
    if not spec.resume:
        return spec
    stored = read_json_object(RunDir(check_run_path(spec)).config_path, fix="start over with --force")
    keys = [k for k in stored if k not in RESUMABLE_CHANGES or k == "episodes"]
    return spec_from(SearchSpec, args, stored=stored, keys=keys)


def replay_spec(args: argparse.Namespace) -> ReplaySpec:
    """The replay the flags say, over the agent's run options (``--agent``) or the policy's budget (``--policy``)."""
    if getattr(args, "agent", None):
        stored = agent_run_options(args.agent)
        taken = taken_from(stored, args, FROM_RUN, EnvSpec)
        if taken:
            print(f"uniprune replay: from the agent's run: {', '.join('--' + k.replace('_', '-') for k in taken)}",
                  file=sys.stderr)
        return spec_from(ReplaySpec, args, stored=stored)
    spec = spec_from(ReplaySpec, args)  # checks the options before the policy is read
    check_out_file(spec.out, spec.force, example="policy.json")  # and the output: a refused write fails at once
    budget = Policy.load(args.policy).latency_budget
    if budget is None or "latency_budget" in vars(args):
        return spec
    return spec.replace(latency_budget=budget)
