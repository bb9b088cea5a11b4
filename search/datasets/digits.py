"""scikit-learn's 8x8 digits (embedded, no path), scaled from 16 to 256 grey levels, resized to 32x32 and
replicated to RGB so the CIFAR-style models take it too. A seeded 20 % test split that never changes (its
seed is fixed), validation carved from the rest with ``seed``."""

from __future__ import annotations

import numpy as np
import torch
from uniprune.compressors.core.errors import DataError

from .bundle import TEST_FRACTION, TEST_SEED, Arrays, DataBundle, Info, assemble, channel_stats, split_indices
from .registry import register


@register("digits")
def load_digits(path: str | None, *, val_fraction: float, seed: int, cache_dir: str | None = None) -> DataBundle:
    """scikit-learn's 8x8 digits, embedded: takes no path."""
    if path:
        raise DataError("dataset digits is embedded (scikit-learn) and takes no --data; drop --data or choose another --dataset")
    from sklearn.datasets import load_digits

    raw = load_digits()
    grey = torch.from_numpy(raw.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    # Bilinear upsampling keeps the strokes smooth; 32x32 RGB is what the CIFAR-style models take.
    big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).numpy()
    labels = raw.target.astype(np.int64)
    rest, test = split_indices(len(labels), TEST_FRACTION, TEST_SEED)
    mean, std = channel_stats(images[rest])
    return assemble("digits", Arrays((images[rest], labels[rest]), (images[test], labels[test])),
                    Info(source="sklearn.datasets.load_digits", num_classes=10, class_names=tuple(str(d) for d in range(10)),
                         mean=mean, std=std, hflip=False), val_fraction=val_fraction, seed=seed)
