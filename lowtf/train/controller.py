"""The one controller :func:`lowtf.fit` runs, for one model or a population.

:class:`Controller` is Orbit's shape: keyword-only, it drives any
:class:`Trainer`, one model (:class:`lowtf.train.trainer.StepTrainer`, K = 1)
or K stacked members (:class:`lowtf.population.fit.PopulationTrainer`).
It owns what both share, written once:

* the model directory: its lock (:class:`lowtf.train.rundir.RunLock`), one
  kind of run per directory, ``run.json`` (the trainer's identity, compared
  setting by setting, member by member, on resume; the settings a resume
  may change, applied, logged and recorded);
* the cadence: ``trainer.run(k)`` calls cut to land on every evaluation,
  checkpoint and trainer boundary (``k`` enters the step as a tensor:
  nothing retraces), ``max_steps``, and the stop signals (SIGTERM, a first
  SIGINT) turned into a stop at the next call boundary;
* ``history.csv`` and TensorBoard (:mod:`lowtf.train.summaries`), one row
  (one tag prefix) per member per evaluation, and the one-line progress log
  with its ETA.

Stopping on patience (every member stopped), max_steps or a stop request
saves the latest state first; a non-finite loss or weights that the trainer
cannot contain (one model has no other member to go on with), or a
KeyboardInterrupt (which may land mid-update), keep the last checkpoint as
it is. :meth:`Trainer.finish` then restores what the trainer keeps as best.
An exception propagates without either; the writers are closed and scratch
copies deleted on every way out.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Protocol

import numpy as np
import tensorflow as tf

from lowtf import _checks, distribute
from lowtf.train import checkpointing, rundir, summaries

# How a controller's loop can end.
STOP_REASONS = ("patience", "max_steps", "non_finite", "interrupted")
# What the run of each kind of trainer is, as the refusals name it.
_KINDS = {
    "single": "a single model (lowtf.fit or bin/train)",
    "population": "a population (lowtf.fit of a Population, or fit_population)",
}


@dataclasses.dataclass
class Evaluated:
    """What one evaluation gives the controller to write.

    Attributes:
      step: the global step.
      rows: history.csv rows (a single run's evaluation, or one per member
        still training, with ``member``).
      board: ``{member: Evaluation}`` for TensorBoard (``None``: no tag prefix).
      unit_norms: the layers' max unit norms (one model's), or None.
      progress: the progress line's middle, between the step and the ETA.
      broken: what went non-finite, if that ends the run; else None.
    """

    step: int
    rows: list = dataclasses.field(default_factory=list)
    board: dict = dataclasses.field(default_factory=dict)
    unit_norms: dict | None = None
    progress: str | None = None
    broken: str | None = None


class Trainer(Protocol):
    """What :class:`Controller` drives: one model (K = 1) or K members.

    Attributes: ``kind`` (``"single"`` or ``"population"``, run.json's),
    ``identity`` (run.json's, compared on resume), ``noun`` and ``members``
    (what a refused resume names), ``columns`` (history.csv's),
    ``optimizer``, ``strategy``, ``note`` (a line to log on resume, or
    None), ``step``, ``saved_step`` (the latest checkpoint's) and ``done``
    (every member stopped: patience, or divergence).
    """

    def settings(self) -> dict:
        """Its settings a resume may change (JSON-able), beside the cadence."""

    def restore_latest(self) -> str | None:
        """Restores the newest checkpoint and returns its path; writes nothing."""

    def start(self, resumed: bool) -> None:
        """Called once ``model_dir`` is written to, before step 0's evaluation."""

    def boundaries(self, step: int) -> list[int]:
        """Steps after ``step`` that a call must end on, beside the cadence's."""

    def run(self, num_steps: int) -> str | None:
        """Trains ``num_steps`` steps; what broke the whole run, or None."""

    def evaluate(self) -> Evaluated:
        """Evaluates the members still training and updates their early stopping."""

    def patience_end(self) -> int | None:
        """The step every member's patience ends at unless one improves."""

    def save(self) -> bool:
        """Saves the latest checkpoint; False (nothing saved) on NaN/Inf weights."""

    def finish(self, reason: str) -> None:
        """Restores what it keeps as best and logs how the run ended."""


class Controller:
    """Trains a :class:`Trainer` in ``model_dir`` at a cadence, with resume.

    Args:
      trainer: what to train (see :class:`Trainer`).
      model_dir: the run's directory (any TensorFlow file system).
      max_steps, eval_every, steps_per_call, checkpoint_every: the cadence,
        in global steps (positive integers).
      log: called with each line.
    """

    def __init__(
        self,
        *,
        trainer,
        model_dir: str,
        max_steps: int,
        eval_every: int,
        steps_per_call: int,
        checkpoint_every: int,
        log=print,
    ):
        self.cadence = {
            "max_steps": max_steps,
            "eval_every": eval_every,
            "steps_per_call": steps_per_call,
            "checkpoint_every": checkpoint_every,
        }
        for name, value in self.cadence.items():
            _checks.positive_int(name, value)
        if not callable(log):
            raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")
        model_dir = os.fspath(model_dir)
        check_model_dir(model_dir)
        self.trainer, self.model_dir, self.log = trainer, model_dir, log
        self.max_steps, self.eval_every = max_steps, eval_every
        self.steps_per_call, self.checkpoint_every = steps_per_call, checkpoint_every
        self.strategy = trainer.strategy
        self.history = summaries.History(
            self._write_path("history.csv"), members="member" in trainer.columns
        )
        self.board = None  # made by _start(), closed by _close()
        self.interrupted = None  # the stop request that ended the loop
        self.last_step = None
        # (time, step) at the end of the first compiled call: the progress
        # line's speed leaves that call's tracing and compiling out.
        self._timed_from = None

    @classmethod
    def with_cadence_of(cls, config, *, trainer, model_dir: str, log=print):
        """A controller with ``config``'s cadence (a :class:`lowtf.TrainConfig`)."""
        return cls(
            trainer=trainer,
            model_dir=model_dir,
            max_steps=config.max_steps,
            eval_every=config.eval_every,
            steps_per_call=config.steps_per_call,
            checkpoint_every=config.checkpoint_every,
            log=log,
        )

    def fit(self) -> str:
        """Holds the lock, resumes or starts, trains, and finishes; the stop reason.

        Nothing is written before the trainer, ``run.json`` and any
        checkpoint in ``model_dir`` have been checked: a refused start
        leaves the directory as it was.
        """
        model_dir = self.model_dir
        existed = tf.io.gfile.exists(model_dir)
        # One run per model directory, held by the chief for the whole call.
        lock = None
        if distribute.is_chief(self.strategy):
            lock = rundir.RunLock(model_dir, self.log)
            lock.acquire()
        try:
            self._check_kind()
            self._resume()
            try:
                self._start()
                with StopSignals() as signals:
                    reason = self._loop(signals)
                self.last_step = self.trainer.step  # before finish() rewinds it
                self.trainer.finish(reason)
            finally:
                # Whatever happened, an exception included: the writers are
                # closed and scratch copies go; checkpoints and best/ stay.
                self._close()
        finally:
            if lock is not None:
                lock.release()
            rundir.remove_if_made_empty(model_dir, existed)
        return reason

    # -- the model directory --------------------------------------------------

    def _check_kind(self) -> None:
        """Refuses a directory that holds another kind of run, before any change."""
        kind = rundir.run_kind(self.model_dir)
        if kind is not None and kind != self.trainer.kind:
            raise ValueError(
                f"`model_dir` ({self.model_dir!r}) holds the run of {_KINDS[kind]}, "
                f"not of {_KINDS[self.trainer.kind].split(' (')[0]}; pick another "
                "model_dir (nothing was changed)"
            )

    def _resume(self) -> None:
        """Restores the latest checkpoint, if any, of the same run; checks its files."""
        trainer = self.trainer
        self.record = rundir.read_record(self.model_dir)  # refuses a damaged one
        requested_rate = learning_rate(trainer.optimizer)
        self.resumed = trainer.restore_latest()
        self.changes = []
        if not self.resumed:
            return
        if self.record is not None:
            differ = rundir.differences(self.record["identity"], trainer.identity)
            if differ:
                raise ValueError(
                    f"`model_dir` ({self.model_dir!r}) belongs to another "
                    f"{trainer.noun}, which this one would silently mix with: "
                    f"{'; '.join(differ)}. Resume with the recorded "
                    f"{trainer.members}, or pick another model_dir (nothing was "
                    "changed)"
                )
        path = os.path.join(self.model_dir, "history.csv")
        if tf.io.gfile.exists(path):
            summaries.check_history(path, trainer.columns)
        self._apply_changes(requested_rate)

    def _apply_changes(self, requested_rate) -> None:
        """Applies what may change on a resume: the caller's learning rate, logged."""
        optimizer = self.trainer.optimizer
        recorded = (self.record or {}).get("settings", {})
        # The checkpoint restored the optimizer's saved rate; the caller's wins.
        restored_rate = learning_rate(optimizer)
        schedule = isinstance(optimizer.get_config().get("learning_rate"), dict)
        if (
            not schedule
            and requested_rate is not None
            and restored_rate != requested_rate
        ):
            optimizer.learning_rate = requested_rate  # Keras assigns its variable
            recorded = {**recorded, "learning_rate": restored_rate}
        self.changes = [
            f"{name} {short(recorded[name])} -> {short(value)}"
            for name, value in self._settings().items()
            if name in recorded and recorded[name] != value
        ]

    def _settings(self) -> dict:
        """The settings a resume may change; applied, logged and recorded."""
        return {**self.cadence, **self.trainer.settings()}

    def _write_record(self) -> None:
        """Records in run.json what defines the run and the settings it runs with."""
        record = dict(self.record or {})
        record["identity"] = self.trainer.identity
        record["settings"] = self._settings()
        if self.resumed:
            record.setdefault("resumes", []).append(
                {"step": self.trainer.step, "changed": self.changes}
            )
        if distribute.is_chief(self.strategy):
            rundir.write_record(self.model_dir, record)

    def _write_path(self, name: str) -> str:
        return checkpointing.write_path(self.model_dir, name, self.strategy)

    def _start(self) -> None:
        """Writes ``model_dir``: run.json, history, writers; step 0 or the resume."""
        tf.io.gfile.makedirs(self.model_dir)
        self._write_record()
        # A worker other than the chief writes into its scratch twin (_write_path).
        tf.io.gfile.makedirs(os.path.dirname(self.history.path))
        self.history.start(keep_upto=self.trainer.step if self.resumed else None)
        self.board = summaries.Summaries(self._write_path("tensorboard"))
        if self.resumed:
            if self.trainer.note:
                self.log(self.trainer.note)
            self.log(f"resuming from {self.resumed} at step {self.trainer.step}")
            for change in self.changes:
                self.log(f"changed on resume: {change}")
        self.trainer.start(bool(self.resumed))
        if not self.resumed:
            self._evaluate()
            self._save()

    def _close(self) -> None:
        """Closes the TensorBoard writers and deletes this worker's scratch copies."""
        try:
            if self.board is not None:
                self.board.close()
                self.board = None
        finally:
            checkpointing.remove_scratch(self.model_dir, self.strategy)

    # -- the loop -------------------------------------------------------------

    def _loop(self, signals) -> str:
        """Trains until a stop; returns the reason, one of :data:`STOP_REASONS`."""
        try:
            reason = None
            while reason is None:
                reason = self._ending(signals) or self._advance()
            return reason
        except KeyboardInterrupt:
            # Raised outside our SIGINT handler (a second Ctrl-C, or a thread):
            # the state may be mid-update, so the last checkpoint is kept as is.
            self.log(f"KeyboardInterrupt at step {self.trainer.step}: stopping")
            self.interrupted = "KeyboardInterrupt"
            return "interrupted"

    def _ending(self, signals) -> str | None:
        """The reason to stop before the next call, after saving; None to go on."""
        step = self.trainer.step
        if self.trainer.done:
            reason = "patience"
        elif step >= self.max_steps:
            reason = "max_steps"
        elif distribute.any_worker(bool(signals.requested), self.strategy):
            # Workers get a signal at different steps; they stop together.
            self.interrupted = signals.requested or "a stop request on another worker"
            self.log(f"{self.interrupted} received at step {step}: stopping")
            reason = "interrupted"
        else:
            return None
        return reason if self._save() else "non_finite"

    def _advance(self) -> str | None:
        """One compiled call up to the next boundary, then its evaluation and save.

        Returns "non_finite" if the call or the evaluation broke the run, else None.
        """
        step = self.trainer.step
        boundary = min(
            next_multiple(step, self.eval_every),
            next_multiple(step, self.checkpoint_every),
            self.max_steps,
            *self.trainer.boundaries(step),
        )
        broken = self.trainer.run(min(self.steps_per_call, boundary - step))
        if broken:
            self._non_finite(broken)
            return "non_finite"
        step = self.trainer.step
        if self._timed_from is None:
            self._timed_from = (time.monotonic(), step)
        if step % self.eval_every == 0 or step == self.max_steps:
            broken = self._evaluate()
            if broken:
                self._non_finite(broken)
                return "non_finite"
        if step % self.checkpoint_every == 0 and not self._save():
            return "non_finite"
        return None

    def _evaluate(self) -> str | None:
        """Evaluates; writes history, TensorBoard and the progress line; what broke."""
        evaluated = self.trainer.evaluate()
        if evaluated.rows:
            self.history.extend(evaluated.rows)
        if evaluated.board:
            self.board.write(evaluated.board, evaluated.unit_norms)
        if evaluated.progress is not None:
            self.log(self._progress(evaluated))
        return evaluated.broken

    def _save(self) -> bool:
        """Saves the latest checkpoint; False, and nothing saved, on NaN/Inf weights."""
        if self.trainer.save():
            return True
        self._non_finite(f"weights at step {self.trainer.step}")
        return False

    def _non_finite(self, what: str) -> None:
        self.log(
            f"non-finite {what}: stopping; the latest checkpoint (step "
            f"{self.trainer.saved_step}) is left intact. Run again with a lower "
            "learning rate (the run resumes from that checkpoint with it), or look "
            "for NaN/Inf in the data."
        )

    def _progress(self, evaluated: Evaluated) -> str:
        """The one-line log of an evaluation.

        ``step 400/10000  train ce 0.0091 acc 1.000  val ce 0.1194 acc 0.953
        best @ 300 (stop in 900)  ETA 0:00:05``: the step, the trainer's
        part (a single model's training means since the last evaluation and
        its validation metrics and best step; a population's members still
        training and its leader), the steps left before early stopping ends
        the run unless the monitor improves (when that comes before
        max_steps), a population's steps/s (each a step of all its members),
        and the time to whichever end comes first at the speed measured since
        the first, compiling, call.
        """
        step, end, stop_in = evaluated.step, self.max_steps, ""
        by_patience = self.trainer.patience_end()
        if by_patience is not None:
            # Patience is checked at evaluations.
            by_patience = next_multiple(by_patience - 1, self.eval_every)
            if by_patience < end:
                end, stop_in = by_patience, f" (stop in {by_patience - step})"
        eta, rate = "?", None
        timed = self._timed_from
        if timed is not None and step > timed[1]:
            rate = (step - timed[1]) / max(time.monotonic() - timed[0], 1e-9)
            eta = clock(max(end - step, 0) / rate)
        speed = ""
        if self.trainer.kind == "population":  # its line has room for the speed
            speed = f"  {rate:,.0f} steps/s" if rate else "  - steps/s"
        return (
            f"step {step}/{self.max_steps}  {evaluated.progress}{stop_in}{speed}  ETA {eta}"
        )


def check_model_dir(model_dir: str) -> None:
    """Refuses a ``model_dir`` that is a file or that TensorFlow reads as a glob."""
    rundir.check_path(model_dir)
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ValueError(f"`model_dir` ({model_dir!r}) is a file; pick a directory")


class StopSignals:
    """Turns SIGTERM and the first SIGINT into a stop request at the next call boundary.

    A second SIGINT raises KeyboardInterrupt at once. Handlers can only be
    installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self):
        self.requested = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        return False


def short(value) -> str:
    """A setting as a log shows it: floats to 6 significant digits."""
    return format(value, ".6g") if isinstance(value, float) else repr(value)


def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``."""
    return (step // every + 1) * every


def learning_rate(optimizer) -> float | None:
    """The optimizer's current learning rate, or None when it has no number."""
    try:
        return float(np.asarray(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None


def clock(seconds: float) -> str:
    """``seconds`` as ``h:mm:ss``."""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
