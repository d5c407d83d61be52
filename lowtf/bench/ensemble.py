"""The ensemble group of ``bin/bench --ensemble``: one stacked prediction vs K models.

For each model and K it times the probabilities of a batch of rows from
an :class:`lowtf.Ensemble` of K members (one compiled call: the stacked
forward pass and the weighted mean) against the K member models called in
turn (each its own compiled call) and their probabilities averaged, the
way a user without lowtf's ensembles predicts. Both are compiled with XLA
and timed in turn within each repeat (medians), after a warm-up call each.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf

from lowtf import _checks, ensemble, models

ROWS = 1000


def run_ensemble(model: str, members: int, *, rows: int = ROWS, repeats: int = 20) -> dict:
    """One record: ``ensemble_ms``, ``separate_ms`` and their ratio ``speedup``."""
    _checks.positive_int("members", members)
    _checks.positive_int("repeats", repeats)
    x = np.random.RandomState(0).randn(rows, 28).astype(np.float32)
    singles = [models.mlp(model, seed=k) for k in range(members)]
    for single in singles:
        single(x[:1])
    stacked = ensemble.Ensemble(singles)
    together = tf.function(stacked.probabilities, jit_compile=True)
    calls = [
        tf.function(lambda x, m=m: tf.sigmoid(m(x, training=False)), jit_compile=True)
        for m in singles
    ]

    def separate(x):
        return np.mean([call(x).numpy() for call in calls], axis=0)

    x = tf.constant(x)
    np.testing.assert_allclose(  # the same predictions, to float rounding
        together(x).numpy(), separate(x), atol=1e-5
    )
    times = {"ensemble": [], "separate": []}
    for _ in range(repeats):
        start = time.perf_counter()
        together(x).numpy()
        times["ensemble"].append(time.perf_counter() - start)
        start = time.perf_counter()
        separate(x)
        times["separate"].append(time.perf_counter() - start)
    ensemble_ms = 1000 * statistics.median(times["ensemble"])
    separate_ms = 1000 * statistics.median(times["separate"])
    return {
        "model": model,
        "members": members,
        "rows": rows,
        "ensemble_ms": ensemble_ms,
        "separate_ms": separate_ms,
        "speedup": separate_ms / ensemble_ms,
    }
