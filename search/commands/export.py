"""`uniprune export`: a compressed checkpoint as a deployable artifact (one native plan, its C sources and a
numpy-only loader; see :mod:`uniprune.compressors.formats.artifact`)."""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from uniprune.compressors.core.errors import ModelError
from uniprune.compressors.core.projection import structured_weight
from uniprune.compressors.formats.artifact import check_out_dir, file_sha256, write_artifact
from uniprune.compressors.native import kernels
from uniprune.compressors.native.plan import LeanModel, compile_lean_spec, output_tolerance, resolve_precision

from .common import add_precision_argument, check_batch_memory, check_writable, positive_int

NAME = "export"
HELP = "write a compressed checkpoint as a deployable artifact: one native plan, its C sources and a numpy-only loader"

#: Largest relative error (of the output's scale) of an fp32 plan against the model it came from (a bf16
#: plan: :func:`~uniprune.compressors.native.plan.output_tolerance`).
TOLERANCE = output_tolerance("fp32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compressed", required=True, help="the compressed checkpoint ('uniprune finetune --out')")
    parser.add_argument("--out", required=True, help="artifact directory to write (must not exist unless --force)")
    parser.add_argument("--batch-size", type=positive_int, default=1,
                        help="batch the conv implementations are timed and chosen at (default 1); any batch runs")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="kernel threads the choices are timed on and the loader's default (default 1)")
    parser.add_argument("--force", action="store_true", help="replace --out if it is an earlier artifact (or empty)")
    add_precision_argument(parser, "the artifact is written in (recorded in it; its loader checks the CPU)")


def spec_amx(spec: Any) -> int:
    """How many of the plan's convs run on AMX tiles on this machine (bf16 convs not pinned to the fp32 engine)."""
    if "amx_bf16" not in kernels.bf16_units():
        return 0
    return sum(1 for op in spec.header["ops"] if (op.get("kernel") or {}).get("type") == "conv"
               and op["kernel"].get("precision") == "bf16" and op["kernel"].get("engine") != "fp32")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from uniprune.compressors.formats.checkpoint import load_compressed
    from uniprune.search.models import build_model, load_state

    started = time.perf_counter()
    precision = resolve_precision(args.precision)
    check_writable(args.out, "--out", folder=True)
    out = check_out_dir(args.out, args.force)  # before the slow part: a taken --out fails at once
    name, state, structures, meta = load_compressed(args.compressed)
    shape = tuple(int(s) for s in meta["input_shape"])
    check_batch_memory(args.batch_size, math.prod(shape))
    model = build_model(name, num_classes=int(meta["num_classes"]), input_shape=shape)
    load_state(model, state, where=args.compressed)
    model.eval()
    print(f"export: {name} input {list(shape)}, {len(structures)} structured layers; choosing conv implementations at "
          f"batch {args.batch_size} on {args.threads} thread(s), {precision}", file=sys.stderr)
    x = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        spec = compile_lean_spec(model, structures, example_input=x, threads=args.threads, precision=precision)
        # the check runs the plan exactly as it is written, against the model with its structures imposed
        reference = copy.deepcopy(model)
        with torch.no_grad():
            for layer, st in structures.items():
                m = reference.get_submodule(layer)
                m.weight.copy_(structured_weight(m.weight.detach(), st))
            ref = reference(x)
        got = LeanModel(spec, threads=args.threads)(x)
    finally:
        torch.set_num_threads(before)
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    tolerance = output_tolerance(precision)
    if not err <= tolerance:
        raise ModelError(f"the lowered plan's output differs from the model's (relative error {err:.2g} > {tolerance:g}); "
                         "nothing was written: this is a bug, please report it with the checkpoint")
    source = {"model_name": name, "num_classes": int(meta["num_classes"]), "input_shape": list(shape),
              "checkpoint": str(Path(args.compressed).resolve()), "checkpoint_sha256": file_sha256(args.compressed),
              "isa": kernels.isa(), "kernels_build": kernels.build_id(), "precision": precision,
              "exported": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    files = write_artifact(out, spec, source=source, force=args.force)
    weights = files[1].stat().st_size
    print(f"export: wrote {out} ({len(spec.header['ops'])} ops, {weights / 1e6:.2f} MB of weights; "
          f"max relative error {err:.1e}; {precision}{f', {spec_amx(spec)} convs on AMX' if precision == 'bf16' else ''})",
          file=sys.stderr)
    return {"files": [str(f) for f in files], "out": str(out), "model": name, "input_shape": list(shape),
            "output_shape": list(spec.header["output_shape"]), "ops": len(spec.header["ops"]), "weights_bytes": weights,
            "max_rel_error": err, "batch_size": args.batch_size, "threads": args.threads, "precision": precision,
            "seconds": round(time.perf_counter() - started, 2)}
