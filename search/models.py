"""The model zoo, and checkpoints: build a model by name, load weights into it, save a checkpoint.

Names:

- ``cifar-resnet20|32|44|56``: He et al. 2016's CIFAR ResNets with option-A shortcuts, exactly as
  akamaster/pytorch_resnet_cifar10 (module names ``conv1, bn1, layer1.0.conv1, ..., linear``), so its
  pretrained files load as they are (``module.`` prefixes are stripped).
- ``tv:<name>``: a torchvision classification model, randomly initialised (weights only from a local
  file through ``--checkpoint``; nothing is downloaded).
- ``cifar-vgg16``: VGG-16 with BatchNorm for 32x32 inputs (the CIFAR pruning literature's).
- ``digits-cnn``: the small default CNN for the embedded digits data.
- ``package.module:factory``: a user's own model, built by ``factory(num_classes=...)`` (and
  ``input_shape=...`` when the factory takes that argument).

Every ``nn.MultiheadAttention`` of a built model is rewritten as four ``nn.Linear`` projections and a bare
attention core (:mod:`uniprune.compressors.core.attention`: same outputs, prunable projections); checkpoints
with torch's fused ``in_proj_weight`` load into it.

Checkpoints written here are ``{"format": "uniprune.checkpoint/1", "model", "num_classes",
"input_shape", "dataset", "accuracy", "state_dict", ...}`` and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from uniprune.compressors.core.attention import split_attention, split_attention_state
from uniprune.compressors.core.errors import CheckpointError, ModelError
from uniprune.compressors.formats.checkpoint import (
    COMPRESSED_FORMAT,  # defined once, by its reader
    read_torch_file,
)
from uniprune.compressors.formats.fileio import first_non_finite, torch_save_atomic

__all__ = [
    "KNOWN_MODELS",
    "CHECKPOINT_FORMAT",
    "COMPRESSED_FORMAT",
    "CifarResNet",
    "CifarVGG",
    "DigitsCNN",
    "build_model",
    "read_checkpoint",
    "split_checkpoint",
    "load_state",
    "model_hint",
    "load_weights",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "uniprune.checkpoint/1"
_RESNET_DEPTHS = {"cifar-resnet20": 20, "cifar-resnet32": 32, "cifar-resnet44": 44, "cifar-resnet56": 56}
KNOWN_MODELS: list[str] = [*_RESNET_DEPTHS, "cifar-vgg16", "digits-cnn", "tv:<torchvision name>", "package.module:factory"]
_SHOWN_KEYS = 3  # how many offending keys an error message names


# ------------------------------------------------------------------------------------------ CIFAR ResNet


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_lo = (planes - in_planes) // 2
        self.pad_hi = planes - in_planes - self.pad_lo

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad_lo, self.pad_hi))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016, CIFAR variant)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of ``depth = 6n + 2`` layers: 3 stages of ``n`` blocks with 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ModelError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pooling (the reference pools over the whole 8x8 map, which is the same thing).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --------------------------------------------------------------------------------------------- digits


class DigitsCNN(nn.Module):
    """The small default CNN: four 3x3 conv-BN-ReLU layers (32, 32, 64, 64 channels; the 1st, 2nd and 4th
    with stride 2, so a 32x32 input is worked on at 16, 8 and 4 pixels), global average pooling and a
    linear head. About 66 k parameters and 2.6 M multiply-adds per 32x32 image: digits carry only 8x8
    pixels of information, and two shared CPU cores train it to >= 97 % in well under a minute."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ----------------------------------------------------------------------------------------------- VGG

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG-16 for 32x32 inputs, as the CIFAR pruning literature uses it (Li et al. 2017, "Pruning Filters for
    Efficient ConvNets"): thirteen 3x3 conv-BN-ReLU layers in five stages, each closed by 2x2 max pooling,
    and one linear head on the 512 features left at 1x1. About 14.7 M parameters, 313 M multiply-adds."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# ---------------------------------------------------------------------------------------------- build


def _unknown(name: str) -> ModelError:
    return ModelError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")


def _torchvision(name: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = [a for a in available if a.startswith(name[:4])] or available[:8]
        raise ModelError(f"unknown torchvision classification model {name!r}; e.g. tv:{', tv:'.join(close)}")
    if input_shape[0] != 3:
        raise ModelError(f"torchvision models take 3-channel images, the data has {input_shape[0]}; choose another model")
    # weights=None: never download; trained weights come from a local file through --checkpoint.
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _factory(spec: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {spec!r}: {exc}; put it on PYTHONPATH") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"module {module_name!r} has no callable {attr!r} (model {spec!r} means package.module:factory)")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    try:
        if "input_shape" in inspect.signature(factory).parameters:
            kwargs["input_shape"] = input_shape
    except (TypeError, ValueError):
        pass  # builtins without a signature get num_classes only
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError(f"{spec}(num_classes={num_classes}) failed: {exc}; the factory must accept num_classes=") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _check_forward(model: nn.Module, name: str, num_classes: int, input_shape: tuple[int, int, int]) -> None:
    """A one-sample dry run, so a model that cannot take the data fails here with one clear line."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as exc:  # noqa: BLE001 - whatever the user's model raises (an assert on the image size, ...) is one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        first = first if isinstance(exc, (RuntimeError, ValueError)) and first else f"{type(exc).__name__}: {first}".rstrip(": ")
        raise ModelError(f"model {name!r} cannot take inputs of shape {tuple(input_shape)}: {first[:300]}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(f"model {name!r} must return logits of shape [batch, {num_classes}], got {got}")


def build_model(name: str, *, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> nn.Module:
    """Build a zoo model (see the module docstring for the names), randomly initialised, in train mode.

    Args:
        name: ``cifar-resnet20|32|44|56``, ``digits-cnn``, ``tv:<torchvision name>`` or ``package.module:factory``.
        num_classes: number of output logits, >= 2.
        input_shape: ``(channels, height, width)`` of one input; the zoo models adapt their first layer
            to the channel count, and torchvision/factory models are checked by a one-sample dry run.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ModelError(f"input_shape must be (channels, height, width), got {input_shape}")
    if not isinstance(name, str) or not name.strip():
        raise _unknown(str(name))
    name = name.strip()
    if name in _RESNET_DEPTHS:
        return CifarResNet(_RESNET_DEPTHS[name], num_classes, in_channels=input_shape[0])
    if name == "digits-cnn":
        return DigitsCNN(num_classes, in_channels=input_shape[0])
    if name == "cifar-vgg16":
        if min(input_shape[1:]) < 32:
            raise ModelError(f"cifar-vgg16 halves its input five times and needs at least 32x32 pixels, got {input_shape}")
        return CifarVGG(num_classes, in_channels=input_shape[0])
    if name.startswith("tv:"):
        model = _torchvision(name[3:], num_classes, input_shape)
    elif ":" in name and all(part.isidentifier() for part in name.replace(":", ".").split(".")):
        model = _factory(name, num_classes, input_shape)
    else:
        raise _unknown(name)
    split_attention(model)  # attention's projections as plain Linears: prunable, lowerable, exportable to ONNX
    _check_forward(model, name, num_classes, input_shape)
    return model


# ----------------------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``) and return the raw object, which must be a dict.

    Raises :class:`CheckpointError` for a missing file, a file torch cannot read, or one that holds
    pickled code (not loadable safely).
    """
    file = Path(path).expanduser()
    obj = read_torch_file(file)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file} holds a {type(obj).__name__}, expected a state dict or a dict with 'state_dict'")
    return obj


def split_checkpoint(obj: dict[str, Any], where: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict without ``module.`` prefixes, metadata) of a raw checkpoint dict."""
    if obj.get("format") == COMPRESSED_FORMAT:
        raise CheckpointError(f"{where} is a compressed checkpoint; use 'uniprune eval' or 'uniprune bench --compressed' on it")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state, meta = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise CheckpointError(f"{where} has no 'state_dict' and is not a state dict of tensors (keys: {', '.join(list(obj)[:5])})")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{where}: state dict entries must be tensors, {bad[0]!r} is {type(state[bad[0]]).__name__}")
    non_finite = first_non_finite(dict(state))
    if non_finite:
        raise CheckpointError(f"{where}: {non_finite} holds NaN or inf (written by a run that diverged); train it again")
    # Checkpoints saved from nn.DataParallel / DDP carry a "module." prefix on every key.
    clean = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    return clean, meta


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def load_state(model: nn.Module, state: Mapping[str, Tensor], *, where: str = "checkpoint", hint: str = "") -> None:
    """Copy ``state`` into ``model`` strictly; a mismatch raises one :class:`CheckpointError` line that
    names the first missing, unexpected and wrongly shaped keys. ``module.`` prefixes are stripped.
    BatchNorm ``num_batches_tracked`` counters missing from old checkpoints are tolerated."""
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    state = split_attention_state(model, state)  # torchvision's fused in_proj_weight, split as the model is
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not missing and not unexpected and mismatched:
        # only the classifier differs, in its output count: the data has other classes, not the model another name
        head = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
        if last and all(k.rsplit(".", 1)[0] == last[0] for k in head) and all(
                state[k].shape[1:] == own[k].shape[1:] for k in head):
            raise CheckpointError(
                f"{where} has {state[head[0]].shape[0]} output classes, the data {own[head[0]].shape[0]}: "
                "use the dataset the checkpoint was trained on (its labels must run below its class count)")
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_named(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_named(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {_named(mismatched)}")
        raise CheckpointError(f"{where} does not fit the model: {'; '.join(parts)}" + (f"; {hint}" if hint else ""))
    model.load_state_dict(state, strict=False)


def model_hint(meta: Mapping[str, Any]) -> str:
    """For a key-mismatch error: which model a checkpoint's metadata says it was saved for ("" if unknown)."""
    saved_for = meta.get("model", meta.get("model_name"))
    return f"the checkpoint was saved for model {saved_for!r}; pass --model {saved_for}" if isinstance(saved_for, str) else ""


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` and return its metadata (everything but the state dict,
    e.g. ``best_prec1`` or ``accuracy``; ``{}`` for a plain state dict).

    Accepts a uniprune checkpoint, ``{'state_dict': ...}`` (keys may carry ``module.``) and a plain
    state dict. Keys or shapes that do not fit raise :class:`CheckpointError` naming the first few.
    """
    state, meta = split_checkpoint(read_checkpoint(path), str(path))
    load_state(model, state, where=str(path), hint=model_hint(meta))
    return meta


def _check_plain(value: Any, where: str) -> None:
    """Metadata must hold only what ``torch.load(weights_only=True)`` reads back."""
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint metadata {where}: keys must be str or int, got {type(k).__name__}")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"checkpoint metadata {where} is a {type(value).__name__}; use plain values, lists, dicts or tensors")


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str,
    dataset: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    accuracy: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a ``uniprune.checkpoint/1`` file atomically and return its path.

    Args:
        model_name: the zoo name the model was built with (``eval`` and ``search`` rebuild it from this).
        dataset: the dataset name it was trained on.
        input_shape: ``(C, H, W)`` of one input.
        num_classes: number of output logits.
        accuracy: test top-1 in [0, 1], when known.
        extra: further plain metadata (numbers, strings, lists, dicts, tensors) stored at the top level;
            it may not reuse the reserved keys.
    """
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model": model_name,
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "dataset": dataset,
        "accuracy": None if accuracy is None else float(accuracy),
    }
    for key, value in (extra or {}).items():
        if key in payload or key == "state_dict":
            raise ValueError(f"extra metadata may not use the reserved key {key!r}")
        _check_plain(value, str(key))
        payload[key] = value
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return torch_save_atomic(path, payload)

