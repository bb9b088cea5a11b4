"""The cost of a node the plan lacks (issue 22, item 3): a custom Mish (``x * tanh(softplus(x))``, none of whose
functions the plan lowers; and ``x * erf(x)``) in CIFAR ResNet-20 (75 % of its blocks pruned at random, batch 1, 1 thread), run as a
segmented plan (its three nodes on ONNX Runtime inside the plan), against the same model with ReLU in Mish's
place (one native plan: the model without that op's cost) and against the model on the layer-by-layer Python
path (what a model with such a node ran on before). Two placements: Mish after the stem (one tensor live:
the ONNX segment is the three nodes) and Mish inside the first residual block (the shortcut is live beside it:
the ONNX segment is the whole block). Interleaved rounds, least time of each. Target: segmented / ReLU <= 1.2::

    python benchmarks/plan_fallback.py --rounds 300 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.core.projection import apply_structures  # noqa: E402
from uniprune.compressors.core.threads import torch_threads  # noqa: E402
from uniprune.compressors.latency.table import compile_for_timing, random_structure  # noqa: E402
from uniprune.compressors.latency.timing import interleaved_samples  # noqa: E402
from uniprune.compressors.native.plan import compile_lean  # noqa: E402
from uniprune.search.models import build_model  # noqa: E402

TARGET = 1.2


class Mish(nn.Module):
    """A user's own activation the plan has no op for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class ErfGate(nn.Module):
    """Another one: x * erf(x) (the plan lowers GELU, not a bare erf); ONNX Runtime's Erf is vectorised, its
    Softplus and Tanh are not, so the two bracket what a missing op costs there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.erf(x)


OPS = {"Mish": Mish, "x * erf(x)": ErfGate}


class ActBlock(nn.Module):
    """A CIFAR BasicBlock with ``act`` in place of its first ReLU."""

    def __init__(self, block: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.block, self.act = block, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        out = self.act(b.bn1(b.conv1(x)))
        return F.relu(b.bn2(b.conv2(out)) + b.shortcut(x))


class WithAct(nn.Module):
    """CIFAR ResNet-20 with ``act`` after the stem (``where="stem"``) or inside its first block (``"block"``)."""

    def __init__(self, net: nn.Module, act: nn.Module, where: str) -> None:
        super().__init__()
        self.net, self.where = net, where
        self.act = act if where == "stem" else nn.Identity()
        if where == "block":
            net.layer1[0] = ActBlock(net.layer1[0], act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        out = self.act(F.relu(n.bn1(n.conv1(x))))
        out = n.layer3(n.layer2(n.layer1(out)))
        return n.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _model(act: nn.Module, where: str) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = WithAct(build_model("cifar-resnet20", num_classes=10, input_shape=(3, 32, 32)), act, where).eval()
    g = torch.Generator().manual_seed(1)
    return model, {s.name: random_structure(s.grid, 0.75, 0.0, g) for s in compressible_layers(model)}


def _masked(model: nn.Module, structures: dict) -> nn.Module:
    """The reference: ``model`` with ``structures`` imposed on its weights, run by torch."""
    out = copy.deepcopy(model)
    apply_structures(out, structures)
    return out


def measure(op: str, where: str, rounds: int, threads: int) -> dict:
    """Least ms of the segmented plan, the ReLU plan, the Python path and the ONNX segment alone."""
    x = torch.randn(1, 3, 32, 32)
    mish, structures = _model(OPS[op](), where)
    relu, relu_structures = _model(nn.ReLU(), where)
    seg = compile_lean(mish, structures, example_input=x, threads=threads, onnx_fallback=True)
    plain = compile_lean(relu, relu_structures, example_input=x, threads=threads)
    python, runtime, _ = compile_for_timing(mish, structures, x, threads, "python")
    assert seg.segments is not None and plain.segments is None and runtime == "python"
    # the ONNX segment alone, on its own input: what the op itself costs on ONNX Runtime
    k, (_, ort, _, _) = next((k, p) for k, p in enumerate(seg._native.parts) if p[0] == "onnxruntime")
    parts = seg.header["segments"]
    ort_in = torch.randn(1, *parts[k]["input_shape"]).numpy()
    with torch.no_grad():
        ref = _masked(mish, structures)(x)
        err = float((seg(x) - ref).abs().max() / ref.abs().max())
        samples = interleaved_samples({"segmented": lambda: seg(x), "relu": lambda: plain(x),
                                       "python": lambda: python(x), "ort_alone": lambda: ort.run(ort_in)},
                                      warmup=20, repeats=rounds, threads=threads)
    best = {name: min(s) for name, s in samples.items()}
    ort_nodes = [n for r, nodes in seg.segments if r == "onnxruntime" for n in nodes]
    return {**best, "err": err, "ort_nodes": ort_nodes, "segments": [r for r, _ in seg.segments]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300, help="interleaved rounds (default 300)")
    p.add_argument("--threads", type=int, default=1, help="threads of the plan, ONNX Runtime and torch (default 1)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/RESULTS.md alone")
    args = p.parse_args(argv)
    load = Path("/proc/loadavg").read_text().split()[:3]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with torch_threads(args.threads):
        results = {(op, where): measure(op, where, args.rounds, args.threads)
                   for op, where in (("Mish", "stem"), ("Mish", "block"), ("x * erf(x)", "stem"))}
    lines = [
        "## A node the plan lacks, on ONNX Runtime inside the plan (issue 22, item 3)",
        "",
        f"Command: `{command_line()}`",
        f"Machine: {machine_line()}; load before measuring: {load}; started {started}",
        "",
        "CIFAR ResNet-20 with a custom module the plan has no op for (Mish, `x * tanh(softplus(x))`, or `x * erf(x)`), "
        f"75 % of each layer's blocks pruned at random, batch 1, {args.threads} thread(s), fp32; least ms of "
        f"{args.rounds} interleaved rounds. *ReLU plan*: the same model with ReLU in the op's place, one native plan "
        "(the model without the op's cost). *Segmented*: native plans with the op's ONNX segment between them. *ONNX "
        "alone*: that segment's ONNX Runtime session on its own input (the op's own cost there, the session call "
        "included). *Python path*: what such a model ran on before.",
        "",
        "| op, placed | ONNX segment's nodes | ReLU plan ms | segmented ms | ONNX alone ms | Python path ms | "
        "segmented / ReLU | (segmented - ONNX alone) / ReLU | Python path / ReLU | max rel. error |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (op, where), r in results.items():
        nodes = (", ".join(r["ort_nodes"]) if len(r["ort_nodes"]) <= 4
                 else f"{len(r['ort_nodes'])} nodes ({r['ort_nodes'][0]} .. {r['ort_nodes'][-1]})")
        raw, own = r["segmented"] / r["relu"], (r["segmented"] - r["ort_alone"]) / r["relu"]
        lines.append(f"| {op}, {'after the stem' if where == 'stem' else 'inside the first residual block'} | {nodes} | "
                     f"{r['relu']:.3f} | {r['segmented']:.3f} | {r['ort_alone']:.3f} | {r['python']:.3f} | "
                     f"{raw:.2f}x | {own:.2f}x | {r['python'] / r['relu']:.2f}x | {r['err']:.1e} |")
    mish, erf = results[("Mish", "stem")], results[("x * erf(x)", "stem")]
    lines += [
        "",
        f"Target (at most 1.2x slower than the same model without the op's cost): after the stem, the time beyond the "
        f"op's own run on ONNX Runtime is {(mish['segmented'] - mish['ort_alone']) / mish['relu']:.2f}x (Mish) and "
        f"{(erf['segmented'] - erf['ort_alone']) / erf['relu']:.2f}x (`x * erf(x)`) of the ReLU plan; the whole "
        f"segmented pass is {erf['segmented'] / erf['relu']:.2f}x with `x * erf(x)` and "
        f"{mish['segmented'] / mish['relu']:.2f}x with Mish, whose own cost on ONNX Runtime "
        f"({mish['ort_alone']:.3f} ms for 16x32x32 floats: its Softplus and Tanh are not vectorised there) is as "
        "large as the whole pruned network's. Inside a residual block the shortcut is live beside the branch and "
        "segments hand over one tensor, so the whole block (its convs dense, masked) runs on ONNX Runtime.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("plan_fallback", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
