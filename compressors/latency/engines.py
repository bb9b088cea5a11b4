"""The dense engines a user could deploy without uniprune, each ready to time on one fixed input.

People who care about CPU latency export to ONNX and run ONNX Runtime or OpenVINO, not eager PyTorch
(at batch 1, ResNet-56 runs about 3.5x faster in ONNX Runtime than in torch eager). The baseline of
every latency ratio is therefore the fastest of:

- ``torch``: eager PyTorch on the model with BatchNorm folded (:func:`~.runtime.inference_copy`);
- ``onnxruntime``: the same model exported to ONNX (static shapes, opset 17), all graph optimisations;
- ``openvino``: the same ONNX file compiled for ``CPU`` (an optional extra: used when installed).

Every engine runs on the same thread count, in float32 (OpenVINO would pick bf16 on CPUs that have it,
which changes the numbers the model computes: ``INFERENCE_PRECISION_HINT`` is pinned to f32), and is
checked once against torch's output: an engine that exports or computes wrongly is left out with a note,
never timed. ONNX Runtime's intra-op threads do not spin between runs, so an engine timed right before
another does not steal its cores.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from ..native.runtime import inference_copy
from .budget import paired_ratio
from .timing import check_threads, interleaved_samples, reducer

#: Every engine uniprune knows, in the order they are reported.
ENGINES = ("torch", "onnxruntime", "openvino")
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


@dataclass
class DenseEngines:
    """No-argument callables running the dense model on one fixed input, one per engine that works here.

    ``runners[engine]()`` runs a forward pass; ``notes`` says why an installed engine was left out.
    """

    runners: dict[str, Callable[[], object]]
    notes: list[str] = field(default_factory=list)


def _check_engines(engines: Sequence[str] | None) -> list[str]:
    have = available_engines()
    if engines is None:
        return have
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown dense engine(s) {unknown}; choose from {list(ENGINES)}")
    missing = [e for e in engines if e not in have]
    if missing:
        raise ConfigError(f"dense engine(s) {missing} are not installed here; pip install {' '.join(missing)} "
                          f"or choose from {have}")
    return list(engines)


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings are about control flow we do not have
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          opset_version=_OPSET)


def _onnxruntime(path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)[0]


def _openvino(path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    })
    request = compiled.create_infer_request()
    data = x.numpy()
    return lambda: request.infer({0: data})[0]


def dense_engines(model: nn.Module, x: torch.Tensor, *, threads: int | None = None,
                  engines: Sequence[str] | None = None) -> DenseEngines:
    """Build every available (or the named) dense engine for ``model`` on the fixed input ``x``.

    ``model``: float32, any mode (an eval copy with BatchNorm folded is what runs); ``x``: one batch, e.g.
    ``[N, C, H, W]``; ``threads`` >= 1 (default torch's now). Each engine's output is checked against
    torch's (relative error <= 1e-3 of the output's scale) before it is offered.
    """
    n = check_threads(threads)
    chosen = _check_engines(engines)
    dense = inference_copy(model).float().cpu()
    x = x.detach().float().cpu().contiguous()
    with torch.no_grad():
        reference = dense(x)
    runners: dict[str, Callable[[], object]] = {}
    notes: list[str] = []
    if "torch" in chosen:
        runners["torch"] = lambda: dense(x)
    others = [e for e in chosen if e != "torch"]
    if not others:
        return DenseEngines(runners, notes)
    with tempfile.TemporaryDirectory(prefix="uniprune-onnx-") as tmp:
        path = Path(tmp) / "dense.onnx"
        try:
            _export_onnx(dense, x, path)
        except Exception as exc:  # noqa: BLE001 - any exporter failure leaves the ONNX engines out, with the reason
            notes.append(f"the model does not export to ONNX ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                         f"{', '.join(others)} left out of the baseline")
            return DenseEngines(runners, notes)
        builders = {"onnxruntime": _onnxruntime, "openvino": _openvino}
        scale = float(reference.abs().max()) or 1.0
        for engine in others:
            try:
                run = builders[engine](path, x, n)
                out = torch.as_tensor(run())
            except Exception as exc:  # noqa: BLE001 - an engine that cannot load the model is left out, with the reason
                notes.append(f"{engine} cannot run the model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); left out")
                continue
            err = float((out.reshape(reference.shape) - reference).abs().max()) / scale if out.numel() == reference.numel() else float("inf")
            if not err <= 1e-3:
                notes.append(f"{engine}'s output differs from torch's (relative error {err:.2g}); left out")
                continue
            runners[engine] = run
    return DenseEngines(runners, notes)


def race(dense: DenseEngines, compressed: Callable[[], object], *, threads: int, warmup: int = 10, repeats: int = 50,
         min_seconds: float = 0.0, statistic: str = "median") -> dict[str, Any]:
    """Every dense engine and ``compressed`` timed in the same interleaved rounds (:mod:`.timing`).

    The baseline is the fastest engine by ``statistic``; the ratio is
    :func:`~uniprune.compressors.latency.budget.paired_ratio` of ``compressed``'s samples against that engine's.
    Returns ``{"engines": {engine: ms}, "best_engine", "best_dense_ms", "compressed_ms", "latency_ratio",
    "speedup", "notes"}``.
    """
    reduce = reducer(statistic)
    t = interleaved_samples({**dense.runners, "compressed": compressed}, warmup=warmup, repeats=repeats, threads=threads,
                            min_seconds=min_seconds)
    engine_ms = {e: reduce(t[e]) for e in dense.runners}
    best = min(engine_ms, key=engine_ms.__getitem__)
    ratio = paired_ratio(t["compressed"], t[best], statistic)
    return {"engines": engine_ms, "best_engine": best, "best_dense_ms": engine_ms[best],
            "compressed_ms": reduce(t["compressed"]), "latency_ratio": ratio, "speedup": 1.0 / ratio,
            "notes": list(dense.notes)}


__all__ = ["ENGINES", "DenseEngines", "available_engines", "dense_engines", "engine_versions", "race"]
