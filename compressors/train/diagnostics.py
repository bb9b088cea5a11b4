"""Whether a fine-tune ended near convergence, in words a user can act on.

:func:`convergence_warnings` reads the diagnostics :func:`.finetune.finetune` returns (ADMM's primal residual
at the end of its phase, the validation accuracy just before and after the hard projection, the best epoch,
the time budget's verdict) and says, one line each, what looks unfinished and which option to raise. The
thresholds are where a short run's figures have told a converged run from one that was not: ADMM's residual
falls under a few hundredths once the weights sit near the structure, and a projection that costs more than a
few points (or a final accuracy far below the dense model's) means more epochs would have paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: ADMM's primal residual ``||W - Z|| / ||W||`` above which the weights were not yet near the structure.
RESIDUAL_LIMIT = 0.05
#: Validation accuracy lost at the hard projection (fraction, 0.05 = 5 points) that says ADMM had not converged.
PROJECTION_DROP = 0.05
#: Final validation accuracy this far below the dense model's (fraction) is worth a warning.
FINAL_GAP = 0.05
#: Validation accuracy still rising this much (fraction) in the last epoch: more epochs would have paid.
STILL_RISING = 0.01

#: The options each warning names (the CLI's flags; a caller with other names passes its own).
FLAGS = {"epochs": "--epochs", "rho": "--rho", "rho_growth": "--rho-growth", "time_budget": "--time-budget"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def convergence_warnings(result: Mapping[str, Any], *, dense_accuracy: float | None = None,
                         flags: Mapping[str, str] | None = None) -> list[str]:
    """One line per sign that ``result`` (what :func:`.finetune.finetune` returns) ended far from converged.

    Args:
        result: the driver's result: ``method``, ``accuracy``, ``projected_accuracy``, ``residual``,
            ``admm_epochs``, ``before_projection``, ``retrain_history``, ``epochs``, ``epochs_run``, ``time_budget``.
        dense_accuracy: the dense model's validation accuracy in [0, 1], when known (the reference the final
            accuracy is held against; without it, the accuracy before the projection).
        flags: the option names to name, keys as in :data:`FLAGS`.

    Returns the warnings (empty when nothing looks unfinished), each naming the option to raise.
    """
    names = {**FLAGS, **(flags or {})}
    budgeted = bool(result.get("time_budget"))
    more = names["time_budget"] if budgeted else names["epochs"]
    out: list[str] = []
    residual, admm_epochs = result.get("residual"), int(result.get("admm_epochs") or 0)
    if residual is not None and residual > RESIDUAL_LIMIT:
        out.append(f"ADMM's primal residual is {residual:.2f} after {_plural(admm_epochs, 'ADMM epoch')} (want < "
                   f"{RESIDUAL_LIMIT:g}): raise {more} or {names['rho_growth']}")
    before, projected = result.get("before_projection"), result.get("projected_accuracy")
    if before is not None and projected is not None and before - projected > PROJECTION_DROP:
        fix = f"{more} or {names['rho']}" if result.get("method") == "admm" else more
        out.append(f"the hard projection dropped validation accuracy from {_pct(before)} to {_pct(projected)}: the weights "
                   f"were far from the structure when it was imposed; raise {fix}")
    reference = dense_accuracy if dense_accuracy is not None else before
    final = result.get("accuracy")
    if reference is not None and final is not None and reference - final > FINAL_GAP:
        out.append(f"fine-tuning ended at {_pct(final)} validation accuracy, {100 * (reference - final):.1f} points below "
                   f"the dense model's {_pct(reference)}: raise {more}")
    history = [r for r in result.get("retrain_history") or [] if r.get("val_accuracy") is not None]
    if len(history) >= 2 and history[-1]["val_accuracy"] - history[-2]["val_accuracy"] > STILL_RISING:
        gain = 100 * (history[-1]["val_accuracy"] - history[-2]["val_accuracy"])
        out.append(f"validation accuracy was still rising at the end (+{gain:.1f} points in the last epoch): raise {more}")
    budget = result.get("time_budget") or {}
    if budget.get("stopped_early"):
        out.append(f"the time budget ended the run after {result.get('epochs_run')} of {result.get('epochs')} planned "
                   f"epochs (the machine ran slower than measured): raise {names['time_budget']}")
    return out
