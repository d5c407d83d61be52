"""The reference training loop: eval cadence, early stopping, checkpoints, logs.

:func:`fit` is the outer loop around :class:`lowtf.TrainStep` (the inner,
compiled one). It owns the global step's cadence, the checkpoints, the
summaries and the one-line progress log:

* ``step.run(k)`` calls are cut so that they land exactly on every
  ``eval_every`` (and ``checkpoint_every``) boundary, whatever
  ``steps_per_call`` is; ``k`` is a tensor, so nothing retraces.
* At each boundary the model is evaluated on the validation set (inference
  mode) and :class:`lowtf.EarlyStopping` is updated; the reported training
  cross-entropy and accuracy are the means of the step metrics over the steps
  since the previous evaluation (in training mode: dropout on).
* ``model_dir/ckpt`` holds the "latest" checkpoints (a
  ``tf.train.CheckpointManager``, every ``checkpoint_every`` steps and when
  training ends): model, optimizer, global step, data position (the
  ``TrainStep`` tracks them), early-stopping state and the running training
  means. Calling :func:`fit` again on the same ``model_dir`` resumes from it;
  with deterministic ops a run killed at any moment and resumed ends exactly
  as an uninterrupted one.
* ``model_dir/best`` holds the best snapshot (model, optimizer, step), see
  :mod:`lowtf.train.early_stopping`; ``history.csv`` and ``tensorboard/`` are
  described in :mod:`lowtf.train.summaries`.

Every ending that returns a :class:`FitResult` (patience, max_steps, a
non-finite loss, KeyboardInterrupt, SIGINT or SIGTERM) restores the best
snapshot into the model; an exception raised by :func:`fit` propagates
without restoring anything (see its docstring). On every way out the
TensorBoard writers are closed and scratch copies deleted.

``model_dir`` is read and written through ``tf.io.gfile`` only, so it may be
on any TensorFlow file system (local, ``gs://``, ``ram://``).

Called inside a ``tf.distribute`` strategy's scope (see
:mod:`lowtf.distribute`), every worker runs the same loop: steps and
evaluations are aggregated across replicas, only the chief writes into
``model_dir`` (the other workers take part in each save, which may need
collective ops, through a scratch copy deleted at the end), and every worker
resumes from, and ends holding, the chief's checkpoints.

``fit(population, ...)`` trains a :class:`lowtf.Population` through the
same controller (:class:`lowtf.train.controller.Controller`), with the
cadence of the :class:`TrainConfig` (see :func:`fit`).

This module is the public surface (:func:`fit`, :class:`TrainConfig`,
:class:`FitResult`); the loop is ``lowtf/train/controller.py``, one model as
its trainer ``lowtf/train/trainer.py``, the checkpoints
``lowtf/train/checkpointing.py``.
"""

from __future__ import annotations

import dataclasses
import os

from lowtf import _checks
from lowtf.train import early_stopping
from lowtf.train import step as step_lib

# FitResult.stop_reason's values; StopSignals is the sweep's import.
from lowtf.train.controller import (  # noqa: F401
    STOP_REASONS,
    Controller,
    StopSignals,
    check_model_dir,
)
from lowtf.train.metrics import MONITORS
from lowtf.train.trainer import StepTrainer

# The TrainConfig fields a population's loop takes; the others are the
# Population's own settings (its constructor's arguments) or do not apply.
POPULATION_FIELDS = (
    "max_steps",
    "eval_every",
    "steps_per_call",
    "checkpoint_every",
    "keep_checkpoints",
    "start_from_step",
    "baseline",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Cadence and early-stopping settings of :func:`fit`; all steps are global steps.

    Attributes:
      batch_size: examples per training step (default 128, as ``bin/train``);
        a :class:`lowtf.data.Stream` brings its own, and this one is unused.
      max_steps: stop at this step at the latest (default 10000).
      eval_every: evaluate every this many steps (default 100).
      steps_per_call: steps per compiled call at most (default 100); calls
        are cut to land on evaluation and checkpoint steps.
      patience: stop once the monitored metric has not improved for this
        many steps (default 1000, as ``EarlyStopping`` and ``bin/train``).
      min_delta: smallest change that counts as an improvement (default 0.0).
      monitor: one of :data:`lowtf.train.metrics.MONITORS` (default ``"val_cross_entropy"``).
      mode: ``"auto"`` (default), ``"min"`` or ``"max"``.
      start_from_step: no early stop before this step (default 0; Keras'
        ``start_from_epoch``, in steps).
      baseline: the value the monitored metric must beat for an improvement
        to restart the patience (default None: any improvement).
      checkpoint_every: save the "latest" checkpoint every this many steps
        (default 1000).
      seed: seed of the per-epoch shuffles of the training set (default 0);
        dropout masks use ``StepOptions.seed``.
      keep_checkpoints: how many "latest" checkpoints to keep (default 3).
      eval_batch_size: examples per evaluation call (default 4096).
      unfreeze_at: unfreeze every frozen layer (see
        :func:`lowtf.train.freeze`) once the global step reaches this step
        and fine-tune everything from there, at the optimizer's learning
        rate (default None: layers frozen when ``fit`` starts stay frozen).
        Calls are cut to land on it. Part of the run's identity: a resume
        past this step resumes unfrozen.
    """

    batch_size: int = 128
    max_steps: int = 10000
    eval_every: int = 100
    steps_per_call: int = 100
    patience: int = 1000
    min_delta: float = 0.0
    monitor: str = "val_cross_entropy"
    mode: str = "auto"
    start_from_step: int = 0
    baseline: float | None = None
    checkpoint_every: int = 1000
    seed: int = 0
    keep_checkpoints: int = 3
    eval_batch_size: int = 4096
    unfreeze_at: int | None = None

    def __post_init__(self):
        for name in (
            "batch_size",
            "max_steps",
            "eval_every",
            "steps_per_call",
            "patience",
            "checkpoint_every",
            "keep_checkpoints",
            "eval_batch_size",
        ):
            _checks.positive_int(name, getattr(self, name))
        _checks.non_negative("min_delta", self.min_delta)
        _checks.one_of("monitor", self.monitor, MONITORS)
        _checks.one_of("mode", self.mode, early_stopping.MODES)
        _checks.non_negative_int("start_from_step", self.start_from_step)
        if self.baseline is not None:
            _checks.finite("baseline", self.baseline)
        _checks.non_negative_int("seed", self.seed)
        if self.unfreeze_at is not None:
            _checks.positive_int("unfreeze_at", self.unfreeze_at)


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` reports; the model holds the best snapshot's weights.

    Attributes:
      best_step: step of the best evaluation (-1 if none was recorded).
      best_value: the monitored metric there.
      monitor: the monitored metric's name.
      stop_reason: one of :data:`STOP_REASONS`.
      last_step: the global step when training stopped.
      wall_seconds: wall time of the run, over every session: a resumed
        run adds its earlier sessions' time up to the checkpoint it resumed
        from.
      history: every evaluation row of the run, earlier sessions included
        (the columns of :data:`lowtf.train.metrics.COLUMNS`).
    """

    best_step: int
    best_value: float
    monitor: str
    stop_reason: str
    last_step: int
    wall_seconds: float
    history: list


def fit(
    model,
    optimizer=None,
    *,
    train: tuple | None = None,
    validation: tuple | None = None,
    model_dir: str,
    config: TrainConfig = TrainConfig(),
    step_options: step_lib.StepOptions = step_lib.StepOptions(),
    augment=None,
    log=print,
    run_settings: dict | None = None,
) -> FitResult:
    """Trains ``model`` with step-based early stopping; resumes from ``model_dir``.

    Nothing is written until the data, the model and any checkpoint already
    in ``model_dir`` have been checked, so a failed start leaves an existing
    directory as it was; ``log`` is first called after those checks, once
    ``model_dir`` exists.

    Args:
      model: a lowtf model (or Keras model) returning logits. To train
        under a ``tf.distribute`` strategy, make it, the optimizer, and call
        :func:`fit`, all inside ``with strategy.scope():``. Or a
        :class:`lowtf.Population` (see below).
      optimizer: a Keras optimizer (None for a population, which has its own).
      train: ``(x, y)`` training arrays, held in memory, or a
        :class:`lowtf.data.Stream` of batches from a ``tf.data`` pipeline
        (TFRecord shards, a CSV file read as it goes), whose position is
        checkpointed with the rest: a resumed run reads the same batches as
        an uninterrupted one. A stream's records are checked as they come: a
        corrupt one, or NaN features or bad labels, raise a
        :class:`lowtf.DataError` naming them (``model_dir`` keeps the latest
        checkpoint and the best snapshot it last saved). None for a
        population.
      validation: ``(x, y)`` validation arrays, or a finite ``tf.data.Dataset``
        of ``(x, y)`` batches or examples, read once into memory. None for a
        population.
      model_dir: where checkpoints, the best snapshot, history.csv and
        TensorBoard events go; an existing one is resumed. A path on any
        TensorFlow file system (local, ``gs://...``, ``ram://...``).
      config: :class:`TrainConfig`.
      step_options: :class:`lowtf.StepOptions` of the compiled step.
      augment: optional callable applied to every training batch inside the
        step (see :class:`lowtf.TrainStep`), e.g. a ``lowtf.augment``
        pipeline; evaluation never augments. Default None.
      log: called with each progress line (default ``print``).
      run_settings: further settings that define the run (JSON-able), e.g.
        the data set's name; recorded in ``model_dir/run.json`` with the
        model, the optimizer, the data's content hash and the seeds, and
        compared on resume (default None).

    A model directory belongs to one run. ``fit`` holds ``model_dir/lock``
    while it runs (a second call is refused, naming the holder; a lock left
    by a dead process of this host is taken over), records the run's
    defining settings in ``run.json`` and refuses to resume with others
    (each differing setting listed with both values). What may change on a
    resume is applied and logged: ``max_steps``, the evaluation, checkpoint
    and patience settings, and the optimizer's learning rate (the one given
    replaces the saved one). A directory with traces of an earlier run
    (``ckpt/``, ``best/``, ``history.csv``) is resumed from the newest
    readable checkpoint or refused, never started from step 0.

    How ``fit`` ends, and what the model holds then:

    * patience, ``max_steps``, a SIGTERM or first SIGINT (Ctrl-C), or a
      KeyboardInterrupt raised while training (a second Ctrl-C): the latest
      state is saved (not after a KeyboardInterrupt, which may land
      mid-update), and the best snapshot is restored into the model;
    * a NaN/Inf loss or weights: nothing new is saved; the best snapshot is
      restored, or, if none was recorded yet, the latest checkpoint;
    * with no best snapshot recorded (a training metric monitored, stopped
      before its first evaluation), the model keeps its last weights;
    * an exception (a failing op, an error raised by ``log``, a
      KeyboardInterrupt during the set-up, the step-0 evaluation or the final
      restore): it propagates and nothing is restored; the model holds
      whatever weights it had, and ``model_dir`` keeps the latest checkpoint
      and best snapshot it last saved (the best snapshot is neither pruned nor
      rewritten), so calling :func:`fit` again resumes from there.

    In every case the TensorBoard writers are closed and this worker's
    scratch copies deleted before ``fit`` returns or raises.

    A :class:`lowtf.Population` as ``model`` is trained by the same
    controller, member by member (see
    :func:`lowtf.population.fit.fit_members`): the same lock, run.json
    (its members' settings included), resume, stop signals, history.csv
    (a row per member per evaluation) and TensorBoard (tags per member); a
    member whose loss or weights go NaN/Inf stops as diverged with its best
    weights, and the others go on. It returns a
    :class:`~lowtf.population.PopulationResult`. Of ``config`` it takes
    :data:`POPULATION_FIELDS`: ``max_steps``, ``eval_every``,
    ``steps_per_call``, ``checkpoint_every``, ``keep_checkpoints``,
    ``start_from_step`` and ``baseline``; the other fields must keep their
    defaults, as the population has its own (``batch_size``, ``patience``,
    ``min_delta``, ``monitor``, ``mode``, ``seed`` (its ``seeds``),
    ``eval_batch_size`` are the Population's arguments; ``unfreeze_at``
    does not apply), and so must ``optimizer``, ``train``, ``validation``,
    ``step_options`` and ``augment``. ``log`` and ``run_settings`` apply.
    A model directory holds one kind of run: a population's is refused
    for one model, and one model's for a population, each file left as it
    was.

    Returns:
      A :class:`FitResult`; the model then holds the best snapshot. For a
      population, a :class:`~lowtf.population.PopulationResult`.

    Raises:
      ValueError: bad arguments (validation labels the model's head cannot
        take, validation features of another dtype or shape than the
        training ones, ``monitor="regularization_loss"`` on a model without
        regularization, ...), or a ``model_dir`` whose latest checkpoint
        does not fit this model and data, cannot be read, or is named in
        ``ckpt/checkpoint`` but missing.
      Exception: whatever training raises, unchanged (see above).
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"`config` ({config!r}) must be a lowtf.TrainConfig")
    # Imported here: lowtf.population is built on lowtf.train.
    from lowtf.population import Population
    from lowtf.population.fit import fit_members

    if isinstance(model, Population):
        given = {
            "optimizer": optimizer,
            "train": train,
            "validation": validation,
            "step_options": step_options,
            "augment": augment,
        }
        _check_population_arguments(given, config)
        return fit_members(
            model,
            model_dir=model_dir,
            config=config,
            log=log,
            run_settings=run_settings,
        )
    for name, value in (
        ("optimizer", optimizer),
        ("train", train),
        ("validation", validation),
    ):
        if value is None:
            raise ValueError(
                f"`{name}` is required to fit a model; pass it (None is for a "
                "lowtf.Population)"
            )
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")
    model_dir = os.fspath(model_dir)
    check_model_dir(model_dir)
    trainer = StepTrainer(
        model,
        optimizer,
        train,
        validation,
        model_dir,
        config,
        step_options,
        log,
        augment,
        run_settings,
    )
    controller = Controller.with_cadence_of(
        config, trainer=trainer, model_dir=model_dir, log=log
    )
    reason = controller.fit()
    stopper = trainer.stopper
    return FitResult(
        best_step=int(stopper.best_step.numpy()),
        best_value=float(stopper.best_value.numpy()),
        monitor=config.monitor,
        stop_reason=reason,
        last_step=controller.last_step,
        wall_seconds=trainer.clock.total(),
        history=[dict(row) for row in controller.history.rows],
    )


def _check_population_arguments(given: dict, config: TrainConfig) -> None:
    """Refuses what ``fit`` takes for one model but a population has of its own."""
    defaults = {"step_options": step_lib.StepOptions()}
    for name, value in given.items():
        if value is not None and value != defaults.get(name):
            # Named, not shown: data arrays and optimizers print over many lines.
            raise ValueError(
                f"`{name}` was given, but it does not apply to a lowtf.Population, "
                "which holds its own (its optimizer, data, compile and augmentation "
                "settings are its constructor's arguments); leave it out"
            )
    default = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name in POPULATION_FIELDS:
            continue
        if value != getattr(default, field.name):
            raise ValueError(
                f"`config.{field.name}` ({value!r}) does not apply to a "
                "lowtf.Population: set it on the Population (its batch_size, "
                "patience, min_delta, monitor, mode, seeds, eval_batch_size), or "
                f"leave TrainConfig's default ({getattr(default, field.name)!r})"
            )
