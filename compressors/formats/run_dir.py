"""A search's run directory: every file name in it, and how a search starts, stops and resumes in it.

Files (every write atomic: temp file + rename, :mod:`uniprune.compressors.formats.fileio`)::

    config.json          the options the search was started with
    state.json           progress: episodes done, best reward and episode, seconds spent (the resume point)
    episodes.csv         one row per episode (episode, reward, val_accuracy, latency_ratio, size_ratio, ...)
    policy.json          the best policy so far
    agent.json, agent.pt the DDPG agent: settings as JSON, weights as tensors (weights_only), never a pickle;
    replay_buffer.npz    its stored transitions, for --resume
    optuna.db            the Optuna study (searcher optuna, default storage)
    tb/                  TensorBoard events
    run.lock             held (an OS lock) while a search writes the folder; a killed process leaves none

``state.json`` is written last after each episode, so it never claims an episode whose other files are
missing. A directory that holds a run is never overwritten without ``--resume`` (go on) or ``--force``
(start again, deleting the old run's files).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.errors import RunDirError
from .fileio import read_json, write_json_atomic, write_text_atomic

# The run directory's file names, spelled here only (every module that reads or writes one asks for it here).
CONFIG, STATE, EPISODES, POLICY = "config.json", "state.json", "episodes.csv", "policy.json"
AGENT_SETTINGS, AGENT_WEIGHTS, AGENT_BUFFER = "agent.json", "agent.pt", "replay_buffer.npz"
OPTUNA_DB, TB_DIR, LOCK = "optuna.db", "tb", "run.lock"
COMPRESSED, FINETUNE, BENCH, REPORT = "compressed.pt", "finetune.json", "bench.json", "report.md"

EPISODE_COLUMNS: tuple[str, ...] = (
    "episode", "reward", "val_accuracy", "latency_ratio", "size_ratio", "noise_sigma", "warmup", "best_reward", "seconds",
)
RUN_FILES = (CONFIG, STATE, EPISODES, POLICY, AGENT_SETTINGS, AGENT_WEIGHTS, AGENT_BUFFER, OPTUNA_DB)
# Options that may differ on --resume (they do not change what the search is).
RESUMABLE_CHANGES = frozenset({"episodes", "resume", "force", "json", "score_threads", "storage"})


def read_json_object(path: str | os.PathLike, *, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is absent; RunDirError (ending with ``fix``) when it is
    unreadable or not an object."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = read_json(path, RunDirError, fix)
    if not isinstance(data, dict):
        raise RunDirError(f"{path} must hold a JSON object; {fix}")
    return data


#: Run-directory locks this process holds, by lock file: flock locks belong to an open file, so a second open
#: in the same process would conflict with the first.
_HELD: dict[Path, Any] = {}


@contextmanager
def run_dir_locks() -> Iterator[None]:
    """Run-directory locks taken inside the block are released at its end: a verb's lock lasts as long as the
    verb, so a caller that runs verbs in one process (``uniprune demo``, a notebook, the tests) can run the next
    from another process on the same directory."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in [k for k in _HELD if k not in before]:
            _HELD.pop(key).close()


def lock_run_dir(path: str | os.PathLike, then: str = "then run this again") -> Any:
    """Hold ``run.lock`` in the existing directory ``path`` for as long as this process lives (the CLI releases it when the verb ends: :func:`run_dir_locks`): any verb that
    writes a run directory (search, finetune, report) from another process into the same one is refused
    with one line ending with ``then``. An OS lock (flock), so a process killed with -9 leaves no stale lock
    behind. Returns the held file (None where the platform has no flock)."""
    try:
        import fcntl
    except ImportError:  # not on this platform: no lock, as before
        return None
    key = (Path(path) / LOCK).resolve()
    if key in _HELD:  # this process holds it already (a resume after a stop, in one Python session)
        return _HELD[key]
    try:
        fh = open(key, "a+")  # noqa: SIM115 - held open for the process's lifetime
    except OSError as exc:
        raise RunDirError(f"cannot lock the run directory {str(path)!r} ({exc.strerror or exc}); it must be writable") from None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise RunDirError(f"another process (pid {holder}) is writing {path}; wait for it to finish or stop it, "
                          f"{then}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _HELD[key] = fh
    return fh


class RunDir:
    """One search's directory. Build it with :meth:`start`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        self._config_update: dict[str, Any] | None = None  # a resume's new targets, written with the first episode
        self._lock_file: Any = None

    def _lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_run_dir(self.path, "then --resume")

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def state_path(self) -> Path:
        return self.path / STATE

    @property
    def policy_path(self) -> Path:
        return self.path / POLICY

    @property
    def tb_dir(self) -> Path:
        return self.path / TB_DIR

    @property
    def agent_path(self) -> Path:
        """The DDPG agent's settings file (its weights and replay buffer lie beside it)."""
        return self.path / AGENT_SETTINGS

    @property
    def compressed_path(self) -> Path:
        """Where ``finetune --run-dir`` writes the compressed checkpoint."""
        return self.path / COMPRESSED

    @property
    def finetune_path(self) -> Path:
        return self.path / FINETUNE

    @property
    def bench_path(self) -> Path:
        return self.path / BENCH

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def episodes_path(self) -> Path:
        return self.path / EPISODES

    @property
    def episodes_done(self) -> int:
        return int(self.state.get("episodes", 0))

    @classmethod
    def start(cls, path: str | os.PathLike, config: Mapping[str, Any], *, resume: bool = False, force: bool = False) -> RunDir:
        """Open ``path`` for a new search (``config`` written) or, with ``resume``, go on with the one there.

        Raises :class:`RunDirError` when ``path`` already holds files and neither ``resume`` nor
        ``force`` is given, when ``resume`` finds no run, when ``force`` would delete a folder that is
        not a run directory, and when a resumed run was started with different options.
        """
        run = cls(path)
        p = run.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--run-dir {p} is a file; give a folder path")
        occupied = p.is_dir() and any(f.name != LOCK for f in p.iterdir())
        if resume:
            if not run.config_path.is_file():
                raise RunDirError(f"nothing to resume in {p}: it has no config.json; start the search without --resume")
            run._lock()
            run._load(config)
            return run
        if occupied:
            if not force:
                raise RunDirError(f"run directory {p} already holds a run; pass --resume to go on with it or --force to start over")
            if not run.config_path.is_file():
                raise RunDirError(f"{p} is not empty and is not a uniprune run directory (no config.json); refusing to delete it with --force")
            run._lock()
            for name in RUN_FILES:
                (p / name).unlink(missing_ok=True)
            shutil.rmtree(run.tb_dir, ignore_errors=True)
        p.mkdir(parents=True, exist_ok=True)
        if run._lock_file is None:
            run._lock()
        write_json_atomic(run.config_path, dict(config))
        run.state = {"episodes": 0, "best_reward": None, "best_episode": None, "seconds": 0.0}
        write_json_atomic(run.state_path, run.state)
        return run

    def _load(self, config: Mapping[str, Any]) -> None:
        fix = "the run directory is damaged: start over with --force"
        stored = read_json(self.config_path, RunDirError, fix)
        self.state = read_json(self.state_path, RunDirError, fix) if self.state_path.is_file() else {}
        if not isinstance(stored, dict) or not isinstance(self.state, dict) or not isinstance(self.state.get("episodes", 0), int):
            raise RunDirError(f"{self.path}: config.json and state.json must hold JSON objects (state.json with an integer "
                              "'episodes'); the run directory is damaged: start over with --force")
        changed = sorted(k for k in set(stored) | set(config) if k not in RESUMABLE_CHANGES and stored.get(k) != config.get(k))
        if changed:
            shown = ", ".join(f"--{k.replace('_', '-')} {stored.get(k)!r} -> {config.get(k)!r}" for k in changed[:4])
            raise RunDirError(f"cannot resume {self.path} with different options ({shown}); use the run's options or a new --run-dir")
        self.state.setdefault("episodes", 0)
        rows = self._read_rows()
        if len(rows) < self.episodes_done:
            raise RunDirError(f"{self.episodes_path} holds {len(rows)} episode rows but state.json records "
                              f"{self.episodes_done}: the file was cut short; restore it, or start over with --force")
        self.rows = rows[: self.episodes_done]  # a row written just before a kill, after the last state: played again
        merged = dict(stored)
        merged.update({k: v for k, v in config.items() if k in RESUMABLE_CHANGES})
        # written with the first episode of this run, so a resume that fails before it leaves config.json as it was
        self._config_update = merged if merged != stored else None

    def _read_rows(self) -> list[dict[str, Any]]:
        path = self.episodes_path
        if not path.is_file():
            return []
        with path.open(newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]

    def record_episode(self, row: Mapping[str, Any]) -> None:
        """Append one episode's row and rewrite ``episodes.csv``."""
        self.rows.append({k: row.get(k, "") for k in EPISODE_COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(EPISODE_COLUMNS))
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.episodes_path, buf.getvalue())

    def save_state(self, **updates: Any) -> None:
        """Update and write ``state.json`` (the resume point; write it after the episode's other files)."""
        self.state.update(updates)
        if self._config_update is not None:
            write_json_atomic(self.config_path, self._config_update)
            self._config_update = None
        write_json_atomic(self.state_path, self.state)

    def column(self, key: str) -> Sequence[float]:
        """One numeric column of the episodes so far."""
        return [float(r[key]) for r in self.rows if r.get(key) not in ("", None)]
