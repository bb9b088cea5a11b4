"""DDPG against random, Optuna and the knapsack on held-out images and after fine-tuning (issue 23).

For each model, budget, seed and searcher this runs ``uniprune search`` (through the API) into its own run
directory, then takes the searcher's policy (DDPG: the deterministic actor's own episode at the end, as the
issue asks, and its best episode beside it; the others: their best episode, the ``policy.json`` a user gets),
scores it on ``--holdout`` validation images that no search scored, fine-tunes the dense model into it with
one recipe for every policy (masked SGD, the reward-validity benchmark's recipe) and scores that on the
CIFAR-10 JPEG test images. A cell already done (``cell.json`` in its run directory) is reused, so seeds can
run in several processes with the same ``--out``, then ``--report-only`` writes the table.

    python benchmarks/searcher_table.py --model cifar-resnet20 --budgets 0.8 --seeds 0 1 2 3 4 --episodes 100

Writes section ``searcher_table_<model>`` of docs/RESULTS.md. The knapsack's episodes are its plans; the
policies it scores for its per-layer sensitivities are counted in the table's "policies scored" column.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from reward_validity import finetuned_top1  # noqa: E402
from uniprune.agent import load_agent  # noqa: E402
from uniprune.compressors.core.policy import Policy  # noqa: E402
from uniprune.envs import CompressionEnv, Scorer  # noqa: E402
from uniprune.search import api, knapsack  # noqa: E402
from uniprune.search.api.env import load_data  # noqa: E402
from uniprune.search.searchers import agent_policy  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN = SHARED / "cifar10-jpeg" / "cifar10-jpeg-train.tar.gz"
TEST = SHARED / "cifar10-jpeg" / "cifar10-jpeg-test.tar.gz"
CHECKPOINTS = {"cifar-resnet20": SHARED / "pretrained" / "resnet20-12fca82f.th",
               "cifar-resnet56": SHARED / "pretrained" / "resnet56-4bfd9763.th"}


def pin_latency_tables() -> None:
    """Use the cached latency tables without their quick re-check. Every cell must price policies on the same
    tables; on a machine loaded by the benchmark's own parallel processes the quick check (a few interleaved
    timings) fails and re-measures a table under load. Measure the tables first on a quiet machine (one
    ``uniprune search`` of each model and shape setting does it)."""
    from uniprune.compressors.latency import table

    table._cached_table_holds = lambda *args, **kwargs: True


def env_spec(args: argparse.Namespace, budget: float, seed: int, *, holdout: int = 0, block_shape: str | None = None) -> api.EnvSpec:
    """The env every searcher of one cell searches (``holdout`` more validation images, for re-scoring)."""
    return api.EnvSpec(
        model=api.ModelSpec(model=args.model, checkpoint=str(CHECKPOINTS[args.model])),
        data=api.DataSpec(dataset="imagefolder", data=f"{TRAIN},{TEST}"),
        latency=api.LatencySpec(latency_statistic="min", threads=1, batch_size=1),
        budget=api.BudgetSpec(latency_budget=budget, block_shape=block_shape or args.block_shape),
        scoring=api.ScoringSpec(val_samples=args.val_samples + holdout, bn_recalibrate=args.bn_recalibrate),
        seed=seed)


def run_dir(args: argparse.Namespace, budget: float, seed: int, searcher: str, shape: str) -> Path:
    return Path(args.out) / args.model / f"budget{budget}" / shape.replace(",", "+") / f"{searcher}-seed{seed}"


def holdout_env(args: argparse.Namespace, budget: float, seed: int, shape: str) -> CompressionEnv:
    """The search's env with a scorer of the ``--holdout`` validation images after the search's own."""
    return after_validation(api.build_env(env_spec(args, budget, seed, holdout=args.holdout, block_shape=shape)),
                            args.val_samples)


def after_validation(env: CompressionEnv, skip: int) -> CompressionEnv:
    """``env`` (same model, wall and BatchNorm batches) scoring only its validation images after the first ``skip``:
    the ones a search with ``--val-samples skip`` never scored."""
    x = torch.cat([b[0] for b in env.scorer.val_batches])[skip:]
    y = torch.cat([b[1] for b in env.scorer.val_batches])[skip:]
    held = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)]
    scorer = Scorer(env.model, held, bn_batches=env.scorer.bn_batches, block_shapes=env.block_shapes,
                    model_name=env.scorer.model_name)
    return CompressionEnv(scorer, env.wall, input_shape=env.input_shape)


def run_cell(args: argparse.Namespace, budget: float, seed: int, searcher: str, shape: str, held: CompressionEnv,
             bundle: Any) -> dict[str, Any]:
    """Search, held-out score and fine-tune of one searcher at one budget and seed (each reused when done; with
    ``--skip-finetune`` the fine-tune is left for a later run)."""
    run = run_dir(args, budget, seed, searcher, shape)
    saved = run / "cell.json"
    cell = json.loads(saved.read_text()) if saved.exists() else search_cell(args, budget, seed, searcher, shape, held)
    if "finetuned" not in cell and not args.skip_finetune:
        tuned = Policy.load(run / ("actor_policy.json" if searcher == "ddpg" else "policy.json"))
        top1, ft_seconds = finetuned_top1(held, bundle, tuned, args)
        cell.update(finetuned=top1, finetune_seconds=ft_seconds)
    saved.write_text(json.dumps(cell, indent=1))
    print(json.dumps(cell), file=sys.stderr, flush=True)
    return cell


def search_cell(args: argparse.Namespace, budget: float, seed: int, searcher: str, shape: str,
                held: CompressionEnv) -> dict[str, Any]:
    """One searcher's search at one budget and seed, and its policy's score on the held-out images."""
    run = run_dir(args, budget, seed, searcher, shape)
    started = time.perf_counter()
    spec = env_spec(args, budget, seed, block_shape=shape)
    if searcher == "replay":  # one walk of another model's agent: its episode is the policy
        run.mkdir(parents=True, exist_ok=True)
        result = api.replay(api.ReplaySpec(env=spec, agent=args.replay_agent, out=str(run / "policy.json"), force=True))
        rewards = [float(result.val_accuracy)]
    else:
        result = api.search(api.SearchSpec(env=spec, searcher=searcher, episodes=args.episodes, warmup=args.warmup,
                                           run_dir=str(run), force=True, workers=args.workers))
        with (run / "episodes.csv").open() as fh:
            rewards = [float(r["reward"]) for r in csv.DictReader(fh)]
    seconds = time.perf_counter() - started
    best = Policy.load(run / "policy.json")
    cell: dict[str, Any] = {"model": args.model, "budget": budget, "seed": seed, "searcher": searcher, "shape": shape,
                            "search_seconds": seconds, "episodes": len(rewards), "search_best": max(rewards),
                            "best_ratio": float(result.latency_ratio),
                            "holdout_best": float(held.scorer.score({n: a.as_action() for n, a in best.layers.items()})["val_accuracy"])}
    if searcher == "ddpg":
        actor = agent_policy(load_agent(run), held)  # the actor's deterministic episode, scored on held-out images
        cell.update(holdout_actor=float(actor["val_accuracy"]), actor_ratio=float(actor["latency_ratio"]))
        held.policy(actor["actions"]).save(run / "actor_policy.json")
    cell["holdout"] = cell.get("holdout_actor", cell["holdout_best"])
    cell["policies_scored"] = policies_scored(cell, held)
    return cell


def done(args: argparse.Namespace, budget: float, seed: int, searcher: str, shape: str) -> bool:
    """Whether the cell is complete for this run (searched, and fine-tuned unless ``--skip-finetune``)."""
    saved = run_dir(args, budget, seed, searcher, shape) / "cell.json"
    return saved.exists() and (args.skip_finetune or "finetuned" in json.loads(saved.read_text()))


def policies_scored(cell: dict[str, Any], held: CompressionEnv | None) -> str:
    """Policies the search scored: its episodes, plus (knapsack) one sensitivity score per layer option."""
    if cell["searcher"] != "knapsack":
        return str(cell["episodes"])
    if held is None:
        return f"{cell['episodes']} + sensitivities"
    return str(cell["episodes"] + sum(len(o.actions) - 1 for o in knapsack.env_options(held.wall)))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _mean(xs: list[float]) -> float | None:
    return statistics.mean(xs) if xs else None


def render(args: argparse.Namespace, cells: list[dict[str, Any]], dense: dict[str, float]) -> str:
    lines = []
    for budget in args.budgets:
        for shape in args.shapes:
            rows = [c for c in cells if c["budget"] == budget and c["shape"] == shape]
            if not rows:
                continue
            lines += ["", f"**Budget {budget}, block shapes {shape}** (top-1 in %; search time in s):", "",
                      "| seed | searcher | search best (500 val) | held-out (2000 val) | DDPG best episode held-out "
                      "| fine-tuned test top-1 | predicted ratio | policies scored | search s | fine-tune s |",
                      "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for c in sorted(rows, key=lambda c: (c["seed"], args.searchers.index(c["searcher"]))):
                ratio = c.get("actor_ratio", c["best_ratio"])
                lines.append(
                    f"| {c['seed']} | {c['searcher']}{' (actor)' if c['searcher'] == 'ddpg' else ''} "
                    f"| {100 * c['search_best']:.1f} | {100 * c['holdout']:.1f} "
                    f"| {100 * c['holdout_best']:.1f} | {_pct(c.get('finetuned'))} | {ratio:.3f} "
                    f"| {c.get('policies_scored', policies_scored(c, None))} | {c['search_seconds']:.0f} | {c.get('finetune_seconds', float('nan')):.0f} |")
            lines += ["", "| searcher | mean held-out | mean fine-tuned | DDPG actor beats random's best (held-out) |",
                      "| --- | ---: | ---: | --- |"]
            for s in args.searchers:
                mine = [c for c in rows if c["searcher"] == s]
                if not mine:
                    continue
                wins = ""
                if s == "ddpg":
                    rnd = {c["seed"]: c["holdout"] for c in rows if c["searcher"] == "random"}
                    won = [c["holdout"] > rnd[c["seed"]] for c in mine if c["seed"] in rnd]
                    wins = f"{sum(won)} of {len(won)} seeds" if won else ""
                lines.append(f"| {s} | {100 * statistics.mean(c['holdout'] for c in mine):.1f} "
                             f"| {_pct(_mean([c['finetuned'] for c in mine if 'finetuned' in c]))} | {wins} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(CHECKPOINTS), default="cifar-resnet20")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--searchers", nargs="+", default=["ddpg", "random", "optuna", "knapsack"])
    p.add_argument("--shapes", nargs="+", default=["8x4,4x1,1x1"],
                   help="block-shape settings, each searched as --block-shape (default the three shapes searched)")
    p.add_argument("--replay-agent", default=None,
                   help="a DDPG run directory of another model: searcher 'replay' walks its agent on this model")
    p.add_argument("--workers", type=int, default=1, help="scoring processes of random and knapsack searches (default 1)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--warmup", type=int, default=33)
    p.add_argument("--val-samples", type=int, default=500)
    p.add_argument("--holdout", type=int, default=2000)
    p.add_argument("--bn-recalibrate", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-limit", type=int, default=4000, help="training images per fine-tuning epoch")
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning data order and the test subset")
    p.add_argument("--out", default="runs/bench-searchers")
    p.add_argument("--skip-finetune", action="store_true",
                   help="search and score on the held-out images only; a later run without it fine-tunes the cells")
    p.add_argument("--pin-tables", action="store_true",
                   help="trust the cached latency tables without their quick check (see pin_latency_tables)")
    p.add_argument("--report-only", action="store_true", help="run nothing; report the cells already under --out")
    p.add_argument("--no-results", action="store_true", help="do not write docs/RESULTS.md")
    args = p.parse_args(argv)
    args.block_shape = args.shapes[0]
    torch.set_num_threads(1)  # the fine-tunes too: on a shared 2-core machine extra threads only contend
    if args.pin_tables:
        pin_latency_tables()
    if "replay" in args.searchers and not args.replay_agent:
        p.error("searcher 'replay' needs --replay-agent RUN_DIR")
    cells, dense = [], {}
    for budget in args.budgets:
        for shape in args.shapes:
            for seed in args.seeds:
                todo = [s for s in args.searchers if not done(args, budget, seed, s, shape)]
                if args.report_only or not todo:
                    cells += [json.loads(f.read_text()) for s in args.searchers
                              if (f := run_dir(args, budget, seed, s, shape) / "cell.json").exists()]
                    continue
                held = holdout_env(args, budget, seed, shape)
                bundle = load_data(env_spec(args, budget, seed, block_shape=shape))
                dense[f"{seed}"] = float(held.scorer.score({})["val_accuracy"])
                cells += [run_cell(args, budget, seed, s, shape, held, bundle) for s in args.searchers]
    if args.no_results:
        return 0
    md = [f"Machine: {machine_line()}; 1 thread.", f"Command: `{command_line()}`", "",
          f"{args.model} (shared pretrained weights), CIFAR-10 JPEG: each search scores episodes on {args.val_samples} "
          f"validation images carved from the training set (BatchNorm re-estimated on {args.bn_recalibrate} batches of "
          f"256), {args.episodes} episodes ({args.warmup} warm-up for DDPG, startup trials for Optuna), latency budget "
          "as a ratio of the fastest dense engine at its default precision (measured table, batch 1, plan in the "
          f"precision `auto` picks). Held-out: {args.holdout} validation images no search scored. Fine-tune: masked, "
          f"{args.finetune_epochs} epochs of {args.finetune_limit} augmented training images, SGD lr 0.01 cosine, the "
          f"same for every policy; top-1 on {args.test_samples} JPEG test images. DDPG's row is the deterministic "
          "actor's policy at the end (its best episode's held-out score beside it).",
          render(args, cells, dense)]
    write_section(f"searcher_table_{args.model.replace('cifar-', '')}",
                  f"## Searchers against each other, {args.model} (issue 23)\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
