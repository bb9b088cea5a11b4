"""The compressed checkpoint (DESIGN "Files"): a model in its decided structure, loadable without the policy.

The file is a ``torch.save`` of plain containers, tensors and numbers only, so it loads with
``torch.load(weights_only=True)``::

    {"format": "uniprune.compressed/1",
     "model_name": "cifar-resnet20", "num_classes": 10, "input_shape": [3, 32, 32],
     "state_dict": {...},                          # plain weights that obey the structures
     "structures": {"layer1.0.conv1": {"weight_shape": [16, 16, 3, 3], "groups": 1,
                                       "block_shape": [8, 4],
                                       "states": int8 [n_out, n_in],   # 0 keep, 1 unify, 2 prune
                                       "magnitudes": float32 [n_out, n_in]}, ...},
     "policy": {... policy.json ...} | None,
     "meta": {...}}                                # JSON-like: accuracy, method, epochs, ...
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import CheckpointError
from ..core.policy import Policy
from ..core.structure import BlockShape, LayerStructure, block_grid
from .fileio import first_non_finite, torch_save_atomic

COMPRESSED_FORMAT = "uniprune.compressed/1"


def structure_record(structure: LayerStructure) -> dict[str, Any]:
    """A layer's structure as plain tensors, numbers and lists (what ``weights_only`` loading reads back)."""
    grid = structure.grid
    return {
        "weight_shape": list(grid.weight_shape),
        "groups": int(grid.groups),
        "block_shape": [int(grid.block_shape.out), int(grid.block_shape.inp)],
        "states": structure.states.to(torch.int8).cpu().clone(),
        "magnitudes": structure.magnitudes.float().cpu().clone(),
    }


def save_compressed(
    path: str | os.PathLike,
    model: nn.Module,
    structures: Mapping[str, LayerStructure],
    *,
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, int, int] | list[int],
    policy: Policy | Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (plain weights, i.e. after ``bake``) and its structures atomically to ``path``.

    ``meta`` must hold only JSON-like values (str, numbers, bools, None, lists, dicts).
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if any(".parametrizations." in k for k in state):
        raise CheckpointError("the model still carries training constraints; call constraints.bake(model) before saving")
    policy_dict = policy.to_dict() if isinstance(policy, Policy) else (dict(policy) if policy is not None else None)
    payload = {
        "format": COMPRESSED_FORMAT,
        "model_name": str(model_name),
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "state_dict": state,
        "structures": {name: structure_record(s) for name, s in structures.items()},
        "policy": policy_dict,
        "meta": dict(meta or {}),
    }
    return torch_save_atomic(path, payload)


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with one clear line for every way a file can be wrong.

    Raises :class:`CheckpointError`: missing, empty, cut short, not written by ``torch.save``, or holding
    pickled code (which ``weights_only`` refuses to run).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"{what} {file} does not exist (expected a file written by torch.save)")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{what} {file} is empty; it was not written completely: write it again")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files; each is one line here
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            reason = (f"it holds a pickled {found.group(1)}, which cannot be loaded safely (weights_only=True); save only "
                      "tensors and plain values, e.g. torch.save(model.state_dict(), path)")
        elif "central directory" in text or isinstance(exc, EOFError):
            reason = "it is cut short or damaged (not a complete torch.save file); write or copy it again"
        else:
            reason = "it is not a file written by torch.save (or it is damaged)"
        raise CheckpointError(f"cannot read {what} {file}: {reason}") from None


def read_model_file(path: str | os.PathLike, fmt: str, what: str, *, extra: tuple[tuple[str, type], ...] = ()) -> dict[str, Any]:
    """A uniprune model file of format ``fmt`` read safely, with its common fields checked (``model_name``,
    ``num_classes``, ``input_shape``, a ``state_dict`` of finite tensors) and ``extra`` ``(field, type)`` pairs.
    One-line :class:`CheckpointError` for anything else (``what`` names the kind of file)."""
    source = str(path)
    data = read_torch_file(path, what)
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{source}: not a uniprune {what} (format {got!r}, expected {fmt!r})")
    for key, kind in (("model_name", str), ("num_classes", int), ("input_shape", list), ("state_dict", dict), *extra):
        if not isinstance(data.get(key), kind):
            raise CheckpointError(f"{source}: field {key!r} is missing or not a {kind.__name__}; the file is damaged")
    if not all(isinstance(v, torch.Tensor) for v in data["state_dict"].values()):
        raise CheckpointError(f"{source}: field 'state_dict' holds non-tensor values; the file is damaged")
    bad = first_non_finite(data["state_dict"])
    if bad:
        raise CheckpointError(f"{source}: {bad} holds NaN or inf (written by a run that diverged); fine-tune again")
    return data


def structure_from_record(record: Any) -> LayerStructure:
    """The inverse of :func:`structure_record`; ValueError (or KeyError, TypeError) for a malformed record."""
    shape = tuple(int(s) for s in record["weight_shape"])
    bo, bi = (int(s) for s in record["block_shape"])
    grid = block_grid(shape, BlockShape(bo, bi), int(record["groups"]))
    structure = LayerStructure(grid=grid, states=record["states"], magnitudes=record["magnitudes"])
    if tuple(structure.magnitudes.shape) != (grid.n_out, grid.n_in) or not bool(((structure.states >= 0) & (structure.states <= 2)).all()):
        raise ValueError("bad states or magnitudes")
    return structure


def _read_structure(name: str, record: Any, state_dict: Mapping[str, torch.Tensor], source: str) -> LayerStructure:
    try:
        structure = structure_from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: structure of layer {name!r} is malformed ({exc}); the file is damaged") from None
    shape = structure.grid.weight_shape
    weight = state_dict.get(f"{name}.weight")
    if weight is None or tuple(weight.shape) != shape:
        raise CheckpointError(f"{source}: state dict has no weight of shape {shape} for structured layer {name!r}")
    return structure


def load_compressed(path: str | os.PathLike) -> tuple[str, dict[str, torch.Tensor], dict[str, LayerStructure], dict[str, Any]]:
    """Read a compressed checkpoint -> ``(model_name, state_dict, structures, meta)``.

    ``meta`` is the saved meta plus ``num_classes``, ``input_shape`` and ``policy`` (a dict or None).
    Missing, corrupt or foreign files raise a one-line :class:`CheckpointError`.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CheckpointError(f"compressed checkpoint {source!r} does not exist; pass the file 'uniprune finetune --out' wrote")
    data = read_model_file(path, COMPRESSED_FORMAT, "compressed checkpoint", extra=(("structures", dict),))
    state_dict = data["state_dict"]
    structures = {name: _read_structure(name, rec, state_dict, source) for name, rec in data["structures"].items()}
    meta = dict(data.get("meta") or {})
    meta.update(num_classes=data["num_classes"], input_shape=list(data["input_shape"]), policy=data.get("policy"))
    return data["model_name"], state_dict, structures, meta
