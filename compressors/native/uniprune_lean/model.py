"""An exported network, ready to run (:class:`Model`), and the loader's command line."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .build import check_precision, load_library
from .common import PLAN_FILE, PRECISIONS, BuildError, LeanError
from .fileformat import read_plan
from .native import NativePlan, _Functions
from .ort_segment import SegmentChain, is_segmented, onnx_nodes
from .verify import verify_plan


class Model:
    """An exported network, ready to run: ``Model(path).run(x)``.

    ``path``: the artifact directory (``plan.json``, ``weights.bin`` and the C sources, or the sources in
    ``source_dir``). ``threads`` (>= 1): threads of the native kernels (default: every core this process may
    run on, :func:`available_cores`). ``isa`` / ``cache_dir``: as :func:`build_library`. Calls from several
    Python threads take turns. A bf16 plan (``precision``) on a CPU without avx512_bf16 or amx_bf16 is refused
    in one line (LeanError) before anything is built, unless ``allow_fp32_fallback``. ``amx_convs``: how many
    convs run on AMX tiles. A segmented plan (:mod:`.ort_segment`) runs its ONNX segments on ONNX Runtime with
    ``threads`` intra-op threads (fixed at load); ``segments`` says which nodes run where.
    """

    def __init__(self, path: str | os.PathLike = ".", *, threads: int | None = None, isa: str | None = None,
                 cache_dir: str | os.PathLike | None = None, source_dir: str | os.PathLike | None = None,
                 allow_fp32_fallback: bool = False) -> None:
        self.path = Path(path)
        self.header, arrays = read_plan(self.path)
        verify_plan(self.header, arrays)  # before any field is used, and before the C is even compiled
        self.precision = str(self.header.get("precision", "fp32"))
        if self.precision not in PRECISIONS:
            raise LeanError(f"{self.path / PLAN_FILE}: precision {self.precision!r} is not one of {PRECISIONS}")
        if not allow_fp32_fallback:
            check_precision(self.precision)
        self.input_shape = tuple(int(s) for s in self.header["input_shape"])
        self.output_shape = tuple(int(s) for s in self.header["output_shape"])
        self.threads = _check_threads(threads if threads is not None else available_cores())
        self.source = dict(self.header.get("source") or {})
        self.lib = load_library(self.path if source_dir is None else source_dir, isa=isa, cache_dir=cache_dir)
        self.isa = _Functions(self.lib).isa().decode()
        if is_segmented(self.header):  # nodes the plan has no op for run on ONNX Runtime between native plans
            self.plan: NativePlan | SegmentChain = SegmentChain(self.lib, self.header, arrays, self.threads, NativePlan)
        else:
            self.plan = NativePlan(self.lib, self.header, arrays, verified=True)  # verified above
        #: ``[(runs_on, node names), ...]`` per segment ("native" or "onnxruntime"); None for a plan of one segment
        self.segments = self.plan.nodes if isinstance(self.plan, SegmentChain) else None
        self.amx_convs = self.plan.amx_convs
        self._lock = threading.Lock()

    def run(self, x: np.ndarray, threads: int | None = None, *, check_finite: bool = True) -> np.ndarray:
        """``x`` float32 ``[N, *input_shape]`` (any ``N >= 0``) -> a new float32 ``[N, *output_shape]``.

        LeanError for another shape or dtype, and (unless ``check_finite=False``, which saves one pass over
        ``x``) for NaN or inf in ``x``: the kernels would turn them into finite-looking garbage."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 1 or tuple(x.shape[1:]) != self.input_shape:
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise LeanError(f"the model takes a float32 array [N, {', '.join(map(str, self.input_shape))}], got {got}; "
                            "convert with x.astype(np.float32) and reshape")
        if check_finite and not np.isfinite(x).all():
            raise LeanError("the input holds NaN or inf; pass finite values (or check_finite=False to skip this check)")
        n = int(x.shape[0])
        need = n * self.plan.bytes_per_sample
        if need > _memory_bytes():
            raise MemoryError(f"a batch of {n} needs {need / 2**30:.1f} GiB of activations, more than this machine's memory")
        y = np.empty((n, *self.output_shape), dtype=np.float32)
        if n == 0:
            return y
        x = np.ascontiguousarray(x)
        t = self.threads if threads is None else _check_threads(threads)
        with self._lock:
            rc = self.plan.run(x.ctypes.data, y.ctypes.data, n, t)
        if rc:
            if rc == -1:
                raise MemoryError(f"the plan ran out of memory for a batch of {n}")
            raise RuntimeError(f"the plan failed (code {rc}) on input {list(x.shape)}")
        return y

    __call__ = run


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the machine's), >= 1:
    the default thread count, as deployments run on every core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (a very large number where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _check_threads(threads: int) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise LeanError(f"threads must be a positive integer, got {threads!r}")
    return threads


def main(argv: list[str] | None = None) -> int:
    """``python -m uniprune_lean [DIR] [--batch-size N] [--threads T]``: build, run a random batch, print the
    output shape and the least time of 20 passes."""
    parser = argparse.ArgumentParser(prog="python -m uniprune_lean", description=main.__doc__)
    parser.add_argument("path", nargs="?", default=str(Path(__file__).resolve().parents[1]),
                        help="artifact directory (default: the one holding this loader package)")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per pass (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="kernel threads (default: every core)")
    args = parser.parse_args(argv)
    try:
        model = Model(args.path, threads=args.threads)
        x = np.random.default_rng(0).standard_normal((args.batch_size, *model.input_shape)).astype(np.float32)
        y, best = model.run(x), float("inf")
        for _ in range(20):
            t0 = time.perf_counter()
            model.run(x)
            best = min(best, time.perf_counter() - t0)
    except (LeanError, BuildError, MemoryError, RuntimeError) as exc:
        print(f"uniprune_lean: error: {exc}", file=sys.stderr)
        return 2
    print(f"{model.source.get('model_name', 'model')}: input {[args.batch_size, *model.input_shape]} -> output "
          f"{list(y.shape)}; {1e3 * best:.3f} ms per pass (least of 20, {model.threads} thread(s), {model.isa}, "
          f"{model.precision}{f', {model.amx_convs} convs on AMX' if model.amx_convs else ''})")
    ort = onnx_nodes(model.header.get("segments"))
    if ort:
        print(f"{len(ort)} node(s) ran on ONNX Runtime inside the plan: {', '.join(ort)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
