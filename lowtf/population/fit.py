"""A population as the controller's trainer: K members, one loop with one model's.

:class:`PopulationTrainer` is to a :class:`~lowtf.population.Population`
what :class:`lowtf.train.trainer.StepTrainer` is to one model: what
:class:`lowtf.train.controller.Controller`, the loop :func:`lowtf.fit`
runs, drives. ``lowtf.fit(population, ...)`` (or :func:`fit_population`,
its spelling with the cadence as arguments) writes into ``model_dir``
what a single run writes, per member:

* ``lock`` while it runs, and ``run.json``: what defines the run (each
  member's model, seed and rows, the data's content hash, the optimizer,
  see :meth:`Population.describe`) and the settings it ran with. A resume
  whose members differ is refused, each difference named with both
  values, before anything is written.
* ``ckpt/``: the "latest" checkpoints of all the population's state:
  stacked weights, optimizer slots and step, every member's best weights,
  early-stopping and divergence state, data position, running training
  means and the wall clock, kept by :class:`lowtf.train.checkpointing.Checkpoints`
  as a single model's are (compared with this run's variables before
  anything is restored, unreadable files refused in one line). Calling it
  again on the same ``model_dir`` resumes from there and ends exactly as an
  uninterrupted run.
* ``best/``: the members' best weights as one snapshot, written by
  :func:`lowtf.train.early_stopping.write_snapshot` as one model's is
  (a fresh prefix each time a member improves, ``best.json`` moved to it
  only once it is complete). Read it with :func:`read_best_weights`.
* ``history.csv``: one row per member per evaluation: ``member`` and the
  columns of :class:`lowtf.train.metrics.Evaluation`.
* ``tensorboard/``: the same scalars as a single run's, tagged per member
  (``member_3/cross_entropy`` under ``train`` and ``validation``).
* ``subsets.json``: the subsets a compacted run trained, each with the step
  it was built at, so that a resumed run trains the subset the
  uninterrupted run trained at that step (the members a batched product
  holds can change its rounding).

A member whose training loss, validation cross-entropy or weights go NaN or
Inf stops there, marked ``population.diverged``, back to its best weights
(nothing non-finite is ever saved); the others go on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import tensorflow as tf

from lowtf import _checks, _files
from lowtf.population.population import Population
from lowtf.train import checkpointing, early_stopping, summaries
from lowtf.train.controller import Controller, Evaluated, check_model_dir, learning_rate
from lowtf.train.fit import TrainConfig
from lowtf.train.metrics import COLUMNS, Evaluation, format_number

POINTER = early_stopping.POINTER
SUBSETS = "subsets.json"
# How a member's training can end (MemberResult.stop_reason).
STOP_REASONS = ("patience", "max_steps", "diverged", "interrupted")


@dataclasses.dataclass
class MemberResult:
    """One member's outcome.

    Attributes:
      best_step: step of its best evaluation.
      best_value: the monitored metric there.
      stop_step: the step it stopped at (patience, divergence), or the
        population's last step.
      stop_reason: one of :data:`STOP_REASONS`: ``"patience"``,
        ``"diverged"`` (its loss or weights went NaN/Inf; it holds its best
        weights), ``"max_steps"``, or ``"interrupted"`` (still training when
        a stop request ended the call).
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
    """What fitting a population reports.

    Attributes:
      members: one :class:`MemberResult` per member.
      monitor: the monitored metric's name.
      last_step: the global step when the population stopped.
      wall_seconds: wall time of the run, over every session: a resumed run
        counts the sessions before it up to the checkpoint it resumed from.
      interrupted: the stop request that ended the call (``"SIGTERM"``,
        ``"SIGINT"``, ``"KeyboardInterrupt"``), or None when it trained to
        its end (every member stopped, or max_steps).
    """

    members: list
    monitor: str
    last_step: int
    wall_seconds: float
    interrupted: str | None = None


def fit_population(
    population: Population,
    *,
    model_dir: str,
    max_steps: int = 10000,
    eval_every: int = 100,
    steps_per_call: int = 100,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    start_from_step: int | None = None,
    baseline=None,
    compact: bool = True,
    log=print,
    run_settings: dict | None = None,
) -> PopulationResult:
    """``lowtf.fit(population, ...)`` with the cadence as arguments.

    Args:
      population: a :class:`Population`.
      model_dir, log, run_settings: as :func:`lowtf.fit`'s.
      max_steps, eval_every, steps_per_call, checkpoint_every,
        keep_checkpoints: as :class:`lowtf.TrainConfig`'s (defaults 10000,
        100, 100, 1000, 3).
      start_from_step: no member stops at a step below this; None (default)
        keeps ``population.start_from_step``.
      baseline: a value (or K values) an improvement must beat to restart a
        member's patience; None (default) keeps ``population.baseline``.
      compact: see :func:`fit_members` (default True).

    Returns:
      A :class:`PopulationResult`.
    """
    if not isinstance(population, Population):
        raise ValueError(f"`population` ({population!r}) must be a lowtf Population")
    if start_from_step is not None:
        population.start_from_step = start_from_step  # checked by the setter
    if baseline is not None:
        population.baseline = baseline
    config = TrainConfig(
        max_steps=max_steps,
        eval_every=eval_every,
        steps_per_call=steps_per_call,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        start_from_step=population.start_from_step,
    )
    return fit_members(
        population,
        model_dir=model_dir,
        config=config,
        compact=compact,
        log=log,
        run_settings=run_settings,
    )


def fit_members(
    population: Population,
    *,
    model_dir: str,
    config: TrainConfig,
    compact: bool = True,
    log=print,
    run_settings: dict | None = None,
) -> PopulationResult:
    """Trains every member with step-based early stopping; resumes from ``model_dir``.

    What :func:`lowtf.fit` runs for a population, after checking its
    arguments: the controller with a :class:`PopulationTrainer` (see this
    module's docstring for what goes into ``model_dir``). The population
    stops when every member has stopped (patience, or divergence) or at
    ``max_steps``; each member then holds its best weights in
    ``population.member(k)``. A stop request (SIGTERM, a first SIGINT) ends
    the call at the next call boundary after a save, a KeyboardInterrupt
    without one; either way the members still training report
    ``"interrupted"``, and calling again resumes. What may change on a
    resume is applied, logged and recorded: the cadence, the members'
    patience, min_delta and learning rates, the optimizer's learning rate.

    Args:
      population: a :class:`Population`.
      model_dir, log, run_settings: as :func:`lowtf.fit`'s.
      config: a :class:`lowtf.TrainConfig`: its cadence (``max_steps``,
        ``eval_every``, ``steps_per_call``, ``checkpoint_every``,
        ``keep_checkpoints``), and ``start_from_step`` and ``baseline`` (None
        keeps the population's), set on the population.
      compact: once at most half the members still train (populations of
        4 or more), train a :meth:`Population.subset` of those instead
        (default True): stopped members are no longer computed, each
        member's steps are unchanged (to float rounding: XLA may round a
        product of another member count differently; the subsets, and so
        the numbers, are the same on every rerun, and a resumed run takes
        up its subset from subsets.json). The subset is rebuilt (and
        compiled) each time the members still training fall to half of it.

    Raises:
      ValueError: bad arguments; a ``model_dir`` in use by another run, of
        a single model, of another population (each differing setting
        named), or with traces of a run but no checkpoint to resume. Nothing
        in ``model_dir`` is changed then.
    """
    _checks.boolean("compact", compact)
    population.start_from_step = config.start_from_step
    if config.baseline is not None:
        population.baseline = config.baseline
    model_dir = os.fspath(model_dir)
    check_model_dir(model_dir)
    trainer = PopulationTrainer(
        population,
        model_dir,
        keep=config.keep_checkpoints,
        compact=compact,
        log=log,
        run_settings=run_settings,
    )
    controller = Controller.with_cadence_of(
        config, trainer=trainer, model_dir=model_dir, log=log
    )
    controller.fit()
    return trainer.result(controller, trainer.clock.total())


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


class PopulationTrainer:
    """A :class:`Population` (and its compaction) as the controller's trainer.

    ``__init__`` writes nothing.
    """

    kind, noun, members, columns = (
        "population",
        "population",
        "members",
        summaries.MEMBER_COLUMNS,
    )

    def __init__(self, population, model_dir, *, keep, compact, log, run_settings):
        self.pop, self.model_dir, self.log = population, model_dir, log
        self.compact, self.keep = compact, keep
        self.optimizer = population.optimizer
        self.strategy = tf.distribute.get_strategy()
        self.identity = _json(
            {"kind": "population", **population.describe(), **(run_settings or {})}
        )
        self.clock = checkpointing.WallClock()
        self.checkpoints = checkpointing.Checkpoints(
            model_dir,
            objects=population.checkpointed,
            step=population.step,
            # A broken member is reset by stop_non_finite before any save:
            # this only guards that rule.
            finite=lambda: checkpointing.finite_weights(population.model),
            clock=self.clock,
            keep=keep,
            strategy=self.strategy,
            subject="population",
        )
        self.runner = None  # made by start()
        self.reasons = None  # each member's, set by finish()

    @property
    def step(self) -> int:
        return int(self.pop.step.numpy())

    @property
    def done(self) -> bool:
        return self.pop.done

    @property
    def saved_step(self) -> int | None:
        return self.checkpoints.saved_step

    @property
    def note(self) -> str | None:
        return self.checkpoints.note

    def settings(self) -> dict:
        pop = self.pop
        baseline = pop.baseline
        return _json(
            {
                "keep_checkpoints": self.keep,
                "compact": self.compact,
                "start_from_step": pop.start_from_step,
                "baseline": None if baseline is None else baseline.tolist(),
                "patience": np.asarray(pop.patience).tolist(),
                "min_delta": np.asarray(pop.min_delta).tolist(),
                "learning_rate": learning_rate(pop.optimizer),
                "learning_rates": pop.learning_rate,  # per member, or None
            }
        )

    def restore_latest(self) -> str | None:
        return self.checkpoints.restore_latest()

    def start(self, resumed: bool) -> None:
        self.runner = _Runner(
            self.pop,
            self.compact,
            self.log,
            os.path.join(self.model_dir, SUBSETS),
            resumed,
        )

    def boundaries(self, step: int) -> list[int]:
        return []

    def run(self, num_steps: int) -> None:
        """Trains; stops the members a call broke (NaN/Inf loss or weights), a line each.

        None: the others go on, so nothing breaks the whole run.
        """
        first = self.step
        broken = self.pop.stop_non_finite(self.runner.run(num_steps))
        best_step = self.pop.best_step
        for k in np.flatnonzero(broken):
            self.log(
                f"member {k}: non-finite loss or weights in steps {first + 1}-"
                f"{self.step}: stopped as diverged, back to its best weights (step "
                f"{best_step[k]}); the others go on"
            )

    def evaluate(self) -> Evaluated:
        pop = self.pop
        # A stopped member's history ends at its last evaluation, as a single fit's.
        training = ~pop.stopped
        before = pop.diverged
        record = pop.evaluate()
        rows = [row for row in _rows(record, pop.size) if training[row["member"]]]
        if record["improved"].any():
            self._save_best(record["step"])
        for k in np.flatnonzero(record["diverged"] & ~before):
            self.log(
                f"member {k}: non-finite validation loss or weights at step "
                f"{record['step']}: stopped as diverged, back to its best weights"
            )
        best = pop.best_value
        leader = int(np.argmin(best) if pop.mode == "min" else np.argmax(best))
        still = pop.size - int(record["stopped"].sum())
        return Evaluated(
            record["step"],
            rows=rows,
            board={row["member"]: Evaluation.from_dict(row) for row in rows},
            progress=(
                f"{still}/{pop.size} members training  best {pop.monitor} "
                f"{format_number(float(best[leader]))} (member {leader} @ "
                f"{int(pop.best_step[leader])})"
            ),
        )

    def _save_best(self, step: int) -> None:
        """Writes the stacked best weights as one snapshot; older ones go."""
        pop, best_dir = self.pop, os.path.join(self.model_dir, "best")
        number = early_stopping.write_snapshot(
            best_dir,
            tf.train.Checkpoint(best=pop.state.best),
            step,
            {
                "step": step,
                "best_step": pop.best_step.tolist(),
                "best_value": pop.best_value.tolist(),
                "monitor": pop.monitor,
            },
        )
        # The best weights also live in the latest checkpoint: a resume never
        # needs an older snapshot, so they go as soon as the pointer moved.
        early_stopping.prune_snapshots(best_dir, f"best-{step}-{number}")

    def patience_end(self) -> int | None:
        pop = self.pop
        training = ~pop.stopped
        if not training.any() or (pop.best_step[training] < 0).any():
            return None
        ends = pop.state.patience_from.numpy() + np.asarray(pop.patience)
        return int(max(ends[training].max(), pop.start_from_step))

    def save(self) -> bool:
        """Saves the latest checkpoint; False, and nothing saved, on NaN/Inf weights."""
        return self.checkpoints.save()

    def finish(self, reason: str) -> None:
        """Logs how many members ended which way (the population's weights stay)."""
        pop = self.pop
        unfinished = "interrupted" if reason == "interrupted" else "max_steps"
        self.reasons = np.where(
            pop.diverged,
            "diverged",
            np.where(pop.stop_step >= 0, "patience", unfinished),
        )
        counts = ", ".join(
            f"{int((self.reasons == r).sum())} {r}"
            for r in STOP_REASONS
            if (self.reasons == r).any()
        )
        self.log(f"population stopped at step {self.step}: {counts}")

    def result(self, controller: Controller, wall_seconds: float) -> PopulationResult:
        pop, step = self.pop, controller.last_step
        stopped = pop.stop_step
        members = [
            MemberResult(
                best_step=int(pop.best_step[k]),
                best_value=float(pop.best_value[k]),
                stop_step=int(stopped[k]) if stopped[k] >= 0 else step,
                stop_reason=str(self.reasons[k]),
                history=[
                    {c: r[c] for c in COLUMNS}
                    for r in controller.history.rows
                    if r["member"] == k
                ],
            )
            for k in range(pop.size)
        ]
        return PopulationResult(
            members=members,
            monitor=pop.monitor,
            last_step=step,
            wall_seconds=wall_seconds,
            interrupted=controller.interrupted,
        )


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

    def run(self, num_steps: int) -> dict[str, np.ndarray]:
        """Trains ``num_steps`` steps; returns the members' step means, ``[K]`` each."""
        pop = self.population
        training = np.flatnonzero(~pop.stopped)
        if self.indices is None and (
            not self.compact or pop.size < 4 or len(training) > pop.size // 2
        ):
            return pop.run(num_steps)
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
        return whole


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


# -- pieces -------------------------------------------------------------------


def _rows(record: dict, size: int) -> list[dict]:
    """The history rows of an evaluation record, one per member (NaN as None)."""
    rows = []
    for k in range(size):
        row = {"member": k, "step": record["step"]}
        for name in COLUMNS[1:]:
            value = float(record[name][k])
            row[name] = None if math.isnan(value) else value
        rows.append(row)
    return rows


def _json(value):
    """``value`` as JSON reads it back (tuples as lists, NumPy numbers as floats)."""
    return json.loads(json.dumps(value, default=_plain))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
