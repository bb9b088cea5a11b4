"""Does AMC's budget wall hold at the blocks the projection really applies? (issue 13)

Random episodes of the search env (uniform random actions in [0, 1]^2 per layer, the wall clipping them as in
a search) on CIFAR ResNets. For each finished episode the policy is projected onto the model
(:func:`~uniprune.compressors.core.projection.project_model`) and the latency table prices the blocks the
projected structures really prune and unify, counted by their sizes, independently of the env's own
bookkeeping. A policy is over budget when that ratio exceeds the budget
(:meth:`~uniprune.compressors.latency.budget.LatencyBudget.met_by`). Also shown: the ratio of the fractional
requests the wall once checked (the applied actions read as exact fractions), which the issue found 40 of
150 episodes over budget with.

No accuracy is scored, so no data is needed: the val batch is a placeholder the env requires.

    python benchmarks/budget_wall.py --episodes 1000

Writes section ``budget_wall_<isa>`` of docs/RESULTS.md (``UNIPRUNE_ISA=avx2`` forces the AVX2 build).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.accounting import model_size  # noqa: E402
from uniprune.compressors.core.blocks import DEFAULT_BLOCK_SHAPES, compressible_layers  # noqa: E402
from uniprune.compressors.core.policy import LayerAction, Policy  # noqa: E402
from uniprune.compressors.core.projection import project_model, structure_fractions  # noqa: E402
from uniprune.compressors.latency.budget import (
    LatencyBudget,  # noqa: E402
    latency_ratio,  # noqa: E402
)
from uniprune.compressors.native import kernels  # noqa: E402
from uniprune.envs import Walk, Wall  # noqa: E402
from uniprune.search import api  # noqa: E402
from uniprune.search.api.env import dense_layers, latency_model  # noqa: E402
from uniprune.search.models import build_model  # noqa: E402

INPUT = (3, 32, 32)


def run(model_name: str, latency: str, keep_dense: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, input_shape=INPUT).eval()
    spec = api.EnvSpec(latency=api.LatencySpec(latency_model=latency, batch_size=1, threads=1, latency_statistic="min"))
    lm = latency_model(spec, model, INPUT)
    skip = dense_layers(keep_dense, [s.name for s in compressible_layers(model)])
    # the wall is under test, not accuracy: it walks episodes alone, no scorer
    specs = compressible_layers(model, DEFAULT_BLOCK_SHAPES, skip=skip)
    wall = Wall(lm, specs, LatencyBudget(args.budget), max_prune=args.max_prune,
                dense_bits=float(model_size(model)["total"]["dense_storage_bits"]))
    rng = np.random.default_rng(args.seed)
    over, over_fractional, worst, worst_fractional, clipped = 0, 0, 0.0, 0.0, 0
    started = time.perf_counter()
    for _ in range(args.episodes):
        walk = Walk()
        while walk.t < len(specs):
            requested, got = wall.step(walk, rng.uniform(0, 1, 2))
            clipped += requested != got
        actions = dict(zip(wall.layer_names, walk.applied))
        policy = Policy(layers={n: LayerAction(*a) for n, a in actions.items()}, model=model_name)
        structures = project_model(copy.deepcopy(model), policy, DEFAULT_BLOCK_SHAPES, apply=False)
        applied = latency_ratio(lm.predict({n: LayerAction(*structure_fractions(st)) for n, st in structures.items()}), lm.dense_ms)
        fractional = latency_ratio(lm.predict({n: LayerAction(*a) for n, a in actions.items()}), lm.dense_ms)
        over += not wall.budget.met_by(applied * lm.dense_ms, lm.dense_ms)
        over_fractional += not wall.budget.met_by(fractional * lm.dense_ms, lm.dense_ms)
        worst, worst_fractional = max(worst, applied), max(worst_fractional, fractional)
    return {"model": model_name, "latency": latency, "keep_dense": keep_dense, "layers": len(specs),
            "least": wall.least_latency_ratio, "over": over, "worst": worst, "over_fractional": over_fractional,
            "worst_fractional": worst_fractional, "clipped": clipped / (args.episodes * len(specs)),
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--budget", type=float, default=0.5, help="latency budget, a ratio of the fastest dense engine")
    p.add_argument("--max-prune", type=float, default=0.8)
    p.add_argument("--models", nargs="+", default=["cifar-resnet20", "cifar-resnet56"])
    p.add_argument("--latency", nargs="+", default=["macs", "measured"], choices=["macs", "measured"])
    p.add_argument("--keep-dense", nargs="+", default=["ends", "none"],
                   help="which layers stay dense, as --keep-dense takes it ('none' puts the stem and the classifier, "
                        "whose blocks have edges, in the episode)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for model_name in args.models:
        for latency in args.latency:
            for keep in args.keep_dense:
                r = run(model_name, latency, keep, args)
                rows.append(r)
                print(f"{model_name} {latency} keep-dense {keep}: {r['over']} of {args.episodes} over budget at the applied "
                      f"blocks (worst {r['worst']:.4f}); fractional: {r['over_fractional']} (worst {r['worst_fractional']:.4f}); "
                      f"{r['seconds']:.0f} s", file=sys.stderr, flush=True)
    lines = [f"| {r['model']} | {r['latency']} | {r['keep_dense']} ({r['layers']} layers) | {r['least']:.3f} "
             f"| {r['over']} of {args.episodes} | {r['worst']:.4f} | {r['over_fractional']} | {r['worst_fractional']:.4f} "
             f"| {100 * r['clipped']:.0f} % |" for r in rows]
    md = [f"Machine: {machine_line()}; 1 thread; measured tables at batch 1, statistic min.", f"Command: `{command_line()}`", "",
          f"{args.episodes} episodes of uniform random actions per row, latency budget {args.budget} of the baseline "
          f"(measured tables: the fastest dense engine; macs: the dense MACs), max prune {args.max_prune}. "
          "Applied: every finished policy projected onto the model, the table pricing the blocks the structures "
          "really prune and unify (counted by size). Fractional: the same episodes' actions priced as exact fractions.",
          "", "| model | latency | searched layers | least reachable ratio | over budget, applied blocks | worst applied ratio "
          "| over budget, fractional | worst fractional ratio | steps the wall clipped |",
          "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |", *lines]
    isa = kernels.isa()  # the measured tables depend on the kernels' build
    write_section(f"budget_wall_{isa}", f"## The budget wall at the blocks actually applied ({isa} kernels; issue 13)\n\n"
                  + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
