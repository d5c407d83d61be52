"""The loop of a population: cadence, checkpoints, best snapshots, resume.

:func:`fit_population` is to a :class:`~lowtf.population.Population` what
:func:`lowtf.fit` is to one model (``lowtf.fit(population, ...)`` calls it).
It writes into ``model_dir``:

* ``lock`` while it runs (:class:`lowtf.train.rundir.RunLock`): a second run
  on the directory is refused, naming the holder.
* ``run.json``: what defines the run (each member's model, seed and rows,
  the data's content hash, the optimizer, see :meth:`Population.describe`)
  and the settings it ran with. A resume whose members differ is refused,
  each difference named with both values, before anything is written.
* ``ckpt/``: the "latest" checkpoints (a ``tf.train.CheckpointManager``)
  of all the population's state: stacked weights, optimizer slots and step,
  every member's best weights, early-stopping and divergence state, data
  position and running training means. Calling it again on the same
  ``model_dir`` resumes from there and ends exactly as an uninterrupted run.
* ``best/``: the members' best weights as one snapshot, written under a
  fresh prefix each time a member improves; the pointer ``best.json`` moves
  to it only once it is complete (a temporary file renamed over it), so a
  crash leaves a readable snapshot. Read it with
  :func:`read_best_weights`.
* ``history.csv``: one row per member per evaluation: ``member`` and the
  columns of :class:`lowtf.train.metrics.Evaluation`
  (:class:`lowtf.train.summaries.History`).
* ``tensorboard/``: the same scalars as a single run's, tagged per member
  (``member_3/cross_entropy`` under ``train`` and ``validation``).
* ``subsets.json``: the subsets a compacted run trained, each with the step
  it was built at, so that a resumed run trains the subset the
  uninterrupted run trained at that step (the members a batched product
  holds can change its rounding).

A model directory holds one kind of run: a single model's directory
(``lowtf.fit``, ``bin/train``) is refused here, and a population's by
``lowtf.fit`` of one model, with every file left as it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time

import numpy as np
import tensorflow as tf

from lowtf import _checks, _files
from lowtf.population.population import Population
from lowtf.train import rundir, summaries

# The single loop's cadence and reading of the optimizer's rate, so both
# loops cut their calls and record their rates alike.
from lowtf.train.controller import _clock, _learning_rate, _next_multiple
from lowtf.train.fit import StopSignals, run_kind
from lowtf.train.metrics import COLUMNS, Evaluation, format_number

POINTER = "best.json"
SUBSETS = "subsets.json"
_SNAPSHOT = re.compile(r"^best-(\d+)-(\d+)([._].*)?$")
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
    """What :func:`fit_population` reports.

    Attributes:
      members: one :class:`MemberResult` per member.
      monitor: the monitored metric's name.
      last_step: the global step when the population stopped.
      wall_seconds: wall time of this call.
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
    """Trains every member with step-based early stopping; resumes from ``model_dir``.

    The population stops when every member has stopped (its patience ran
    out, or it diverged) or at ``max_steps``; each member then holds its
    best weights in ``population.member(k)``.

    A member whose training loss, validation cross-entropy or weights go
    NaN or Inf stops there, marked ``population.diverged``; its weights go
    back to its best ones (nothing non-finite is ever saved) and the others
    go on. A SIGTERM or first SIGINT (Ctrl-C) ends the call at the next
    call boundary, after saving the latest checkpoint; a KeyboardInterrupt
    raised while training (a second Ctrl-C) ends it without saving (the
    state may be mid-update). Either way the members still training report
    ``"interrupted"``, and calling again resumes.

    Args:
      population: a :class:`Population` (its members' hyper-parameters,
        rows and early-stopping settings).
      model_dir: where checkpoints, best snapshots, history.csv,
        TensorBoard events, run.json and subsets.json go; an existing one
        of the same population is resumed.
      max_steps: stop at this step at the latest (default 10000).
      eval_every: evaluate every member every this many steps (default 100).
      steps_per_call: steps per compiled call at most (default 100); calls
        are cut to land on evaluation and checkpoint steps.
      checkpoint_every: save the latest checkpoint every this many steps
        (default 1000), and when training ends.
      keep_checkpoints: how many latest checkpoints to keep (default 3).
      start_from_step: no member stops at a step below this; None (default)
        keeps ``population.start_from_step`` (0 unless set).
      baseline: a value (or K values) an improvement must beat to restart a
        member's patience, as :class:`lowtf.EarlyStopping`'s; None (default)
        keeps ``population.baseline`` (none unless set).
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
      run_settings: further settings that define the run (JSON-able),
        recorded in run.json beside the population's and compared on
        resume (default None).

    What may change on a resume is applied, logged and recorded: the
    arguments above but ``model_dir`` and ``run_settings``, the members'
    patience, min_delta and learning rates, and the optimizer's learning
    rate (the one given replaces the saved one).

    Returns:
      A :class:`PopulationResult`.

    Raises:
      ValueError: bad arguments; a ``model_dir`` in use by another run, of
        a single model, of another population (each differing setting
        named), or with traces of a run but no checkpoint to resume. Nothing
        in ``model_dir`` is changed then.
    """
    started = time.monotonic()
    if not isinstance(population, Population):
        raise ValueError(f"`population` ({population!r}) must be a lowtf Population")
    cadence = {
        "max_steps": max_steps,
        "eval_every": eval_every,
        "steps_per_call": steps_per_call,
        "checkpoint_every": checkpoint_every,
        "keep_checkpoints": keep_checkpoints,
    }
    for name, value in cadence.items():
        _checks.positive_int(name, value)
    _checks.boolean("compact", compact)
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")
    if start_from_step is not None:
        population.start_from_step = start_from_step  # checked by the setter
    if baseline is not None:
        population.baseline = baseline
    model_dir = os.fspath(model_dir)
    rundir.check_path(model_dir)
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ValueError(f"`model_dir` ({model_dir!r}) is a file; pick a directory")
    existed = tf.io.gfile.exists(model_dir)
    lock = rundir.RunLock(model_dir, log)
    lock.acquire()
    try:
        run = _Run(
            population, model_dir, dict(cadence, compact=compact), log, run_settings
        )
        try:
            run.start()
            with StopSignals() as signals:
                interrupted = run.loop(signals)
        finally:
            run.close()
    finally:
        lock.release()
        if (
            not existed
            and tf.io.gfile.isdir(model_dir)
            and not tf.io.gfile.listdir(model_dir)
        ):
            tf.io.gfile.rmtree(model_dir)  # made only for the lock of a failed start
    return run.result(interrupted, time.monotonic() - started)


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


class _Run:
    """One call of :func:`fit_population`: checks and restores, then writes and trains.

    ``__init__`` writes nothing: every refusal leaves ``model_dir`` as it was.
    """

    def __init__(self, population, model_dir, settings, log, run_settings):
        self.pop, self.model_dir, self.settings, self.log = (
            population,
            model_dir,
            settings,
            log,
        )
        if run_kind(model_dir) == "single":
            raise ValueError(
                f"`model_dir` ({model_dir!r}) holds the run of a single model "
                "(lowtf.fit or bin/train), not of a population; pick another "
                "model_dir (nothing was changed)"
            )
        self.identity = _json(
            {"kind": "population", **population.describe(), **(run_settings or {})}
        )
        self.record = rundir.read_record(model_dir)  # refuses a damaged one
        self.history = summaries.History(
            os.path.join(model_dir, "history.csv"), members=True
        )
        self.manager = tf.train.CheckpointManager(
            population.checkpoint,
            os.path.join(model_dir, "ckpt"),
            max_to_keep=settings["keep_checkpoints"],
            checkpoint_name="ckpt",
        )
        self.resumed = self.manager.latest_checkpoint
        self.changes = []
        self.board = None  # made by start(), closed by close()
        if self.resumed:
            self._check_same_run()
            requested = _learning_rate(population.optimizer)
            self._restore(self.resumed)
            self._apply_changes(requested)
        elif rundir.traces(model_dir):
            raise ValueError(
                f"`model_dir` ({model_dir!r}) holds "
                f"{', '.join(rundir.traces(model_dir))} of an earlier run but no "
                "checkpoint to resume from: restore ckpt/ from a copy, pick another "
                "model_dir, or delete these to train it from step 0 (nothing was "
                "changed)"
            )

    def _check_same_run(self) -> None:
        """Refuses to resume another population's directory, member by member."""
        if self.record is not None:
            differ = _differences(self.record["identity"], self.identity)
            if differ:
                raise ValueError(
                    f"`model_dir` ({self.model_dir!r}) belongs to another population, "
                    f"which this one would silently mix with: {'; '.join(differ)}. "
                    "Resume with the recorded members, or pick another model_dir "
                    "(nothing was changed)"
                )
        if tf.io.gfile.exists(self.history.path):
            summaries.check_history(self.history.path, summaries.MEMBER_COLUMNS)

    def _restore(self, latest: str) -> None:
        try:
            # Every object of the population matched; what the checkpoint holds
            # besides (the manager's save counter) is not a warning's worth.
            self.pop.checkpoint.read(
                latest
            ).assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise ValueError(
                f"the latest checkpoint {latest} does not fit this population "
                f"({type(e).__name__}); resume with the same arguments or use a new "
                "model_dir"
            ) from None

    def _apply_changes(self, requested_rate) -> None:
        """The caller's learning rate over the restored one; what changed, logged."""
        optimizer = self.pop.optimizer
        recorded = (self.record or {}).get("settings", {})
        restored = _learning_rate(optimizer)
        schedule = isinstance(optimizer.get_config().get("learning_rate"), dict)
        if not schedule and requested_rate is not None and restored != requested_rate:
            optimizer.learning_rate = requested_rate  # Keras assigns its variable
            recorded = {**recorded, "learning_rate": restored}
        self.changes = [
            f"{name} {recorded[name]!r} -> {value!r}"
            for name, value in self._mutable_settings().items()
            if name in recorded and recorded[name] != value
        ]

    def _mutable_settings(self) -> dict:
        """The settings a resume may change; applied, logged and recorded."""
        pop = self.pop
        baseline = pop.baseline
        return _json(
            {
                **self.settings,
                "start_from_step": pop.start_from_step,
                "baseline": None if baseline is None else baseline.tolist(),
                "patience": np.asarray(pop.patience).tolist(),
                "min_delta": np.asarray(pop.min_delta).tolist(),
                "learning_rate": _learning_rate(pop.optimizer),
                "learning_rates": pop.learning_rate,  # per member, or None
            }
        )

    # -- writing ------------------------------------------------------------

    def start(self) -> None:
        """Writes run.json, history and writers; then step 0's evaluation or resumes."""
        tf.io.gfile.makedirs(self.model_dir)
        record = dict(self.record or {})
        record["identity"] = self.identity
        record["settings"] = self._mutable_settings()
        if self.resumed:
            record.setdefault("resumes", []).append(
                {"step": self.step, "changed": self.changes}
            )
        rundir.write_record(self.model_dir, record)
        self.history.start(keep_upto=self.step if self.resumed else None)
        self.board = summaries.Summaries(os.path.join(self.model_dir, "tensorboard"))
        self.runner = _Runner(
            self.pop,
            self.settings["compact"],
            self.log,
            os.path.join(self.model_dir, SUBSETS),
            bool(self.resumed),
        )
        self._tick = (time.monotonic(), self.step)
        if self.resumed:
            self.log(f"resuming from {self.resumed} at step {self.step}")
            for change in self.changes:
                self.log(f"changed on resume: {change}")
        else:
            self._evaluate()
            self._save()

    @property
    def step(self) -> int:
        return int(self.pop.step.numpy())

    def loop(self, signals) -> str | None:
        """Trains until every member stopped or max_steps; returns a stop request.

        Returns:
          None, or what ended the loop early: the signal's name, or
          ``"KeyboardInterrupt"``.

        Args:
          signals: its ``requested`` is None, or the name of a stop request
            (e.g. ``"SIGTERM"``) that ends the loop at the next call boundary.
        """
        pop, settings = self.pop, self.settings
        max_steps = settings["max_steps"]
        try:
            while not pop.done and self.step < max_steps:
                if signals.requested:
                    self.log(
                        f"{signals.requested} received at step {self.step}: stopping"
                    )
                    self._save()
                    return signals.requested
                step = self.step
                boundary = min(
                    _next_multiple(step, settings["eval_every"]),
                    _next_multiple(step, settings["checkpoint_every"]),
                    max_steps,
                )
                means = self.runner.run(
                    min(settings["steps_per_call"], boundary - step)
                )
                self._stop_non_finite(means, step)
                step = self.step
                if step % settings["eval_every"] == 0 or step == max_steps:
                    self._evaluate()
                if step % settings["checkpoint_every"] == 0:
                    self._save()
        except KeyboardInterrupt:
            # Raised outside our SIGINT handler (a second Ctrl-C): the state may
            # be mid-update, so the last checkpoint is kept as it is.
            self.log(f"KeyboardInterrupt at step {self.step}: stopping")
            return "KeyboardInterrupt"
        self._save()
        return None

    def _stop_non_finite(self, means: dict, first: int) -> None:
        """Stops the members a call broke (NaN/Inf loss or weights); a line each."""
        broken = self.pop.stop_non_finite(means)
        best_step = self.pop.best_step
        for k in np.flatnonzero(broken):
            self.log(
                f"member {k}: non-finite loss or weights in steps {first + 1}-"
                f"{self.step}: stopped as diverged, back to its best weights (step "
                f"{best_step[k]}); the others go on"
            )

    def _evaluate(self) -> None:
        pop = self.pop
        # A stopped member's history ends at its last evaluation, as a single fit's.
        training = ~pop.stopped
        before = pop.diverged
        record = pop.evaluate()
        rows = [row for row in _rows(record, pop.size) if training[row["member"]]]
        self.history.extend(rows)
        self.board.write_members(
            {row["member"]: Evaluation.from_dict(row) for row in rows}
        )
        if record["improved"].any():
            _save_best(pop, os.path.join(self.model_dir, "best"))
        for k in np.flatnonzero(record["diverged"] & ~before):
            self.log(
                f"member {k}: non-finite validation loss or weights at step "
                f"{record['step']}: stopped as diverged, back to its best weights"
            )
        self.log(self._progress(record))

    def _save(self) -> None:
        """Saves the latest checkpoint, unless it is on disk already."""
        step = self.step
        if _saved_step(self.manager) != step:
            # Finite by construction: a broken member was reset by stop_non_finite.
            _files.write_checkpoint(
                lambda: self.manager.save(checkpoint_number=step),
                os.path.join(self.manager.directory, f"ckpt-{step}"),
            )

    def _progress(self, record: dict) -> str:
        pop, max_steps = self.pop, self.settings["max_steps"]
        now, step = time.monotonic(), record["step"]
        then, start = self._tick
        self._tick = (now, step)
        rate = (step - start) / (now - then) if now > then and step > start else None
        best = pop.best_value
        leader = int(np.argmin(best) if pop.mode == "min" else np.argmax(best))
        training = pop.size - int(record["stopped"].sum())
        return (
            f"step {step}/{max_steps}  {training}/{pop.size} members training  "
            f"best {pop.monitor} {format_number(float(best[leader]))} (member "
            f"{leader} @ {int(pop.best_step[leader])})  "
            + (
                f"{rate:,.0f} steps/s  ETA {_clock((max_steps - step) / rate)}"
                if rate
                else "- steps/s  ETA ?"
            )
        )

    def close(self) -> None:
        """Closes the TensorBoard writers; called on every way out."""
        if self.board is not None:
            self.board.close()
            self.board = None

    def result(self, interrupted: str | None, wall_seconds: float) -> PopulationResult:
        pop, step = self.pop, self.step
        stopped, diverged = pop.stop_step, pop.diverged
        unfinished = "interrupted" if interrupted else "max_steps"
        reasons = np.where(
            diverged, "diverged", np.where(stopped >= 0, "patience", unfinished)
        )
        members = [
            MemberResult(
                best_step=int(pop.best_step[k]),
                best_value=float(pop.best_value[k]),
                stop_step=int(stopped[k]) if stopped[k] >= 0 else step,
                stop_reason=str(reasons[k]),
                history=[
                    {c: r[c] for c in COLUMNS}
                    for r in self.history.rows
                    if r["member"] == k
                ],
            )
            for k in range(pop.size)
        ]
        counts = ", ".join(
            f"{int((reasons == r).sum())} {r}"
            for r in STOP_REASONS
            if (reasons == r).any()
        )
        self.log(f"population stopped at step {step}: {counts}")
        return PopulationResult(
            members=members,
            monitor=pop.monitor,
            last_step=step,
            wall_seconds=wall_seconds,
            interrupted=interrupted,
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


def _differences(recorded: dict, current: dict) -> list[str]:
    """:func:`rundir.differences`, with the members compared one by one."""
    lines = []
    for key in sorted(set(recorded) | set(current)):
        before, now = recorded.get(key), current.get(key)
        if before == now:
            continue
        if key != "members" or not (isinstance(before, list) and isinstance(now, list)):
            lines.extend(rundir.differences({key: before}, {key: now}))
        elif len(before) != len(now):
            lines.append(f"members: recorded {len(before)}, now {len(now)}")
        else:
            for k, (a, b) in enumerate(zip(before, now)):
                if isinstance(a, dict) and isinstance(b, dict):
                    lines.extend(
                        f"member {k} {line}" for line in rundir.differences(a, b)
                    )
                elif a != b:
                    lines.append(f"member {k}: recorded {a!r}, now {b!r}")
    return lines


def _json(value):
    """``value`` as JSON reads it back (tuples as lists, NumPy numbers as floats)."""
    return json.loads(json.dumps(value, default=_plain))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _saved_step(manager) -> int | None:
    latest = manager.latest_checkpoint
    return None if latest is None else int(latest.rsplit("-", 1)[1])
