"""Locks that keep two uniprune processes from writing the same output at once.

An ``--out`` path is locked by an OS lock (flock) on ``.<name>.lock`` beside it, held while the verb runs and
removed after: a second process that asks for the same path is refused with one line instead of silently
replacing the first one's result. A killed process leaves no stale lock (the OS drops flock locks with the
process); a left-over lock file is simply locked again. A run directory's lock is ``run.lock`` inside it
(:func:`uniprune.compressors.formats.run_dir.lock_run_dir`), held for the life of the process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import ConfigError


def _flock(path: Path) -> object | None:
    """The open, exclusively locked ``path`` (created if missing), or None when another process holds it.
    Retries when the file was replaced between open and lock (the holder removed it on release)."""
    import fcntl

    while True:
        fh = open(path, "a+")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return None
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()  # locked a file its holder had already removed: take the new one


@contextmanager
def output_lock(out: str | os.PathLike | None, option: str = "--out") -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``out`` for the duration of the block; a one-line ConfigError when another
    process holds it. Does nothing for ``None``, or where no lock file can be made (a missing or read-only
    folder): the verb's own checks of ``out`` then say what is wrong."""
    try:
        import fcntl  # noqa: F401 - POSIX only; elsewhere there is no lock, as before
    except ImportError:
        yield
        return
    if out is None:
        yield
        return
    path = Path(out).expanduser()
    lock = path.parent / f".{path.name}.lock"
    try:
        fh = _flock(lock) if path.parent.is_dir() and path.name not in ("", ".", "..") else False
    except OSError:
        fh = False  # cannot make a lock file there: nothing can be written there either
    if fh is None:
        raise ConfigError(f"another uniprune process is writing {option} {str(path)!r} (it holds {lock.name}); wait for it "
                          "to finish or choose another path")
    try:
        yield
    finally:
        if fh:
            try:
                lock.unlink()
            except OSError:
                pass
            fh.close()  # type: ignore[union-attr]
