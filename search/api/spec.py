"""The spec mechanism: option fields with their help and range checks, and the :class:`Spec` base.

A spec is a frozen dataclass of option fields (:func:`option`) and nested specs; it runs its
:meth:`Spec.checks` on construction, maps to and from one flat mapping of its options (a run's
``config.json``), and gives back the command line that builds it (:meth:`Spec.argv`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import field
from typing import Any, TypeVar

from uniprune.compressors.core.errors import ConfigError
from uniprune.compressors.core.threads import check_threads

S = TypeVar("S", bound="Spec")

#: every Spec subclass by name, so nested spec fields (annotations are strings) resolve to their class
_REGISTRY: dict[str, type[Spec]] = {}



#: The default of an option that has none: the caller must give it (a required flag).
REQUIRED = dataclasses.MISSING


def option(default: Any, help: str, *, kind: Any = None, choices: tuple[str, ...] | None = None, flag: str | None = None,
           metavar: str | None = None, negatable: bool = False, shown: str | None = None) -> Any:
    """A spec field: ``default``, the flag's ``help`` (the default is appended unless ``shown`` says it),
    the value type ``kind`` (default: the default's type), ``choices``, and the ``flag`` when it is not the
    field's name with dashes. ``negatable``: a bool flag with a ``--no-`` form."""
    meta = {"help": help, "kind": kind, "choices": choices, "flag": flag, "metavar": metavar, "negatable": negatable,
            "shown": shown}
    if default is REQUIRED:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def threads_option(what: str = "CPU threads", *, shown: str = "automatic: the cores idle now, cores minus load average, "
                   ">= 1") -> Any:
    """The ``threads`` option, spelled alike in every job: a count >= 1, or left out (None) for the job's default
    (``shown``; most jobs: the cores idle now, :func:`~uniprune.compressors.core.threads.resolve_threads`);
    :class:`Spec` checks it."""
    return option(None, f"{what}, >= 1", kind=int, shown=shown)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line spelling of a spec field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def fraction(value: Any, *, zero: bool = False, one: bool = True) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    low = value >= 0 if zero else value > 0
    return low and (value <= 1 if one else value < 1)



def threads_ok(threads: Any) -> bool:
    try:
        check_threads(threads)
    except ConfigError:
        return False
    return True



def positive_float(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0



#: Upper bounds of the numeric options every job shares (:func:`limit_checks`): past them a run cannot finish
#: or cannot be allocated, so it is refused at once with one line instead of hanging or failing later.
MAX_THREADS = 1024
MAX_BATCH = 1 << 20
MAX_COUNT = 10_000_000  # repeats, episodes, epochs, iterations, samples
_COUNT_OPTIONS = frozenset({"repeats", "episodes", "warmup", "epochs", "train_epochs", "finetune_epochs", "retrain_epochs",
                            "iterations", "val_samples", "limit", "bn_recalibrate"})
_BATCH_OPTIONS = frozenset({"batch_size", "eval_batch_size"})
_THREAD_OPTIONS = frozenset({"threads", "score_threads"})


def limit_checks(values: Mapping[str, Any]) -> list[tuple[bool, str]]:
    """Checks of the options' upper bounds: threads above 4x the cores or :data:`MAX_THREADS`, a batch size above
    :data:`MAX_BATCH`, a count (repeats, episodes, epochs, ...) above :data:`MAX_COUNT`, a seed outside
    [0, 2**32 - 1]. Lower bounds are each spec's own."""
    cores = os.cpu_count() or 1
    threads = min(MAX_THREADS, 4 * cores)
    out = []
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        flag = "--" + name.replace("_", "-")
        if name in _THREAD_OPTIONS:
            out.append((value <= threads, f"{flag} {value} is more than this machine can use (at most {threads}: 4 x its "
                                          f"{cores} cores, and never over {MAX_THREADS})"))
        elif name in _BATCH_OPTIONS:
            out.append((value <= MAX_BATCH, f"{flag} {value} is too large (at most {MAX_BATCH:,} samples per batch)"))
        elif name in _COUNT_OPTIONS:
            out.append((value <= MAX_COUNT, f"{flag} {value} is too large (at most {MAX_COUNT:,})"))
        elif name == "seed":
            out.append((0 <= value <= 2**32 - 1, f"--seed must be in [0, {2**32 - 1}], got {value}"))
    return out


class Spec:
    """Base of the specs: range checks on construction, flat mapping to and from ``config.json``-style dicts."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    #: (predicate on the spec, message): the first failing check raises ConfigError with its message.
    def checks(self) -> list[tuple[bool, str]]:
        return []

    def __post_init__(self) -> None:
        threads = getattr(self, "threads", None)
        checks = [(threads_ok(threads), f"--threads must be a positive integer (or left out for automatic), got {threads}")]
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        checks += limit_checks({k: v for k, v in own.items() if not isinstance(v, Spec)})
        for ok, message in checks + self.checks():
            if not ok:
                raise ConfigError(message)

    @classmethod
    def leaf_fields(cls) -> list[dataclasses.Field]:
        """The option fields of this spec and the specs it holds, in order."""
        out = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = _nested(cls, f)
            out.extend(nested.leaf_fields() if nested else [f])
        return out

    def flat(self) -> dict[str, Any]:
        """The spec's options as one flat mapping (field name -> value)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out.update(value.flat() if isinstance(value, Spec) else {f.name: value})
        return out

    @classmethod
    def from_flat(cls: type[S], values: Mapping[str, Any]) -> S:
        """A spec from a flat mapping; options it lacks keep their defaults, keys no field has are ignored."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = _nested(cls, f)
            if nested:
                kwargs[f.name] = nested.from_flat(values)
            elif f.name in values:
                kwargs[f.name] = values[f.name]
        return cls(**kwargs)

    def argv(self) -> list[str]:
        """The command-line options that give this spec: those whose value differs from the default, as flags."""
        values, out = self.flat(), []
        for f in self.leaf_fields():
            value = values[f.name]
            if value == f.default:
                continue  # a required option (no default) is never equal to MISSING, so it is always shown
            if isinstance(value, bool):
                out.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
            else:
                out += [flag_of(f), ",".join(map(str, value)) if isinstance(value, (tuple, list)) else f"{value:g}"
                        if isinstance(value, float) else str(value)]
        return out

    def replace(self: S, **changes: Any) -> S:
        """A copy with the flat options ``changes`` set (checked again)."""
        unknown = set(changes) - {f.name for f in self.leaf_fields()}
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no option(s) {sorted(unknown)}")
        return type(self).from_flat({**self.flat(), **changes})


def _nested(cls: type, f: dataclasses.Field) -> type[Spec] | None:
    hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return _REGISTRY.get(hint)
