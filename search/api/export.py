"""``export``: a compressed checkpoint as a deployable artifact (one native plan, its C sources and a numpy-only
loader; see :mod:`uniprune.compressors.formats.artifact`)."""

from __future__ import annotations

import copy
import datetime as _dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from uniprune.compressors.core.errors import ModelError
from uniprune.compressors.core.projection import structured_weight
from uniprune.compressors.core.threads import torch_threads
from uniprune.compressors.formats.artifact import check_out_dir, file_sha256, write_artifact
from uniprune.compressors.formats.checkpoint import load_compressed
from uniprune.compressors.native import kernels
from uniprune.compressors.native.plan import LeanModel, compile_lean_spec
from uniprune.search.models import build_model, load_state

from .result import Result
from .specs import ExportSpec

#: Largest relative error (of the output's scale) of the exported plan against the model it came from.
TOLERANCE = 1e-4


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
    seconds: float


def export(spec: ExportSpec) -> ExportResult:
    """Lower ``spec.compressed`` into one native plan, check it against the model, write the artifact to ``spec.out``."""
    with torch_threads(spec.threads) as threads:
        return ExportResult(**_export(spec, threads))


def _export(args: ExportSpec, threads: int) -> dict[str, Any]:
    started = time.perf_counter()
    out = check_out_dir(args.out, args.force)  # before the slow part: a taken --out fails at once
    name, state, structures, meta = load_compressed(args.compressed)
    shape = tuple(int(s) for s in meta["input_shape"])
    model = build_model(name, num_classes=int(meta["num_classes"]), input_shape=shape)
    load_state(model, state, where=args.compressed)
    model.eval()
    print(f"export: {name} input {list(shape)}, {len(structures)} structured layers; choosing conv implementations at "
          f"batch {args.batch_size} on {threads} thread(s)", file=sys.stderr)
    x = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(0))
    spec = compile_lean_spec(model, structures, example_input=x, threads=threads)
    # the check runs the plan exactly as it is written, against the model with its structures imposed
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer, st in structures.items():
            m = reference.get_submodule(layer)
            m.weight.copy_(structured_weight(m.weight.detach(), st))
        ref = reference(x)
    got = LeanModel(spec, threads=threads)(x)
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if not err <= TOLERANCE:
        raise ModelError(f"the lowered plan's output differs from the model's (relative error {err:.2g} > {TOLERANCE:g}); "
                         "nothing was written: this is a bug, please report it with the checkpoint")
    source = {"model_name": name, "num_classes": int(meta["num_classes"]), "input_shape": list(shape),
              "checkpoint": str(Path(args.compressed).resolve()), "checkpoint_sha256": file_sha256(args.compressed),
              "isa": kernels.isa(), "kernels_build": kernels.build_id(),
              "exported": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    files = write_artifact(out, spec, source=source, force=args.force)
    weights = files[1].stat().st_size
    print(f"export: wrote {out} ({len(spec.header['ops'])} ops, {weights / 1e6:.2f} MB of weights; "
          f"max relative error {err:.1e})", file=sys.stderr)
    return {"files": [str(f) for f in files], "out": str(out), "model": name, "input_shape": list(shape),
            "output_shape": list(spec.header["output_shape"]), "ops": len(spec.header["ops"]), "weights_bytes": weights,
            "max_rel_error": err, "batch_size": args.batch_size, "threads": threads,
            "seconds": round(time.perf_counter() - started, 2)}
