"""`uniprune replay`: run a saved agent (or apply a saved policy) on a new model and write the policy it gives.

The flags are :class:`~uniprune.search.api.ReplaySpec`'s; the job is :func:`uniprune.search.api.replay`.
With ``--agent RUN``, options the user leaves out are taken from the agent's run (its ``config.json``), so
the actions mean the same fractions they meant in the search. With ``--policy FILE``, ``--latency-budget``
left out is the policy's own. An agent is read without pickle; a stable-baselines3 ``agent.zip`` only with
``--trust-pickle``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from uniprune.compressors.core.policy import Policy
from uniprune.search.api import EnvSpec, ReplaySpec, replay
from uniprune.search.api.paths import check_out_file
from uniprune.search.api.replay import FROM_RUN, agent_run_options

from .flags import add_spec_arguments, spec_from, taken_from

NAME = "replay"
HELP = "run a saved agent (or apply a saved policy) on a new model and write the policy it gives"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, ReplaySpec, exclude=("agent", "policy"))
    source = parser.add_mutually_exclusive_group(required=True)
    add_spec_arguments(source, ReplaySpec, only=("agent", "policy"))


def build_spec(args: argparse.Namespace) -> ReplaySpec:
    """The spec the flags say, over the agent's run options (``--agent``) or the policy's budget (``--policy``)."""
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    return replay(build_spec(args)).to_dict()
