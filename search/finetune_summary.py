"""What a fine-tune tells its user: the dense model against the compressed one, every layer, and the warnings.

One text for two readers: ``uniprune finetune`` prints it (stderr) and ``report.md`` embeds it, both from the
summary the fine-tune keeps in ``finetune.json`` (:func:`summary_markdown`). The table holds, for the dense
model on every engine mode (each at the precision it ran) and for the compressed model on what runs it, the
top-1, the milliseconds, the speedup over the fastest engine at its default precision (what a user would run
instead) and the size; under it the latency budget's verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _pct(x: Any) -> str:
    return f"{100 * float(x):.2f} %" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def comparison_table(summary: Mapping[str, Any]) -> list[str]:
    """Markdown lines: one row per dense engine mode and one for the compressed model (top-1, precision, ms,
    speedup over the baseline engine, size), then the budget's verdict. Without timing (``--no-latency``), the
    top-1 and size rows alone."""
    timing = summary.get("timing") or {}
    engines: Mapping[str, float] = timing.get("engines") or {}
    precisions = timing.get("precisions") or {}
    best = timing.get("best_dense_ms")
    batch = summary.get("batch_size", 1)
    lines = [f"| model | runs on | precision | top-1 (test) | ms (batch {batch}) | speedup | size |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for mode, ms in engines.items():
        mark = " (baseline)" if mode == timing.get("best_engine") else ""
        lines.append(f"| dense | {mode}{mark} | {precisions.get(mode, 'f32')} | {_pct(summary.get('dense_accuracy'))} | "
                     f"{ms:.3f} | {best / ms:.2f}x | 1.00 |")
    if not engines:
        lines.append(f"| dense | torch | f32 | {_pct(summary.get('dense_accuracy'))} | – | – | 1.00 |")
    where = timing.get("compressed_engine") or (f"uniprune ({timing['runtime']})" if timing.get("runtime") else "–")
    precision = timing.get("compressed_precision") or timing.get("precision") or "–"
    ms = timing.get("compressed_ms")
    speedup = timing.get("speedup") or (best / ms if ms and best else None)  # the paired ratio latency_ratio inverts
    size = summary.get("size_ratio")
    lines.append(f"| **{summary.get('method', 'compressed')}** | {where} | {precision} | **{_pct(summary.get('accuracy'))}** | "
                 f"{f'{ms:.3f}' if ms else '–'} | {f'**{speedup:.2f}x**' if speedup else '–'} | "
                 f"{f'{size:.2f}' if isinstance(size, (int, float)) else '–'} |")
    out = lines + [""]
    if engines:
        out.append("Top-1 of the dense rows: the dense model in torch f32 (an engine at bf16 or INT8 may differ a "
                   "little; `uniprune bench --dataset` scores each). Speedup: over the fastest engine at its default "
                   "precision, timed in the same interleaved rounds (the compressed row: the paired ratio of those rounds).")
    verdict = summary.get("budget_verdict")
    if verdict and summary.get("latency_budget") is not None:
        out.append(f"Latency budget {summary.get('latency_budget')}: {verdict}.")
    return out


def layer_table(layers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: every compressible layer with what the fine-tune did to it; layers kept dense marked."""
    if not layers:
        return []
    channel = any("channels" in r for r in layers)
    head = "| layer | shape | channels kept |" if channel else "| layer | shape | block | pruned | unified |"
    lines = [head, "| --- | --- | ---: |" if channel else "| --- | --- | --- | ---: | ---: |"]
    for r in layers:
        shape = "x".join(str(d) for d in r.get("shape", []))
        name = f"{r['name']} (dense)" if r.get("dense") else r["name"]
        if channel:
            kept, before = r.get("channels") or (None, None)
            lines.append(f"| {name} | {shape} | {'–' if kept is None else f'{kept} of {before}'} |")
        else:
            lines.append(f"| {name} | {shape} | {r.get('block', '–')} | {100 * r.get('prune', 0):.0f} % | "
                         f"{100 * r.get('unify', 0):.0f} % |")
    return lines


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The whole text: the run's name, the comparison table, the convergence warnings, every layer."""
    lines = [f"## Fine-tune: {summary.get('run', '?')} ({summary.get('method', '?')}, {summary.get('epochs_run', summary.get('epochs'))} "
             f"epochs, {summary.get('seconds', 0):.0f} s)", ""]
    lines += comparison_table(summary) + [""]
    warnings = summary.get("warnings") or []
    if warnings:
        lines += ["Warnings (the fine-tune looks unfinished):", ""] + [f"- {w}" for w in warnings] + [""]
    layers = layer_table(summary.get("layers") or [])
    if layers:
        lines += ["Layers:", ""] + layers + [""]
    return "\n".join(lines)


def layer_records(model: Any, policy: Any, structures: Mapping[str, Any], channels: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One JSON-able record per compressible layer of the fine-tuned ``model``, for :func:`layer_table`: its weight
    shape and what was done to it (block shape, pruned and unified shares; or channels kept of before, for
    channel pruning), ``dense`` when it was left as it was."""
    from torch import nn
    from uniprune.compressors.core.blocks import policy_layers

    if channels is not None:
        kept = channels.get("kept") or {}
        out = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                pair = kept.get(name) or [m.weight.shape[0], m.weight.shape[0]]
                out.append({"name": name, "shape": list(m.weight.shape), "channels": list(pair), "dense": name not in kept})
        return out
    out = []
    for spec in policy_layers(model, policy):  # each layer tiled as the policy says (its own block shape wins)
        s = structures.get(spec.name)
        record = {"name": spec.name, "shape": list(spec.module.weight.shape),
                  "block": f"{spec.grid.block_shape.out}x{spec.grid.block_shape.inp}", "prune": 0.0, "unify": 0.0, "dense": s is None}
        if s is not None:
            counts, total = s.counts(), max(1, s.grid.num_blocks)
            record.update(prune=counts["prune"] / total, unify=counts["unify"] / total,
                          block=f"{s.grid.block_shape.out}x{s.grid.block_shape.inp}", dense=counts["prune"] + counts["unify"] == 0)
        out.append(record)
    return out
