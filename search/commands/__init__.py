"""The CLI's verbs: each maps its flags (made from its spec's fields) onto a spec and calls its API job.

A :class:`Verb` has ``name``, ``help``, ``add_arguments(parser)`` and ``run(args) -> dict``; the options are
the spec's (:mod:`.flags`), those of ``exclusive`` one of which is required. Nothing here decides what a job
does: that is :mod:`uniprune.search.api`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uniprune.search import api
from uniprune.search.api.report import ReportSpec, report
from uniprune.search.api.spec import Spec

from .flags import add_spec_arguments, spec_from
from .stored import replay_spec, search_spec


@dataclass(frozen=True)
class Verb:
    """One verb: its name and help, the spec its flags fill, the job it runs."""

    name: str
    help: str
    spec: type[Spec]
    job: Callable[[Any], Any]
    #: options of which exactly one must be given (a mutually exclusive, required group)
    exclusive: tuple[str, ...] = ()
    #: the spec from the parsed flags, when the verb fills it from more than the flags (default: the flags alone)
    build: Callable[[argparse.Namespace], Spec] | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser, self.spec, exclude=self.exclusive)
        if self.exclusive:
            add_spec_arguments(parser.add_mutually_exclusive_group(required=True), self.spec, only=self.exclusive)

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        spec = self.build(args) if self.build else spec_from(self.spec, args)
        result = self.job(spec)
        return result if isinstance(result, dict) else result.to_dict()


COMMANDS = (
    Verb("train", "train a model from scratch (or go on training --checkpoint) and save a checkpoint", api.TrainSpec,
         api.train),
    Verb("eval", "top-1 accuracy of a checkpoint, or of a compressed checkpoint, on a dataset split", api.EvalSpec,
         api.evaluate),
    Verb("search", "search a per-layer prune/unify policy under a latency budget (a knapsack over the latency table by "
         "default; AMC-style DDPG, Optuna, random or uniform)", api.SearchSpec, api.search, build=search_spec),
    Verb("finetune", "fine-tune a model into a policy's structure by ADMM (or masked retraining), or prune whole channels, "
         "distilled from the dense model, for --epochs or a --time-budget; save it and print dense against compressed",
         api.FinetuneSpec, api.finetune),
    Verb("replay", "run a saved agent (or apply a saved policy) on a new model and write the policy it gives",
         api.ReplaySpec, api.replay, exclusive=("agent", "policy"), build=replay_spec),
    Verb("bench", "time the dense engines (torch, ONNX Runtime, OpenVINO; default precision, f32, int8) against the "
         "compressed model", api.BenchSpec, api.bench, exclusive=("policy", "compressed")),
    Verb("export", "write a compressed checkpoint (or a model projected onto a policy) as a deployable artifact: one "
         "native plan, its C sources and a numpy-only loader", api.ExportSpec, api.export,
         exclusive=("compressed", "policy")),
    Verb("report", "write plots (reward, accuracy vs latency, per-layer policy, ADMM curves) and report.md for a run",
         ReportSpec, report),
    Verb("demo", "the whole job on the embedded digits data: train, search, ADMM fine-tune, export, bench, report (a few "
         "minutes)", api.DemoSpec, api.demo),
)
