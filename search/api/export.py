"""``export``: a compressed checkpoint, or a model projected onto a policy without fine-tuning, as a deployable
artifact (one native plan, its C sources and a numpy-only loader; see :mod:`uniprune.compressors.formats.artifact`)."""

from __future__ import annotations

import copy
import datetime as _dt
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from uniprune.compressors.core.errors import ConfigError, ModelError
from uniprune.compressors.core.projection import structured_weight
from uniprune.compressors.core.threads import torch_threads
from uniprune.compressors.formats.artifact import check_out_dir, file_sha256, write_artifact
from uniprune.compressors.formats.checkpoint import load_compressed
from uniprune.compressors.native import kernels
from uniprune.compressors.native import uniprune_lean as lean_rt
from uniprune.compressors.native.plan import LeanModel, compile_lean_spec, output_tolerance, resolve_precision
from uniprune.compressors.native.uniprune_lean import available_cores
from uniprune.search.models import build_model, load_state

from .inputs import check_batch_memory, policy_model
from .paths import check_writable
from .result import Result
from .specs import ExportSpec

#: Largest relative error (of the output's scale) of an fp32 plan against the model it came from (a bf16
#: plan: :func:`~uniprune.compressors.native.plan.output_tolerance`).
TOLERANCE = output_tolerance("fp32")


@dataclass(frozen=True)
class ExportResult(Result):
    """The artifact's files and what it holds."""

    files: list[str]
    out: str
    model: str
    input_shape: list[int]
    output_shape: list[int]
    ops: int
    weights_bytes: int
    max_rel_error: float
    batch_size: int
    threads: int
    precision: str
    seconds: float
    segments: list[dict[str, Any]] | None = None  # which nodes run where, for a plan with nodes on ONNX Runtime


def spec_amx(spec: Any) -> int:
    """How many of the plan's convs run on AMX tiles on this machine (bf16 convs not pinned to the fp32 engine)."""
    if "amx_bf16" not in kernels.bf16_units():
        return 0
    return sum(1 for op in lean_rt.plan_ops(spec.header) if (op.get("kernel") or {}).get("type") == "conv"
               and op["kernel"].get("precision") == "bf16" and op["kernel"].get("engine") != "fp32")


def export(spec: ExportSpec) -> ExportResult:
    """Lower ``spec.compressed`` (or ``spec.model`` projected onto ``spec.policy``) into one native plan, check it
    against the model, write the artifact to ``spec.out``."""
    with torch_threads(spec.threads or available_cores()) as threads:
        return ExportResult(**_export(spec, threads))


def _source_model(args: ExportSpec) -> tuple[torch.nn.Module, dict, tuple[int, ...], str, dict[str, Any]]:
    """``(model, structures, input shape, name, source)``: the model to lower and what the artifact records of it."""
    if args.policy:
        if not args.model:
            raise ConfigError("--policy needs --model (and --checkpoint for trained weights): the model to project")
        model, _, structures, shape, name = policy_model(args.policy, args.model, args.checkpoint, args.input_shape,
                                                         args.num_classes)
        check_batch_memory(args.batch_size, math.prod(shape))
        source: dict[str, Any] = {"policy": str(Path(args.policy).resolve()), "policy_sha256": file_sha256(args.policy),
                                  "dense_checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None}
        if not args.checkpoint:
            print("export: note: no --checkpoint: exporting a randomly initialised model", file=sys.stderr)
        return model, structures, shape, name, source
    if args.model or args.checkpoint or args.input_shape or args.num_classes:
        raise ConfigError("--model, --checkpoint, --input-shape and --num-classes go with --policy; a compressed "
                          "checkpoint names its own model and shapes")
    name, state, structures, meta = load_compressed(args.compressed)
    shape = tuple(int(s) for s in meta["input_shape"])
    check_batch_memory(args.batch_size, math.prod(shape))
    model = build_model(name, num_classes=int(meta["num_classes"]), input_shape=shape)
    load_state(model, state, where=args.compressed)
    return model, structures, shape, name, {"checkpoint": str(Path(args.compressed).resolve()),
                                            "checkpoint_sha256": file_sha256(args.compressed)}


def _export(args: ExportSpec, threads: int) -> dict[str, Any]:
    started = time.perf_counter()
    precision = resolve_precision(args.precision)
    check_writable(args.out, "--out", folder=True)
    out = check_out_dir(args.out, args.force)  # before the slow part: a taken --out fails at once
    model, structures, shape, name, source = _source_model(args)
    model.eval()
    print(f"export: {name} input {list(shape)}, {len(structures)} structured layers; choosing conv implementations at "
          f"batch {args.batch_size} on {threads} thread(s), {precision}", file=sys.stderr)
    x = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(0))
    spec = compile_lean_spec(model, structures, example_input=x, threads=threads, precision=precision,
                             onnx_fallback=True)
    ort = lean_rt.onnx_nodes(spec.header.get("segments"))
    if ort:
        print(f"export: {len(ort)} node(s) run on ONNX Runtime inside the plan: {', '.join(ort)}", file=sys.stderr)
    # the check runs the plan exactly as it is written, against the model with its structures imposed
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer, st in structures.items():
            m = reference.get_submodule(layer)
            m.weight.copy_(structured_weight(m.weight.detach(), st))
        ref = reference(x)
    got = LeanModel(spec, threads=threads)(x)
    if float(ref.max() - ref.min()) == 0.0:  # torchvision's ViT and ConvNeXt heads start at zero
        print("export: note: the model's output is the same number everywhere on the check's input (a classifier "
              "initialised to zero?), so the check below compares nothing; export trained weights (--checkpoint) "
              "to have it mean something", file=sys.stderr)
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    tolerance = output_tolerance(precision)
    if not err <= tolerance:
        raise ModelError(f"the lowered plan's output differs from the model's (relative error {err:.2g} > {tolerance:g}); "
                         "nothing was written: this is a bug, please report it with the checkpoint")
    source |= {"model_name": name, "num_classes": int(spec.header["output_shape"][0]), "input_shape": list(shape),
               "isa": kernels.isa(), "kernels_build": kernels.build_id(), "precision": precision,
               "exported": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    files = write_artifact(out, spec, source=source, force=args.force)
    weights = files[1].stat().st_size
    print(f"export: wrote {out} ({len(lean_rt.plan_ops(spec.header))} ops, {weights / 1e6:.2f} MB of weights; "
          f"max relative error {err:.1e}; {precision}{f', {spec_amx(spec)} convs on AMX' if precision == 'bf16' else ''})",
          file=sys.stderr)
    return {"files": [str(f) for f in files], "out": str(out), "model": name, "input_shape": list(shape),
            "output_shape": list(spec.header["output_shape"]), "ops": len(lean_rt.plan_ops(spec.header)), "weights_bytes": weights,
            "max_rel_error": err, "batch_size": args.batch_size, "threads": threads, "precision": precision,
            "seconds": round(time.perf_counter() - started, 2),
            "segments": [{"runs_on": seg["runs_on"], "nodes": seg["nodes"]} for seg in spec.header["segments"]]
            if lean_rt.is_segmented(spec.header) else None}
