"""The deployable artifact of a compressed model (``uniprune export``): one directory that runs without uniprune
or torch, only numpy, ctypes and a C compiler.

Layout (every file written into a temporary directory beside ``out`` that is then renamed into place, so an
artifact appears whole or not at all)::

    plan.json            the lean plan's header: ops, shapes, buffers, the array index, the source model (a
                         segmented plan: native plans and ONNX segments in turn, uniprune_lean/ort_segment.py)
    weights.bin          its arrays (packed weights, per-op data, an ONNX segment's model bytes), raw
                         little-endian, 64-byte aligned
    uniprune_kernels.c   the block-sparse kernels
    uniprune_plan.c      the plan executor
    uniprune_bf16.c      the bf16 kernels (AMX tiles) and the CPU's bf16 capabilities
    uniprune_common.h    what the three share (allocation, clock, index checks, the thread pool)
    uniprune_lean/       the loader (compressors/native/uniprune_lean/, the package every in-process plan is built with)
    README.md            how to run it

``plan.json``'s ``"precision"`` is ``fp32`` or ``bf16`` (bf16 weights in ``weights.bin``; the loader refuses a bf16
artifact in one line on a CPU with neither avx512_bf16 nor amx_bf16). ``"source"`` names the model (zoo name, classes, per-sample input shape) and the compressed
checkpoint it came from (path and sha256): ``uniprune bench --compressed DIR`` needs that checkpoint to
build the dense model its engines run, and checks by the hash that it is the same file. An artifact carries
no dense weights: it is what a user deploys, and the dense model is only the benchmark's baseline.

What may run code: uniprune reads an artifact as data only. ``uniprune bench`` (:func:`open_artifact`) reads
``plan.json`` and ``weights.bin`` with the installed ``uniprune_lean`` reader, verifies them
(``verify_plan``), and runs them on uniprune's own kernels; it never imports the artifact's
``uniprune_lean`` nor compiles its C sources. Those are for the artifact's users, whose ``Model`` compiles
what the artifact ships: an artifact is code, to be trusted like any other code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import CheckpointError, ConfigError, ModelError
from ..latency.engines import DenseEngines, dense_engines, race
from ..latency.timing import SPREAD_SECONDS, check_threads
from ..native import kernels
from ..native import uniprune_lean as lean_rt
from ..native.plan import LeanModel, LeanSpec, output_tolerance
from ..native.segments import placement

LOADER = "uniprune_lean"  # a folder: the loader package, copied whole
README = "README.md"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_artifact(path: Path) -> bool:
    try:
        lean_rt.read_header(path, fields=False)
    except lean_rt.LeanError:
        return False
    return True


def check_out_dir(out: str | os.PathLike, force: bool) -> Path:
    """``out`` as a path where an artifact may be written: absent, or (with ``force``) an empty directory or an
    earlier artifact. Anything else raises a one-line ConfigError; nothing is touched here."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise ConfigError(f"--out {str(out)!r} already exists; pass --force to replace it or choose another directory")
        if not out.is_dir() or out.is_symlink():
            raise ConfigError(f"--out {str(out)!r} is not a directory; refusing to replace it even with --force")
        if any(out.iterdir()) and not _is_artifact(out):
            raise ConfigError(f"--out {str(out)!r} holds files that are not a uniprune artifact; refusing to replace it "
                              "even with --force: choose another directory")
    if not out.parent.is_dir():
        raise ConfigError(f"the parent of --out {str(out)!r} does not exist; create it first")
    return out


def _segments_line(header: Mapping[str, Any]) -> str:
    """The README's line on nodes that run on ONNX Runtime (a segmented plan), or nothing."""
    ort = lean_rt.onnx_nodes(header.get("segments"))
    if not ort:
        return ""
    return (f"- {len(ort)} node(s) the plan has no op for run on ONNX Runtime between its native segments "
            f"(`pip install onnxruntime`): {', '.join(ort)}\n")


def _readme(header: Mapping[str, Any], source: Mapping[str, Any]) -> str:
    shape = list(header["input_shape"])
    example = f"np.zeros((8, {', '.join(map(str, shape))}), np.float32)"
    return f"""# {source.get('model_name', 'model')}: a uniprune lean plan

A compressed network as one native plan: one C call per forward pass over block-sparse kernels. It needs
Python 3 with numpy, and a C compiler (gcc or clang); not torch, not uniprune.

- input: float32 `[N, {', '.join(map(str, shape))}]` (NCHW, any batch N)
- output: float32 `[N, {', '.join(map(str, header['output_shape']))}]`
- exported from `{source.get('checkpoint', '?')}` ({source.get('model_name', '?')}, {source.get('num_classes', '?')} classes),
  {len(lean_rt.plan_ops(header))} ops, conv implementations chosen at batch {header.get('batch_size')} on {header.get('threads')} thread(s)
  on a CPU with {source.get('isa', '?')} kernels
{_segments_line(header)}- precision: {header.get('precision', 'fp32')}{' (bf16 weights; the loader refuses a CPU with neither avx512_bf16 nor amx_bf16 unless given allow_fp32_fallback=True; convs on AMX tiles where the CPU has them)' if header.get('precision') == 'bf16' else ''}

## Run it

```python
import sys
import numpy as np
sys.path.insert(0, "path/to/this/directory")
import uniprune_lean

model = uniprune_lean.Model("path/to/this/directory")  # threads=T to change the kernels' threads
y = model.run({example})
```

or, to check it builds and see its speed here: `python -m uniprune_lean --batch-size 8` in this directory.

An artifact is code: `uniprune_lean/` runs, and it compiles and loads the C sources beside it. Trust it as you
would any other code you run, and take it only from whoever you would take code from. Its loader checks
`plan.json` and `weights.bin` (every op, buffer and array, and the weights' sha256) before any native call,
and `uniprune bench --compressed DIR` reads only those two files, never the code.

The first `Model(...)` compiles `uniprune_kernels.c`, `uniprune_plan.c` and `uniprune_bf16.c` (a few seconds) with `$CC` (else
cc, gcc, clang), `-O3` and the widest vector ISA the CPU has, or the one `UNIPRUNE_ISA` names (avx512, avx2,
generic); the library is cached in `$UNIPRUNE_LEAN_CACHE` (else `$UNIPRUNE_CACHE/kernels`, else
`~/.cache/uniprune/kernels`) under a hash of the sources, compiler and flags.

## Files

- `plan.json`: the ops, shapes and buffers; `"arrays"` indexes `weights.bin` (dtype, shape, byte offset);
  `"weights"` holds its sha256, checked on load.
- `weights.bin`: the packed weights and per-op data, raw little-endian arrays.
- `uniprune_kernels.c`, `uniprune_plan.c`, `uniprune_bf16.c`, `uniprune_common.h`: the kernels, the plan executor,
  the bf16 (AMX) kernels and the header they share.
- `uniprune_lean/`: this loader (numpy and ctypes only): `fileformat.py` reads the plan, `verify.py` and
  `fastcheck.py` check it, `build.py` compiles the C, `native.py` and `model.py` run it.
"""


def write_artifact(out: str | os.PathLike, spec: LeanSpec, *, source: Mapping[str, Any], force: bool = False) -> list[Path]:
    """Write ``spec`` as an artifact directory ``out`` (see the module docstring); returns its files.

    ``source``: JSON-able facts about the model (``model_name``, ``num_classes``, ``input_shape``,
    ``checkpoint``, ``checkpoint_sha256``, ...) recorded in ``plan.json``. ``out`` must not exist unless
    ``force`` (then an earlier artifact or an empty directory is replaced; anything else is refused). Written
    into a temporary directory beside ``out`` and renamed: ``out`` is never seen half written, and on failure
    the old one is left as it was.
    """
    out = check_out_dir(out, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        spec.save(tmp, source=dict(source))
        for src in kernels.SOURCES:
            shutil.copyfile(src, tmp / src.name)
        shutil.copytree(Path(lean_rt.__file__).parent, tmp / LOADER,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (tmp / README).write_text(_readme(spec.header, source))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "artifact")
        os.replace(tmp, out)
    except BaseException:
        if old is not None and (old / "artifact").exists() and not out.exists():
            os.replace(old / "artifact", out)  # put the earlier artifact back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    names = [lean_rt.PLAN_FILE, lean_rt.WEIGHTS_FILE, *(s.name for s in kernels.SOURCES), README]
    return [out / n for n in names] + sorted((out / LOADER).glob("*.py"))


def read_header(directory: str | os.PathLike) -> dict[str, Any]:
    """``plan.json`` of the artifact in ``directory`` (read by the loader's one parser of it,
    :func:`~uniprune.compressors.native.uniprune_lean.read_header`); a one-line CheckpointError when it is not one."""
    if not Path(directory).is_dir():
        raise CheckpointError(f"artifact directory {str(directory)!r} does not exist; pass the --out of 'uniprune export'")
    try:
        return lean_rt.read_header(directory)
    except lean_rt.LeanError as exc:
        raise CheckpointError(str(exc)) from None


def source_checkpoint(directory: str | os.PathLike, given: str | os.PathLike | None = None) -> Path:
    """The compressed checkpoint the artifact in ``directory`` was exported from: ``given``, else the path
    ``plan.json`` records; either must have the recorded sha256. One-line CheckpointError otherwise."""
    header = read_header(directory)
    src = header.get("source") if isinstance(header.get("source"), dict) else {}
    path = given or src.get("checkpoint")
    if not path or not Path(path).is_file():
        where = f"{str(path)!r}, which does not exist" if path else "a checkpoint it does not name"
        raise CheckpointError(f"the artifact {str(directory)!r} was exported from {where}; pass --checkpoint with the "
                              "compressed checkpoint it was exported from")
    if src.get("checkpoint_sha256") and file_sha256(path) != src["checkpoint_sha256"]:
        raise CheckpointError(f"{str(path)!r} is not the checkpoint the artifact {str(directory)!r} was exported from "
                              "(sha256 differs); pass that one with --checkpoint, or export this one")
    return Path(path)


def open_artifact(directory: str | os.PathLike, *, threads: int | None = None) -> LeanModel:
    """The artifact in ``directory`` as a :class:`~uniprune.compressors.native.plan.LeanModel`: its ``plan.json``
    and ``weights.bin`` read and verified by the installed reader
    (:func:`~uniprune.compressors.native.uniprune_lean.read_plan`, :func:`~uniprune.compressors.native.uniprune_lean.verify_plan`)
    and run on uniprune's own kernels, built from the package's sources. Nothing the artifact holds is imported
    or compiled: its ``uniprune_lean`` loader and C sources are code, and only its plan and weights are data.
    One-line CheckpointError or ModelError for a plan that fails its checks."""
    header = read_header(directory)  # a missing or foreign directory, in the artifact's words
    try:  # a bf16 artifact on a CPU without bf16: one line, as its own loader says it
        lean_rt.check_precision(str(header.get("precision", "fp32")))
    except lean_rt.LeanError as exc:
        raise CheckpointError(str(exc)) from None
    return LeanModel(LeanSpec.load(directory), threads=threads)


def measure_artifact_ms(directory: str | os.PathLike, model: nn.Module, *, batch_size: int = 1, threads: int | None = None,
                        warmup: int = 10, repeats: int = 50, seed: int = 0, statistic: str = "median",
                        min_seconds: float = SPREAD_SECONDS, engines: Sequence[str] | None = None,
                        baseline: str = "default", dense: DenseEngines | None = None) -> dict[str, Any]:
    """Whole-model ms of every dense engine running ``model`` and of the artifact in ``directory`` (its plan
    and weights on uniprune's own reader and kernels, :func:`open_artifact`), interleaved in one process, as :func:`~uniprune.compressors.latency.table.measure_model_ms` reports
    them (``runtime`` ``"artifact"``).

    ``model``: the dense model with the compressed weights (its structures already in the weights), whose
    output the artifact's must match (relative error <= :func:`~uniprune.compressors.native.plan.output_tolerance`
    of the artifact's precision, of the output's scale, else a ModelError: the artifact is not this model).
    ``batch_size`` >= 1; ``threads`` >= 1 (default: the artifact's); ``baseline`` and ``dense`` (engines
    already built for this batch) as in ``measure_model_ms``. The result's ``precision`` is the artifact's.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if threads is not None:
        check_threads(threads)
    art = open_artifact(directory, threads=threads)  # the plan verified before any field of it is used
    shape = art.input_shape
    n = threads if threads is not None else int(art.header.get("threads") or 1)
    art.threads = n
    x = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed))
    if dense is None:
        dense = dense_engines(model, x, threads=n, engines=engines)
    with torch.no_grad():
        ref = model.eval()(x)
    err = float((art(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    precision = str(art.precision)
    if not err <= output_tolerance(precision):
        raise ModelError(f"the artifact's output differs from the checkpoint's model (relative error {err:.2g}); "
                         "it was exported from another checkpoint: export it again or pass the right --checkpoint")
    result = race(dense, lambda: art(x), threads=n, warmup=warmup, repeats=repeats, min_seconds=min_seconds,
                  statistic=statistic, baseline=baseline)
    return {**result, "runtime": "artifact", "precision": precision, "max_rel_error": err,
            "segments": placement(art.segments)}


__all__ = ["LOADER", "README", "check_out_dir", "file_sha256", "measure_artifact_ms", "open_artifact",
           "read_header", "source_checkpoint", "write_artifact"]
