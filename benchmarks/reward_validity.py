"""Does the search's reward predict the fine-tuned model? (issue 23)

Draws ``--policies`` policies of ResNet-20 spread evenly over a range of predicted latency ratios (random
per-layer shares, scaled by bisection to each target ratio on the measured latency table), scores each with
every reward variant on the same validation images, fine-tunes each with the same recipe and scores it on
the CIFAR-10 JPEG test images; then reports the Spearman rank correlation between each variant and the
fine-tuned accuracy. Variants:

- ``projected``: the projected network's accuracy, BatchNorm statistics as trained;
- ``bn`` (the default reward): BatchNorm statistics re-estimated on ``--bn-batches`` training batches;
- ``steps-N``: ``--reward-steps`` SGD steps inside the policy's structure first (``--reward-steps``).

    python benchmarks/reward_validity.py --policies 12 --finetune-epochs 2 --finetune-limit 10000

Writes section ``reward_validity`` of docs/RESULTS.md; each policy, its rewards and its fine-tuned accuracy
go to ``--out``/results.json (a rerun reuses the fine-tunes already there).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.train.finetune import AdmmConfig, finetune  # noqa: E402
from uniprune.compressors.train.training import evaluate  # noqa: E402
from uniprune.envs import Scorer  # noqa: E402
from uniprune.search import api  # noqa: E402
from uniprune.search.api.env import load_data  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN = SHARED / "cifar10-jpeg" / "cifar10-jpeg-train.tar.gz"
TEST = SHARED / "cifar10-jpeg" / "cifar10-jpeg-test.tar.gz"


def draw_policy(env, target: float, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """Per-layer (prune, unify) of random shares, scaled so the predicted latency ratio is ``target``."""
    wall = env.wall
    weight = rng.uniform(0.1, 1.0, size=env.num_layers)
    unify_share = rng.uniform(0.0, 0.4, size=env.num_layers)

    def actions(scale: float) -> dict[str, tuple[float, float]]:
        out = {}
        for n, w, m in zip(env.layer_names, weight, unify_share):
            prune = min(wall.max_prune, scale * w)
            out[n] = (prune, min(1.0 - prune, scale * w * m))
        return out

    def ratio(scale: float) -> float:
        return wall.predicted_ms(actions(scale)) / wall.dense_ms

    lo, hi = 0.0, 1.0 / float(weight.min())  # at hi every layer is at its cap
    for _ in range(40):  # the ratio falls as the scale grows
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) > target else (lo, mid)
    return actions(hi)


def finetuned_top1(env, bundle, policy, args: argparse.Namespace) -> tuple[float, float]:
    """(test top-1, seconds) of the dense model fine-tuned into ``policy`` by the benchmark's recipe."""
    started = time.perf_counter()
    model = copy.deepcopy(env.model)

    def batches(epoch: int):
        return bundle.batches("train", 128, shuffle=True, augment=True, seed=args.seed + epoch, limit=args.finetune_limit)

    def val(m: torch.nn.Module) -> float:
        return float(evaluate(m, bundle.batches("val", 256, shuffle=True, seed=args.seed, limit=1000)))

    config = AdmmConfig(method="masked", retrain_epochs=args.finetune_epochs, lr=0.01, progress=False)
    finetune(model, policy, batches, val, config)
    # a seeded subset: the split may be stored class by class
    top1 = float(evaluate(model, bundle.batches("test", 256, shuffle=True, seed=args.seed, limit=args.test_samples)))
    return top1, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", type=int, default=12)
    p.add_argument("--ratios", type=float, nargs=2, default=(0.35, 0.85), help="least and most predicted latency ratio")
    p.add_argument("--checkpoint", default=str(SHARED / "pretrained" / "resnet20-12fca82f.th"))
    p.add_argument("--block-shape", default="8x4")
    p.add_argument("--val-samples", type=int, default=500)
    p.add_argument("--bn-batches", type=int, default=2)
    p.add_argument("--reward-steps", type=int, default=200)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-limit", type=int, default=10000, help="training images per fine-tuning epoch")
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-reward-validity")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "results.json"
    rows = json.loads(saved.read_text()) if saved.exists() else []

    spec = api.EnvSpec(
        model=api.ModelSpec(model="cifar-resnet20", checkpoint=args.checkpoint),
        data=api.DataSpec(dataset="imagefolder", data=f"{TRAIN},{TEST}"),
        latency=api.LatencySpec(latency_statistic="min", threads=1, batch_size=1),
        budget=api.BudgetSpec(latency_budget=1.0, max_prune=0.9, block_shape=args.block_shape),
        scoring=api.ScoringSpec(val_samples=args.val_samples, bn_recalibrate=args.bn_batches, reward_steps=args.reward_steps),
        seed=args.seed)
    env = api.build_env(spec)
    bundle = load_data(spec)
    scorer = env.scorer
    plain = Scorer(scorer.model, scorer.val_batches, bn_batches=(), block_shapes=scorer.block_shapes)
    bn_only = Scorer(scorer.model, scorer.val_batches, bn_batches=scorer.bn_batches, block_shapes=scorer.block_shapes)
    rng = np.random.default_rng(args.seed)
    low = max(args.ratios[0], env.least_latency_ratio + 0.02)
    high = min(args.ratios[1], env.wall.predicted_ms({}) / env.wall.dense_ms - 0.02)  # nothing pruned runs below 1
    targets = np.linspace(low, high, args.policies)
    dense = float(bn_only.score({})["val_accuracy"])
    for i, target in enumerate(targets):
        actions = draw_policy(env, float(target), rng)
        if i < len(rows):
            continue  # done in an earlier run (the draws repeat: same seed, same order)
        started = time.perf_counter()
        row = {"policy": i, "target_ratio": float(target),
               "latency_ratio": env.wall.predicted_ms(actions) / env.wall.dense_ms,
               "projected": plain.score(actions)["val_accuracy"], "bn": bn_only.score(actions)["val_accuracy"],
               f"steps-{args.reward_steps}": scorer.score(actions)["val_accuracy"]}
        row["reward_seconds"] = time.perf_counter() - started
        policy = env.policy(actions)
        policy.save(out / f"policy-{i}.json")
        top1, seconds = finetuned_top1(env, bundle, policy, args)
        row.update(finetuned=top1, finetune_seconds=seconds)
        rows.append(row)
        saved.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), file=sys.stderr, flush=True)
    variants = ["projected", "bn", f"steps-{args.reward_steps}"]
    tuned = [r["finetuned"] for r in rows]
    corr = {v: spearmanr([r[v] for r in rows], tuned).statistic for v in variants}
    lines = ["| policy | predicted latency ratio | " + " | ".join(f"reward: {v}" for v in variants)
             + " | fine-tuned top-1 (test) |", "| ---: |" + " ---: |" * (len(variants) + 2)]
    lines += [f"| {r['policy']} | {r['latency_ratio']:.3f} | " + " | ".join(f"{r[v]:.4f}" for v in variants)
              + f" | {r['finetuned']:.4f} |" for r in rows]
    lines += ["", "| reward variant | Spearman rank correlation with the fine-tuned top-1 | seconds per policy |",
              "| --- | ---: | ---: |"]
    seconds = float(np.mean([r["reward_seconds"] for r in rows]))
    lines += [f"| {v} | {corr[v]:.3f} | {'' if v != variants[-1] else f'{seconds:.1f} (the three together)'} |" for v in variants]
    md = [f"Machine: {machine_line()}.", f"Command: `{command_line()}`", "",
          f"ResNet-20 (shared pretrained weights, dense validation top-1 {dense:.4f} with BN re-estimated), CIFAR-10 JPEG: "
          f"{len(rows)} policies drawn at predicted latency ratios {low:.3f} to {high:.3f} of the fastest dense "
          f"engine ({(env.latency_model.meta or {}).get('baseline_engine')}, batch 1, measured table), {args.block_shape} "
          f"blocks, random per-layer prune and unify shares. Rewards on {args.val_samples} validation images; BN "
          f"re-estimated on {args.bn_batches} batches of 256; steps: {args.reward_steps} SGD steps (batch 64, lr 0.01) "
          f"in the structure. Fine-tune (the same for every policy, in process): masked, {args.finetune_epochs} "
          f"epochs of {args.finetune_limit} augmented training images, SGD lr 0.01 cosine; top-1 on {args.test_samples} "
          "JPEG test images. Target: Spearman >= 0.7 for the default reward (bn).", "",
          *lines]
    write_section("reward_validity", "## Does the reward predict the fine-tuned model? ResNet-20 (issue 23)\n\n" + "\n".join(md))
    print(json.dumps(corr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
