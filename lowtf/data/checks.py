"""The checks a batch passes before the training step runs on it.

:class:`lowtf.TrainStep` runs them on the host, before the compiled call,
because inside it a bad batch fails late or not at all: under XLA a label
out of range or a NaN feature gives a NaN loss or a wrong one, not an error,
and a batch of another shape retraces and fails deep inside the graph. Each
check raises one ``ValueError`` that names the argument, the bad value and
the fix. :class:`lowtf.InMemoryBatches` and :func:`lowtf.fit` run the same
checks once on whole data sets (training and validation).

The per-batch checks read the batch in place and use comparisons and
``np.count_nonzero`` only, so that a valid batch costs a few microseconds
(see :meth:`lowtf.TrainStep.__call__`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def check_batch(x, y):
    """Refuses ``x``, ``y`` tensors that are not a batch of examples and its labels."""
    if x.shape.rank is not None and x.shape.rank < 2:
        raise ValueError(f"x must be a batch [batch, features...]; got shape {x.shape}")
    if y.shape.rank is not None and y.shape.rank != 1:
        raise ValueError(f"y must be a vector of labels [batch]; got shape {y.shape}")
    if x.shape[0] is not None and y.shape[0] is not None and x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")


def check_features(x, spec):
    """Refuses features unlike those the model was built for (``spec``)."""
    if not spec.is_compatible_with(x):
        raise ValueError(
            f"x has shape {x.shape} and dtype {x.dtype.name} but the model was built "
            f"for [batch, {', '.join(str(d) for d in spec.shape[1:])}] "
            f"{spec.dtype.name}; feed every batch at the same width and dtype"
        )


def check_shardable(what, batch, strategy):
    """Refuses a batch size the strategy's replicas cannot split evenly."""
    replicas = strategy.num_replicas_in_sync
    if batch is not None and batch % replicas:
        raise ValueError(
            f"{what} ({batch}) must be divisible by the {replicas} replicas of "
            f"the tf.distribute strategy; use a multiple of {replicas}"
        )


def on_host(raw, tensor):
    """The batch as a NumPy array when reading it is cheap, else None.

    A NumPy input is used as given and an eager tensor in host memory is
    read in place (``np.asarray`` shares its buffer; ``.numpy()`` would
    copy it); a tensor on an accelerator is not read (the copy back would
    stall the device), nor a symbolic one, which has no value yet.
    """
    if isinstance(raw, np.ndarray):
        return raw
    if tf.is_symbolic_tensor(tensor) or "CPU" not in tensor.device:
        return None
    return np.asarray(tensor)


def _labels_surely_valid(y, high) -> bool:
    """One cheap pass that clears labels in [0, high]; False means look closer.

    Comparisons and ``np.count_nonzero`` only: between two steps NumPy runs
    with cold caches, and each further kind of call (a ``max``, an ``all``)
    costs 10-20 us there, several times the arithmetic (see
    :meth:`lowtf.TrainStep.__call__`).
    """
    if y.dtype.kind in "iu":
        # Seen as unsigned, a negative label is huge: one test for both ends.
        return not np.count_nonzero(y.view(y.dtype.str.replace("i", "u")) > high)
    if y.dtype.kind == "f" and high == 1:
        # 0/1 labels iff every nonzero label is 1 (a NaN is nonzero, not 1).
        return np.count_nonzero(y) == np.count_nonzero(y == 1)
    return False


def check_labels(y, head, num_logits, name):
    """Refuses a label the head cannot take; ``y`` is a NumPy vector."""
    high = 1 if head == "sigmoid" else num_logits - 1
    if not y.size or _labels_surely_valid(y, high):
        return
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` holds labels of dtype {y.dtype} (the first is {y.flat[0]!r}); "
            "labels must be numbers: class indices, or 0/1 for a sigmoid head"
        )
    y = y.astype(np.int8) if y.dtype.kind == "b" else y
    whole = np.isfinite(y) & (y == np.round(y))
    valid = whole & (y >= 0) & (y <= high)
    if valid.all():
        return
    rows = np.flatnonzero(~valid)
    bad = y[rows]
    values = ", ".join(repr(v.item()) for v in np.unique(bad)[:4])
    expected = "0 or 1" if head == "sigmoid" else f"integers in [0, {num_logits})"
    if not whole[rows].all():
        fix = "labels are class indices: round or threshold them (e.g. y > 0.5)"
    elif (bad < 0).any():
        fix = "map them to 0, 1, ... first (e.g. np.unique(y, return_inverse=True)[1])"
    else:
        classes = int(bad.max()) + 1
        fix = (
            f"give the model {classes} classes (lowtf.mlp(..., num_classes={classes}))"
        )
    raise ValueError(
        f"label {bad[0].item()!r} is out of range in `{name}` (row {rows[0]}; "
        f"{len(rows)} of {y.size} labels are out, values {values}): the model's "
        f"{head} head with {num_logits} logit(s) takes labels that are {expected}; "
        f"{fix}"
    )


def check_finite(x, name):
    """Refuses NaN or Inf in floating-point features; ``x`` is a NumPy array."""
    # Exact, and no overflow warning as a test of the sum would give; the
    # count shares its code with the label check (see _labels_surely_valid).
    if x.dtype.kind != "f" or np.count_nonzero(np.isfinite(x)) == x.size:
        return
    bad = np.argwhere(~np.isfinite(x))
    where = ", ".join(str(i) for i in bad[0])
    rows = len(np.unique(bad[:, 0]))
    raise ValueError(
        f"`{name}` holds NaN or Inf: {name}[{where}] is {x[tuple(bad[0])].item()!r} "
        f"({rows} of {len(x)} rows); a non-finite feature makes the loss and then "
        f"every weight NaN: drop or impute those rows first"
    )
