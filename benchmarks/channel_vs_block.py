"""Channel pruning against block pruning at equal MACs, each on the engine that runs it fastest.

    python benchmarks/channel_vs_block.py                                  # ResNet-20 and ResNet-56, batch 1 and 32
    python benchmarks/channel_vs_block.py --models cifar-resnet56 --batches 1

Channel pruning: ``l1_filter_prune`` removes the filters of smallest L1 norm from the first conv of every
BasicBlock (the block-internal convs; the second conv loses the matching input channels), physically: the
result is a smaller dense model, run on every dense engine (torch eager, ONNX Runtime, OpenVINO; BatchNorm
folded) and on uniprune's lean plan with every block kept; its figure is the fastest of them. Ratios 0.5
and 0.25 of those filters, i.e. about half and a quarter of all MACs.

Block pruning at the same MACs, random 8x4 conv blocks run on the lean plan, two ways:
- "same layers": each block's two convs lose the same share of their blocks as channel pruning takes from
  their MACs (the first conv's filters, the second conv's input channels), so every layer keeps the same MACs;
- "all layers": one share for every compressible layer (stem conv, block convs, classifier with 8x8 blocks)
  giving the same total MACs.

MACs are those of the convs and linears (compressors/core/accounting.py: ``layer_profile`` for the smaller dense
model, ``model_size`` for the block structures). Everything of one model and batch, the unpruned model on
every dense engine included, is timed interleaved in the same rounds (uniprune.compressors.latency.timing), one
thread, statistic min. Pretrained CIFAR weights from ../shared/data when present (timing does not depend on
them). Writes section ``channel_vs_block`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import add_timing_arguments  # noqa: E402
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.accounting import layer_profile, model_size  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.latency.engines import dense_engines  # noqa: E402
from uniprune.compressors.latency.table import random_structure  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples, reducer  # noqa: E402
from uniprune.compressors.native.kernels import build_id  # noqa: E402
from uniprune.compressors.native.plan import compile_lean, lower  # noqa: E402
from uniprune.compressors.train.baselines import filter_chains, l1_filter_prune  # noqa: E402
from uniprune.search.models import build_model, load_weights  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrained"
PRETRAINED = {"cifar-resnet20": "resnet20-12fca82f.th", "cifar-resnet56": "resnet56-4bfd9763.th"}
MODELS = ["cifar-resnet20", "cifar-resnet56"]
RATIOS = (0.5, 0.25)
SHAPE = (3, 32, 32)


def _model(name: str) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=SHAPE).eval()
    file = DATA / PRETRAINED.get(name, "-")
    if file.is_file():
        load_weights(model, file)
        return model, "pretrained"
    return model, "random init"


def _macs(model: torch.nn.Module) -> int:
    return sum(int(p["macs"]) for p in layer_profile(model, SHAPE).values())


def _block_internal(model: torch.nn.Module) -> list:
    """The chains whose conv is the first conv of a BasicBlock (its consumer is the block's second conv)."""
    return [c for c in filter_chains(model) if c.conv.endswith(".conv1") and c.consumer.endswith(".conv2")]


def _structures(model: torch.nn.Module, shares: dict[str, float], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {s.name: random_structure(s.grid, shares[s.name], 0.0, g) for s in compressible_layers(model) if s.name in shares}


def variants(model: torch.nn.Module, ratio: float, seed: int) -> dict:
    """The channel-pruned model and the two block structures at its MACs, with each one's MAC fraction kept."""
    dense_macs = _macs(model)
    chains = _block_internal(model)
    channel = copy.deepcopy(model)
    report = l1_filter_prune(channel, {c.conv: ratio for c in chains})
    channel.eval()
    channel_kept = _macs(channel) / dense_macs
    # same layers: conv1 loses `removed / out` of its MACs (filters), conv2 the same share (input channels)
    same = {}
    for c in chains:
        r = report.get(c.conv)
        share = 0.0 if r is None else r["removed"] / (r["removed"] + r["kept"])
        same[c.conv] = same[c.consumer] = share
    same_st = _structures(model, same, seed)
    all_st = _structures(model, {s.name: 1.0 - channel_kept for s in compressible_layers(model)}, seed + 1)

    def kept(st: dict) -> float:
        return float(model_size(model, st, input_shape=SHAPE)["total"]["mac_ratio"])

    return {"ratio": ratio, "channel": channel, "same": same_st, "all": all_st,
            "removed": {"channel": 1 - channel_kept, "same": 1 - kept(same_st), "all": 1 - kept(all_st)}}


def measure(name: str, batch: int, args: argparse.Namespace) -> dict:
    model, weights = _model(name)
    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    fns: dict = {}
    notes: list[str] = []
    dense = dense_engines(model, x, threads=args.threads)
    notes += dense.notes
    fns.update({f"dense/{e}": f for e, f in dense.runners.items()})
    rows = []
    for i, ratio in enumerate(RATIOS):
        v = variants(model, ratio, seed=10 + i)
        eng = dense_engines(v["channel"], x, threads=args.threads)
        notes += eng.notes
        key = f"{ratio:g}"
        fns.update({f"channel/{key}/{e}": f for e, f in eng.runners.items()})
        lean_channel = lower(v["channel"], x, threads=args.threads)
        fns[f"channel/{key}/lean"] = lambda m=lean_channel: m(x)
        for kind in ("same", "all"):
            lean = compile_lean(model, v[kind], example_input=x, threads=args.threads)
            fns[f"block-{kind}/{key}"] = lambda m=lean: m(x)
        rows.append(v)
    t = interleaved_samples(fns, warmup=2, repeats=args.repeats, threads=args.threads, min_seconds=args.min_seconds)
    reduce = reducer("min")
    ms = {k: reduce(s) for k, s in t.items()}
    out = []
    for v in rows:
        key = f"{v['ratio']:g}"
        channel = {k.rsplit("/", 1)[1]: m for k, m in ms.items() if k.startswith(f"channel/{key}/")}
        best = min(channel, key=channel.__getitem__)
        out.append({"ratio": v["ratio"], "removed": v["removed"], "channel": channel, "channel_best": best,
                    "same": ms[f"block-same/{key}"], "all": ms[f"block-all/{key}"]})
    dense_ms = {k.split("/", 1)[1]: m for k, m in ms.items() if k.startswith("dense/")}
    return {"model": name, "weights": weights, "batch": batch, "dense": dense_ms, "rows": out, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="CIFAR ResNets (default: ResNet-20 and ResNet-56)")
    add_timing_arguments(parser)
    args = parser.parse_args(argv)
    results = []
    for name in args.models:
        for batch in args.batches:
            r = measure(name, batch, args)
            results.append(r)
            for row in r["rows"]:
                print(f"{name} batch {batch} ratio {row['ratio']:g}: MACs removed "
                      + " ".join(f"{k} {v:.1%}" for k, v in row["removed"].items())
                      + f" | channel {row['channel_best']} {row['channel'][row['channel_best']]:.3f} ms"
                      + f" | block same {row['same']:.3f} all {row['all']:.3f} ms", file=sys.stderr, flush=True)
    engines = list(results[0]["rows"][0]["channel"])
    head = ["model", "batch", "filters removed", "MACs removed: channel / block same / block all",
            "unpruned, fastest dense (ms)", *[f"channel on {e} (ms)" for e in engines],
            "block, same layers, lean (ms)", "block, all layers, lean (ms)",
            "block same / best channel", "block all / best channel", "block same / channel on lean"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    verdicts, same_kernels = [], []
    for r in results:
        dense_best = min(r["dense"], key=r["dense"].__getitem__)
        for row in r["rows"]:
            best = row["channel"][row["channel_best"]]
            rm = row["removed"]
            cells = [r["model"], str(r["batch"]), f"{row['ratio']:.0%}",
                     f"{rm['channel']:.1%} / {rm['same']:.1%} / {rm['all']:.1%}",
                     f"{r['dense'][dense_best]:.3f} ({dense_best})"]
            cells += [f"**{row['channel'][e]:.3f}**" if e == row["channel_best"] else f"{row['channel'][e]:.3f}"
                      for e in engines]
            cells += [f"{row['same']:.3f}", f"{row['all']:.3f}", f"{row['same'] / best:.2f}", f"{row['all'] / best:.2f}"]
            same_kernels.append(row["same"] / row["channel"]["lean"])
            cells.append(f"{same_kernels[-1]:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
            verdicts.append(min(row["same"], row["all"]) <= best)
    met = sum(verdicts)
    notes = sorted({n.splitlines()[0][:300] for r in results for n in r["notes"]})
    md = [
        f"Machine: {machine_line()}; kernel build {build_id()}; {args.threads} thread(s); statistic min over at least "
        f"{args.repeats} interleaved rounds spanning at least {args.min_seconds:g} s.", f"Command: `{command_line()}`", "",
        "Channel pruning: `l1_filter_prune` on the first conv of every BasicBlock (filters physically removed, the "
        "second conv's inputs with them), run as a plain dense model on every dense engine and on the lean plan; "
        "bold: its fastest. Block pruning: random 8x4 conv blocks on the lean plan at the same MACs, either on the "
        "same layers with each layer's MACs equal to the channel-pruned model's (\"same layers\"), or one share "
        "of every compressible layer's blocks, the stem conv and the classifier (8x8) included, at the same total "
        "(\"all layers\"). MACs: convs and linears. Ratios below 1.00: block pruning faster.", "",
        *lines, "",
        f"Target (block pruning at equal MACs at least as fast as channel pruning on its fastest engine): met in "
        f"{met} of {len(verdicts)} rows by the faster block variant. On the same kernels (the channel-pruned model "
        f"lowered to the lean plan with every block kept) block pruning runs at {min(same_kernels):.2f}x to "
        f"{max(same_kernels):.2f}x the channel-pruned time"
        + (": where it loses, it loses to the fastest engine's dense convolution, not to its own sparsity."
           if max(same_kernels) <= 1.1 else "."),
        *([""] + [f"Note: {n}" for n in notes] if notes else []),
    ]
    write_section("channel_vs_block", "## Channel pruning against block pruning at equal MACs\n\n" + "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
