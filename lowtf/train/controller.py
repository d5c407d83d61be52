"""One call of :func:`lowtf.fit`: its set-up, the loop over compiled calls, its endings.

:class:`FitLoop` checks the data, builds the :class:`lowtf.TrainStep`, the
:class:`lowtf.Evaluator`, :class:`lowtf.EarlyStopping` and the checkpoints
(:mod:`lowtf.train.checkpointing`), and resumes from ``model_dir``. Its loop then
alternates ``step.run(k)`` calls, cut so that they land on every evaluation
and checkpoint step, with evaluations: each one updates early stopping and
writes a history row, TensorBoard scalars and the one-line progress log.
Stopping on patience, max_steps or a stop request saves the latest state
first; a non-finite loss or weights, or a KeyboardInterrupt (which may land
mid-update), keep the last checkpoint as it is. Either way
:meth:`FitLoop.finish` restores the best snapshot. An exception propagates
without either; :meth:`FitLoop.close`, run on every way out, closes the
TensorBoard writers and deletes scratch copies, and touches nothing else.

:mod:`lowtf.train.fit` is the public face: :func:`lowtf.fit`, its settings, its
result and the stop signals it turns into stop requests.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import tensorflow as tf

from lowtf import distribute
from lowtf.data import InMemoryBatches, Stream, checks, streams
from lowtf.nn import regularizers
from lowtf.train import checkpointing, early_stopping, rundir, summaries, transfer
from lowtf.train import step as step_lib
from lowtf.train.evaluator import Evaluator
from lowtf.train.metrics import Evaluation


# The StepOptions that change what a run trains, in run.json when on.
TECHNIQUES = ("label_smoothing", "mixup", "cutmix", "ema", "swa_from")


class FitLoop:
    """One call of :func:`lowtf.fit`: the objects it builds and the loop over them."""

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
        run_settings=None,
    ):
        self.config, self.log, self.model_dir = config, log, model_dir
        # Read before anything may unfreeze them: the run's identity.
        self.frozen = transfer.frozen_layers(model)
        if config.unfreeze_at is not None and not self.frozen:
            raise ValueError(
                f"`unfreeze_at` ({config.unfreeze_at}) needs frozen layers to "
                "unfreeze: freeze some first (lowtf.train.freeze(model, n)), or "
                "drop it"
            )
        streamed = isinstance(train, Stream)
        # A stream is not read here: an all-zero example gives its shapes.
        x, y = train.example() if streamed else _pair("train", train)
        validation = streams.materialize("validation", validation)
        self.x_val, self.y_val = _pair("validation", validation)
        _check_validation_features(x, self.x_val)
        self.model, self.optimizer = model, optimizer
        self.strategy = tf.distribute.get_strategy()
        data = (
            train
            if streamed
            else InMemoryBatches(x, y, config.batch_size, seed=config.seed)
        )
        self.step = step_lib.TrainStep(
            model, optimizer, data=data, augment=augment, options=options
        )
        self.step.build(x[:1])  # checks in-memory training labels against the head
        # Bad validation labels would give a meaningless validation loss (a
        # sigmoid head takes 3 as "more than 1") or fail at the step-0
        # evaluation, after model_dir was written.
        checks.check_labels(
            self.y_val, self.step.head, self.step.num_logits, "validation[1]"
        )
        _check_monitor(config.monitor, model)
        self.evaluator = Evaluator(
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
            start_from_step=config.start_from_step,
            baseline=config.baseline,
            best_dir=self._write_path("best"),
            checkpoint=self.snapshot,
            prune_on_save=False,
        )
        self.running = checkpointing.RunningMeans()
        self.clock = checkpointing.WallClock()
        self.checkpoints = checkpointing.Checkpoints(
            model_dir,
            train_step=self.step,
            stopper=self.stopper,
            snapshot=self.snapshot,
            running=self.running,
            clock=self.clock,
            keep=config.keep_checkpoints,
            strategy=self.strategy,
        )
        self.history = summaries.History(self._write_path("history.csv"))
        self.board = None  # made by start(), closed by close()
        # (time, step) at the end of the first compiled call: the progress
        # line's speed leaves that call's tracing and compiling out.
        self._timed_from = None
        self.identity = rundir.identity(
            model=model,
            optimizer=optimizer,
            train=(x, y),
            validation=(self.x_val, self.y_val),
            settings={
                "batch_size": data.batch_size,  # a stream's own
                "data_seed": config.seed,
                "step_seed": options.seed,
                "loss": options.loss,
                "monitor": config.monitor,
                "mode": self.stopper.mode,
                "augment": None if augment is None else repr(augment),
                # The step's techniques, only when on (earlier records match).
                **{
                    name: getattr(options, name)
                    for name in TECHNIQUES
                    if getattr(options, name)
                },
                # Only when set, so that earlier runs' records still match.
                **({"frozen": self.frozen} if self.frozen else {}),
                **(
                    {"unfreeze_at": config.unfreeze_at}
                    if config.unfreeze_at is not None
                    else {}
                ),
                **(run_settings or {}),
            },
        )
        if streamed:  # its content cannot be hashed: its source names it
            self.identity["train_data"] = train.identity
        self.record = rundir.read_record(model_dir)  # refuses a damaged one
        requested_rate = _learning_rate(optimizer)
        self.resumed = self.checkpoints.restore_latest()
        self.changes = []
        if self.resumed:
            self._check_same_run()
            self._apply_changes(requested_rate)

    def _check_same_run(self) -> None:
        """Refuses to resume another run's directory, setting by setting; checks its files."""
        if self.record is not None:
            differ = rundir.differences(self.record["identity"], self.identity)
            if differ:
                raise ValueError(
                    f"`model_dir` ({self.model_dir!r}) belongs to another run, which "
                    f"this one would silently mix with: {'; '.join(differ)}. Resume "
                    "with the recorded settings, or pick another model_dir (nothing "
                    "was changed)"
                )
        if tf.io.gfile.exists(self.history.path):
            summaries.check_history(self.history.path)

    def _apply_changes(self, requested_rate) -> None:
        """Applies what may change on a resume (cadence, patience, learning rate)."""
        recorded = (self.record or {}).get("settings", {})
        # The checkpoint restored the optimizer's saved rate; the caller's wins.
        restored_rate = _learning_rate(self.optimizer)
        schedule = isinstance(self.optimizer.get_config().get("learning_rate"), dict)
        if not schedule and requested_rate is not None and restored_rate != requested_rate:
            self.optimizer.learning_rate = requested_rate  # Keras assigns its variable
            recorded = {**recorded, "learning_rate": restored_rate}
        self.changes = [
            f"{name} {_short(recorded[name])} -> {_short(value)}"
            for name, value in self._mutable_settings().items()
            if name in recorded and recorded[name] != value
        ]

    def _mutable_settings(self) -> dict:
        """The settings a resume may change; applied, logged and recorded."""
        names = (
            "max_steps", "eval_every", "steps_per_call", "patience", "min_delta",
            "start_from_step", "baseline", "checkpoint_every", "keep_checkpoints",
            "eval_batch_size",
        )
        settings = {name: getattr(self.config, name) for name in names}
        settings["learning_rate"] = _learning_rate(self.optimizer)
        return settings

    def _write_record(self) -> None:
        """Records in run.json what defines the run and the settings it runs with."""
        record = dict(self.record or {})
        record["identity"] = self.identity
        record["settings"] = self._mutable_settings()
        if self.resumed:
            record.setdefault("resumes", []).append(
                {"step": self.last_step, "changed": self.changes}
            )
        if distribute.is_chief(self.strategy):
            rundir.write_record(self.model_dir, record)

    def start(self) -> None:
        """Writes ``model_dir``: history, writers, then step 0's evaluation or a resume.

        Everything is checked by now (``__init__`` writes nothing); call
        :meth:`close` after it in any case, even when it raises.
        """
        tf.io.gfile.makedirs(self.model_dir)
        self._write_record()
        # A worker other than the chief writes into its scratch twin (_write_path).
        tf.io.gfile.makedirs(os.path.dirname(self.history.path))
        self.history.start(keep_upto=self.last_step if self.resumed else None)
        self.stopper.prune()
        self.board = summaries.Summaries(self._write_path("tensorboard"))
        if self.resumed:
            if self.checkpoints.note:
                self.log(self.checkpoints.note)
            self.log(f"resuming from {self.resumed} at step {self.last_step}")
            for change in self.changes:
                self.log(f"changed on resume: {change}")
        if self.frozen and not self._unfreeze_if_due():
            until = self.config.unfreeze_at
            self.log(
                f"frozen: {', '.join(self.frozen)} (not trained, batch norm in "
                "inference mode; their regularization and max-norm are left out)"
                + (f" until step {until}" if until is not None else "")
            )
        if not self.resumed:
            self._evaluate()
            self._save()

    @property
    def last_step(self) -> int:
        return int(self.step.step.numpy())

    def _write_path(self, name: str) -> str:
        return checkpointing.write_path(self.model_dir, name, self.strategy)

    # -- the loop -------------------------------------------------------------

    def loop(self, signals) -> str:
        """Trains until a stop; returns the reason, one of trainer.STOP_REASONS.

        Args:
          signals: its ``requested`` is None, or the name of a stop request
            (e.g. ``"SIGTERM"``) that ends the loop at the next call boundary.
        """
        self._timed_from = None
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
        self._unfreeze_if_due()
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
        if self._timed_from is None:
            self._timed_from = (time.monotonic(), step)
        if step % config.eval_every == 0 or step == config.max_steps:
            # The training means come from before each update: the last one
            # may have broken the weights, and an improving training metric
            # would then make them the best snapshot.
            if not checkpointing.finite_weights(self.model):
                self._non_finite(f"weights at step {step}")
                return "non_finite"
            row = self._evaluate()
            if not math.isfinite(row["val_cross_entropy"]):
                self._non_finite(f"validation cross-entropy at step {step}")
                return "non_finite"
        if step % config.checkpoint_every == 0 and not self._save():
            return "non_finite"
        return None

    def _unfreeze_if_due(self) -> bool:
        """Unfreezes every layer once the step reaches ``unfreeze_at``; True if it did."""
        at = self.config.unfreeze_at
        if at is None or self.last_step < at or not transfer.frozen_layers(self.model):
            return False
        transfer.unfreeze(self.model)
        rate = _learning_rate(self.optimizer)
        self.log(
            f"step {self.last_step}: unfroze {', '.join(self.frozen)} (unfreeze_at "
            f"{at}); every layer trains from here"
            + (f" at learning rate {rate:g}" if rate is not None else "")
            + " (the step is traced once more)"
        )
        return True

    def _save(self) -> bool:
        """Saves the latest checkpoint; False, and nothing saved, on NaN/Inf weights."""
        if self.checkpoints.save():
            return True
        self._non_finite(f"weights at step {self.last_step}")
        return False

    def _non_finite(self, what: str) -> None:
        self.log(
            f"non-finite {what}: stopping; the latest checkpoint (step "
            f"{self.checkpoints.saved_step}) is left intact. Run again with a lower "
            "learning rate (the run resumes from that checkpoint with it), or look "
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
            self.checkpoints.restore_best()
            self.log(
                f"restored the best snapshot: step {best_step}, "
                f"{stopper.monitor} {best:.6g}"
            )
        elif reason == "non_finite" and self.checkpoints.restore_latest():
            # Broken before any snapshot (a training metric has none at step
            # 0): the latest checkpoint is never saved with NaN/Inf weights.
            self.log(
                "no best snapshot was recorded; restored the latest checkpoint "
                f"(step {int(self.step.step.numpy())}), whose weights are finite"
            )
        else:
            self.log("no best snapshot was recorded; the model keeps its last weights")

    def close(self) -> None:
        """Closes the TensorBoard writers and deletes this worker's scratch copies.

        Called on every way out of :func:`lowtf.fit`, an exception's included;
        it reads and writes nothing else, so the latest checkpoint and the
        best snapshot on disk stay as the run last saved them.
        """
        try:
            if self.board is not None:
                self.board.close()
                self.board = None
        finally:
            checkpointing.remove_scratch(self.model_dir, self.strategy)

    # -- pieces ---------------------------------------------------------------

    def _next_boundary(self, step: int) -> int:
        config = self.config
        boundaries = [
            _next_multiple(step, config.eval_every),
            _next_multiple(step, config.checkpoint_every),
            config.max_steps,
        ]
        if config.unfreeze_at is not None and step < config.unfreeze_at:
            boundaries.append(config.unfreeze_at)  # the step changes there
        return min(boundaries)

    def _evaluate(self) -> dict:
        step = self.last_step
        swa_from = self.step.options.swa_from
        if swa_from is not None and step >= swa_from:
            # SWA's mean takes the weights of every evaluation from swa_from on.
            self.step.update_swa()
        # With `ema` or `swa_from`, the averaged weights are what is evaluated
        # and, if best, snapshotted (the latest checkpoint keeps the weights
        # themselves).
        with self.step.averaged_weights():
            val = self.evaluator(self.x_val, self.y_val)
            evaluation = self._evaluation(step, val)
            self.stopper.update(step, evaluation.monitored())
        self.running.reset()
        self.step.reset_maxnorm_bound()  # the diagnostic covers one interval
        self.history.append(evaluation.as_dict())
        self.board.write(evaluation, summaries.max_unit_norms(self.model))
        self.log(self._progress(evaluation))
        return evaluation.as_dict()

    def _evaluation(self, step: int, val: dict) -> Evaluation:
        """The record of the evaluation at ``step`` with validation scores ``val``."""
        train = self.running.means()
        clipped = None
        if train is None:  # step 0: no training step to average yet
            regularization = float(regularizers.total_regularization_loss(self.model))
            train = {"cross_entropy": None, "accuracy": None, "total_loss": None}
        else:
            regularization = train["regularization_loss"]
            clipped = self.step.maxnorm_clipped_fraction()
        return Evaluation(
            step=step,
            train_cross_entropy=train["cross_entropy"],
            train_accuracy=train["accuracy"],
            val_cross_entropy=val["cross_entropy"],
            val_accuracy=val["accuracy"],
            regularization_loss=regularization,
            total_loss=train["total_loss"],
            learning_rate=_learning_rate(self.optimizer),
            maxnorm_clipped_fraction=clipped,
        )

    def _progress(self, evaluation: Evaluation) -> str:
        """The one-line log of an evaluation.

        ``step 400/10000  train ce 0.0091 acc 1.000  val ce 0.1194 acc 0.953
        best @ 300 (stop in 900)  ETA 0:00:05``: the training means since the
        last evaluation (training mode: dropout on), the validation metrics,
        the penalty (when not 0), the best step of the monitor, the steps
        left before early stopping ends the run unless the monitor improves
        (when that comes before max_steps), and the time to whichever end
        comes first at the speed measured since the first, compiling, call.
        """
        step, config, stopper = evaluation.step, self.config, self.stopper
        end, stop_in = config.max_steps, ""
        if stopper.has_best:
            # Patience is checked at evaluations, not before start_from_step.
            by_patience = max(
                int(stopper.patience_from.numpy()) + stopper.patience,
                stopper.start_from_step,
            )
            by_patience = _next_multiple(by_patience - 1, config.eval_every)
            if by_patience < end:
                end, stop_in = by_patience, f" (stop in {by_patience - step})"
        eta = "?"
        timed = self._timed_from
        if timed is not None and step > timed[1]:
            rate = (step - timed[1]) / max(time.monotonic() - timed[0], 1e-9)
            eta = _clock(max(end - step, 0) / rate)
        return (
            f"step {step}/{config.max_steps}  {evaluation.progress()}"
            f"  best @ {int(stopper.best_step.numpy())}{stop_in}  ETA {eta}"
        )


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


def _check_validation_features(x: np.ndarray, x_val: np.ndarray) -> None:
    """Refuses validation features the model, built on ``x``, cannot take."""
    if x.shape[1:] != x_val.shape[1:]:
        raise ValueError(
            f"training examples have shape {x.shape[1:]} but validation examples "
            f"{x_val.shape[1:]}; both sets need the same features"
        )
    if x.dtype != x_val.dtype:
        raise ValueError(
            f"training features are {x.dtype.name} but validation features "
            f"(validation[0]) {x_val.dtype.name}; cast them to one dtype, e.g. "
            f"x_val.astype(np.{x.dtype.name})"
        )
    # A NaN or Inf feature makes the validation loss NaN, which stops the run.
    checks.check_finite(x_val, "validation[0]")


def _check_monitor(monitor: str, model) -> None:
    """Refuses a monitor that cannot improve on this model."""
    if monitor == "regularization_loss" and not regularizers.regularization_losses(
        model
    ):
        # The penalty is 0.0 at step 0 and stays so: the run would stop after
        # `patience` steps and restore the untrained weights.
        raise ValueError(
            "`monitor` ('regularization_loss') never improves on this model: it "
            "has no regularization loss (no weight carries an L1/L2 regularizer), "
            "so the penalty stays 0.0; monitor 'val_cross_entropy', or regularize "
            "the model (e.g. lowtf.mlp(..., l2=1e-4))"
        )


def _short(value) -> str:
    """A setting as a log shows it: floats to 6 significant digits."""
    return format(value, ".6g") if isinstance(value, float) else repr(value)


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _learning_rate(optimizer) -> float | None:
    try:
        return float(np.asarray(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
