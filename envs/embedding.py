"""The layer embedding AMC's agent observes, normalised per network.

Each compressible layer gets a fixed vector of :data:`FEATURES`, every entry in [0, 1]. The static
ones (size, shape, cost) are divided by their largest value *within the network*, so the same agent
sees ResNet-20 and ResNet-56 on the same scale and transfers between them; the dynamic ones (latency
reduced so far, latency still to come, previous action) are shares of the network's dense latency or
action fractions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FEATURES: tuple[str, ...] = (
    "index",  # t / (L - 1)
    "is_conv",  # 1 for a conv, 0 for a linear layer
    "in_channels",
    "out_channels",
    "kernel",  # kh * kw
    "stride",  # sh * sw
    "feature_map",  # output Ho * Wo
    "params",
    "macs",
    "latency_share",  # the layer's dense latency / all compressible layers' dense latency
    "reduced_so_far",  # latency saved by the layers before this one, same denominator
    "rest_latency",  # dense latency of the layers after this one, same denominator
    "prev_prune",
    "prev_unify",
)
NUM_FEATURES = len(FEATURES)
_STATIC = 10  # the first ten features do not depend on the episode


def _scaled(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    top = v.max() if v.size else 0.0
    return v / top if top > 0 else np.zeros_like(v)


def static_features(
    names: Sequence[str], profile: Mapping[str, Mapping[str, Any]], dense_layer_ms: Mapping[str, float]
) -> np.ndarray:
    """``[L, 10]`` per-network-normalised static features of the layers ``names`` (in episode order).

    ``profile``: :func:`uniprune.compressors.core.accounting.layer_profile` of the model. ``dense_layer_ms``:
    each layer's dense latency (ms, or any unit shared by all layers).
    """
    n = len(names)
    rows = [profile[name] for name in names]
    dense = np.asarray([max(float(dense_layer_ms[name]), 0.0) for name in names])
    total = dense.sum()
    columns = [
        np.arange(n) / max(n - 1, 1),
        np.asarray([1.0 if r["kind"] == "conv" else 0.0 for r in rows]),
        _scaled([r["in_channels"] for r in rows]),
        _scaled([r["out_channels"] for r in rows]),
        _scaled([r["kernel"][0] * r["kernel"][1] for r in rows]),
        _scaled([r["stride"][0] * r["stride"][1] for r in rows]),
        _scaled([r["out_hw"][0] * r["out_hw"][1] for r in rows]),
        _scaled([r["params"] for r in rows]),
        _scaled([r["macs"] for r in rows]),
        dense / total if total > 0 else np.zeros(n),
    ]
    return np.stack(columns, axis=1)


def observation(
    static: np.ndarray, t: int, reduced_so_far: float, rest_latency: float, prev_action: tuple[float, float]
) -> np.ndarray:
    """The float32 observation of layer ``t``: its static row plus the episode's dynamic features.

    ``reduced_so_far`` and ``rest_latency`` are shares of the dense latency (clipped to [0, 1]);
    ``prev_action`` is the previous layer's applied (prune, unify) (0, 0 for the first layer).
    """
    dynamic = np.clip([reduced_so_far, rest_latency, prev_action[0], prev_action[1]], 0.0, 1.0)
    return np.concatenate([static[t], dynamic]).astype(np.float32)
