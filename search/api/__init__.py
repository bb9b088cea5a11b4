"""uniprune from Python: frozen specs in, result dataclasses out (the CLI maps its flags onto these).

::

    from uniprune.search import api

    env = api.EnvSpec(model=api.ModelSpec(checkpoint="dense.pt"), budget=api.BudgetSpec(latency_budget=0.9))
    found = api.search(api.SearchSpec(env=env, episodes=50, warmup=20, run_dir="runs/x"))
    tuned = api.finetune(api.FinetuneSpec(run_dir=found.run_dir, epochs=6))
    api.export(api.ExportSpec(compressed=tuned.checkpoint, out="deploy"))

Every spec checks its ranges on construction (:class:`~uniprune.compressors.core.errors.ConfigError`, one
line naming the option); every job returns a frozen result with ``to_dict()``.
"""

from .bench import BenchResult, bench
from .demo import demo
from .env import build_env
from .evaluate import EvalResult
from .evaluate import evaluate_checkpoint as evaluate
from .export import ExportResult, export
from .finetune import FinetuneResult, finetune
from .finetune_spec import FinetuneSpec
from .replay import ReplayResult, replay
from .replay import agent_run_options as replay_options
from .search import SearchResult, search
from .specs import (
    BenchSpec,
    BudgetSpec,
    DataSpec,
    DemoSpec,
    EnvSpec,
    EvalSpec,
    ExportSpec,
    LatencySpec,
    ModelSpec,
    ReplaySpec,
    ScoringSpec,
    SearchSpec,
    TrainSpec,
)
from .train import TrainResult, train

__all__ = ["EvalResult", "EvalSpec", "evaluate", "replay_options", "DemoSpec", "demo", "BenchResult", "BenchSpec", "bench", "BudgetSpec", "DataSpec", "EnvSpec", "LatencySpec", "ModelSpec", "ReplayResult", "ReplaySpec", "ScoringSpec",
           "SearchResult", "SearchSpec", "TrainResult", "TrainSpec", "FinetuneResult", "FinetuneSpec", "finetune", "ExportResult", "ExportSpec", "export", "build_env", "replay",
           "search", "train"]
