"""Datasets in memory: splits of uint8 images, batches normalised on the fly, and how a loader assembles them.

Every dataset is held as ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels; batches are converted to
normalised ``float32`` on the fly (and augmented on whole batches with tensor ops, so two CPU cores keep up
with training). A loader (:mod:`uniprune.search.datasets.registry`) reads its files into :class:`Arrays`
and :class:`Info`, and :func:`assemble` carves the seeded validation split and builds the bundle.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from uniprune.compressors.core.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# The test split of datasets that ship without one is drawn with this seed, never the user's: the
# test set must stay the same whatever --seed a run uses, or accuracies would not be comparable.
TEST_SEED = 20_240_601
TEST_FRACTION = 0.2
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
                x = augment_batch(x, gen, flip=self.hflip)
            x = x.to(device, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
            yield x, data.labels[idx].to(device, non_blocking=True)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")


def augment_batch(x: Tensor, gen: torch.Generator, *, flip: bool = True) -> Tensor:
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




def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where decoded datasets are cached: ``cache_dir``, else ``$UNIPRUNE_CACHE``, else ``~/.cache/uniprune``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("UNIPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "uniprune"


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded partition of ``range(n)`` into (rest, carved) with ``round(fraction * n)`` carved, both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _as_split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


@dataclass(frozen=True)
class Arrays:
    """A dataset's images (uint8 ``[N, C, H, W]``) and labels (int ``[N]``) as read: train and test, and
    validation when the data has its own (else it is carved from train)."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class Info:
    """What a loader knows of its data besides the arrays (normalisation ``None``: from the training images)."""

    source: str = ""
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    notes: tuple[str, ...] = ()
    empty_reason: dict[str, str] = field(default_factory=dict)
    hflip: bool = True


def assemble(name: str, arrays: Arrays, info: Info, *, val_fraction: float, seed: int) -> DataBundle:
    """Carve validation out of the training data (unless given) and assemble a :class:`DataBundle`.

    Statistics for normalisation come from the training data before the carve, so they do not depend
    on ``seed``: a checkpoint sees the same inputs whichever seed a later command uses.
    """
    (train_images, train_labels), (test_images, test_labels) = arrays.train, arrays.test
    val_images = arrays.val[0] if arrays.val is not None else None
    if not (len(train_images) or len(test_images) or (val_images is not None and len(val_images))):
        raise DataError(f"dataset {name!r} at {info.source or '(embedded)'} holds no images")
    mean, std = info.mean, info.std
    if mean is None or std is None:
        mean, std = channel_stats(next(a for a in (train_images, test_images, val_images) if a is not None and len(a)))
    if arrays.val is None:
        rest, carved = split_indices(len(train_labels), val_fraction, seed)
        val_images, val_labels = train_images[carved], train_labels[carved]
        train_images, train_labels = train_images[rest], train_labels[rest]
    else:
        val_images, val_labels = arrays.val
    all_labels = [a for a in (train_labels, val_labels, test_labels) if len(a)]
    low = int(min(int(a.min()) for a in all_labels))
    if low < 0:
        raise DataError(f"dataset {name!r}: labels must be class indices >= 0, found {low}")
    num_classes = info.num_classes or max(int(max(int(a.max()) for a in all_labels)) + 1, len(info.class_names))
    shape_from = next(a for a in (train_images, val_images, test_images) if len(a))
    return DataBundle(
        name=name, train=_as_split(train_images, train_labels), val=_as_split(val_images, val_labels),
        test=_as_split(test_images, test_labels), num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in shape_from.shape[1:]),  # type: ignore[arg-type]
        mean=tuple(mean), std=tuple(std), class_names=info.class_names, source=info.source, notes=info.notes,
        empty_reason=dict(info.empty_reason), hflip=info.hflip,
    )


def require(path: Path, what: str) -> Path:
    """``path``, or DataError naming it and ``what`` was expected there."""
    if not path.exists():
        raise DataError(f"path not found: {path} (expected {what})")
    return path


