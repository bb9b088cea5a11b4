"""The data zoo: named datasets as uint8 tensors with a seeded train/validation split and a fixed test split.

Every dataset is held in memory as ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels; batches are
converted to normalised ``float32`` on the fly (and augmented on whole batches with tensor ops, so two
CPU cores keep up with training). Kinds, chosen by ``--dataset NAME --data PATH``:

- ``digits``: scikit-learn's 8x8 digits (embedded, no path), scaled from 16 to 256 grey levels,
  resized to 32x32 and replicated to RGB so the CIFAR-style models take it too. A seeded 20 % test
  split that never changes (its seed is fixed), validation carved from the rest with ``seed``.
- ``fashion-mnist``: the raw idx files (optionally ``.gz``), 1x28x28; without a path it is found where
  Debian's ``dataset-fashion-mnist`` puts it, ``/usr/share/datasets/fashion-mnist``.
- ``cifar10``: torchvision's python-batch folder ``cifar-10-batches-py`` (or its parent). Never downloads.
- ``imagefolder``: ``train/<class>/*``, optional ``val/<class>/*`` and ``test/<class>/*``; given as a
  folder, a ``.tar.gz`` of one, or several of those joined by commas (``train.tar.gz,test.tar.gz``).
  Each source is decoded once into a cached ``.npz`` (under ``$UNIPRUNE_CACHE`` or
  ``~/.cache/uniprune``), so the second load takes seconds. Without a ``test/`` part a seeded test split
  is carved; with only a ``test/`` part the training splits are empty (``eval --split test`` works).
- ``npz``: one file with ``images`` (uint8 NxCxHxW) and ``labels``; optionally ``train_images`` and
  ``train_labels``. Without the training arrays the same images serve as test AND training data (a
  note says so), so only the test accuracy means anything.

Normalisation: CIFAR-10 and 3-channel imagefolder/npz use ImageNet mean/std (the pretrained CIFAR
checkpoints need exactly that); the others use statistics of their own training images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm
from uniprune.compressors.core.errors import DataError

__all__ = ["Split", "DataBundle", "KNOWN_DATASETS", "SPLITS", "IMAGENET_MEAN", "IMAGENET_STD", "load_dataset", "cache_root"]

KNOWN_DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "imagefolder", "npz")
SPLITS: tuple[str, ...] = ("train", "val", "test")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")

# The test split of datasets that ship without one is drawn with this seed, never the user's: the
# test set must stay the same whatever --seed a run uses, or accuracies would not be comparable.
_TEST_SEED = 20_240_601
_TEST_FRACTION = 0.2
_CACHE_VERSION = 1
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
_PAD = 4  # pixels of zero padding for the random-crop augmentation (as in He et al. 2016 on CIFAR)


@dataclass
class Split:
    """One split: ``images`` uint8 ``[N, C, H, W]`` (0-255) and ``labels`` int64 ``[N]``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"split images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(f"split labels must be [N] with N = {self.images.shape[0]}, got {tuple(self.labels.shape)}")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DataBundle:
    """A dataset's three splits, its shape and its normalisation (on [0, 1] pixel values).

    ``notes`` holds one-line remarks a command should show (e.g. that an npz file's test images are
    also its training images); ``empty_reason`` says, per empty split, how to supply it; ``hflip``
    says whether mirrored images are still valid samples (not for digits: a mirrored 2 is no digit).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    source: str = ""
    notes: tuple[str, ...] = ()
    empty_reason: dict[str, str] = field(default_factory=dict)
    hflip: bool = True

    def split(self, split: str) -> Split:
        """The named split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def num_batches(self, split: str, batch_size: int, limit: int | None = None) -> int:
        """How many batches :meth:`batches` yields for the same arguments (the last one may be short)."""
        _check_batch_size(batch_size)
        return math.ceil(self._count(split, limit) / batch_size)

    def _count(self, split: str, limit: int | None) -> int:
        n = len(self.split(split))
        if limit is not None:
            if limit < 1:
                raise DataError(f"limit must be a positive number of samples, got {limit}")
            n = min(n, limit)
        return n

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        limit: int | None = None,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: ``x`` normalised float32 ``[B, C, H, W]`` and ``y`` int64 ``[B]`` on ``device``.

        Args:
            split: ``train``, ``val`` or ``test``.
            batch_size: samples per batch, >= 1; the last batch may be smaller.
            shuffle: visit samples in a random order drawn from ``seed`` (pass ``seed + epoch`` for a
                new order each epoch).
            augment: random crop with 4-pixel zero padding and (when ``hflip``) random horizontal
                flip, per sample, drawn from ``seed`` (meant for training only).
            limit: use at most this many samples (the first ones, or a random subset when shuffled).
        """
        _check_batch_size(batch_size)
        data = self.split(split)
        if len(data) == 0:
            reason = self.empty_reason.get(split, "")
            raise DataError(f"the {split} split of dataset {self.name!r} is empty" + (f": {reason}" if reason else ""))
        n = self._count(split, limit)
        gen = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(data), generator=gen)[:n] if shuffle else torch.arange(n)
        device = torch.device(device)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = data.images[idx]
            if augment:
                x = _augment(x, gen, flip=self.hflip)
            x = x.to(device, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
            yield x, data.labels[idx].to(device, non_blocking=True)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")


def _augment(x: Tensor, gen: torch.Generator, *, flip: bool = True) -> Tensor:
    """Random crop (zero padding of ``_PAD`` pixels) and, if ``flip``, horizontal flip of a uint8 batch, per sample."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (_PAD, _PAD, _PAD, _PAD))
    dy = torch.randint(0, 2 * _PAD + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * _PAD + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    # One gather for the whole batch: each sample reads its own window of the padded images.
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if not flip:
        return out
    mirrored = torch.rand(b, generator=gen) < 0.5
    return torch.where(mirrored[:, None, None, None], out.flip(3), out)


# --------------------------------------------------------------------------------------------- helpers


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where decoded datasets are cached: ``cache_dir``, else ``$UNIPRUNE_CACHE``, else ``~/.cache/uniprune``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("UNIPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "uniprune"


def _split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded partition of ``range(n)`` into (rest, carved) with ``round(fraction * n)`` carved, both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _as_split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images on the [0, 1] scale, rounded to 4 digits.

    Computed from a 256-bin histogram per channel: exact, and no float copy of the whole dataset.
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        p = counts / counts.sum()
        mean = float((p * levels).sum())
        std = float(np.sqrt(max((p * levels**2).sum() - mean**2, 0.0)))
        means.append(round(mean, 4))
        stds.append(round(max(std, 1e-3), 4))
    return tuple(means), tuple(stds)


def _bundle(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    val_fraction: float,
    seed: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    num_classes: int | None = None,
    class_names: tuple[str, ...] = (),
    source: str = "",
    notes: tuple[str, ...] = (),
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    empty_reason: dict[str, str] | None = None,
    hflip: bool = True,
) -> DataBundle:
    """Carve validation out of the training data (unless given) and assemble a :class:`DataBundle`.

    Statistics for normalisation come from the training data before the carve, so they do not depend
    on ``seed``: a checkpoint sees the same inputs whichever seed a later command uses.
    """
    if not (len(train_images) or len(test_images) or (val_images is not None and len(val_images))):
        raise DataError(f"dataset {name!r} at {source or '(embedded)'} holds no images")
    if mean is None or std is None:
        mean, std = _channel_stats(next(a for a in (train_images, test_images, val_images) if a is not None and len(a)))
    if val_images is None:
        rest, carved = _split_indices(len(train_labels), val_fraction, seed)
        val_images, val_labels = train_images[carved], train_labels[carved]
        train_images, train_labels = train_images[rest], train_labels[rest]
    all_labels = [a for a in (train_labels, val_labels, test_labels) if len(a)]
    top = int(max(int(a.max()) for a in all_labels))
    low = int(min(int(a.min()) for a in all_labels))
    if low < 0:
        raise DataError(f"dataset {name!r}: labels must be class indices >= 0, found {low}")
    if num_classes is None:
        num_classes = max(top + 1, len(class_names))
    shape_from = next(a for a in (train_images, val_images, test_images) if len(a))
    return DataBundle(
        name=name,
        train=_as_split(train_images, train_labels),
        val=_as_split(val_images, val_labels),
        test=_as_split(test_images, test_labels),
        num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in shape_from.shape[1:]),  # type: ignore[arg-type]
        mean=tuple(mean),
        std=tuple(std),
        class_names=class_names,
        source=source,
        notes=notes,
        empty_reason=dict(empty_reason or {}),
        hflip=hflip,
    )


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"path not found: {path} (expected {what})")
    return path


# ---------------------------------------------------------------------------------------------- digits


def _load_digits(val_fraction: float, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    raw = load_digits()
    grey = torch.from_numpy(raw.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    # Bilinear upsampling keeps the strokes smooth; 32x32 RGB is what the CIFAR-style models take.
    big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).numpy()
    labels = raw.target.astype(np.int64)
    rest, test = _split_indices(len(labels), _TEST_FRACTION, _TEST_SEED)
    mean, std = _channel_stats(images[rest])
    return _bundle(
        "digits", images[rest], labels[rest], images[test], labels[test], val_fraction=val_fraction, seed=seed,
        mean=mean, std=std, num_classes=10, class_names=tuple(str(d) for d in range(10)), source="sklearn.datasets.load_digits",
        hflip=False,
    )


# --------------------------------------------------------------------------------------- fashion-mnist


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


def _load_fashion_mnist(path: str | None, val_fraction: float, seed: int) -> DataBundle:
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
    return _bundle(
        "fashion-mnist", arrays["train_x"][:, None], arrays["train_y"].astype(np.int64),
        arrays["test_x"][:, None], arrays["test_y"].astype(np.int64),
        val_fraction=val_fraction, seed=seed, num_classes=10, class_names=names, source=str(folder),
    )


# --------------------------------------------------------------------------------------------- cifar10


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


def _load_cifar10(path: str | None, val_fraction: float, seed: int) -> DataBundle:
    if not path:
        raise DataError("dataset cifar10 needs --data FOLDER: torchvision's 'cifar-10-batches-py' folder (it is never downloaded)")
    folder = _require(Path(path).expanduser(), "torchvision's 'cifar-10-batches-py' folder")
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
    return _bundle(
        "cifar10", np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test_x, test_y,
        val_fraction=val_fraction, seed=seed, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=10,
        class_names=names, source=str(folder),
    )


# ----------------------------------------------------------------------------------------- imagefolder


def _member_key(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) of an image at ``.../[split/]class/file``; split ``""`` when the layout has none."""
    if len(parts) < 2 or parts[-1].startswith(".") or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
        return None
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return parts[-3], parts[-2]
    return "", parts[-2]


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {where}: {exc}") from None


def _iter_images(source: Path) -> Iterator[tuple[tuple[str, str], str, bytes]]:
    """((split, class), path, file bytes) of every image file in a folder or a tar archive; other files
    are skipped unread."""
    if source.is_dir():
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            parts = file.relative_to(source).parts
            key = _member_key(parts)
            if key is not None:
                yield key, "/".join(parts), file.read_bytes()
        return
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                key = _member_key(Path(member.name).parts) if member.isfile() else None
                handle = tar.extractfile(member) if key is not None else None
                if handle is not None:
                    yield key, member.name, handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        first = " ".join(str(exc).split())[:160]  # tarfile lists every method it tried, one per line
        raise DataError(f"cannot read archive {source}: {first} (expected a .tar.gz of an image folder)") from None


def _source_signature(source: Path) -> str:
    """A cache key that changes when the source changes (path, sizes and modification times)."""
    source = source.resolve()  # the same data spelled as another relative path must hit the same cache
    h = hashlib.sha256(f"v{_CACHE_VERSION}:{source}".encode())
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _decode_source(source: Path, cache_dir: str | None) -> dict[str, np.ndarray]:
    """Decode every image of one folder/archive once; later calls read the cached ``.npz`` (seconds)."""
    cache = cache_root(cache_dir) / f"imagefolder-{source.name.split('.')[0]}-{_source_signature(source)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            pass  # a damaged cache is rebuilt below
    found: list[tuple[str, str, str, np.ndarray]] = []
    sizes: dict[tuple[int, ...], int] = {}
    bar = tqdm(_iter_images(source), desc=f"decoding {source.name} (once; cached)", unit=" images", file=sys.stderr, leave=False)
    for (split, cls), where, data in bar:
        img = _decode(data, f"{source}:{where}")
        sizes[img.shape] = sizes.get(img.shape, 0) + 1
        found.append((split, cls, where, img))
    if not found:
        raise DataError(f"no images found in {source} (expected [train|val|test/]<class>/<image> files)")
    shape = max(sizes, key=sizes.get)  # images of another size are resized to the most common one
    found.sort(key=lambda t: (t[0], t[1], t[2]))
    images = np.stack([_resize(img, shape) for *_, img in found]).transpose(0, 3, 1, 2)
    arrays = {
        "images": np.ascontiguousarray(images),
        "split": np.array([s for s, *_ in found]),
        "cls": np.array([c for _, c, *_ in found]),
    }
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, cache)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"uniprune: note: could not write the image cache {cache}: {exc}", file=sys.stderr)
    return arrays


def _resize(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if img.shape == shape:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.uint8)


def _load_imagefolder(path: str | None, val_fraction: float, seed: int, cache_dir: str | None) -> DataBundle:
    if not path:
        raise DataError(
            "dataset imagefolder needs --data: a folder with train/ and test/ class folders, a .tar.gz of one, "
            "or several joined by commas (train.tar.gz,test.tar.gz)"
        )
    sources = [Path(p.strip()).expanduser() for p in path.split(",") if p.strip()]
    for s in sources:
        _require(s, "an image folder or a .tar.gz of one")
    parts = [_decode_source(s, cache_dir) for s in sources]
    shapes = {p["images"].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"the sources in {path} hold images of different sizes {sorted(shapes)}; give sources of one size")
    images = np.concatenate([p["images"] for p in parts])
    split = np.concatenate([p["split"] for p in parts])
    cls = np.concatenate([p["cls"] for p in parts])
    names = tuple(sorted(set(cls.tolist())))
    labels = np.searchsorted(np.array(names), cls).astype(np.int64)
    notes: list[str] = []
    empty_reason: dict[str, str] = {}
    has = {s: bool((split == s).any()) for s in ("", *SPLITS)}
    if has[""] and (has["train"] or has["test"]):
        raise DataError(f"{path} mixes class folders at the top with train/ or test/ folders; use one layout")
    if has[""]:
        _, test_idx = _split_indices(len(split), _TEST_FRACTION, _TEST_SEED)
        split = np.full(len(split), "train", dtype="<U5")
        split[test_idx] = "test"
        notes.append(f"{path} has no train/ and test/ folders: a fixed 20 % of its images is the test split")
    if not (split == "train").any():
        hint = "the data has only a test/ part; add the training images, e.g. --data train.tar.gz,test.tar.gz"
        empty_reason = {"train": hint, "val": hint}
    if not (split == "test").any():
        empty_reason["test"] = "the data has no test/ part; add it, e.g. --data train.tar.gz,test.tar.gz"
    given_val = (split == "val").any()

    def sel(name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = split == name
        return images[mask], labels[mask]

    (tr_x, tr_y), (te_x, te_y), (va_x, va_y) = sel("train"), sel("test"), sel("val")
    channels = images.shape[1]
    stats = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (None, None)
    return _bundle(
        "imagefolder", tr_x, tr_y, te_x, te_y, val_fraction=val_fraction, seed=seed, mean=stats[0], std=stats[1],
        num_classes=len(names), class_names=names, source=path, notes=tuple(notes), empty_reason=empty_reason,
        val_images=va_x if given_val else None, val_labels=va_y if given_val else None,
    )


# ------------------------------------------------------------------------------------------------- npz


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


def _load_npz(path: str | None, val_fraction: float, seed: int) -> DataBundle:
    if not path:
        raise DataError("dataset npz needs --data FILE: an .npz with arrays 'images' (uint8 N x C x H x W) and 'labels'")
    file = _require(Path(path).expanduser(), "an .npz file with arrays 'images' (uint8 N x C x H x W) and 'labels'")
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
    return _bundle(
        "npz", train_x, train_y, test_x, test_y, val_fraction=val_fraction, seed=seed, mean=stats[0], std=stats[1],
        source=str(file), notes=notes,
    )


# ----------------------------------------------------------------------------------------------- entry


def load_dataset(
    name: str = "digits",
    path: str | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DataBundle:
    """Load a dataset of the zoo (see the module docstring for the kinds and what ``path`` is).

    Args:
        name: one of :data:`KNOWN_DATASETS`.
        path: the dataset's folder or file; not needed for ``digits`` (and ``fashion-mnist`` when
            installed by Debian). For ``imagefolder`` several sources may be joined by commas.
        val_fraction: fraction in [0, 1) of the training data carved out, seeded, as validation
            (ignored when an imagefolder has its own ``val/``).
        seed: seed of the validation carve (the test split never depends on it).
        cache_dir: where decoded imagefolder data is cached (default ``$UNIPRUNE_CACHE`` or
            ``~/.cache/uniprune``).
    """
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key == "digits":
        if path:
            raise DataError("dataset digits is embedded (scikit-learn) and takes no --data; drop --data or choose another --dataset")
        return _load_digits(val_fraction, seed)
    if key in ("fashion-mnist", "fashionmnist"):
        return _load_fashion_mnist(path, val_fraction, seed)
    if key in ("cifar10", "cifar-10"):
        return _load_cifar10(path, val_fraction, seed)
    if key == "imagefolder":
        return _load_imagefolder(path, val_fraction, seed, cache_dir)
    if key == "npz":
        return _load_npz(path, val_fraction, seed)
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
