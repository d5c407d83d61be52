"""The population group of ``bin/bench --population``: K members in one step vs K steps.

For each (model, K) it times member-steps per second of a
:class:`lowtf.Population` of K members (full regularization, seeds 0..K-1,
batch 500 per member, every member on the same 9,000 training rows of the
benchmark's 10,000) against K single-model :class:`lowtf.TrainStep`s of the
same members whose ``run(steps)`` calls go back to back. Both under XLA; the
data is held once by the population and once per step by the singles.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf

from lowtf import population
from lowtf.bench.configs import (
    DROPOUT,
    L2,
    LEARNING_RATE,
    MAXNORM,
    make_data,
    make_model,
)
from lowtf.data import InMemoryBatches
from lowtf.train import step as step_lib

BATCH_SIZE = 500
TRAIN_ROWS = 9_000


def _timed(call, repeats: int) -> float:
    """Median seconds of ``call()`` over ``repeats`` (after one warm-up call)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_population(
    model: str, members: int, *, steps: int = 100, repeats: int = 3
) -> dict:
    """One record: member-steps/s of a population and of back-to-back single runs."""
    x, y = make_data(model)
    train, val = np.arange(TRAIN_ROWS), np.arange(TRAIN_ROWS, len(x))
    start = time.perf_counter()
    pop = population.Population(
        x,
        y,
        train_rows=[train] * members,
        val_rows=[val] * members,
        seeds=range(members),
        model=model,
        l2=L2,
        dropout=DROPOUT,
        maxnorm=MAXNORM,
        batch_size=BATCH_SIZE,
        optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
    )
    pop.run(1)
    pop_first_s = time.perf_counter() - start
    pop_s = _timed(lambda: pop.run(steps)["total_loss"], repeats)

    start = time.perf_counter()
    singles = []
    for k in range(members):
        single = step_lib.TrainStep(
            make_model(model, "full", seed=k),
            tf.keras.optimizers.Adam(LEARNING_RATE),
            data=InMemoryBatches(x[:TRAIN_ROWS], y[:TRAIN_ROWS], BATCH_SIZE, seed=k),
            options=step_lib.StepOptions(seed=k),
        )
        single.run(1)
        singles.append(single)
    singles_first_s = time.perf_counter() - start

    def back_to_back():
        for single in singles:
            single.run(steps)["total_loss"].numpy()

    singles_s = _timed(back_to_back, repeats)
    return {
        "model": model,
        "members": members,
        "steps_per_call": steps,
        "batch_size": BATCH_SIZE,
        "population_member_steps_per_s": members * steps / pop_s,
        "single_member_steps_per_s": members * steps / singles_s,
        "speedup": singles_s / pop_s,
        "population_first_call_s": pop_first_s,
        "singles_first_calls_s": singles_first_s,
        "data_bytes_population": int(x.nbytes),
        "data_bytes_singles": int(x[:TRAIN_ROWS].nbytes) * members,
    }


def table(records: list[dict]) -> str:
    """The group as a text table."""
    lines = [
        f"{'model':8} {'K':>4} {'pop member-steps/s':>19} {'single member-steps/s':>22} "
        f"{'speed-up':>9} {'pop build+compile s':>20} {'singles build s':>16}"
    ]
    for r in records:
        lines.append(
            f"{r['model']:8} {r['members']:>4} {r['population_member_steps_per_s']:>19,.0f} "
            f"{r['single_member_steps_per_s']:>22,.0f} {r['speedup']:>8.1f}x "
            f"{r['population_first_call_s']:>20.1f} {r['singles_first_calls_s']:>16.1f}"
        )
    return "\n".join(lines)
