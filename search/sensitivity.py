"""The knapsack's per-layer sensitivity scores, kept in a run's ``sensitivity.json``.

Scoring every layer's options alone is most of a knapsack search (ResNet-56: 448 scores, about 40 minutes on one
core), and the scores depend on the model, its weights, the data and the scoring, not on the budget. So a run
keeps them, a resumed run reads its own back, and ``--sensitivity-from RUN`` reuses another run's at a new
budget (scoring only the options it lacks). The file says what was scored where (``scoring``: the run's options
that change a score, and the checkpoint's sha256), and scores are reused only where that matches.

Format ``uniprune.sensitivity/1``::

    {"format": ..., "scoring": {...}, "dense_val_accuracy": 0.89,
     "layers": {"layer1.0.conv1": [{"prune": 0.5, "unify": 0.0, "shape": "1x1", "ms": 0.012,
                                    "val_accuracy_lost": 0.004}, ...], ...}}

``val_accuracy_lost`` is a fraction of the validation images (0.004: 0.4 point), null where the scorer gave no
finite accuracy; ``shape`` is null where one block shape is searched.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from uniprune.compressors.core.errors import ConfigError, RunDirError
from uniprune.compressors.formats.fileio import read_json, write_json_atomic

from .knapsack import LayerOptions, option_key

FORMAT = "uniprune.sensitivity/1"
FILE = "sensitivity.json"
#: a run's ``config.json`` options that change a score (with the checkpoint's content): the same in two runs,
#: their scores are interchangeable whatever their budgets, caps, layers kept dense, latency tables or searcher
#: settings (those change which options exist, not what one scores)
SCORING_KEYS = ("model", "dataset", "data", "seed", "val_samples", "val_fraction", "bn_recalibrate",
                "eval_batch_size", "reward_steps")


def _sha256(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scoring_key(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a score depends on, from a run's ``config.json`` mapping: :data:`SCORING_KEYS` and the checkpoint's
    sha256 (None for an untrained model)."""
    return {**{k: config.get(k) for k in SCORING_KEYS}, "checkpoint_sha256": _sha256(config.get("checkpoint"))}


def write(path: str | os.PathLike, scored: Sequence[LayerOptions], dense_accuracy: float,
          scoring: Mapping[str, Any]) -> Path:
    """Write ``scored`` (costs set) as :data:`FORMAT` to ``path`` atomically; returns the path."""
    layers = {}
    for o in scored:
        assert o.cost is not None, "write scored options"
        layers[o.name] = [{"prune": float(a[0]), "unify": float(a[1]), "shape": a[2] if len(a) > 2 else None,
                           "ms": float(t), "val_accuracy_lost": float(c) if math.isfinite(c) else None}
                          for a, t, c in zip(o.actions, o.ms, o.cost)]
    return write_json_atomic(path, {"format": FORMAT, "scoring": dict(scoring), "dense_val_accuracy": float(dense_accuracy),
                                    "layers": layers})


def read(path: str | os.PathLike, fix: str = "delete it to score the layers again") -> dict[str, Any]:
    """The file at ``path`` checked: RunDirError of one line (ending in ``fix``) when it is not a :data:`FORMAT` file."""
    data = read_json(path, RunDirError, fix)
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("scoring"), dict) \
            or not isinstance(layers, dict):
        raise RunDirError(f"{str(path)!r} is not a {FORMAT} file; {fix}")
    for name, options in layers.items():
        ok = isinstance(options, list) and all(
            isinstance(o, dict) and all(isinstance(o.get(k), (int, float)) and not isinstance(o.get(k), bool)
                                        and math.isfinite(o[k]) for k in ("prune", "unify"))
            and (o.get("val_accuracy_lost") is None or (isinstance(o["val_accuracy_lost"], (int, float))
                                                       and math.isfinite(o["val_accuracy_lost"])))
            and (o.get("shape") is None or isinstance(o["shape"], str)) for o in options)
        if not ok:
            raise RunDirError(f"{str(path)!r}: layer {name!r} has a malformed option list; {fix}")
    return data


def known_costs(data: Mapping[str, Any]) -> dict[str, float]:
    """``{option_key: cost}`` of a :func:`read` file (inf where no finite accuracy was scored)."""
    out = {}
    for name, options in data["layers"].items():
        for o in options:
            action = (o["prune"], o["unify"], o["shape"]) if o.get("shape") else (o["prune"], o["unify"])
            lost = o.get("val_accuracy_lost")
            out[option_key(name, action)] = math.inf if lost is None else float(lost)
    return out


def mismatch(recorded: Mapping[str, Any], scoring: Mapping[str, Any]) -> list[str]:
    """The scoring fields that differ, as ``field: recorded against now`` (empty where the scores carry over)."""
    return [f"{k}: {recorded.get(k)!r} against {v!r}" for k, v in scoring.items() if recorded.get(k) != v]


def source_file(given: str | os.PathLike) -> Path:
    """``--sensitivity-from``'s file: a run directory (its :data:`FILE`) or the file itself."""
    path = Path(given).expanduser()
    file = path / FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--sensitivity-from {given}: no {FILE} there; pass the run directory of a finished knapsack "
                          "search (it writes one) or the file itself")
    return file


def costs_from(given: str | os.PathLike, config: Mapping[str, Any]) -> dict[str, float]:
    """The scores of ``--sensitivity-from`` for a run configured as ``config``; ConfigError naming what differs
    where they were scored another way."""
    file = source_file(given)
    data = read(file, fix="pass another run's sensitivity.json, or leave --sensitivity-from out")
    differs = mismatch(data["scoring"], scoring_key(config))
    if differs:
        raise ConfigError(f"--sensitivity-from {given} was scored another way ({'; '.join(differs)}); pass a run of the "
                          "same model, checkpoint, data and scoring options, or leave --sensitivity-from out")
    return known_costs(data)
