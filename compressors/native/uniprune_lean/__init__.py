"""uniprune's lean runtime: a compressed network as one native plan, with nothing but numpy, ctypes and a C compiler.

This one package is both what :mod:`uniprune.compressors.native.plan` builds every in-process ``LeanModel``
with and the loader ``uniprune export`` copies into each artifact (as the folder ``uniprune_lean/``): the plan
a user deploys is built by the same code that was tested and timed. It must therefore never import uniprune
or torch, and its modules import only each other (relative imports), so the folder works wherever it lies.

Modules: :mod:`.common` (names, limits, errors), :mod:`.fileformat` (``plan.json`` + ``weights.bin``, strict
JSON), :mod:`.ops` (the op kinds as a table), :mod:`.verify` (the verifier that names the op and field) and
:mod:`.fastcheck` (its vectorised twin, what loaders run first), :mod:`.build` (compiling the C sources, one
cache), :mod:`.native` (the native plan), :mod:`.ort_segment` (a segmented plan: native plans and ONNX Runtime
graphs for the nodes the plan has no op for, in one chain), :mod:`.model` (:class:`Model` and ``python -m uniprune_lean``).

A plan is a JSON header plus named arrays (float32, int32, uint8, or bfloat16 held as uint16 bit patterns)::

    {"format": "uniprune.lean/1",
     "precision": "fp32" | "bf16",                                 # absent: fp32 (see below)
     "input_shape": [C, H, W] | [F], "output_shape": [...],       # per sample; any batch runs
     "buffers": [0, 0, s2, ...],                                   # floats per sample of each buffer
     "threads": T, "batch_size": N,                                # what the conv choices were timed at
     "ops": [{"kind": 1, "node": "conv1+relu", "layer": "conv1",
              "ints": [in0, in1, out, act, C, H, W, Co, Ho, Wo, *params],
              "floats": "op0.floats",                              # float32 [2 + n]: clamp lo, hi, the op's data
              "kernel": null | {"type": "conv", "geom": [Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw], "rows": R,
                                "panel_ptr": ..., "ch": ..., "w": ..., "bias": ... | null,
                                "precision": "bf16", "engine": "auto" | "fp32" | "dpbf16"}   # both optional
                             | {"type": "gemv", "out": Co, "in": Ci, "panel_ptr": ..., "ch": ..., "w": ...,
                                "bias": ... | null, "precision": "bf16"}}, ...]}

Precision: a kernel with ``"precision": "bf16"`` has its ``w`` in bfloat16 (dtype ``"bfloat16"`` in the index,
the upper 16 bits of the float32 values, rounded to nearest even); ``bias`` stays float32. Its conv runs on
AMX tiles where the CPU has them, else on the bf16 dot product (VDPBF16PS) where it has avx512_bf16 (both:
activations rounded to bf16 at the conv's input, float32 accumulation, float32 output), unless ``"engine":
"fp32"`` (chosen by timing when the plan was lowered) or the CPU has neither: then on the float32 kernels with
the bf16 weights widened. ``"engine": "dpbf16"`` runs the dot product even where AMX is present (to measure it);
the environment variable ``UNIPRUNE_AMX=0`` hides AMX from the process. A bf16 GEMV keeps its weights in bf16 (half
the bytes a memory-bound batch 1 reads) and widens them as it loads them, on every CPU. The header's ``"precision"`` says what the plan was exported for; :class:`Model` refuses a bf16
plan on a CPU with neither avx512_bf16 nor amx_bf16 unless told ``allow_fp32_fallback=True``.

(op kinds, header fields and parameters: ``csrc/uniprune_plan.c``; kernel arrays: ``csrc/uniprune_kernels.c``'s
``up_conv_create`` / ``up_gemv_create``, packed as ``uniprune.compressors.native.kernels.pack_panels`` packs them).
On disk (:func:`write_plan` / :func:`read_plan`) the header is ``plan.json`` with an ``"arrays"`` index
(dtype, shape, byte offset) into one ``weights.bin`` of raw little-endian arrays, each 64-byte aligned, and
the file's sha256; never a pickle.

Deployment::

    import sys, numpy as np
    sys.path.insert(0, "path/to/artifact")                 # the folder holding uniprune_lean/
    import uniprune_lean
    model = uniprune_lean.Model("path/to/artifact")        # compiles the C sources once (cached)
    y = model.run(np.zeros((4, *model.input_shape), np.float32))

The C sources are compiled with ``$CC`` (else cc, gcc, clang), ``-O3`` and the vector ISA of
``UNIPRUNE_ISA`` (auto: the widest the CPU has; avx512, avx2, generic), cached in
``$UNIPRUNE_LEAN_CACHE`` (default ``~/.cache/uniprune-lean``) under a hash of the sources, compiler and flags.
"""

from __future__ import annotations

import json  # noqa: F401 - part of the loader's namespace (tests and the fuzzer dump plans with it)

from .build import (
    BuildError,
    build_library,
    cache_dir,
    check_precision,
    cpu_flags,
    load_library,
    resolve_isa,
    resolve_precision,
)
from .common import (
    ACT_LAST,
    BF16_FLAGS,
    FORMAT,
    MAX_BATCH,
    MAX_BUFFERS,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_OPS,
    MAX_PARAM,
    MAX_SAMPLE_FLOATS,
    MAX_THREADS,
    PLAN_FILE,
    PRECISIONS,
    SOURCES,
    WEIGHTS_FILE,
    LeanError,
    PlanRefused,
)
from .fileformat import (
    MAX_JSON_DEPTH,
    loads_json,
    pack_arrays,
    parse_header,
    parse_plan,
    read_header,
    read_plan,
    unpack_arrays,
    write_plan,
)
from .model import Model, available_cores, main
from .native import NativePlan
from .ort_segment import OrtSegment, SegmentChain, is_segmented, onnx_nodes, plan_ops
from .verify import verify_plan

__all__ = ["ACT_LAST", "BF16_FLAGS", "FORMAT", "MAX_BATCH", "MAX_BUFFERS", "MAX_DIM", "MAX_ELEMENTS", "MAX_JSON_DEPTH",
           "MAX_OPS", "MAX_PARAM", "MAX_SAMPLE_FLOATS", "MAX_THREADS", "PLAN_FILE", "PRECISIONS", "SOURCES",
           "WEIGHTS_FILE", "BuildError", "LeanError", "Model", "NativePlan", "OrtSegment", "PlanRefused", "SegmentChain", "available_cores",
           "build_library", "cache_dir", "check_precision", "cpu_flags", "is_segmented", "load_library", "loads_json", "main", "onnx_nodes",
           "pack_arrays", "parse_header", "parse_plan", "plan_ops", "read_header", "read_plan", "resolve_isa",
           "resolve_precision", "unpack_arrays", "verify_plan", "write_plan"]
