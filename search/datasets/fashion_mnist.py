"""Fashion-MNIST: the raw idx files (optionally ``.gz``), 1x28x28; without a path it is found where Debian's
``dataset-fashion-mnist`` puts it, ``/usr/share/datasets/fashion-mnist``."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from uniprune.compressors.core.errors import DataError

from .bundle import Arrays, DataBundle, Info, assemble
from .registry import register

FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format, unsigned bytes), plain or gzip-compressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)  # writable, as torch wants
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    # Both the upstream names (train-images-idx3-ubyte) and the dotted variant (train-images.idx3-ubyte).
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} has no {stem}[.gz]: expected the four Fashion-MNIST idx files there")


@register("fashion-mnist", "fashionmnist")
def load_fashion_mnist(path: str | None, *, val_fraction: float, seed: int, cache_dir: str | None = None) -> DataBundle:
    """The raw idx files (optionally .gz); without a path, where Debian's dataset-fashion-mnist puts them."""
    folder = Path(path).expanduser() if path else FASHION_MNIST_DEFAULT
    if not folder.is_dir():
        hint = " (install Debian's dataset-fashion-mnist or pass --data FOLDER)" if not path else ""
        raise DataError(f"path not found: {folder} (expected a folder with the Fashion-MNIST idx files){hint}")
    arrays = {}
    for key, stem in (
        ("train_x", "train-images-idx3-ubyte"), ("train_y", "train-labels-idx1-ubyte"),
        ("test_x", "t10k-images-idx3-ubyte"), ("test_y", "t10k-labels-idx1-ubyte"),
    ):
        arrays[key] = _read_idx(_find_idx(folder, stem))
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST {part} files in {folder} disagree: images {x.shape}, labels {y.shape}")
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    return assemble("fashion-mnist", Arrays((arrays["train_x"][:, None], arrays["train_y"].astype(np.int64)),
                                            (arrays["test_x"][:, None], arrays["test_y"].astype(np.int64))),
                    Info(source=str(folder), num_classes=10, class_names=names), val_fraction=val_fraction, seed=seed)
