"""Choosing an ensemble on validation predictions, and scoring probabilities.

:func:`greedy_selection` is ensemble selection from a library of models
(Caruana, Niculescu-Mizil, Crew and Ksikes, 2004), the last stage of
auto-sklearn and AutoGluon: start empty, and at each of at most
``max_picks`` rounds add the candidate (with replacement: one may be
picked again, which raises its weight) whose addition gives the lowest
validation cross-entropy of the averaged probabilities; keep the best
prefix of picks. It reads only the validation predictions and labels it is
given, so it cannot see a test row.

:func:`calibration_error` is the expected calibration error (Naeini et al.
2015; Guo et al. 2017): predictions binned by their confidence in 15
equal-width bins, the mean over bins of ``|accuracy - confidence|``
weighted by each bin's share of the examples.
"""

from __future__ import annotations

import numpy as np

from lowtf import _checks

BINS = 15


def cross_entropy(probabilities, y) -> float:
    """Mean cross-entropy of probabilities ``[n, logits]`` (1 logit: sigmoid)."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(y)
    tiny = np.finfo(np.float32).tiny
    if p.shape[-1] == 1:
        p1 = np.clip(p[:, 0], tiny, 1.0 - 1e-7)
        return float(-np.mean(np.where(y == 1, np.log(p1), np.log1p(-p1))))
    picked = p[np.arange(len(y)), y.astype(np.int64)]
    return float(-np.mean(np.log(np.maximum(picked, tiny))))


def accuracy(probabilities, y) -> float:
    """Share of examples whose most probable class is the label."""
    return float(np.mean(_predicted(np.asarray(probabilities)) == np.asarray(y)))


def calibration_error(probabilities, y, bins: int = BINS) -> float:
    """Expected calibration error of probabilities ``[n, logits]`` (1 logit: sigmoid).

    The confidence of a prediction is the probability of its predicted
    class (for one sigmoid logit, ``max(p, 1 - p)``); bins are
    ``[0, 1/bins), ..., [(bins-1)/bins, 1]``.
    """
    _checks.positive_int("bins", bins)
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(y)
    if p.shape[-1] == 1:
        confidence = np.maximum(p[:, 0], 1.0 - p[:, 0])
    else:
        confidence = p.max(axis=-1)
    hits = _predicted(p) == y
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(hits[members].mean() - confidence[members].mean())
    return float(error)


def greedy_selection(probabilities, y, max_picks: int) -> np.ndarray:
    """Caruana's forward selection with replacement; each candidate's weight.

    Args:
      probabilities: the candidates' validation probabilities,
        ``[candidates, n, logits]``.
      y: the validation labels ``[n]``.
      max_picks: the most picks (>= 1); a candidate picked twice counts twice.

    Returns:
      ``[candidates]`` weights summing to 1: each one's share of the best
      prefix of picks (ties go to the lower index, so the result is the same
      on every machine for the same inputs).
    """
    counts = greedy_picks(probabilities, y, max_picks)
    return counts / counts.sum()


def greedy_picks(probabilities, y, max_picks: int) -> np.ndarray:
    """How often :func:`greedy_selection` picks each candidate (``[candidates]`` ints).

    The first pick is the candidate of the lowest cross-entropy alone, and
    the prefix kept is the best one, so the ensemble's cross-entropy on
    these rows is never above the best single candidate's.
    """
    _checks.positive_int("max_picks", max_picks)
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 3 or p.shape[1] != len(y):
        raise ValueError(
            f"`probabilities` must be [candidates, n, logits] with n = {len(y)} "
            f"labels; got shape {p.shape}"
        )
    counts = np.zeros(len(p), np.int64)
    total = np.zeros(p.shape[1:])
    best_score, best_counts = np.inf, None
    for pick in range(1, max_picks + 1):
        scores = [cross_entropy((total + candidate) / pick, y) for candidate in p]
        choice = int(np.argmin(scores))
        counts[choice] += 1
        total += p[choice]
        if scores[choice] < best_score:
            best_score, best_counts = scores[choice], counts.copy()
    return best_counts


def out_of_fold(fold_probabilities, fold_rows, n: int) -> np.ndarray:
    """Every row's prediction by the fold model that did not train on it.

    With k-fold cross-validation each row is held out by exactly one fold;
    that fold's model predicts it. These ``[n, logits]`` predictions are a
    configuration's candidate for :func:`greedy_selection` (with the
    training labels): a model library scored without a validation split
    (Caruana et al. 2006, "Getting the most out of ensemble selection").

    Args:
      fold_probabilities: per fold, its model's probabilities on its
        held-out rows, ``[len(fold_rows[f]), logits]``.
      fold_rows: per fold, the indices (into ``range(n)``) of its held-out rows.
      n: the rows in all.

    Raises:
      ValueError: a row held out by no fold or by two, or shapes that disagree.
    """
    _checks.positive_int("n", n)
    if len(fold_probabilities) != len(fold_rows) or not fold_rows:
        raise ValueError(
            f"`fold_probabilities` ({len(fold_probabilities)}) and `fold_rows` "
            f"({len(fold_rows)}) must give one entry per fold, at least one"
        )
    rows = np.concatenate([np.asarray(r, np.int64) for r in fold_rows])
    held = np.bincount(rows, minlength=n) if rows.size and rows.min() >= 0 else None
    if held is None or len(held) != n or (held != 1).any():
        raise ValueError(
            f"`fold_rows` must hold out each of the {n} rows exactly once (k-fold "
            "validation rows); some row is held out twice, never, or is out of range"
        )
    first = np.asarray(fold_probabilities[0])
    out = np.empty((n, *first.shape[1:]), first.dtype)
    for f, (p, r) in enumerate(zip(fold_probabilities, fold_rows)):
        p = np.asarray(p)
        if p.shape != (len(r), *first.shape[1:]):
            raise ValueError(
                f"`fold_probabilities[{f}]` has shape {p.shape}; its fold holds out "
                f"{len(r)} rows of {first.shape[1:]} probabilities"
            )
        out[np.asarray(r, np.int64)] = p
    return out


def _predicted(p: np.ndarray) -> np.ndarray:
    if p.shape[-1] == 1:
        return (p[:, 0] > 0.5).astype(np.int64)
    return p.argmax(axis=-1)
