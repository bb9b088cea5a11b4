"""One ``.npz`` file with ``images`` (uint8 NxCxHxW) and ``labels``; optionally ``train_images`` and
``train_labels``. Without the training arrays the same images serve as test AND training data (a note says
so), so only the test accuracy means anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from uniprune.compressors.core.errors import DataError

from .bundle import IMAGENET_MEAN, IMAGENET_STD, Arrays, DataBundle, Info, assemble, require
from .registry import register


def _npz_images(arr: np.ndarray, file: Path, key: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise DataError(f"{file}: '{key}' must be uint8 in 0..255, got {arr.dtype}; convert with (x * 255).round().astype(np.uint8)")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)  # N x H x W x C, as many tools write it
    if arr.ndim != 4:
        raise DataError(f"{file}: '{key}' must be N x C x H x W, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _npz_labels(arr: np.ndarray, n: int, file: Path, key: str) -> np.ndarray:
    if arr.ndim != 1 or len(arr) != n or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{file}: '{key}' must be {n} integer class labels, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


@register("npz")
def load_npz(path: str | None, *, val_fraction: float, seed: int, cache_dir: str | None = None) -> DataBundle:
    """One .npz with ``images`` (uint8 N x C x H x W) and ``labels``, optionally ``train_images``/``train_labels``."""
    if not path:
        raise DataError("dataset npz needs --data FILE: an .npz with arrays 'images' (uint8 N x C x H x W) and 'labels'")
    file = require(Path(path).expanduser(), "an .npz file with arrays 'images' (uint8 N x C x H x W) and 'labels'")
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {file} as .npz: {exc}") from None
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(f"{file} has no array '{key}' (found: {', '.join(sorted(arrays)) or 'none'}); expected 'images' and 'labels'")
    test_x = _npz_images(arrays["images"], file, "images")
    test_y = _npz_labels(arrays["labels"], len(test_x), file, "labels")
    notes: tuple[str, ...] = ()
    if "train_images" in arrays and "train_labels" in arrays:
        train_x = _npz_images(arrays["train_images"], file, "train_images")
        train_y = _npz_labels(arrays["train_labels"], len(train_x), file, "train_labels")
    else:
        train_x, train_y = test_x, test_y
        notes = (f"{file.name} has no train_images/train_labels: its images are the test split AND the training/validation data",)
    stats = (IMAGENET_MEAN, IMAGENET_STD) if test_x.shape[1] == 3 else (None, None)
    return assemble("npz", Arrays((train_x, train_y), (test_x, test_y)),
                    Info(source=str(file), mean=stats[0], std=stats[1], notes=notes), val_fraction=val_fraction, seed=seed)
