"""The base of every job's result: a frozen dataclass with ``to_dict()`` (what ``--json`` prints)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

R = TypeVar("R", bound="Result")


class Result:
    """Mixin for frozen result dataclasses. A field ``more`` (a dict), when the class has one, holds the figures
    the job reports beyond the typed fields; :meth:`to_dict` flattens it back."""

    @classmethod
    def of(cls: type[R], figures: dict[str, Any]) -> R:
        """A result from a job's figures: typed fields by name (absent ones None), the rest into ``more`` if there is one."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: figures.get(k) for k in names - {"more"}}
        if "more" in names:
            kwargs["more"] = {k: v for k, v in figures.items() if k not in names}
        return cls(**kwargs)


    def to_dict(self) -> dict[str, Any]:
        """The result as one flat mapping."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "more"}  # type: ignore[arg-type]
        return {**out, **(getattr(self, "more", None) or {})}
