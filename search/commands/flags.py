"""Spec fields as command-line flags: the CLI's one mapping from flags to :mod:`uniprune.search.api` specs.

A flag is its field's name with dashes (``latency_budget`` -> ``--latency-budget``) unless the field names
another; its help and default come from the field. Flags default to *absent* (argparse's ``SUPPRESS``),
so :func:`typed` is exactly what the user typed: a verb fills the rest from the spec's defaults or, on
``--resume``, from the stored run (:func:`spec_from`). The spec checks the ranges.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from uniprune.search.api.spec import Spec, flag_of

S = TypeVar("S", bound=Spec)

#: Namespace entries that are the CLI's own, not options.
_INTERNAL = frozenset({"verb", "_run", "json"})


def _shown(default: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("shown"):
        return meta["shown"]
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"{default:g}" if isinstance(default, float) else str(default)


def add_spec_arguments(parser: argparse.ArgumentParser | Any, spec: type[Spec], *, exclude: Collection[str] = (),
                       only: Collection[str] | None = None, defaults: Mapping[str, Any] | None = None) -> None:
    """One flag per option field of ``spec`` (nested specs included), less ``exclude`` (or only ``only``).

    ``defaults`` overrides the default a field shows in its help (a verb whose own default differs).
    """
    for f in spec.leaf_fields():
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        meta = f.metadata
        default = (defaults or {}).get(f.name, f.default)
        required = default is dataclasses.MISSING
        shown = "" if required else f" (default {_shown(default, meta if f.name not in (defaults or {}) else {})})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": meta["help"] + shown, "dest": f.name}
        if required and not isinstance(parser, argparse._MutuallyExclusiveGroup):
            kwargs["required"] = True
        if isinstance(f.default, bool) or f.type == "bool" or meta.get("negatable"):  # bool | None: on, off, or the job decides
            kwargs["action"] = argparse.BooleanOptionalAction if meta.get("negatable") else "store_true"
        else:
            kwargs["type"] = meta.get("kind") or (str if required else type(f.default))
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag_of(f), **kwargs)


def typed(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user typed (every spec flag defaults to absent)."""
    return {k: v for k, v in vars(args).items() if k not in _INTERNAL}


def spec_from(spec: type[S], args: argparse.Namespace, *, stored: Mapping[str, Any] | None = None,
              keys: Collection[str] | None = None, **fixed: Any) -> S:
    """``spec`` from what the user typed, over ``stored`` values (only ``keys`` of them, when given), over the
    spec's defaults; ``fixed`` values win over all."""
    base = {k: v for k, v in (stored or {}).items() if keys is None or k in keys}
    return spec.from_flat({**base, **typed(args), **fixed})


def taken_from(stored: Mapping[str, Any], args: argparse.Namespace, keys: Collection[str], spec: type[Spec]) -> list[str]:
    """The options of ``keys`` a stored run fills because the user did not type them and they differ from the default."""
    mine = typed(args)
    defaults = spec.from_flat({}).flat()
    return [k for k in keys if k in stored and k not in mine and stored[k] != defaults.get(k)]
