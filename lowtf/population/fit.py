"""The reference loop of a population: cadence, checkpoints, best snapshots, resume.

:func:`fit_population` is to a :class:`~lowtf.population.Population` what
:func:`lowtf.fit` is to one model. It writes into ``model_dir``:

* ``ckpt/``: the "latest" checkpoints (a ``tf.train.CheckpointManager``)
  of all the population's state: stacked weights, optimizer slots and step,
  every member's best weights, early-stopping state, data position and
  running training means. Calling it again on the same ``model_dir``
  resumes from there and ends exactly as an uninterrupted run.
* ``best/``: the members' best weights as one snapshot, written under a
  fresh prefix each time a member improves; the pointer ``best.json`` moves
  to it only once it is complete (a temporary file renamed over it), so a
  crash leaves a readable snapshot. Read it with
  :func:`read_best_weights`.
* ``history.csv``: one row per member per evaluation: ``member`` and the
  columns of :class:`lowtf.train.metrics.Evaluation`.
* ``subsets.json``: the subsets a compacted run trained, each with the step
  it was built at, so that a resumed run trains the subset the
  uninterrupted run trained at that step (the members a batched product
  holds can change its rounding).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import time

import numpy as np
import tensorflow as tf

from lowtf import _checks, _files
from lowtf.population.population import Population
from lowtf.train.metrics import COLUMNS

HISTORY_COLUMNS = ("member", *COLUMNS)
POINTER = "best.json"
SUBSETS = "subsets.json"
_SNAPSHOT = re.compile(r"^best-(\d+)-(\d+)([._].*)?$")


@dataclasses.dataclass
class MemberResult:
    """One member's outcome.

    Attributes:
      best_step: step of its best evaluation.
      best_value: the monitored metric there.
      stop_step: the step it stopped at (its patience ran out), or the
        population's last step.
      stop_reason: ``"patience"`` or ``"max_steps"``.
      history: its evaluation rows (the fields of ``Evaluation``), earlier
        sessions included.
    """

    best_step: int
    best_value: float
    stop_step: int
    stop_reason: str
    history: list


@dataclasses.dataclass
class PopulationResult:
    """What :func:`fit_population` reports.

    Attributes:
      members: one :class:`MemberResult` per member.
      monitor: the monitored metric's name.
      last_step: the global step when the population stopped.
      wall_seconds: wall time of this call.
    """

    members: list
    monitor: str
    last_step: int
    wall_seconds: float


def fit_population(
    population: Population,
    *,
    model_dir: str,
    max_steps: int = 10000,
    eval_every: int = 100,
    steps_per_call: int = 100,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    compact: bool = True,
    log=print,
) -> PopulationResult:
    """Trains every member with step-based early stopping; resumes from ``model_dir``.

    The population stops when every member's patience has run out or at
    ``max_steps``; each member then holds its best weights in
    ``population.member(k)``.

    Args:
      population: a :class:`Population` (its members' hyper-parameters,
        rows and early-stopping settings).
      model_dir: where checkpoints, best snapshots, history.csv and
        subsets.json go; an existing one is resumed.
      max_steps: stop at this step at the latest (default 10000).
      eval_every: evaluate every member every this many steps (default 100).
      steps_per_call: steps per compiled call at most (default 100); calls
        are cut to land on evaluation and checkpoint steps.
      checkpoint_every: save the latest checkpoint every this many steps
        (default 1000), and when training ends.
      keep_checkpoints: how many latest checkpoints to keep (default 3).
      compact: once at most half the members still train (populations of
        4 or more), train a
        :meth:`Population.subset` of those instead (default True): stopped
        members are no longer computed, each member's steps are unchanged
        (to float rounding: XLA may round a product of another member count
        differently; the subsets, and so the numbers, are the same on every
        rerun, and a resumed run takes up its subset from subsets.json;
        resuming with another ``compact`` setting, or a model_dir written
        before subsets.json existed, may group members otherwise).
        The subset is rebuilt (and compiled) each time the members still
        training fall to half of it; evaluations, checkpoints and best
        snapshots stay the whole population's.
      log: called with one progress line per evaluation (default ``print``).

    Returns:
      A :class:`PopulationResult`.
    """
    started = time.monotonic()
    if not isinstance(population, Population):
        raise ValueError(f"`population` ({population!r}) must be a lowtf Population")
    for name, value in (
        ("max_steps", max_steps),
        ("eval_every", eval_every),
        ("steps_per_call", steps_per_call),
        ("checkpoint_every", checkpoint_every),
        ("keep_checkpoints", keep_checkpoints),
    ):
        _checks.positive_int(name, value)
    _checks.boolean("compact", compact)
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")
    model_dir = os.fspath(model_dir)
    manager = tf.train.CheckpointManager(
        population.checkpoint,
        os.path.join(model_dir, "ckpt"),
        max_to_keep=keep_checkpoints,
        checkpoint_name="ckpt",
    )
    latest = manager.latest_checkpoint
    if latest is not None:
        try:
            # Every object of the population matched; what the checkpoint holds
            # besides (the manager's save counter) is not a warning's worth.
            population.checkpoint.read(
                latest
            ).assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise ValueError(
                f"the latest checkpoint {latest} does not fit this population "
                f"({type(e).__name__}); resume with the same arguments or use a new "
                "model_dir"
            ) from None
    tf.io.gfile.makedirs(model_dir)
    history_path = os.path.join(model_dir, "history.csv")
    step = int(population.step.numpy())
    rows = _read_history(history_path, keep_upto=step) if latest else []
    lines = [_line(r) for r in rows]  # each row's CSV text, formatted once
    _write_history(history_path, lines)

    def evaluate():
        # A stopped member's history ends at its last evaluation, as a single fit's.
        training = ~population.stopped
        record = population.evaluate()
        new = [row for row in _rows(record, population.size) if training[row["member"]]]
        rows.extend(new)
        lines.extend(_line(r) for r in new)
        # Rewritten whole: not every TensorFlow file system can append.
        _write_history(history_path, lines)
        if record["improved"].any():
            _save_best(population, os.path.join(model_dir, "best"))
        log(_progress(record, population, max_steps))

    runner = _Runner(
        population, compact, log, os.path.join(model_dir, SUBSETS), bool(latest)
    )
    if latest:
        log(f"resuming from {latest} at step {step}")
    else:
        evaluate()
        manager.save(checkpoint_number=step)
    while not population.done and step < max_steps:
        boundary = min(
            _next_multiple(step, eval_every),
            _next_multiple(step, checkpoint_every),
            max_steps,
        )
        num_steps = min(steps_per_call, boundary - step)
        runner.run(num_steps)
        step += num_steps
        if step % eval_every == 0 or step == max_steps:
            evaluate()
        if step % checkpoint_every == 0:
            manager.save(checkpoint_number=step)
    if _saved_step(manager) != step:
        manager.save(checkpoint_number=step)
    stopped = population.stop_step
    results = []
    for k in range(population.size):
        results.append(
            MemberResult(
                best_step=int(population.best_step[k]),
                best_value=float(population.best_value[k]),
                stop_step=int(stopped[k]) if stopped[k] >= 0 else step,
                stop_reason="patience" if stopped[k] >= 0 else "max_steps",
                history=[{c: r[c] for c in COLUMNS} for r in rows if r["member"] == k],
            )
        )
    log(
        f"population stopped at step {step}: "
        f"{int((stopped >= 0).sum())}/{population.size} members by patience"
    )
    return PopulationResult(
        members=results,
        monitor=population.monitor,
        last_step=step,
        wall_seconds=time.monotonic() - started,
    )


def read_best_weights(best_dir: str) -> dict | None:
    """The pointer of a population's ``best/`` directory, or None if it has none.

    Returns ``{"prefix", "step", "best_step", "best_value", "monitor"}``;
    ``tf.train.Checkpoint(best=population.state.best).read(prefix)`` loads
    the stacked best weights.
    """
    path = os.path.join(best_dir, POINTER)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        pointer = json.load(f)
    pointer["prefix"] = os.path.join(best_dir, pointer["prefix"])
    return pointer


class _Runner:
    """Runs steps on the population, or on a subset of the members still training.

    The subsets built are recorded in ``path`` with their steps; resumed,
    it trains the subset that was in use at the resumed step.
    """

    def __init__(self, population: Population, compact: bool, log, path, resume):
        self.population, self.compact, self.log = population, compact, log
        self.path, self.sub, self.indices = path, None, None
        step = int(population.step.numpy())
        built = _read_subsets(path) if resume else []
        # Subsets built after the resumed checkpoint never happened.
        self.built = [b for b in built if b["step"] <= step]
        if self.built and compact:
            self.indices = self.built[-1]["members"]
        _files.write_atomically(path, json.dumps(self.built))

    def run(self, num_steps: int) -> None:
        pop = self.population
        training = np.flatnonzero(~pop.stopped)
        if self.indices is None and (
            not self.compact or pop.size < 4 or len(training) > pop.size // 2
        ):
            pop.run(num_steps)
            return
        step = int(pop.step.numpy())
        if self.indices is None or len(training) <= len(self.indices) // 2:
            # Rebuilt when the members still training fall to half of it: one
            # compilation per halving, not per stopped member (a stopped one
            # left in the subset stays frozen there as here).
            self.indices = [int(k) for k in training]
            self.sub = pop.subset(self.indices)
            self.built.append({"step": step, "members": self.indices})
            _files.write_atomically(self.path, json.dumps(self.built))
            self.log(
                f"step {step}: {len(training)} of {pop.size} members "
                "still train; training them alone from here"
            )
        elif self.sub is None:  # resumed: the subset of the uninterrupted run
            self.sub = pop.subset(self.indices)
            self.log(
                f"step {step}: training the {len(self.indices)} members of the "
                f"subset built at step {self.built[-1]['step']} alone, as before"
            )
        pop.load_members(self.sub, self.indices)
        means = self.sub.run(num_steps)
        pop.store_members(self.sub, self.indices)
        whole = {}
        for name, values in means.items():
            whole[name] = np.zeros(pop.size, np.float64)
            whole[name][self.indices] = values
        pop.state.add_means(whole, num_steps)


def _read_subsets(path: str) -> list[dict]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        built = json.loads(text)
        return [
            {"step": int(b["step"]), "members": list(map(int, b["members"]))}
            for b in built
        ]
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"{path} is not a list of subsets ({type(e).__name__}: {e}); it records "
            "which members a compacted run trained: restore it or use a new model_dir"
        ) from None


# -- best snapshots -----------------------------------------------------------


def _save_best(population: Population, best_dir: str) -> None:
    """Writes the stacked best weights under a fresh prefix, then moves the pointer."""
    tf.io.gfile.makedirs(best_dir)
    taken = [
        int(m.group(2))
        for m in map(_SNAPSHOT.match, tf.io.gfile.listdir(best_dir))
        if m
    ]
    step = int(population.step.numpy())
    name = f"best-{step}-{max(taken, default=0) + 1}"
    tf.train.Checkpoint(best=population.state.best).write(os.path.join(best_dir, name))
    pointer = {
        "prefix": name,
        "step": step,
        "best_step": population.best_step.tolist(),
        "best_value": population.best_value.tolist(),
        "monitor": population.monitor,
    }
    _files.write_atomically(os.path.join(best_dir, POINTER), json.dumps(pointer))
    # The best weights also live in the latest checkpoint: a resume never
    # needs an older snapshot, so they go as soon as the pointer moved.
    for entry in tf.io.gfile.listdir(best_dir):
        if _SNAPSHOT.match(entry) and not entry.startswith(name + "."):
            tf.io.gfile.remove(os.path.join(best_dir, entry))


# -- history.csv ----------------------------------------------------------------


def _rows(record: dict, size: int) -> list[dict]:
    rows = []
    for k in range(size):
        row = {"member": k, "step": record["step"]}
        for name in COLUMNS[1:]:
            value = float(record[name][k])
            row[name] = None if math.isnan(value) else value
        rows.append(row)
    return rows


def _cells(row: dict) -> list:
    return ["" if row[c] is None else repr(row[c]) for c in HISTORY_COLUMNS]


def _read_history(path: str, keep_upto: int) -> list[dict]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        reader = csv.DictReader(io.StringIO(f.read()))
        rows = []
        for r in reader:
            row = {
                c: (
                    int(r[c])
                    if c in ("member", "step")
                    else float(r[c])
                    if r[c]
                    else None
                )
                for c in HISTORY_COLUMNS
            }
            if row["step"] <= keep_upto:
                rows.append(row)
    return rows


def _line(row: dict) -> str:
    """One history.csv row as CSV text (with its line end)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(_cells(row))
    return buffer.getvalue()


def _write_history(path: str, lines: list[str]) -> None:
    """Rewrites the whole file (header and ``lines``) through a temporary one."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(HISTORY_COLUMNS)
    _files.write_atomically(path, buffer.getvalue() + "".join(lines))


# -- pieces -------------------------------------------------------------------


def _saved_step(manager) -> int | None:
    latest = manager.latest_checkpoint
    return None if latest is None else int(latest.rsplit("-", 1)[1])


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _progress(record: dict, population: Population, max_steps: int) -> str:
    best = population.best_value
    leader = int(np.nanargmin(best) if population.mode == "min" else np.nanargmax(best))
    training = population.size - int(record["stopped"].sum())
    return (
        f"step {record['step']}/{max_steps}  {training}/{population.size} members "
        f"training  best {population.monitor} {best[leader]:.4f} (member {leader} "
        f"@ {int(population.best_step[leader])})"
    )
