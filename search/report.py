"""``report.md`` and its PNG plots for a run directory.

Reads what the search and fine-tune jobs wrote into the run directory (``config.json``,
``episodes.csv``, ``policy.json``, optional ``finetune.json``) and writes, next to them:

- ``reward.png``: reward per episode with the best so far;
- ``accuracy_vs_latency.png``: validation accuracy against predicted latency ratio of every episode, with
  the budget line;
- ``policy_layers.png``: the best policy's per-layer prune and unify fractions;
- ``admm.png``: fine-tuning loss and validation accuracy per epoch, ADMM residual and rho, when
  ``uniprune finetune --run-dir`` has written ``finetune.json``;
- ``report.md`` linking them, with the run's headline figures.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
from uniprune.compressors.core.errors import RunDirError  # noqa: E402
from uniprune.compressors.core.policy import LayerAction, Policy  # noqa: E402
from uniprune.compressors.formats.fileio import write_text_atomic  # noqa: E402
from uniprune.compressors.formats.run_dir import RunDir, read_json_object  # noqa: E402
from uniprune.compressors.latency.budget import budget_verdict  # noqa: E402
from uniprune.search import sensitivity  # noqa: E402


def _read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a numeric CSV; empty fields become NaN, non-numeric fields are dropped."""
    rows: list[dict[str, float]] = []
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, float] = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value) if value not in ("", None) else math.nan
                except ValueError:
                    continue
            rows.append(row)
    return rows


def _column(rows: list[dict[str, float]], key: str) -> list[float]:
    return [r.get(key, math.nan) for r in rows]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_rewards(rows: list[dict[str, float]], path: Path) -> Path:
    """Reward per episode (dots) and the best reward so far (line)."""
    episodes = _column(rows, "episode")
    rewards = _column(rows, "reward")
    best, running = [], -math.inf
    for r in rewards:
        running = max(running, r) if not math.isnan(r) else running
        best.append(running if running > -math.inf else math.nan)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(episodes, rewards, s=8, alpha=0.5, label="episode reward")
    ax.plot(episodes, best, color="C3", lw=2, label="best so far")
    if "warmup" in rows[0]:
        warm = [e for e, w in zip(episodes, _column(rows, "warmup")) if w == 1.0]
        if warm:
            ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.9", label="warm-up (random)")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.set_title("Search reward")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_accuracy_vs_latency(rows: list[dict[str, float]], budget: float | None, path: Path) -> Path:
    """Validation accuracy against predicted latency ratio, coloured by episode, with the budget line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    points = ax.scatter(
        _column(rows, "latency_ratio"), _column(rows, "val_accuracy"), c=_column(rows, "episode"), s=10, cmap="viridis"
    )
    fig.colorbar(points, ax=ax, label="episode")
    if budget is not None:
        ax.axvline(budget, color="C3", ls="--", label=f"budget {budget:g}")
        ax.legend(loc="lower right")
    ax.set_xlabel("latency ratio (compressed / dense)")
    ax.set_ylabel("validation accuracy (before fine-tuning)")
    ax.set_title("Accuracy against latency, every episode")
    return _save(fig, path)


def plot_policy(policy: Policy, path: Path) -> Path:
    """Stacked per-layer bars: pruned and unified fractions of the best policy."""
    names = list(policy.layers)
    prune = [policy.layers[n].prune for n in names]
    unify = [policy.layers[n].unify for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 4.2))
    xs = range(len(names))
    ax.bar(xs, prune, color="C3", label="pruned")
    ax.bar(xs, unify, bottom=prune, color="C0", label="unified")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of the layer's weights")
    ax.set_title("Best policy, per layer")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_admm(finetune: dict[str, Any], path: Path) -> Path:
    """Fine-tuning curves per epoch from ``finetune.json``: training loss and validation accuracy over the
    ADMM and retraining phases (the hard projection between them marked), primal residual and rho per
    ADMM iteration."""
    admm = [r for r in finetune.get("admm_history") or [] if isinstance(r, dict)]
    retrain = [r for r in finetune.get("retrain_history") or [] if isinstance(r, dict)]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for ax, key, label in ((axes[0, 0], "loss", "training loss"), (axes[0, 1], "val_accuracy", "validation accuracy")):
        for rows, phase, color in ((admm, "ADMM", "C0"), (retrain, "retraining", "C2")):
            pts = [(r["epoch"] + 1, r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color, label=phase)
        if key == "val_accuracy" and isinstance(finetune.get("projected_val_accuracy"), (int, float)):
            x = (admm[-1]["epoch"] + 1) if admm else 0
            ax.plot([x], [finetune["projected_val_accuracy"]], marker="x", color="C3", linestyle="none", label="after hard projection")
        if key == "val_accuracy" and isinstance(finetune.get("dense_val_accuracy"), (int, float)):
            ax.axhline(finetune["dense_val_accuracy"], color="0.4", ls="--", label=f"dense {100 * finetune['dense_val_accuracy']:.1f} %")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    for ax, key, label in ((axes[1, 0], "residual", "primal residual ||W-Z|| / ||W||"), (axes[1, 1], "rho", "rho")):
        ys = [r[key] for r in admm if isinstance(r.get(key), (int, float))]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", color="C0")
        ax.set_title(label)
        ax.set_xlabel("ADMM iteration")
        if ys and min(ys) > 0:
            ax.set_yscale("log")
    fig.suptitle(f"fine-tuning ({finetune.get('method', '?')})")
    return _save(fig, path)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _verdict(ratio: Any, budget: float | None, how: str) -> str:
    """``"; the predicted latency ratio meets the budget 0.5"``, or nothing without a ratio or a budget."""
    if not isinstance(ratio, (int, float)) or budget is None:
        return ""
    return f"; the {how} latency ratio {budget_verdict(float(ratio), budget)}"


def write_report(run_dir: str | Path) -> list[Path]:
    """Write the plots and ``report.md`` for ``run_dir``; returns the files written (report.md last)."""
    run = Path(run_dir)
    paths = RunDir(run)
    episodes_csv, policy_json = paths.episodes_path, paths.policy_path
    if run.exists() and not run.is_dir():
        raise RunDirError(f"--run-dir {run} is a file; pass the folder a search wrote")
    if not run.is_dir():
        raise RunDirError(f"run directory {str(run)!r} does not exist: pass the --run-dir of a search")
    if not episodes_csv.is_file() or not policy_json.is_file():
        raise RunDirError(f"{str(run)!r} has no episodes.csv/policy.json: run 'uniprune search --run-dir {run}' first")
    rows = _read_csv(episodes_csv)
    if not rows:
        raise RunDirError(f"{episodes_csv} has no episodes yet: let the search run at least one episode")
    policy = Policy.load(policy_json)
    config = read_json_object(paths.config_path, fix="the run directory is damaged")
    budget = policy.latency_budget if policy.latency_budget is not None else config.get("latency_budget")

    files = [
        plot_rewards(rows, run / "reward.png"),
        plot_accuracy_vs_latency(rows, budget, run / "accuracy_vs_latency.png"),
        plot_policy(policy, run / "policy_layers.png"),
    ]
    finetune = read_json_object(paths.finetune_path, fix="re-run 'uniprune finetune --run-dir'")
    if finetune.get("admm_history") or finetune.get("retrain_history"):
        files.append(plot_admm(finetune, run / "admm.png"))

    lines = [f"# uniprune run: {run.name}", ""]
    lines += [
        f"- model: `{config.get('model', policy.model)}`, dataset: `{config.get('dataset', '?')}`",
        f"- searcher: `{config.get('searcher', policy.search.get('searcher', '?'))}`, episodes: {len(rows)}, latency budget: {budget}",
    ]
    pred = policy.predicted
    if pred:
        lines.append(
            "- best policy (before fine-tuning): "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in pred.items() if isinstance(v, (int, float)))
            + _verdict(pred.get("latency_ratio"), budget, "predicted")
        )
    if finetune:
        lines.append("- after fine-tuning: " + ", ".join(f"{k} {_fmt(v)}" for k, v in finetune.items() if isinstance(v, (int, float)))
                     + _verdict(finetune.get("latency_ratio"), budget, "measured"))
    lines.append("")
    if finetune.get("layers") is not None:  # the fine-tune's own account: dense against compressed, warnings, layers
        from uniprune.search.finetune_summary import summary_markdown

        lines += [summary_markdown(finetune | {"latency_budget": budget}), ""]
    titles = {
        "reward.png": "Reward per episode",
        "accuracy_vs_latency.png": "Accuracy against latency ratio",
        "policy_layers.png": "Best policy per layer",
        "admm.png": "ADMM fine-tuning",
    }
    for f in files:
        lines += [f"## {titles[f.name]}", "", f"![{titles[f.name]}]({f.name})", ""]
    lines += _policy_table(policy, run / sensitivity.FILE)
    files.append(write_text_atomic(paths.report_path, "\n".join(lines) + "\n"))
    return files


def _lost_alone(options: list[dict[str, Any]], action: LayerAction) -> float | None:
    """The scored validation accuracy lost by the option nearest ``action`` (same block shape, or none recorded
    where one shape was searched; within 0.02 of each fraction, since the wall realises fractions at whole
    blocks), or None."""
    shape = action.block.key if action.block is not None else None
    near = [o for o in options if o.get("shape") in (None, shape)
            and abs(o["prune"] - action.prune) <= 0.02 and abs(o["unify"] - action.unify) <= 0.02]
    if action.is_dense or not near:
        return 0.0 if action.is_dense else None
    return min(near, key=lambda o: abs(o["prune"] - action.prune) + abs(o["unify"] - action.unify))["val_accuracy_lost"]


def _policy_table(policy: Policy, scores: Path) -> list[str]:
    """The best policy's layers; with the knapsack's ``sensitivity.json``, what each layer's choice costs alone
    and the layers that cost the most."""
    data = sensitivity.read(scores) if scores.is_file() else None
    shapes = any(a.block is not None for a in policy.layers.values())
    head = "| layer | prune | unify |" + (" block |" if shapes else "") + (" val top-1 lost alone (points) |" if data else "")
    lines = ["## Best policy", "", head, "| --- | ---: | ---: |" + (" --- |" if shapes else "") + (" ---: |" if data else "")]
    lost = {}
    for n, a in policy.layers.items():
        row = f"| {n} | {a.prune:.3f} | {a.unify:.3f} |" + (f" {a.block.key if a.block and not a.is_dense else '–'} |" if shapes else "")
        if data:
            lost[n] = _lost_alone(data["layers"].get(n, []), a)
            row += f" {'–' if lost[n] is None else f'{100 * lost[n]:.2f}'} |"
        lines.append(row)
    costly = sorted(((v, n) for n, v in lost.items() if v), reverse=True)[:5]
    if costly:
        lines += ["", "Where the accuracy goes: each layer's choice scored alone (that layer compressed, the rest dense, "
                  "BatchNorm re-estimated; `sensitivity.json`). The costliest: "
                  + ", ".join(f"`{n}` {100 * v:.2f}" for v, n in costly)
                  + f" points; summed over the layers {100 * sum(v for v in lost.values() if v):.2f} points (the knapsack's "
                  "additive estimate; the layers' losses together can differ)."]
    return lines
