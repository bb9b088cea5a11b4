"""CIFAR-10: torchvision's python-batch folder ``cifar-10-batches-py`` (or its parent), read without running
pickled code. Never downloads."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from uniprune.compressors.core.errors import DataError

from .bundle import IMAGENET_MEAN, IMAGENET_STD, Arrays, DataBundle, Info, assemble, require
from .registry import register


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for the CIFAR-10 python batches that rebuilds plain containers and numpy arrays only:
    any other global a file names (a function to call, a class to build) is refused, so a crafted batch
    file cannot run code (``pickle.load`` would run it)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds (refused: pickled code)")


@register("cifar10", "cifar-10")
def load_cifar10(path: str | None, *, val_fraction: float, seed: int, cache_dir: str | None = None) -> DataBundle:
    """torchvision's python-batch folder ``cifar-10-batches-py`` (or its parent); never downloads."""
    if not path:
        raise DataError("dataset cifar10 needs --data FOLDER: torchvision's 'cifar-10-batches-py' folder (it is never downloaded)")
    folder = require(Path(path).expanduser(), "torchvision's 'cifar-10-batches-py' folder")
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        file = folder / name
        if not file.is_file():
            raise DataError(f"{folder} has no {name}: expected torchvision's 'cifar-10-batches-py' folder (data_batch_1..5, test_batch)")
        try:
            with open(file, "rb") as fh:
                # The official CIFAR-10 python format is a pickle of plain arrays and lists: read with an
                # unpickler that builds nothing else.
                entry = _ArraysOnly(fh, encoding="latin1").load()
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as exc:
            raise DataError(f"{file} is not a CIFAR-10 python batch: {exc}") from None
        return data, labels

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = read("test_batch")
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    return assemble("cifar10", Arrays((np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
                                      (test_x, test_y)),
                    Info(source=str(folder), num_classes=10, class_names=names, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                    val_fraction=val_fraction, seed=seed)
