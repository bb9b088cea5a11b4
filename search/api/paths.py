"""Output paths checked before any long work, so a refused write never throws away minutes of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from uniprune.compressors.core.errors import ConfigError


def check_writable(path: str | os.PathLike, option: str, *, folder: bool = False) -> None:
    """ConfigError (one line naming ``option``) unless ``path`` can be written, checked before any long work.

    ``folder``: ``path`` is a directory to create or fill; else a file whose parent must be a writable
    directory. A probe file is created and removed; nothing the user had is touched.
    """
    p = Path(path).expanduser()
    if folder and p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file; give a folder path")
    if not folder and p.is_dir():
        raise ConfigError(f"{option} {p} is a folder; give a file path inside it")
    target = p if folder else p.parent
    # the nearest existing ancestor decides whether the folders can be made
    probe_dir = target
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"{option} {p}: {probe_dir} is a file, not a folder; choose another path")
    try:
        longest = os.pathconf(probe_dir, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for part in p.parts:
        if len(os.fsencode(part)) > longest:
            raise ConfigError(f"{option}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long, more than the "
                              f"{longest} a file name may have here; choose a shorter name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".uniprune-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {p}: cannot write in {probe_dir} ({exc.strerror or exc}); choose a writable path") from None
    if not folder and p.is_file():
        try:  # an immutable or read-only file cannot be replaced, whatever its folder allows (chattr +i)
            with open(p, "ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"{option} {p} cannot be replaced ({exc.strerror or exc}); choose another path or make it "
                              "writable") from None


def check_out_file(path: str | os.PathLike, force: bool, *, option: str = "--out", example: str = "out.pt") -> Path:
    """``path`` as a new file to write: ConfigError when it is a folder, or exists and ``force`` is off, or cannot be written."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConfigError(f"{option} {out} is a folder; give a file path such as {out / example}")
    if out.exists() and not force:
        raise ConfigError(f"{option} {out} already exists; pass --force to overwrite it or choose another path")
    check_writable(out, option)
    return out
