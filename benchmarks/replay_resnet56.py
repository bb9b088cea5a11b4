"""Replay on a new model (issue 6): the agent searched on ResNet-20, replayed on ResNet-56, against a search
run directly on ResNet-56 and against uniform, each fine-tuned the same way; and the end-to-end figure.

For each of the three ResNet-56 policies at the same latency budget this reports the validation accuracy
before fine-tuning (after projection and BatchNorm re-estimation, the search's own reward), the latency
ratio measured with the real kernels (dense and compressed interleaved, batch 1), and the test accuracy
after the same ADMM fine-tuning (``uniprune finetune``). The directly searched policy's row is also the
end-to-end result (dense accuracy against compressed, measured speedup), written as its own section.
Every step is the CLI verb a user would run, called in-process:

    python benchmarks/replay_resnet56.py --agent runs/bench-search-resnet20/ddpg \\
        --checkpoint RESNET56_JPEG.pt --dense-accuracy 0.9 --episodes 300 --finetune-epochs 6
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from search_resnet20 import SCORING_KEYS, add_scoring_arguments, env_spec, rescore  # noqa: E402
from uniprune.compressors.core.policy import Policy  # noqa: E402
from uniprune.search import api  # noqa: E402
from uniprune.search.cli import build_parser  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
DEFAULT_DATA = f"{SHARED / 'cifar10-jpeg-train.tar.gz'},{SHARED / 'cifar10-jpeg-test.tar.gz'}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True, help="the ResNet-20 DDPG run directory (agent.json, agent.pt, config.json)")
    p.add_argument("--checkpoint", required=True, help="ResNet-56 adapted to the JPEG training set")
    p.add_argument("--dense-accuracy", type=float, default=None, help="the dense checkpoint's test accuracy, if known (else measured)")
    p.add_argument("--data", default=DEFAULT_DATA, help="imagefolder sources (default: the shared CIFAR-10 JPEG train and test)")
    p.add_argument("--episodes", type=int, default=300, help="episodes of the direct DDPG search on ResNet-56 (default 300)")
    p.add_argument("--warmup", type=int, default=100, help="its warm-up episodes (default 100)")
    add_scoring_arguments(p)
    p.add_argument("--finetune-epochs", type=int, default=6, help="ADMM fine-tuning epochs per policy (default 6)")
    p.add_argument("--limit", type=int, default=None, help="training samples per fine-tuning epoch (default all)")
    p.add_argument("--finetune-option", action="append", default=[], metavar="KEY=VALUE",
                   help="more fine-tuning options (api.FinetuneSpec fields), e.g. --finetune-option rho=0.1 (repeatable)")
    p.add_argument("--reuse", action="store_true", help="keep --out and reuse the policies already there (finetune only)")
    p.add_argument("--policies", default="replay,direct,uniform", help="which of replay,direct,uniform to run")
    p.add_argument("--out", default="runs/bench-replay-resnet56", help="folder for the runs (replaced)")
    p.add_argument("--no-results", action="store_true", help="do not write docs/RESULTS.md")
    return p.parse_args(argv)


def _finetune_options(given: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as FinetuneSpec fields, each value read by its field's type (through the CLI's flag parser)."""
    argv = ["finetune"]
    for item in given:
        key, _, value = item.lstrip("-").partition("=")
        argv += [f"--{key.replace('_', '-')}", *([value] if value else [])]
    parsed = vars(build_parser().parse_args(argv))
    return {k: v for k, v in parsed.items() if k not in ("verb", "_run", "json")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.reuse:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    env = env_spec(args, model="cifar-resnet56", checkpoint=args.checkpoint, dataset="imagefolder", data=args.data)
    policies: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    wanted = args.policies.split(",")
    for name in wanted:
        t0 = time.perf_counter()
        done = out / "replay.json" if name == "replay" else out / name / "policy.json"
        if args.reuse and done.is_file():
            policies[name], seconds[name] = done, float("nan")
            continue
        if name == "replay":
            run_options = {k: v for k, v in api.replay_options(args.agent).items() if k not in SCORING_KEYS}
            api.replay(api.ReplaySpec(env=env.replace(**run_options), agent=args.agent,
                                      out=str(out / "replay.json")))
            policies[name] = out / "replay.json"
        else:
            searcher = "ddpg" if name == "direct" else "uniform"
            result = api.search(api.SearchSpec(env=env, searcher=searcher, episodes=args.episodes, warmup=args.warmup,
                                               run_dir=str(out / name)))
            policies[name] = Path(result.policy)
        seconds[name] = time.perf_counter() - t0

    built = api.build_env(env)
    rows = []
    for name, path in policies.items():
        scores = rescore(built, Policy.load(path), args.bn_recalibrate, threads=args.threads, batch_size=args.batch_size,
                         statistic=args.latency_statistic)
        tuned = api.finetune(api.FinetuneSpec(
            policy=str(path), model="cifar-resnet56", checkpoint=args.checkpoint, dataset="imagefolder", data=args.data,
            epochs=args.finetune_epochs, limit=args.limit, latency=False, seed=args.seed,
            out=str(out / f"{name}-compressed.pt"), **_finetune_options(args.finetune_option)))
        row = {"policy": name, "seconds_to_policy": seconds[name], **scores, "test_accuracy": tuned.accuracy,
               "size_ratio": tuned.size_ratio, "finetune_seconds": tuned.seconds}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    dense_acc = args.dense_accuracy
    if dense_acc is None:
        dense_acc = api.evaluate(api.EvalSpec(model="cifar-resnet56", checkpoint=args.checkpoint,
                                              data=api.DataSpec(dataset="imagefolder", data=args.data))).accuracy
    (out / "rows.json").write_text(json.dumps({"rows": rows, "dense_accuracy": dense_acc}, indent=2))
    md = render(args, rows, dense_acc)
    print(md)
    if not args.no_results:
        write_section("replay_resnet56", md)
    return 0


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f} %"


def render(args: argparse.Namespace, rows: list[dict[str, Any]], dense_acc: float) -> str:
    fine = f"ADMM, {args.finetune_epochs} epochs" + (f" of {args.limit:,} samples" if args.limit else " of 45,000 samples")
    fine += "".join(f" `{o}`" for o in args.finetune_option)
    lines = [
        f"## Replay: ResNet-20's agent on ResNet-56 at latency budget {args.latency_budget}",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}; latency tables and timings at batch {args.batch_size}, {args.threads} thread(s), "
        f"statistic {args.latency_statistic}  ",
        f"ResNet-56 adapted to CIFAR-10 JPEG (`{Path(args.checkpoint).name}`): dense test accuracy {_pct(dense_acc)}. "
        f"Validation accuracy before fine-tuning: {args.val_samples} validation images, BN re-estimated on "
        f"{args.bn_recalibrate} batches. Fine-tuning: `uniprune finetune`, {fine}, the same for every policy. "
        f"Direct search: DDPG, {args.episodes} episodes ({args.warmup} warm-up).",
        "",
        "| policy | val acc before FT (BN re-est.) | val acc before FT (no BN re-est.) | predicted latency ratio | measured latency ratio | test acc after FT | vs dense | size ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['policy']} | {_pct(r['acc_bn'])} | {_pct(r['acc_plain'])} | {r['predicted_ratio']:.3f} | "
                     f"{r['measured_ratio']:.3f} | {_pct(r['test_accuracy'])} | {100 * (r['test_accuracy'] - dense_acc):+.2f} | "
                     f"{r['size_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
