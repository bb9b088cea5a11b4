"""The project's error types: one per kind of mistake a user can make.

Every message is one line that says what was expected, what came, and how to fix it. The CLI prints
``uniprune <verb>: error: <message>`` for any :class:`UnipruneError` and exits with status 2, so these
never reach a user as a traceback.
"""

from __future__ import annotations


class UnipruneError(Exception):
    """Base of every error that is the user's to fix (bad input, not a bug)."""


class ConfigError(UnipruneError, ValueError):
    """An option has a value out of its range, or options contradict each other (an impossible budget)."""


class DataError(UnipruneError, ValueError):
    """A dataset is unknown, its path is missing, or its files are not in the expected format."""


class ModelError(UnipruneError, ValueError):
    """A model name is unknown, a factory cannot be imported, or a layer type is not supported."""


class CheckpointError(UnipruneError, ValueError):
    """A checkpoint cannot be read, or its keys or shapes do not fit the model."""


class PolicyError(UnipruneError, ValueError):
    """A policy (``policy.json``) is malformed or does not fit the model it is applied to."""


class RunDirError(UnipruneError, ValueError):
    """A run directory is missing, incomplete, or would be overwritten without ``--resume``/``--force``."""


class NonFiniteError(UnipruneError, ValueError):
    """A tensor holds NaN or inf: training diverged (a loss, weight or BatchNorm statistic), so nothing is written."""


class KernelBuildError(UnipruneError, RuntimeError):
    """The native sparse kernels could not be compiled or loaded on this machine."""


class NotAvailableError(UnipruneError, RuntimeError):
    """A feature exists in the interface but is not available here (for example CUDA without a GPU)."""
