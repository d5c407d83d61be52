"""Scores of configurations from their members' results: folds, gaps, ranking."""

from __future__ import annotations

import math

import numpy as np

# A member diverged when one of these is not finite after step 0 (at step 0
# the training means do not exist yet and are NaN by design).
_WATCHED = ("train_cross_entropy", "val_cross_entropy", "total_loss")


def fold_score(values) -> tuple[float, float]:
    """Mean and standard deviation (ddof=0: the spread of these folds) of ``values``."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("`values` is empty: a configuration needs at least one fold")
    return float(values.mean()), float(values.std())


def diverged(best_value: float, history) -> bool:
    """Whether a member's loss went NaN or Inf, or it never had a finite best."""
    if not math.isfinite(best_value):
        return True
    for row in history:
        if row["step"] == 0:
            continue
        for name in _WATCHED:
            value = row.get(name)
            if value is None or not math.isfinite(value):
                return True
    return False


def gap_at(history, step: int) -> float | None:
    """Training minus validation cross-entropy at ``step`` (None where unknown)."""
    for row in history:
        if row["step"] == step:
            train, val = row.get("train_cross_entropy"), row.get("val_cross_entropy")
            if train is None or val is None:
                return None
            gap = train - val
            return gap if math.isfinite(gap) else None
    return None


def mean_curve(histories) -> dict:
    """Per step, the mean over folds of the train and validation cross-entropy.

    A fold that stopped earlier counts only up to its last evaluation; a
    missing or non-finite value is None.
    """
    steps = sorted({row["step"] for h in histories for row in h})
    out = {"step": steps, "train": [], "val": []}
    for name, column in (
        ("train", "train_cross_entropy"),
        ("val", "val_cross_entropy"),
    ):
        for s in steps:
            values = [
                row[column]
                for h in histories
                for row in h
                if row["step"] == s and row.get(column) is not None
            ]
            finite = [v for v in values if math.isfinite(v)]
            out[name].append(float(np.mean(finite)) if finite else None)
    return out


def rank(rows: list[dict], maximize: bool) -> list[dict]:
    """Rows sorted best first: by score, then smaller spread; diverged ones last."""

    def order(row):
        if row["status"] != "ok":
            return (1, 0.0, 0.0, row["key"])
        score = -row["score_mean"] if maximize else row["score_mean"]
        return (0, score, row["score_std"], row["key"])

    return sorted(rows, key=order)
