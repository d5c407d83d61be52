"""What each member has of its own, checked at the door, and K-fold row indices."""

from __future__ import annotations

import numbers

import numpy as np

from lowtf import _checks


def vector(name: str, value, size: int, check) -> np.ndarray:
    """``value`` as a length-``size`` vector, each entry passed through ``check``.

    A scalar is the same value for every member.

    Raises:
      ValueError: a sequence of another length than ``size``, or a bad entry.
    """
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        values = [value] * size
    else:
        values = list(np.asarray(value).reshape(-1).tolist())
        if len(values) != size:
            raise ValueError(
                f"`{name}` has {len(values)} values but the population has {size} "
                f"members (the length of `seeds`); give one value per member or a "
                "single number for all"
            )
    for k, v in enumerate(values):
        check(f"{name}[{k}]", v)
    return np.asarray(values)


def rows(name: str, value, size: int, n: int) -> list[np.ndarray]:
    """Per-member row indices into the ``n`` shared examples, one list per member.

    Raises:
      ValueError: not one list per member, an empty list, or an index outside
        ``[0, n)``.
    """
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = [value]  # one member's rows given bare
    members = list(value)
    if len(members) != size:
        raise ValueError(
            f"`{name}` has {len(members)} lists of rows but the population has "
            f"{size} members; give one list of row indices per member"
        )
    out = []
    for k, r in enumerate(members):
        r = np.asarray(r)
        if r.ndim != 1 or not (r.size == 0 or np.issubdtype(r.dtype, np.integer)):
            raise ValueError(
                f"`{name}[{k}]` must be a 1-D array of integer row indices"
            )
        if r.size == 0:
            raise ValueError(
                f"`{name}[{k}]` is empty: member {k} needs at least one row"
            )
        if r.min() < 0 or r.max() >= n:
            raise ValueError(
                f"`{name}[{k}]` holds row {int(r.min() if r.min() < 0 else r.max())}, "
                f"outside the {n} rows of x"
            )
        out.append(r.astype(np.int64))
    return out


def check_no_leak(train_rows, val_rows) -> None:
    """Refuses a member whose validation rows are also among its training rows."""
    for k, (t, v) in enumerate(zip(train_rows, val_rows)):
        shared = np.intersect1d(t, v)
        if shared.size:
            raise ValueError(
                f"member {k}'s validation rows leak into its training rows "
                f"({shared.size} shared, e.g. row {int(shared[0])}); give it "
                "disjoint `train_rows[k]` and `val_rows[k]`, e.g. from "
                "lowtf.population.k_fold"
            )


def k_fold(y, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold row indices: ``[(train_rows, val_rows)] * k``.

    Each class's rows are shuffled (``np.random.RandomState(seed)``) and dealt
    to the folds in turn, so every fold holds each class in about its share.
    Fold ``i`` validates on its own rows and trains on all the others; the
    validation folds are disjoint and cover every row once.

    Args:
      y: labels ``[n]``.
      k: number of folds, ``2 <= k <= n``.
      seed: seed of the shuffle (default 0).

    Raises:
      ValueError: a bad ``k`` or ``y``.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"`y` must be a vector of labels, got shape {y.shape}")
    _checks.positive_int("k", k)
    _checks.non_negative_int("seed", seed)
    if not 2 <= k <= len(y):
        raise ValueError(f"`k` ({k}) must be between 2 and the {len(y)} rows of y")
    rs = np.random.RandomState(seed)
    fold = np.empty(len(y), np.int64)
    start = 0
    for label in np.unique(y):
        where = np.flatnonzero(y == label)
        rs.shuffle(where)
        # Continue the deal where the previous class ended: small classes
        # then do not all land in fold 0.
        fold[where] = (start + np.arange(len(where))) % k
        start = (start + len(where)) % k
    folds = [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]
    check_no_leak([t for t, _ in folds], [v for _, v in folds])
    return folds
