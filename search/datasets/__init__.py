"""The data zoo: a small registry of named datasets as uint8 tensors with a seeded train/validation split and a fixed test split.

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
# each module registers its kind, in the order KNOWN_DATASETS lists them (digits first: the default)
from . import digits, fashion_mnist, cifar10, imagefolder, npz  # noqa: F401, I001
from .bundle import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    Arrays,
    DataBundle,
    Info,
    Split,
    augment_batch,
    cache_root,
    split_indices,
)
from .fashion_mnist import FASHION_MNIST_DEFAULT
from .registry import KNOWN_DATASETS, load_dataset, register

__all__ = ["Arrays", "DataBundle", "FASHION_MNIST_DEFAULT", "IMAGENET_MEAN", "IMAGENET_STD", "Info", "KNOWN_DATASETS", "SPLITS",
           "Split", "augment_batch", "cache_root", "load_dataset", "register", "split_indices"]
