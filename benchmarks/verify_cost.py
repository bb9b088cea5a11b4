"""The plan verifier's cost at load against one forward pass (issue 21): ResNet-56 (CIFAR shape, 50 % of its
blocks pruned and 25 % unified at random), exported as a lean plan; then, interleaved in one process,
``uniprune_lean.verify_plan`` on its header and arrays (what every loader runs once before any native call:
each op through the quick path), the same with ``quick=False`` (every op step by step: the verifier as it was
before the quick path), the whole ``read_plan`` (JSON, sha256 of weights.bin, the index checks of ``unpack_arrays``), and one
batch-1 forward pass of the plan on the installed kernels. Reports medians and the ratio verify / forward
(target < 5 %)::

    python benchmarks/verify_cost.py --rounds 200 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import command_line, machine_line, write_section  # noqa: E402
from uniprune.compressors.core.blocks import compressible_layers  # noqa: E402
from uniprune.compressors.latency.table import random_structure  # noqa: E402
from uniprune.compressors.native import uniprune_lean  # noqa: E402
from uniprune.compressors.native.plan import LeanModel, LeanSpec, compile_lean_spec  # noqa: E402
from uniprune.search.models import build_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar-resnet56")
    p.add_argument("--rounds", type=int, default=200, help="interleaved rounds (default 200)")
    p.add_argument("--threads", type=int, default=1, help="kernel threads of the forward pass (default 1)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/RESULTS.md alone")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, input_shape=(3, 32, 32)).eval()
    g = torch.Generator().manual_seed(1)
    structures = {s.name: random_structure(s.grid, 0.5, 0.25, g) for s in compressible_layers(model)}
    x = torch.randn(1, 3, 32, 32)
    spec = compile_lean_spec(model, structures, example_input=x, threads=args.threads)
    with tempfile.TemporaryDirectory() as folder:
        spec.save(folder)
        header, arrays = uniprune_lean.read_plan(folder)
        lean = LeanModel(LeanSpec(header, arrays), threads=args.threads)
        lean(x)
        verify, steps, read, forward = [], [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            uniprune_lean.verify_plan(header, arrays)
            t1 = time.perf_counter()
            lean(x)
            t2 = time.perf_counter()
            uniprune_lean.read_plan(folder)
            t3 = time.perf_counter()
            uniprune_lean.verify_plan(header, arrays, quick=False)
            t4 = time.perf_counter()
            verify.append(t1 - t0)
            forward.append(t2 - t1)
            read.append(t3 - t2)
            steps.append(t4 - t3)
    v, f, r, st = (1e3 * statistics.median(s) for s in (verify, forward, read, steps))
    n_ops, n_arrays = len(header["ops"]), len(arrays)
    weights = sum(a.nbytes for a in arrays.values())
    lines = [
        "## Plan verifier: cost at load (issue 21)",
        "",
        f"Command: `{command_line()}`",
        f"Machine: {machine_line()}; load while measuring: {Path('/proc/loadavg').read_text().split()[:3]}",
        "",
        f"{args.model}, 50 % of blocks pruned and 25 % unified at random, lowered to a lean plan of {n_ops} ops and "
        f"{n_arrays} arrays ({weights / 1e6:.2f} MB of weights); medians of {args.rounds} interleaved rounds:",
        "",
        "| step | ms | share of one forward pass |",
        "| --- | --- | --- |",
        f"| `verify_plan` (every op, buffer, kernel and array reference; what a load runs, once) | {v:.3f} | {100 * v / f:.1f} % |",
        f"| `verify_plan(quick=False)` (every op step by step: the verifier before its quick path) | {st:.3f} | "
        f"{100 * st / f:.1f} % |",
        f"| `read_plan` (JSON, sha256 of weights.bin, array index checks) | {r:.3f} | {100 * r / f:.1f} % |",
        f"| one forward pass, batch 1, {args.threads} thread(s) | {f:.3f} | 100 % |",
        "",
        f"Target: the verifier under 5 % of one batch-1 forward pass: {'met' if v < 0.05 * f else 'not met'} "
        f"({100 * v / f:.1f} %). `read_plan` (the sha256 of the weights above all) was there before the verifier.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("verify_cost", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
