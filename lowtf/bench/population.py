"""The population group of ``bin/bench --population``: K members in one step vs K steps.

For each (model, K) it times member-steps per second of a
:class:`lowtf.Population` of K members (full regularization, seeds 0..K-1,
batch 500 per member, every member on the same 9,000 training rows of the
benchmark's 10,000) against K single-model :class:`lowtf.TrainStep`s of the
same members whose ``run(steps)`` calls go back to back (both under XLA), and
against K Keras ``Model.fit`` runs of the same members (:func:`keras_peer`:
same initial weights, L2, dropout and max-norm), also back to back.

Beside the speeds, each record holds the memory the two forms hold, counted
from shapes and dtypes: the data (features, labels and row indices: once for
the population, once per single) and the variables (stacked weights, their
best copies, optimizer slots and per-member bookkeeping for the population;
weights and optimizer slots per single).
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import tensorflow as tf

from lowtf import _checks, population
from lowtf.bench.configs import (
    LEARNING_RATE,
    Config,
    make_data,
    make_model,
)
from lowtf.bench.keras_peer import KerasRunner
from lowtf.data import InMemoryBatches
from lowtf.train import step as step_lib

BATCH_SIZE = 500
TRAIN_ROWS = 9_000
KERAS_RUNS = 4  # Keras runs timed per record by default (see run_population)
MIB = 2**20


def _interleaved(calls, repeats: int) -> list[float]:
    """Median seconds of each of ``calls`` over ``repeats``, taken in turn.

    One warm-up call each, then every repeat times each call once, so a
    change in the machine's load falls on all of them alike (timing one
    form's repeats and then the other's does not).
    """
    for call in calls:
        call()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, kept in zip(calls, times):
            start = time.perf_counter()
            call()
            kept.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def nbytes(values) -> int:
    """Bytes of tensors or variables (TensorFlow or Keras), from shapes and dtypes."""
    return sum(
        math.prod(int(d) for d in v.shape) * tf.as_dtype(v.dtype).size for v in values
    )


def run_population(
    model: str,
    members: int,
    *,
    steps: int = 100,
    repeats: int = 3,
    keras_runs: int = KERAS_RUNS,
    single_runs: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """One record: member-steps/s of a population, of single runs and of Keras runs.

    Runs back to back keep their steady-state member-steps per second
    whatever their number, so the singles and the Keras runs may be timed
    for the first few members only and stand for all K (their build times
    would otherwise dominate the bench at large K: a Keras run's compile and
    first epoch, a single's XLA compilation).

    Args:
      model: an MLP preset (tiny, small, medium, large).
      members: the population size K.
      steps: steps per ``run`` call (the population's and each single's);
        each Keras ``fit`` times about as many steps (whole epochs) after one
        warm-up epoch. Default 100.
      repeats: timed repeats, median taken (default 3).
      keras_runs: Keras runs timed, at most K (default 4); 0 skips Keras.
      single_runs: single runs timed, at most K (default None: all K).
      batch_size: examples per member per step, the singles' and the Keras
        runs' batch (default 500, the issue's benchmark; bin/sweep trains
        with 128).

    Returns:
      A JSON-ready dict: ``model``, ``members``, the member-steps per second
      ``population_member_steps_per_s``, ``single_member_steps_per_s`` and
      ``keras_member_steps_per_s`` (None without Keras), the speed-ups
      ``speedup_vs_singles`` and ``speedup_vs_keras``, the runs timed
      (``single_runs_timed``, ``keras_runs_timed``), build + compile seconds
      (the population's; per single and per Keras run, mean of those
      timed), and bytes held: ``data_bytes_*`` and ``variable_bytes_*``
      for the population and for K singles.

    Raises:
      ValueError: a bad ``members``, ``steps``, ``repeats``, ``keras_runs``
        or ``single_runs``.
    """
    _checks.positive_int("members", members)
    _checks.positive_int("steps", steps)
    _checks.positive_int("repeats", repeats)
    _checks.non_negative_int("keras_runs", keras_runs)
    _checks.positive_int("batch_size", batch_size)
    if batch_size > TRAIN_ROWS:
        raise ValueError(f"`batch_size` ({batch_size}) exceeds the {TRAIN_ROWS} rows")
    if single_runs is not None:
        _checks.positive_int("single_runs", single_runs)
    singles_timed = members if single_runs is None else min(members, single_runs)
    keras_timed = min(members, keras_runs)

    x, y = make_data(model)
    train, val = np.arange(TRAIN_ROWS), np.arange(TRAIN_ROWS, len(x))
    start = time.perf_counter()
    pop = population.Population(
        x,
        y,
        train_rows=[train] * members,
        val_rows=[val] * members,
        seeds=range(members),
        # Member k is the single run's model: the same builder and seed.
        models=lambda k: make_model(model, "full", seed=k),
        batch_size=batch_size,
        optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
    )
    pop.run(1)
    pop_first_s = time.perf_counter() - start

    start = time.perf_counter()
    singles = []
    for k in range(singles_timed):
        single = step_lib.TrainStep(
            make_model(model, "full", seed=k),
            tf.keras.optimizers.Adam(LEARNING_RATE),
            data=InMemoryBatches(x[:TRAIN_ROWS], y[:TRAIN_ROWS], batch_size, seed=k),
            options=step_lib.StepOptions(seed=k),
        )
        single.run(1)
        singles.append(single)
    singles_first_s = (time.perf_counter() - start) / singles_timed

    def back_to_back():
        for single in singles:
            single.run(steps)["total_loss"].numpy()

    pop_s, singles_s = _interleaved(
        [lambda: pop.run(steps)["total_loss"], back_to_back], repeats
    )
    pop_rate = members * steps / pop_s
    single_rate = singles_timed * steps / singles_s
    keras_rate, keras_first_s = _keras(
        x, y, model, keras_timed, steps, repeats, batch_size
    )

    one = singles[0]  # every single holds the same shapes
    return {
        "model": model,
        "members": members,
        "steps_per_call": steps,
        "batch_size": batch_size,
        "population_member_steps_per_s": pop_rate,
        "single_member_steps_per_s": single_rate,
        "keras_member_steps_per_s": keras_rate,
        "speedup_vs_singles": pop_rate / single_rate,
        "speedup_vs_keras": pop_rate / keras_rate if keras_rate else None,
        "single_runs_timed": singles_timed,
        "keras_runs_timed": keras_timed,
        "population_first_call_s": pop_first_s,
        "single_first_call_s": singles_first_s,
        "keras_first_call_s": keras_first_s,
        # The features and labels once, and each member's row indices.
        "data_bytes_population": nbytes([pop.x, pop.y])
        + sum(r.nbytes for r in [*pop.train_rows, *pop.val_rows]),
        # Each single's InMemoryBatches: its own copy of the training rows,
        # its permutation and position.
        "data_bytes_singles": members
        * nbytes([one.data.x, one.data.y, *one.data.variables]),
        # Stacked weights, best copies, optimizer slots, stopping state.
        "variable_bytes_population": nbytes(pop.variables),
        "variable_bytes_singles": members
        * nbytes([*one.model.variables, *one.optimizer.variables]),
    }


def _keras(x, y, model: str, runs: int, steps: int, repeats: int, batch_size: int):
    """(member-steps/s, mean build + first-epoch s) of ``runs`` Keras runs, or Nones."""
    if not runs:
        return None, None
    config = Config(model, batch_size, "full")
    data = (x[:TRAIN_ROWS], y[:TRAIN_ROWS])
    steps_per_epoch = TRAIN_ROWS // batch_size
    start = time.perf_counter()
    runners = []
    for k in range(runs):
        # jit_compile=False, one epoch per execution: Keras at its fastest on
        # this project's CPU in the single-model group (BENCHMARKS.md).
        runner = KerasRunner(
            config,
            data,
            jit_compile=False,
            steps_per_execution=steps_per_epoch,
            seed=k,
        )
        # One warm-up epoch, then about `steps` steps in whole epochs.
        runner.epochs = 1 + max(1, math.ceil(steps / steps_per_epoch))
        runners.append(runner)
    first_s = (time.perf_counter() - start) / runs
    # Per repeat, each run in turn: seconds per step summed over the runs.
    totals = [sum(r.repeat() for r in runners) for _ in range(repeats)]
    return runs / statistics.median(totals), first_s


def table(records: list[dict]) -> str:
    """The group as a text table: speeds, speed-ups, build seconds, memory (MiB).

    A note under the table says which records timed fewer runs than K.
    """
    header = (
        f"{'model':8} {'K':>3} {'B':>4} {'pop m-steps/s':>14} {'single m-steps/s':>17} "
        f"{'keras m-steps/s':>16} {'x single':>9} {'x keras':>8} "
        f"{'build s pop/single/keras':>25} {'data MiB pop/singles':>21} "
        f"{'vars MiB pop/singles':>21}"
    )
    lines = [header]
    notes = []
    for r in records:
        keras = r["keras_member_steps_per_s"]
        keras_first = r["keras_first_call_s"]
        build = (
            f"{r['population_first_call_s']:.1f}/{r['single_first_call_s']:.1f}/"
            + ("-" if keras_first is None else f"{keras_first:.1f}")
        )
        data = f"{r['data_bytes_population'] / MIB:.1f}/{r['data_bytes_singles'] / MIB:.1f}"
        variables = (
            f"{r['variable_bytes_population'] / MIB:.2f}/"
            f"{r['variable_bytes_singles'] / MIB:.2f}"
        )
        if keras is None:
            keras_rate, keras_speedup = f"{'-':>16}", f"{'-':>8}"
        else:
            keras_rate = f"{keras:>16,.0f}"
            keras_speedup = f"{r['speedup_vs_keras']:>7.1f}x"
        lines.append(
            f"{r['model']:8} {r['members']:>3} {r['batch_size']:>4} "
            f"{r['population_member_steps_per_s']:>14,.0f} "
            f"{r['single_member_steps_per_s']:>17,.0f} {keras_rate} "
            f"{r['speedup_vs_singles']:>8.1f}x {keras_speedup} "
            f"{build:>25} {data:>21} {variables:>21}"
        )
        for side in ("single", "keras"):
            timed = r[f"{side}_runs_timed"]
            if 0 < timed < r["members"]:
                notes.append(f"{r['model']} K={r['members']}: {timed} {side} runs")
    if notes:
        lines.append(
            "fewer runs timed than K, standing for all K (runs back to back: "
            "member-steps/s does not depend on K): " + "; ".join(notes)
        )
    return "\n".join(lines)
