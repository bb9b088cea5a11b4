"""The dense engines a user could deploy without uniprune, each ready to time on one fixed input.

People who care about CPU latency export to ONNX and run ONNX Runtime or OpenVINO, not eager PyTorch
(at batch 1, ResNet-56 runs about 3.5x faster in ONNX Runtime than in torch eager). Each engine runs in
one or more **modes**, named ``engine`` or ``engine:precision``:

- ``torch``: eager PyTorch on the model with BatchNorm folded (:func:`~.runtime.inference_copy`), float32;
- ``onnxruntime``: the same model exported to ONNX (static shapes, opset 17), all graph optimisations;
  float32 is its default;
- ``openvino``: the same ONNX file compiled for ``CPU`` at OpenVINO's own default precision (an optional
  extra: used when installed). On CPUs with avx512_bf16 or AMX that default is bf16, which is how users
  run it; ``openvino:f32`` pins ``INFERENCE_PRECISION_HINT`` to f32;
- ``onnxruntime:int8``, ``openvino:int8``: a statically quantized copy of the ONNX file (QDQ, per-channel,
  :mod:`.int8`), built only when calibration images are given.

The **baseline** of every latency ratio is the fastest *default* mode (a name without a colon): each
engine as a user runs it. The fastest f32 mode and the fastest int8 mode are reported beside it
(:func:`race`). Every mode runs on the same thread count and is checked once against torch's output (to
a tolerance by the precision it reports: :data:`OUTPUT_TOLERANCE`): a mode that exports or computes wrongly is
left out with a note, never timed. ONNX Runtime's intra-op threads do not spin between runs, so an
engine timed right before another does not steal its cores.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError
from ..native.runtime import inference_copy
from .budget import paired_ratio
from .timing import check_threads, interleaved_samples, reducer

#: Every engine uniprune knows, in the order they are reported.
ENGINES = ("torch", "onnxruntime", "openvino")
#: Precisions a mode may name after a colon.
MODE_PRECISIONS = ("f32", "int8")
#: The groups of modes a ratio may divide by: ``default`` (no colon: each engine as a user runs it, the
#: baseline unless asked otherwise), ``f32`` (every mode that computes in float32), ``int8``.
BASELINES = ("default", "f32", "int8")
#: Largest relative error (max |engine - torch| over max |torch|) a mode of each precision may show.
OUTPUT_TOLERANCE = {"f32": 1e-3, "bf16": 5e-2, "f16": 5e-2, "int8": 0.3}
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_OPSET = 17


def available_engines() -> list[str]:
    """The engines installed here (torch always; ONNX Runtime and OpenVINO when importable)."""
    return [e for e in ENGINES if e not in _MODULES or importlib.util.find_spec(_MODULES[e]) is not None]


def engine_versions() -> dict[str, str]:
    """``{engine: version}`` of the installed engines: part of every cache key a baseline goes into."""
    out = {"torch": torch.__version__}
    for engine in available_engines():
        if engine in _MODULES:
            out[engine] = str(getattr(importlib.import_module(_MODULES[engine]), "__version__", "?"))
    return out


def mode_engine(mode: str) -> str:
    """The engine a mode runs on: ``"openvino:f32"`` -> ``"openvino"``."""
    return mode.partition(":")[0]


def mode_asks(mode: str) -> str:
    """The precision a mode asks for: ``"default"``, ``"f32"`` or ``"int8"``."""
    return mode.partition(":")[2] or "default"


def default_modes(*, int8: bool = False) -> list[str]:
    """The modes timed when none are named: every installed engine at its default precision, OpenVINO also
    pinned to f32 (its default is bf16 on CPUs with avx512_bf16 or AMX), and with ``int8`` both int8 modes."""
    have = available_engines()
    modes = list(have) + (["openvino:f32"] if "openvino" in have else [])
    if int8:
        modes += [f"{e}:int8" for e in ("onnxruntime", "openvino") if e in have]
    return modes


def check_modes(modes: Sequence[str] | None, *, int8: bool = False) -> list[str]:
    """``modes`` validated (ConfigError naming the bad one), or :func:`default_modes` when ``None``."""
    if modes is None:
        return default_modes(int8=int8)
    have = available_engines()
    for mode in modes:
        engine, _, asks = mode.partition(":")
        if engine not in ENGINES or (asks and asks not in MODE_PRECISIONS) or (engine == "torch" and asks == "int8"):
            raise ConfigError(f"unknown dense engine mode {mode!r}; choose from {list(ENGINES)}, optionally with "
                              f":f32 or (onnxruntime, openvino) :int8, e.g. openvino:f32")
        if engine not in have:
            raise ConfigError(f"dense engine {engine!r} is not installed here; pip install {engine} or choose from {have}")
        if asks == "int8" and not int8:
            raise ConfigError(f"engine mode {mode!r} needs calibration images: pass --int8 with --dataset")
    return list(dict.fromkeys(modes))


@dataclass
class DenseEngines:
    """The dense model ready to run in each mode that works here, on one fixed input.

    ``runners[mode]()`` runs a forward pass on that input; ``infer[mode](array)`` runs one on another float32
    array of the same shape and returns the logits as numpy; ``precisions[mode]`` is the precision the
    engine says it computes in (``"f32"``, ``"bf16"``, ``"int8"``...); ``notes`` says why a mode was left out.
    """

    runners: dict[str, Callable[[], object]]
    notes: list[str] = field(default_factory=list)
    precisions: dict[str, str] = field(default_factory=dict)
    infer: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)

    def group(self, baseline: str) -> list[str]:
        """The modes a ratio against ``baseline`` (:data:`BASELINES`) may divide by."""
        if baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if baseline == "default":
            return [m for m in self.runners if ":" not in m]
        if baseline == "f32":
            return [m for m in self.runners if self.precisions.get(m) == "f32"]
        return [m for m in self.runners if mode_asks(m) == "int8"]


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings are about control flow we do not have
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          opset_version=_OPSET)


def _onnxruntime(path: Path, threads: int, asks: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # ONNX Runtime's CPU provider computes a float model in float32 and a QDQ model's convs in int8
    return (lambda data: session.run(None, {"x": data})[0]), ("int8" if asks == "int8" else "f32")


def _openvino(path: Path, threads: int, asks: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if asks == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = getattr(hint, "get_type_name", lambda: str(hint))()
    # a QDQ graph runs its convs in int8; what is left (pooling, the head's add) in the hint's precision
    return (lambda data: request.infer({0: data})[0]), ("int8" if asks == "int8" else precision)


#: Least size of the calling thread's alternate signal stack once an engine has run (bytes); see :func:`_roomy_signal_stack`.
SIGNAL_STACK_BYTES = 256 * 1024
_SIGNAL_STACKS: list[Any] = []  # stacks installed below: they must outlive every signal


def signal_stack_bytes() -> int | None:
    """Size in bytes of the calling thread's alternate signal stack; 0 when it has none; None off Linux."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None, use_errno=True)
    now = StackT()
    if libc.sigaltstack(None, ctypes.byref(now)) != 0 or now.ss_flags & 2:  # SS_DISABLE
        return 0
    return int(now.ss_size)


def _roomy_signal_stack() -> None:
    """Give the calling thread an alternate signal stack of :data:`SIGNAL_STACK_BYTES` if it has a smaller one.

    OpenVINO leaves the thread that compiled a model with a 20 KiB alternate stack; once its bf16 convolutions
    have used AMX tiles, a signal frame carries 8 KiB of tile data more and at times no longer fits, so a
    Ctrl-C (SIGINT) killed the process with SIGSEGV instead of raising KeyboardInterrupt. Linux only.
    """
    import ctypes

    size = signal_stack_bytes()
    if not size or size >= SIGNAL_STACK_BYTES:
        return

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    buf = ctypes.create_string_buffer(SIGNAL_STACK_BYTES)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaltstack(ctypes.byref(StackT(ctypes.cast(buf, ctypes.c_void_p), 0, SIGNAL_STACK_BYTES)), None) == 0:
        _SIGNAL_STACKS.append(buf)


def dense_engines(model: nn.Module, x: torch.Tensor, *, threads: int | None = None,
                  engines: Sequence[str] | None = None, int8_calibration: np.ndarray | None = None,
                  progress: bool = False) -> DenseEngines:
    """Build every default (or the named) dense engine mode for ``model`` on the fixed input ``x``.

    ``model``: float32, any mode (an eval copy with BatchNorm folded is what runs); ``x``: one batch, e.g.
    ``[N, C, H, W]``; ``threads`` >= 1 (default torch's now); ``engines``: mode names (:func:`check_modes`;
    default :func:`default_modes`). ``int8_calibration``: float32 normalised inputs ``[K, *x.shape[1:]]`` to
    calibrate the int8 modes on (:func:`~.int8.quantize_int8`; a progress line with ``progress``); without
    it no int8 mode is built. Each mode's output is checked against torch's before it is offered.
    """
    n = check_threads(threads)
    chosen = check_modes(engines, int8=int8_calibration is not None)
    dense = inference_copy(model).float().cpu()
    x = x.detach().float().cpu().contiguous()
    data = x.numpy()
    with torch.no_grad():
        reference = dense(x)
    out = DenseEngines({})
    if "torch" in chosen or "torch:f32" in chosen:
        def run_torch(a: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return dense(torch.from_numpy(a)).numpy()
        for mode in ("torch", "torch:f32"):
            if mode in chosen:
                out.runners[mode], out.infer[mode], out.precisions[mode] = (lambda: dense(x)), run_torch, "f32"
    others = [m for m in chosen if mode_engine(m) != "torch"]
    if not others:
        return out
    with tempfile.TemporaryDirectory(prefix="uniprune-onnx-") as tmp:
        path = Path(tmp) / "dense.onnx"
        try:
            _export_onnx(dense, x, path)
        except Exception as exc:  # noqa: BLE001 - any exporter failure leaves the ONNX engines out, with the reason
            out.notes.append(f"the model does not export to ONNX ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                             f"{', '.join(others)} left out of the baseline")
            return out
        files = {"default": path, "f32": path}
        if any(mode_asks(m) == "int8" for m in others):
            from .int8 import quantize_int8

            if int8_calibration is None or len(int8_calibration) < 1:
                raise ConfigError("int8 modes need calibration images (bench --int8 --dataset ...)")
            try:
                files["int8"] = quantize_int8(path, Path(tmp) / "dense-int8.onnx", int8_calibration, batch=len(x),
                                              progress=progress)
            except Exception as exc:  # noqa: BLE001 - a quantizer failure leaves the int8 modes out, with the reason
                out.notes.append(f"ONNX Runtime cannot quantize the model ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:160]}); int8 modes left out")
                others = [m for m in others if mode_asks(m) != "int8"]
        builders = {"onnxruntime": _onnxruntime, "openvino": _openvino}
        scale = float(reference.abs().max()) or 1.0
        for mode in others:
            asks = mode_asks(mode)
            try:
                infer, precision = builders[mode_engine(mode)](files[asks], n, asks)
                y = torch.as_tensor(infer(data))
            except Exception as exc:  # noqa: BLE001 - an engine that cannot load the model is left out, with the reason
                out.notes.append(f"{mode} cannot run the model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); left out")
                continue
            err = float((y.reshape(reference.shape) - reference).abs().max()) / scale if y.numel() == reference.numel() else float("inf")
            limit = OUTPUT_TOLERANCE.get(precision, OUTPUT_TOLERANCE["int8"])
            if not err <= limit:
                out.notes.append(f"{mode}'s output ({precision}) differs from torch's (relative error {err:.2g} > {limit:g}); left out")
                continue
            out.runners[mode] = lambda infer=infer: infer(data)
            out.infer[mode], out.precisions[mode] = infer, precision
    _roomy_signal_stack()
    return out


def top1(predict: Callable[[np.ndarray], np.ndarray], batches: Iterable[tuple[np.ndarray, np.ndarray]], batch: int) -> float:
    """Top-1 accuracy (in [0, 1]) of ``predict`` (float32 ``[batch, ...]`` -> logits ``[batch, classes]``) over
    ``batches`` of ``(images, labels)``; a batch of another size is cut or filled up with its first image, since
    the exported engines take one static batch size."""
    right = total = 0
    for images, labels in batches:
        for start in range(0, len(images), batch):
            chunk = np.ascontiguousarray(images[start:start + batch], dtype=np.float32)
            k = len(chunk)
            if k < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - k, axis=0)])
            logits = np.asarray(predict(chunk))[:k]
            right += int((logits.argmax(axis=1) == np.asarray(labels[start:start + batch])).sum())
            total += k
    if total == 0:
        raise ConfigError("no images to score")
    return right / total


def race(dense: DenseEngines, compressed: Callable[[], object], *, threads: int, warmup: int = 10, repeats: int = 50,
         min_seconds: float = 0.0, statistic: str = "median", baseline: str = "default") -> dict[str, Any]:
    """Every dense engine mode and ``compressed`` timed in the same interleaved rounds (:mod:`.timing`).

    The baseline is the fastest mode of the ``baseline`` group (:data:`BASELINES`; default: each engine at its
    default precision) by ``statistic``; the ratio is :func:`~uniprune.compressors.latency.budget.paired_ratio` of
    ``compressed``'s samples against that mode's. The fastest mode of every other group is reported beside it.
    Returns ``{"engines": {mode: ms}, "precisions": {mode: precision}, "baseline", "best_engine",
    "best_dense_ms", "compressed_ms", "latency_ratio", "speedup", "rivals": {group: {"engine", "ms",
    "precision", "speedup"}}, "notes"}``.
    """
    group = dense.group(baseline)
    if not group:
        raise ConfigError(f"no {baseline} engine mode ran here (timed: {list(dense.runners)}); "
                          + ("pass --int8 with --dataset" if baseline == "int8" else "choose another baseline"))
    reduce = reducer(statistic)
    t = interleaved_samples({**dense.runners, "compressed": compressed}, warmup=warmup, repeats=repeats, threads=threads,
                            min_seconds=min_seconds)
    engine_ms = {e: reduce(t[e]) for e in dense.runners}
    rivals = {}
    for name in BASELINES:
        members = dense.group(name)
        if members:
            best = min(members, key=engine_ms.__getitem__)
            rivals[name] = {"engine": best, "ms": engine_ms[best], "precision": dense.precisions.get(best, "f32"),
                            "speedup": 1.0 / paired_ratio(t["compressed"], t[best], statistic)}
    best = rivals[baseline]["engine"]
    ratio = paired_ratio(t["compressed"], t[best], statistic)
    return {"engines": engine_ms, "precisions": dict(dense.precisions), "baseline": baseline, "best_engine": best,
            "best_dense_ms": engine_ms[best], "compressed_ms": reduce(t["compressed"]), "latency_ratio": ratio,
            "speedup": 1.0 / ratio, "rivals": rivals, "notes": list(dense.notes)}


__all__ = ["BASELINES", "ENGINES", "MODE_PRECISIONS", "OUTPUT_TOLERANCE", "DenseEngines", "available_engines", "check_modes",
           "default_modes", "dense_engines", "engine_versions", "mode_asks", "mode_engine", "race", "signal_stack_bytes", "top1"]
