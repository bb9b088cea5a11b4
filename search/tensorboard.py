"""One TensorBoard logger for a run, with namespaced keys (``search/reward``, ``admm/residual``).

Its :meth:`TensorBoardLogger.log` has the ``log(key, value, step)`` shape the ADMM fine-tuner takes,
so every job writes through the same object into ``RUN/tb``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter, Logger
from torch.utils.tensorboard import SummaryWriter


class TensorBoardLogger:
    """Scalars, text and hyperparameters into ``log_dir``.

    ``purge_step``: on a resumed run, events at or after this step (left by an interrupted run) are
    dropped so curves do not double back.
    """

    def __init__(self, log_dir: str | os.PathLike, *, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    @staticmethod
    def _check(key: str) -> str:
        if "/" not in key:
            raise ValueError(f"TensorBoard keys are namespaced like 'search/reward', got {key!r}")
        return key

    def log(self, key: str, value: float, step: int) -> None:
        """One scalar ``key`` (namespaced, e.g. ``search/reward``) at integer ``step``."""
        self.writer.add_scalar(self._check(key), float(value), int(step))

    def log_many(self, values: Mapping[str, float], step: int) -> None:
        """Several scalars at one step."""
        for key, value in values.items():
            self.log(key, value, step)

    def text(self, key: str, markdown: str, step: int = 0) -> None:
        """A markdown text entry (tables render in TensorBoard's Text tab)."""
        self.writer.add_text(self._check(key), markdown, int(step))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The run's hyperparameters with its final metrics (TensorBoard's HParams tab), plus a text copy."""
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items() if v is not None}
        self.writer.add_hparams(clean, {self._check(k): float(v) for k, v in metrics.items()}, run_name=".")
        table = "| option | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in clean.items())
        self.text("search/hparams", table)

    def layer_actions(self, actions: Mapping[str, tuple], episode: int, *, curves: bool = False) -> None:
        """The best policy's per-layer (prune, unify, and block shape where searched) as a text table at step ``episode``.

        With ``curves`` (once, at the end of a run) also as scalars ``best_policy/prune`` and
        ``best_policy/unify`` over the layer index, which TensorBoard draws as the policy's profile.
        """
        rows = "\n".join(f"| {i} | {n} | {a[0]:.3f} | {a[1]:.3f} | {a[2] if len(a) > 2 else ''} |"
                         for i, (n, a) in enumerate(actions.items()))
        self.text("search/best_policy", f"best policy (episode {episode})\n\n| # | layer | prune | unify | block |\n"
                  f"| --- | --- | --- | --- | --- |\n{rows}", episode)
        if not curves:
            return
        for i, a in enumerate(actions.values()):
            self.writer.add_scalar("best_policy/prune", float(a[0]), i)
            self.writer.add_scalar("best_policy/unify", float(a[1]), i)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _SB3Writer(KVWriter):
    """stable-baselines3's logger output into a :class:`TensorBoardLogger` (its keys, e.g. ``train/critic_loss``,
    as they are; values SB3 excludes from TensorBoard, and non-numbers, are skipped)."""

    def __init__(self, tb: TensorBoardLogger) -> None:
        self.tb = tb

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if "tensorboard" in excluded or isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
                continue
            self.tb.log(key, float(value), step)

    def close(self) -> None:
        return None  # the TensorBoardLogger is closed by its owner


def sb3_logger(tb: TensorBoardLogger) -> Logger:
    """A stable-baselines3 :class:`Logger` writing into ``tb`` (hand it to ``model.set_logger``)."""
    return Logger(folder=None, output_formats=[_SB3Writer(tb)])
