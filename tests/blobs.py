"""A small fine-tuning problem shared by the fine-tuning tests: 4 classes of noisy 3x8x8 templates, a two-conv CNN
trained on them, and a policy for its two compressible layers (``3``: the second conv, ``8``: the classifier)."""

from __future__ import annotations

import torch
from torch import nn
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.train.training import evaluate, make_optimizer, train_epoch

CLASSES = 4
POLICY = Policy(layers={"3": LayerAction(0.6, 0.3), "8": LayerAction(0.5, 0.25)})


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples: a class's template plus Gaussian noise (std 1.2), labels uniform over the classes."""
    templates = torch.randn(CLASSES, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return templates[y] + 1.2 * torch.randn(n, 3, 8, 8, generator=gen), y


TRAIN = blobs(512, 1)
VAL = blobs(256, 2)


def train_batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training set in batches of 64, shuffled by ``epoch``."""
    order = torch.randperm(len(TRAIN[1]), generator=torch.Generator().manual_seed(epoch))
    return [(TRAIN[0][order[i : i + 64]], TRAIN[1][order[i : i + 64]]) for i in range(0, len(order), 64)]


def val_accuracy(model: nn.Module) -> float:
    return evaluate(model, [VAL])


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES))


def trained_cnn(epochs: int) -> nn.Module:
    """:func:`small_cnn` (seed 0) trained ``epochs`` epochs at lr 0.05."""
    torch.manual_seed(0)
    model = small_cnn()
    optimizer = make_optimizer(model, lr=0.05)
    for epoch in range(epochs):
        train_epoch(model, train_batches(100 + epoch), optimizer)
    return model
