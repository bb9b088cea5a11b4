"""The ``uniprune`` command: one entry point, nine verbs (see DESIGN "CLI").

Each verb is a :class:`~uniprune.search.commands.Verb` (its spec's flags, its API job) with
``add_arguments(parser)`` and ``run(args) -> dict``. This module only wires them up, prints the result (a short human summary, or
with ``--json`` exactly one JSON object as the last line of stdout) and turns user errors into one line
on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from uniprune.compressors.core.errors import UnipruneError
from uniprune.compressors.formats.locks import output_lock
from uniprune.compressors.formats.run_dir import run_dir_locks

from .commands import COMMANDS

#: errors of the file system that are the user's to fix, shown as one line (anything else is a bug: a traceback)
_FILE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG,
                          errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EINVAL, errno.EBUSY, errno.EFBIG,
                          errno.ENOTEMPTY, errno.EXDEV, errno.ELOOP, errno.EMLINK, errno.ETXTBSY})

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="uniprune",
        description="Compress a trained network by micro-structured pruning and unification, "
        "searched under a measured latency budget.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for verb in COMMANDS:
        p = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        verb.add_arguments(p)
        p.add_argument("--json", action="store_true", help="print exactly one JSON object as the last line of stdout")
        p.set_defaults(_run=verb.run)
    return parser


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def _print_human(result: dict[str, Any]) -> None:
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        if isinstance(value, float):
            shown = f"{value:.4g}"
        elif isinstance(value, (dict, list)):
            shown = json.dumps(_jsonable(value))
            if len(shown) > 100:
                shown = shown[:97] + "..."
        else:
            shown = str(value)
        print(f"{key:<{width}}  {shown}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # rank 0 alone writes --out in a multi-process fine-tune (torchrun sets RANK)
        out = getattr(args, "out", None) if os.environ.get("RANK", "0") in ("", "0") else None
        with output_lock(out), run_dir_locks():
            result = args._run(args)
    except UnipruneError as exc:
        print(f"uniprune {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # the file system refused (read-only, immutable, full, name too long): the user's to fix
        if exc.errno not in _FILE_ERRNOS:
            raise
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"uniprune {args.verb}: error: cannot write or read{where}: {exc.strerror or exc}; choose another path or "
              "fix its permissions", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"uniprune {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(_jsonable(result)))
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
