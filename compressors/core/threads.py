"""The one owner of torch's intra-op thread count.

Every piece of uniprune that runs torch on a chosen number of threads (the latency tables and timings,
training, scoring, export) goes through :func:`torch_threads`, which sets the count for a block and puts
the caller's count back after it, so a job called in-process (tests, the demo, a user's script) leaves
the caller's setting alone. :func:`resolve_threads` gives ``threads`` its one meaning everywhere: a
count >= 1 as given, or ``None`` for automatic (the cores idle right now).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import ConfigError


def check_threads(threads: int | None) -> int | None:
    """``threads`` unchanged when it is ``None`` or an int >= 1; ConfigError (naming ``--threads``) otherwise."""
    if threads is None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"--threads must be a positive integer (or left out for automatic), got {threads!r}")
    return threads


def idle_cores() -> int:
    """The cores idle right now: cores minus the 1-minute load average, at least 1 and at most torch's count.

    Threads on busy cores spin and slow small models down many times, so automatic means idle cores, not all.
    """
    current = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0  # no load average on this platform: use every core
    return max(1, min(current, round((os.cpu_count() or current) - busy)))


def resolve_threads(threads: int | None) -> int:
    """The thread count ``threads`` means: itself when >= 1, else (``None``) :func:`idle_cores`."""
    given = check_threads(threads)
    return idle_cores() if given is None else given


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run a block with torch on ``threads`` threads (:func:`resolve_threads`); yields the count, restores the previous one."""
    n = resolve_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
