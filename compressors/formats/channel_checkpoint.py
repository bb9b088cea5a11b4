"""The channel-pruned checkpoint: a smaller dense model, rebuilt from its name and channel counts, never unpickled.

Channel pruning (``finetune --method channel``) replaces conv, norm and linear layers by narrower ones, so the
model no longer matches what its name builds. Torch-Pruning would pickle the modules; this file keeps the
channel counts instead (:func:`uniprune.compressors.train.channel.channel_record`), and a reader builds the
named model, narrows it with :func:`~uniprune.compressors.train.channel.reshape_like` and loads the weights.
It is a ``torch.save`` of plain containers, tensors and numbers, read with ``weights_only=True``::

    {"format": "uniprune.channel-pruned/1",
     "model_name": "cifar-resnet20", "num_classes": 10, "input_shape": [3, 32, 32],
     "channels": {"format": "uniprune.channels/1", "layers": {"layer1.0.conv1": {"in": 16, "out": 8, "groups": 1}, ...}},
     "state_dict": {...},
     "meta": {...}}                                 # JSON-like: accuracy, MAC ratio, epochs, ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import CheckpointError
from .fileio import first_non_finite, torch_save_atomic

CHANNEL_FORMAT = "uniprune.channel-pruned/1"


@dataclass(frozen=True)
class ChannelCheckpoint:
    """What :func:`load_channel_pruned` read: the model's name, its channel record, weights and meta (the saved
    meta plus ``num_classes`` and ``input_shape``)."""

    model_name: str
    channels: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]


def save_channel_pruned(path: str | os.PathLike, model: nn.Module, channels: Mapping[str, Any], *, model_name: str,
                        num_classes: int, input_shape: tuple[int, int, int] | list[int],
                        meta: Mapping[str, Any] | None = None) -> Path:
    """Write the channel-pruned ``model`` (its weights) and its ``channels`` record atomically to ``path``.

    ``meta`` must hold only JSON-like values. Refuses a model with a non-finite weight (nothing is written)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bad = first_non_finite(state)
    if bad:
        raise CheckpointError(f"{bad} holds NaN or inf; the fine-tune diverged and nothing was written (lower --lr)")
    payload = {"format": CHANNEL_FORMAT, "model_name": str(model_name), "num_classes": int(num_classes),
               "input_shape": [int(s) for s in input_shape], "channels": dict(channels), "state_dict": state,
               "meta": dict(meta or {})}
    return torch_save_atomic(path, payload)


def _check_channels(channels: Any, source: str) -> dict[str, Any]:
    if not isinstance(channels, dict) or not isinstance(channels.get("format"), str) or not isinstance(channels.get("layers"), dict):
        raise CheckpointError(f"{source}: field 'channels' is missing or not a channel record; the file is damaged")
    for name, rec in channels["layers"].items():
        if not isinstance(name, str) or not isinstance(rec, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in rec.items()):
            raise CheckpointError(f"{source}: the channel record of layer {name!r} is malformed; the file is damaged")
    return channels


def load_channel_pruned(path: str | os.PathLike) -> ChannelCheckpoint:
    """Read a channel-pruned checkpoint (``weights_only``); one-line :class:`CheckpointError` for a missing, corrupt
    or foreign file, a malformed record or a non-finite weight."""
    from .checkpoint import read_model_file

    source = str(path)
    data = read_model_file(path, CHANNEL_FORMAT, "channel-pruned checkpoint")
    state = data["state_dict"]
    meta = dict(data.get("meta") or {})
    meta.update(num_classes=data["num_classes"], input_shape=list(data["input_shape"]))
    return ChannelCheckpoint(data["model_name"], _check_channels(data.get("channels"), source), state, meta)


def checkpoint_format(path: str | os.PathLike) -> str | None:
    """The ``format`` field of a uniprune checkpoint at ``path`` (``None`` for a plain state dict or another file);
    what a reader dispatches on. Read safely (``weights_only``)."""
    from .checkpoint import read_torch_file

    data = read_torch_file(path)
    fmt = data.get("format") if isinstance(data, dict) else None
    return fmt if isinstance(fmt, str) else None
