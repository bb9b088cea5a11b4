"""The policy: per-layer fractions of weights to prune and to unify, and its file ``policy.json``.

File format (``uniprune.policy/1``)::

    {"format": "uniprune.policy/1", "model": "cifar-resnet20",
     "block_shape": {"conv": [bo, bi], "linear": [bo, bi]},
     "latency_budget": 0.5,
     "layers": {"layer1.0.conv1": {"prune": 0.5, "unify": 0.25},
                "layer1.0.conv2": {"prune": 0.5, "unify": 0.0, "block": [1, 1]}, ...},
     "predicted": {...}, "search": {...}}

``prune`` and ``unify`` are fractions of the layer's weights (taken in whole blocks, the same fraction of every block
size: :class:`~uniprune.compressors.core.projection.BlockClasses`), each in [0, 1], with ``prune + unify <= 1``.
A layer's optional ``block`` ([out, in] channels) is the block shape the search chose for that layer; it wins
over the per-kind ``block_shape`` (see :func:`~uniprune.compressors.core.blocks.policy_layers`).
Layers not named in ``layers`` stay dense. Loading validates every field and raises
:class:`~uniprune.compressors.core.errors.PolicyError` naming the bad one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats.fileio import read_json, write_json_atomic
from .errors import PolicyError
from .structure import BlockShape

POLICY_FORMAT = "uniprune.policy/1"
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LayerAction:
    """What to do with one layer's blocks: ``prune`` and ``unify`` fractions in [0, 1], sum <= 1, and the layer's own
    block shape (``None``: the policy's shape for the layer's kind)."""

    prune: float = 0.0
    unify: float = 0.0
    block: BlockShape | None = None

    def __post_init__(self) -> None:
        for key in ("prune", "unify"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise PolicyError(f"{key} must be a number in [0, 1], got {value!r}")
            if not -_TOLERANCE <= value <= 1 + _TOLERANCE:
                raise PolicyError(f"{key} must be in [0, 1], got {value}")
        if self.prune + self.unify > 1 + _TOLERANCE:
            raise PolicyError(f"prune + unify must be <= 1, got {self.prune} + {self.unify}")

    def as_action(self) -> tuple:
        """The env's action tuple: ``(prune, unify)``, with the block shape's key (``"4x1"``) third when the layer
        has its own shape (what :func:`uniprune.envs.scorer.layer_action` reads back)."""
        return (self.prune, self.unify) if self.block is None else (self.prune, self.unify, self.block.key)

    @property
    def is_dense(self) -> bool:
        return self.prune <= _TOLERANCE and self.unify <= _TOLERANCE


@dataclass
class Policy:
    """A whole-model policy. ``layers`` maps module names (as in ``named_modules``) to actions."""

    layers: dict[str, LayerAction]
    model: str = ""
    block_shape: dict[str, tuple[int, int]] = field(default_factory=dict)
    latency_budget: float | None = None
    predicted: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)

    def action(self, name: str) -> LayerAction:
        """The action for layer ``name``; a layer the policy does not name stays dense."""
        return self.layers.get(name, LayerAction())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "model": self.model,
            "block_shape": {k: list(v) for k, v in self.block_shape.items()},
            "latency_budget": self.latency_budget,
            "layers": {n: _action_dict(a) for n, a in self.layers.items()},
            "predicted": self.predicted,
            "search": self.search,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "policy") -> Policy:
        """Validate and build a policy; errors name ``source`` and the bad field."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{source}: expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != POLICY_FORMAT:
            raise PolicyError(f"{source}: field 'format' must be {POLICY_FORMAT!r}, got {fmt!r}")
        layers_raw = data.get("layers")
        if not isinstance(layers_raw, Mapping):
            raise PolicyError(f"{source}: field 'layers' must be an object of layer name -> {{prune, unify}}")
        layers: dict[str, LayerAction] = {}
        for name, entry in layers_raw.items():
            if not isinstance(entry, Mapping):
                raise PolicyError(f"{source}: field 'layers.{name}' must be an object with 'prune' and 'unify'")
            unknown = set(entry) - {"prune", "unify", "block"}
            if unknown:
                raise PolicyError(f"{source}: field 'layers.{name}' has unknown keys {sorted(unknown)}")
            block = None
            if entry.get("block") is not None:
                block = BlockShape(*_shape_or_raise(entry["block"], f"{source}: field 'layers.{name}.block'"))
            try:
                layers[name] = LayerAction(float_or_raise(entry.get("prune", 0.0)), float_or_raise(entry.get("unify", 0.0)), block)
            except PolicyError as exc:
                raise PolicyError(f"{source}: field 'layers.{name}': {exc}") from None
        block_shape: dict[str, tuple[int, int]] = {}
        if not isinstance(data.get("block_shape") or {}, Mapping):
            raise PolicyError(f"{source}: field 'block_shape' must be an object of layer kind -> [out, in]")
        for kind, shape in (data.get("block_shape") or {}).items():
            block_shape[str(kind)] = _shape_or_raise(shape, f"{source}: field 'block_shape.{kind}'")
        budget = data.get("latency_budget")
        if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget <= 1):
            raise PolicyError(f"{source}: field 'latency_budget' must be a number in (0, 1] or null, got {budget!r}")
        model = data.get("model", "")
        if not isinstance(model, str):
            raise PolicyError(f"{source}: field 'model' must be a string, got {model!r}")
        for key in ("predicted", "search"):
            if not isinstance(data.get(key, {}) or {}, Mapping):
                raise PolicyError(f"{source}: field '{key}' must be an object")
        return cls(
            layers=layers,
            model=model,
            block_shape=block_shape,
            latency_budget=None if budget is None else float(budget),
            predicted=dict(data.get("predicted") or {}),
            search=dict(data.get("search") or {}),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``policy.json`` atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        """Read and validate a ``policy.json``; one-line :class:`PolicyError` on any problem."""
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} does not exist: pass the policy.json a search wrote")
        data = read_json(path, PolicyError, "re-run the search or fix the file")
        return cls.from_dict(data, source=str(path))


def _action_dict(action: LayerAction) -> dict[str, Any]:
    entry: dict[str, Any] = {"prune": action.prune, "unify": action.unify}
    if action.block is not None:
        entry["block"] = [action.block.out, action.block.inp]
    return entry


def _shape_or_raise(shape: Any, where: str) -> tuple[int, int]:
    """``[out, in]`` as two positive integers, else PolicyError naming ``where``."""
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise PolicyError(f"{where} must be [out, in] positive integers, got {str(shape)[:40]}")
    return int(shape[0]), int(shape[1])


def float_or_raise(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"expected a number, got {value!r}")
    try:
        out = float(value)
    except OverflowError:  # an integer past float range, such as 10**400
        out = math.inf
    if not math.isfinite(out):
        raise PolicyError(f"expected a finite number, got {str(value)[:24]}")
    return out
