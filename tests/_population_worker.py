"""Runs the fit_population of tests/test_population_fit.py's SIGKILL test.

Usage: python tests/_population_worker.py MODEL_DIR

Prints fit_population's progress lines (flushed), so that the test can
SIGKILL it at a step it chooses; the population is `population()` below, the
one the test also fits in process.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _fixtures  # noqa: E402  (this script's folder is first on sys.path)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import lowtf  # noqa: E402

SCHEDULE = dict(max_steps=120, eval_every=10, checkpoint_every=30, steps_per_call=7)


def population():
    """Four MLP members; member 3's learning rate (1e20) overflows its weights."""
    (x, y), _ = _fixtures.noisy_split(240, 0, 5, seed=9, weights=(1.0, -1.0))
    rows, val = np.arange(200), np.arange(200, 240)
    return lowtf.Population(
        x,
        y,
        models=lambda k: lowtf.mlp((16,), dropout=0.2, seed=k),
        train_rows=[rows] * 4,
        val_rows=[val] * 4,
        seeds=[0, 1, 2, 3],
        learning_rate=[1e-3, 3e-3, 1e-2, 1e20],
        optimizer=tf.keras.optimizers.Adam(1e-3),
        batch_size=25,
        patience=40,
        jit_compile=False,
    )


def fit(model_dir, log=print):
    pop = population()
    result = lowtf.fit_population(pop, model_dir=model_dir, log=log, **SCHEDULE)
    return pop, result


if __name__ == "__main__":
    fit(sys.argv[1], log=lambda line: print(line, flush=True))
