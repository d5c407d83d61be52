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
  :mod:`lowtf.early_stopping`; ``history.csv`` and ``tensorboard/`` are
  described in :mod:`lowtf.summaries`.

Every ending (patience, max_steps, a non-finite loss, KeyboardInterrupt,
SIGINT or SIGTERM) restores the best snapshot into the model.

Called inside a ``tf.distribute`` strategy's scope (see
:mod:`lowtf.distribute`), every worker runs the same loop: steps and
evaluations are aggregated across replicas, only the chief writes into
``model_dir`` (the other workers take part in each save, which may need
collective ops, through a scratch copy deleted at the end), and every worker
resumes from, and ends holding, the chief's checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf

from lowtf import (
    _checks,
    distribute,
    early_stopping,
    regularizers,
    summaries,
)
from lowtf import (
    step as step_lib,
)

MONITORS = (
    "val_cross_entropy",
    "val_accuracy",
    "train_cross_entropy",
    "train_accuracy",
    "regularization_loss",
    "total_loss",
)
STOP_REASONS = ("patience", "max_steps", "non_finite", "interrupted")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Cadence and early-stopping settings of :func:`fit`; all steps are global steps.

    Attributes:
      batch_size: examples per training step (default 500).
      max_steps: stop at this step at the latest (default 10000).
      eval_every: evaluate every this many steps (default 100).
      steps_per_call: steps per compiled call at most (default 100); calls
        are cut to land on evaluation and checkpoint steps.
      patience: stop once the monitored metric has not improved for this
        many steps (default 2000); see :class:`lowtf.EarlyStopping`.
      min_delta: smallest change that counts as an improvement (default 0.0).
      monitor: one of :data:`MONITORS` (default ``"val_cross_entropy"``).
      mode: ``"auto"`` (default), ``"min"`` or ``"max"``.
      warmup: no early stop before this step (default 0).
      checkpoint_every: save the "latest" checkpoint every this many steps
        (default 1000).
      seed: seed of the per-epoch shuffles of the training set (default 0);
        dropout masks use ``StepOptions.seed``.
      keep_checkpoints: how many "latest" checkpoints to keep (default 3).
      eval_batch_size: examples per evaluation call (default 4096).
    """

    batch_size: int = 500
    max_steps: int = 10000
    eval_every: int = 100
    steps_per_call: int = 100
    patience: int = 2000
    min_delta: float = 0.0
    monitor: str = "val_cross_entropy"
    mode: str = "auto"
    warmup: int = 0
    checkpoint_every: int = 1000
    seed: int = 0
    keep_checkpoints: int = 3
    eval_batch_size: int = 4096

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
        _checks.non_negative_int("warmup", self.warmup)
        _checks.non_negative_int("seed", self.seed)


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` reports; the model holds the best snapshot's weights.

    Attributes:
      best_step: step of the best evaluation (-1 if none was recorded).
      best_value: the monitored metric there.
      monitor: the monitored metric's name.
      stop_reason: one of :data:`STOP_REASONS`.
      last_step: the global step when training stopped.
      wall_seconds: wall time of this call.
      history: every evaluation row of the run, earlier sessions included
        (the columns of :data:`lowtf.summaries.HISTORY_COLUMNS`).
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
    optimizer,
    *,
    train: tuple,
    validation: tuple,
    model_dir: str,
    config: TrainConfig = TrainConfig(),
    step_options: step_lib.StepOptions = step_lib.StepOptions(),
    augment=None,
    log=print,
) -> FitResult:
    """Trains ``model`` with step-based early stopping; resumes from ``model_dir``.

    Nothing is written until the data, the model and any checkpoint already
    in ``model_dir`` have been checked, so a failed start leaves an existing
    directory as it was; ``log`` is first called after those checks, once
    ``model_dir`` exists.

    Args:
      model: a lowtf model (or Keras model) returning logits. To train
        under a ``tf.distribute`` strategy, make it, the optimizer, and call
        :func:`fit`, all inside ``with strategy.scope():``.
      optimizer: a Keras optimizer.
      train: ``(x, y)`` training arrays, held in memory.
      validation: ``(x, y)`` validation arrays.
      model_dir: where checkpoints, the best snapshot, history.csv and
        TensorBoard events go; an existing one is resumed.
      config: :class:`TrainConfig`.
      step_options: :class:`lowtf.StepOptions` of the compiled step.
      augment: optional callable applied to every training batch inside the
        step (see :class:`lowtf.TrainStep`), e.g. a ``lowtf.augment``
        pipeline; evaluation never augments. Default None.
      log: called with each progress line (default ``print``).

    Returns:
      A :class:`FitResult`; the model then holds the best snapshot.

    Raises:
      ValueError: bad arguments, or a ``model_dir`` whose checkpoint does not
        fit this model and data.
    """
    started = time.monotonic()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"`config` ({config!r}) must be a lowtf.TrainConfig")
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")
    run = _Run(
        model,
        optimizer,
        train,
        validation,
        os.fspath(model_dir),
        config,
        step_options,
        log,
        augment,
    )
    with _StopSignals() as signals:
        reason = run.loop(signals)
    last_step = run.last_step  # before the best snapshot rewinds the step counter
    run.finish(reason)
    stopper = run.stopper
    return FitResult(
        best_step=int(stopper.best_step.numpy()),
        best_value=float(stopper.best_value.numpy()),
        monitor=config.monitor,
        stop_reason=reason,
        last_step=last_step,
        wall_seconds=time.monotonic() - started,
        history=[dict(row) for row in run.history.rows],
    )


class _RunningMeans(tf.Module):
    """Sums of the step metrics since the last evaluation (checkpointed)."""

    def __init__(self):
        super().__init__(name="running_means")
        self.sums = tf.Variable(
            tf.zeros([len(step_lib.METRICS)], tf.float64), name="sums"
        )
        self.count = tf.Variable(0, dtype=tf.int64, name="count")

    def add(self, means: dict, num_steps: int) -> None:
        values = [means[name] * num_steps for name in step_lib.METRICS]
        self.sums.assign_add(tf.constant(values, tf.float64))
        self.count.assign_add(num_steps)

    def means(self) -> dict | None:
        count = int(self.count.numpy())
        if not count:
            return None
        return dict(
            zip(step_lib.METRICS, (float(s) / count for s in self.sums.numpy()))
        )

    def reset(self) -> None:
        self.sums.assign(tf.zeros_like(self.sums))
        self.count.assign(0)


class _Run:
    """One call of :func:`fit`: the objects it builds and the loop over them."""

    def __init__(
        self,
        model,
        optimizer,
        train,
        validation,
        model_dir,
        config,
        options,
        log,
        augment=None,
    ):
        self.config, self.log, self.model_dir = config, log, model_dir
        x, y = _pair("train", train)
        self.x_val, self.y_val = _pair("validation", validation)
        if x.shape[1:] != self.x_val.shape[1:]:
            raise ValueError(
                f"training examples have shape {x.shape[1:]} but validation examples "
                f"{self.x_val.shape[1:]}; both sets need the same features"
            )
        if os.path.exists(model_dir) and not os.path.isdir(model_dir):
            raise ValueError(f"`model_dir` ({model_dir!r}) is a file; pick a directory")
        self.model, self.optimizer = model, optimizer
        self.strategy = tf.distribute.get_strategy()
        data = step_lib.InMemoryBatches(x, y, config.batch_size, seed=config.seed)
        self.step = step_lib.TrainStep(
            model, optimizer, data=data, augment=augment, options=options
        )
        self.step.build(data.x[:1])
        self.evaluator = step_lib.Evaluator(
            model,
            loss=options.loss,
            batch_size=config.eval_batch_size,
            # The step's options, where jit_compile="auto" is resolved.
            jit_compile=self.step.options.jit_compile and not options.run_eagerly,
        )
        self.snapshot = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=self.step.step
        )
        self.stopper = early_stopping.EarlyStopping(
            monitor=config.monitor,
            mode=config.mode,
            patience=config.patience,
            min_delta=config.min_delta,
            warmup=config.warmup,
            best_dir=self._write_path("best"),
            checkpoint=self.snapshot,
            prune_on_save=False,
        )
        self.running = _RunningMeans()
        self.state = tf.train.Checkpoint(
            train_step=self.step, early_stopping=self.stopper, running=self.running
        )
        self.manager = tf.train.CheckpointManager(
            self.state,
            self._write_path("ckpt"),
            max_to_keep=config.keep_checkpoints,
            checkpoint_name="ckpt",
        )
        resumed = self._restore_latest()
        # Every worker has read the chief's checkpoint before any one writes.
        distribute.barrier(self.strategy)
        # Everything is checked; from here on the directory is written.
        tf.io.gfile.makedirs(model_dir)
        # A worker other than the chief writes into its scratch twin (_write_path).
        tf.io.gfile.makedirs(os.path.dirname(self._write_path("history.csv")))
        self.history = summaries.History(self._write_path("history.csv"))
        self.history.start(keep_upto=self.last_step if resumed else None)
        self.stopper.prune()
        self.board = summaries.Summaries(self._write_path("tensorboard"))
        self.saved_step = self.last_step if resumed else None
        if resumed:
            log(f"resuming from {resumed} at step {self.last_step}")
        else:
            self._evaluate()
            self._save()

    @property
    def last_step(self) -> int:
        return int(self.step.step.numpy())

    # -- the loop -------------------------------------------------------------

    def loop(self, signals) -> str:
        """Trains until a stop; returns the stop reason."""
        self._tick = (time.monotonic(), self.last_step)
        try:
            reason = None
            while reason is None:
                reason = self._ending(signals) or self._advance()
            return reason
        except KeyboardInterrupt:
            # Raised outside our SIGINT handler (a second Ctrl-C, or a thread):
            # the state may be mid-update, so the last checkpoint is kept as is.
            self.log(f"KeyboardInterrupt at step {self.last_step}: stopping")
            return "interrupted"

    def _ending(self, signals) -> str | None:
        """The reason to stop before the next call, after saving; None to go on."""
        step = self.last_step
        if self.stopper.stopped:
            reason = "patience"
        elif step >= self.config.max_steps:
            reason = "max_steps"
        elif distribute.any_worker(bool(signals.requested), self.strategy):
            # Workers get a signal at different steps; they stop together.
            what = signals.requested or "a stop request on another worker"
            self.log(f"{what} received at step {step}: stopping")
            reason = "interrupted"
        else:
            return None
        return reason if self._save() else "non_finite"

    def _advance(self) -> str | None:
        """One compiled call up to the next boundary, then its evaluation and save.

        Returns "non_finite" if the call or the evaluation broke down, else None.
        """
        config = self.config
        step = self.last_step
        num_steps = min(config.steps_per_call, self._next_boundary(step) - step)
        means = step_lib.as_numpy(self.step.run(num_steps))
        bad = [name for name, value in means.items() if not math.isfinite(value)]
        if bad:
            where = f"in steps {step + 1}-{step + num_steps}"
            self._non_finite(f"training loss ({bad[0]} = {means[bad[0]]}) {where}")
            return "non_finite"
        self.running.add(means, num_steps)
        step += num_steps
        if step % config.eval_every == 0 or step == config.max_steps:
            row = self._evaluate()
            if not math.isfinite(row["val_cross_entropy"]):
                self._non_finite(f"validation cross-entropy at step {step}")
                return "non_finite"
        if step % config.checkpoint_every == 0 and not self._save():
            return "non_finite"
        return None

    def _non_finite(self, what: str) -> None:
        self.log(
            f"non-finite {what}: stopping; the latest checkpoint (step "
            f"{self.saved_step}) is left intact. Lower the learning rate or look "
            "for NaN/Inf in the data."
        )

    def finish(self, reason: str) -> None:
        """Logs why training stopped and restores the best snapshot."""
        stopper = self.stopper
        best_step = int(stopper.best_step.numpy())
        best = float(stopper.best_value.numpy())
        if reason == "patience":
            idle = int(stopper.steps_without_progress.numpy())
            self.log(
                f"early stop at step {self.last_step}: {stopper.monitor} has not "
                f"improved for {idle} steps (patience {stopper.patience})"
            )
        elif reason == "max_steps":
            self.log(f"reached max_steps ({self.config.max_steps})")
        if stopper.has_best:
            self._restore_best()
            self.log(
                f"restored the best snapshot: step {best_step}, "
                f"{stopper.monitor} {best:.6g}"
            )
        else:
            self.log("no best snapshot was recorded; the model keeps its last weights")
        self.board.close()
        for name in _WRITTEN:
            distribute.remove_write_dir(
                os.path.join(self.model_dir, name), self.strategy
            )

    # -- pieces ---------------------------------------------------------------

    def _write_path(self, name: str) -> str:
        # The chief writes into model_dir; another worker into a scratch twin.
        return distribute.write_dir(os.path.join(self.model_dir, name), self.strategy)

    def _restore_best(self) -> None:
        # Every worker waits until the chief's snapshot is complete, then
        # reads the chief's: a worker's own scratch copy may be gone.
        distribute.barrier(self.strategy)
        if distribute.is_chief(self.strategy):
            self.stopper.restore_best()
            return
        best_dir = os.path.join(self.model_dir, "best")
        pointer = early_stopping.best_checkpoint(best_dir)
        if pointer is None:
            raise ValueError(
                f"this worker cannot read the chief's best snapshot in {best_dir}: "
                "under MultiWorkerMirroredStrategy `model_dir` must be on a file "
                "system every worker shares (NFS, GCS, ...)"
            )
        self.snapshot.read(pointer["prefix"]).assert_existing_objects_matched()

    def _next_boundary(self, step: int) -> int:
        config = self.config
        return min(
            _next_multiple(step, config.eval_every),
            _next_multiple(step, config.checkpoint_every),
            config.max_steps,
        )

    def _evaluate(self) -> dict:
        step = self.last_step
        val = self.evaluator(self.x_val, self.y_val)
        train = self.running.means()
        if train is None:  # step 0: no training step to average yet
            regularization = float(regularizers.total_regularization_loss(self.model))
            train = {"cross_entropy": None, "accuracy": None, "total_loss": None}
        else:
            regularization = train["regularization_loss"]
        row = {
            "step": step,
            "train_cross_entropy": train["cross_entropy"],
            "train_accuracy": train["accuracy"],
            "val_cross_entropy": val["cross_entropy"],
            "val_accuracy": val["accuracy"],
            "regularization_loss": regularization,
            "total_loss": train["total_loss"],
            "learning_rate": _learning_rate(self.optimizer),
        }
        metrics = {
            name: math.nan if row[name] is None else row[name] for name in MONITORS
        }
        self.stopper.update(step, metrics)
        self.running.reset()
        self.history.append(row)
        self.board.write(row, summaries.max_unit_norms(self.model))
        self.log(self._progress(row))
        return row

    def _progress(self, row: dict) -> str:
        now, step = time.monotonic(), row["step"]
        then, start = getattr(self, "_tick", (now, step))
        self._tick = (now, step)
        rate = (step - start) / (now - then) if now > then and step > start else None
        left = self.config.max_steps - step
        eta = _clock(left / rate) if rate else "?"
        speed = f"{rate:,.0f} steps/s" if rate else "- steps/s"
        stopper = self.stopper
        return (
            f"step {step}/{self.config.max_steps}"
            f"  train ce {_fmt(row['train_cross_entropy'])}"
            f" acc {_fmt(row['train_accuracy'])}"
            f"  val ce {_fmt(row['val_cross_entropy'])}"
            f" acc {_fmt(row['val_accuracy'])}"
            f"  reg {_fmt(row['regularization_loss'], '.3g')}"
            f"  {speed}  ETA {eta}"
            f"  best {stopper.monitor} {_fmt(float(stopper.best_value.numpy()))}"
            f" @ {int(stopper.best_step.numpy())}"
        )

    def _save(self) -> bool:
        """Saves the latest checkpoint; False, and nothing saved, on NaN/Inf weights."""
        step = self.last_step
        if step == self.saved_step:
            return True  # already on disk; rewriting it would expose it to a crash
        # The last step of a call can break the weights after its (finite)
        # loss was computed; such a state must not become the one to resume.
        variables = self.model.variables
        if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in variables):
            self._non_finite(f"weights at step {step}")
            return False
        self.manager.save(checkpoint_number=step)
        self.saved_step = step
        # The saved state now names the current best; older snapshots may go.
        self.stopper.prune()
        return True

    def _restore_latest(self) -> str | None:
        # Every worker resumes from the chief's checkpoint (see _write_path).
        path = tf.train.latest_checkpoint(os.path.join(self.model_dir, "ckpt"))
        if path is None:
            return None
        # Compared before restoring: a failed restore would leave the model
        # half overwritten (and TensorFlow warning about it at exit).
        reason = _mismatch(self.state, path)
        if reason is None:
            try:
                self.state.restore(path).assert_consumed()
            except (AssertionError, ValueError, tf.errors.OpError) as error:
                reason = str(error).strip().splitlines()[0][:300]
        if reason is not None:
            raise ValueError(
                f"`model_dir` ({self.model_dir!r}) holds a checkpoint ({path}) that "
                f"does not fit this model, optimizer and data ({reason}); resume with "
                "the same settings or pick a new model_dir"
            )
        return path


def _mismatch(state, path) -> str | None:
    """How the checkpoint at ``path`` differs from ``state``'s variables, or None."""
    with tempfile.TemporaryDirectory() as scratch:
        ours = _variable_specs(state.write(os.path.join(scratch, "probe")))
    theirs = _variable_specs(path)
    for key in sorted(ours.keys() | theirs.keys()):
        if key not in theirs:
            return f"{key} is not in the checkpoint"
        if key not in ours:
            return f"the checkpoint has {key}, which this run does not"
        if ours[key] != theirs[key]:
            return f"{key} is {theirs[key]} in the checkpoint but {ours[key]} here"
    return None


def _variable_specs(path) -> dict:
    reader = tf.train.load_checkpoint(path)
    shapes, dtypes = (
        reader.get_variable_to_shape_map(),
        reader.get_variable_to_dtype_map(),
    )
    specs = {}
    for key, shape in shapes.items():
        if key.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/")):
            continue  # bookkeeping, not state
        name = key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
        specs[name] = f"{dtypes[key].name}{list(shape)}"
    return specs


class _StopSignals:
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


# What _Run writes into model_dir (through distribute.write_dir).
_WRITTEN = ("best", "ckpt", "history.csv", "tensorboard")


def _pair(name: str, data) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"`{name}` must be a pair (x, y) of arrays; got {type(data).__name__}"
        )
    x, y = (np.asarray(a) for a in data)
    if x.ndim < 2 or y.ndim != 1:
        raise ValueError(
            f"`{name}` needs x of shape [n, features...] and y of shape [n]; "
            f"got {x.shape} and {y.shape}"
        )
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"`{name}` has {len(x)} examples but {len(y)} labels; both must match "
            "and be > 0"
        )
    return x, y


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _learning_rate(optimizer) -> float | None:
    try:
        return float(np.asarray(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
