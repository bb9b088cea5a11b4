"""INT8 post-training quantization of a dense ONNX model: the rival a user gets with ONNX Runtime's own tools.

:func:`quantize_int8` runs ``onnxruntime.quantization.quantize_static`` as its documentation shows a user
to: QDQ format, per-channel signed 8-bit weights, unsigned 8-bit activations (U8S8, ONNX Runtime's fast
path on x86: with signed activations ResNet-56 at batch 32 ran 3.5x slower in ONNX Runtime, and OpenVINO
2026.4 could not compile the graph), MinMax ranges calibrated on a few hundred training images. The quantized file runs on ONNX Runtime and on OpenVINO (which reads QDQ
graphs as low-precision ones) as engine modes ``onnxruntime:int8`` and ``openvino:int8``
(:mod:`uniprune.compressors.latency.engines`). It is a reported rival, never the default baseline of a latency
ratio: it changes the numbers the model computes more than bf16 does, and needs data.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.errors import ConfigError


def _reader(images: np.ndarray, batch: int, input_name: str, progress: bool):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        """The calibration images in batches of the exported model's static batch (the last one filled up
        with the first images again)."""

        def __init__(self) -> None:
            n = len(images)
            self.count = -(-n // batch)
            self.i = 0
            self.bar = tqdm(total=n, desc="int8: calibrating", unit="img", disable=not progress, file=sys.stderr)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= self.count:
                self.bar.close()
                return None
            idx = np.arange(self.i * batch, (self.i + 1) * batch) % len(images)
            self.i += 1
            self.bar.update(min(batch, len(images) - (self.i - 1) * batch))
            return {input_name: np.ascontiguousarray(images[idx], dtype=np.float32)}

        def rewind(self) -> None:
            self.i = 0

    return Batches()


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration: np.ndarray, *, batch: int,
                  input_name: str = "x", progress: bool = True) -> Path:
    """Write the static INT8 (QDQ, per-channel) quantization of the float ONNX model ``onnx_path`` to ``out_path``.

    ``calibration``: float32 ``[K, *input]`` normalised inputs as the model takes them, K >= 1 (a few hundred
    training images is what ONNX Runtime's documentation suggests); ``batch``: the model's static batch size,
    >= 1. Returns ``out_path``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    images = np.asarray(calibration, dtype=np.float32)
    if images.ndim < 2 or len(images) < 1 or not np.isfinite(images).all():
        raise ConfigError(f"int8 calibration needs finite float images [K, C, H, W] with K >= 1, got shape {images.shape}")
    if batch < 1:
        raise ConfigError(f"int8 calibration batch must be >= 1, got {batch}")
    out = Path(out_path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the graph, printed twice: it changes nothing here
    try:
        quantize_static(str(onnx_path), str(out), _reader(images, batch, input_name, progress),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return out


__all__ = ["quantize_int8"]
