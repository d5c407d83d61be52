"""One model as the controller's trainer: the case K = 1.

:class:`StepTrainer` checks the data, builds the :class:`lowtf.TrainStep`,
the :class:`lowtf.Evaluator`, :class:`lowtf.EarlyStopping` and the
checkpoints (:mod:`lowtf.train.checkpointing`), and gives
:class:`lowtf.train.controller.Controller` what it drives: ``run(k)``,
``evaluate()``, ``save()``, the run's identity and the settings a resume
may change. A non-finite loss or weights stop the run (one model has no
other member to go on with): nothing non-finite is saved, and
:meth:`StepTrainer.finish` restores the best snapshot, or the latest
checkpoint when none was recorded.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from lowtf.data import InMemoryBatches, Stream, checks, streams
from lowtf.nn import regularizers
from lowtf.train import checkpointing, early_stopping, rundir, summaries, transfer
from lowtf.train import step as step_lib
from lowtf.train.controller import Evaluated, learning_rate
from lowtf.train.evaluator import Evaluator
from lowtf.train.metrics import COLUMNS, Evaluation

# The StepOptions that change what a run trains, in run.json when on.
TECHNIQUES = ("label_smoothing", "mixup", "cutmix", "ema", "swa_from")


class StepTrainer:
    """A :class:`lowtf.TrainStep` with its evaluator, early stopping and checkpoints.

    ``__init__`` checks and builds, and writes nothing.
    """

    kind, noun, members, columns = "single", "run", "settings", COLUMNS

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
        self.train_step = step_lib.TrainStep(
            model, optimizer, data=data, augment=augment, options=options
        )
        # Checks in-memory training labels against the head.
        self.train_step.build(x[:1])
        # Bad validation labels would give a meaningless validation loss (a
        # sigmoid head takes 3 as "more than 1") or fail at the step-0
        # evaluation, after model_dir was written.
        checks.check_labels(
            self.y_val,
            self.train_step.head,
            self.train_step.num_logits,
            "validation[1]",
        )
        _check_monitor(config.monitor, model)
        self.evaluator = Evaluator(
            model,
            loss=options.loss,
            batch_size=config.eval_batch_size,
            # The step's options, where jit_compile="auto" is resolved.
            jit_compile=self.train_step.options.jit_compile and not options.run_eagerly,
        )
        self.snapshot = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=self.train_step.step
        )
        self.stopper = early_stopping.EarlyStopping(
            monitor=config.monitor,
            mode=config.mode,
            patience=config.patience,
            min_delta=config.min_delta,
            start_from_step=config.start_from_step,
            baseline=config.baseline,
            best_dir=checkpointing.write_path(model_dir, "best", self.strategy),
            checkpoint=self.snapshot,
            prune_on_save=False,
        )
        self.running = checkpointing.RunningMeans()
        self.clock = checkpointing.WallClock()
        self.checkpoints = checkpointing.Checkpoints(
            model_dir,
            # The keys single-model checkpoints have always had.
            objects={
                "train_step": self.train_step,
                "early_stopping": self.stopper,
                "running": self.running,
            },
            step=self.train_step.step,
            finite=lambda: checkpointing.finite_weights(self.model),
            clock=self.clock,
            keep=config.keep_checkpoints,
            strategy=self.strategy,
            stopper=self.stopper,
            snapshot=self.snapshot,
        )
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

    # -- what the controller reads --------------------------------------------

    @property
    def step(self) -> int:
        return int(self.train_step.step.numpy())

    @property
    def done(self) -> bool:
        return self.stopper.stopped

    @property
    def note(self) -> str | None:
        return self.checkpoints.note

    @property
    def saved_step(self) -> int | None:
        return self.checkpoints.saved_step

    def settings(self) -> dict:
        config = self.config
        names = (
            "patience", "min_delta", "start_from_step", "baseline",
            "keep_checkpoints", "eval_batch_size",
        )  # fmt: skip
        settings = {name: getattr(config, name) for name in names}
        settings["learning_rate"] = learning_rate(self.optimizer)
        return settings

    def restore_latest(self) -> str | None:
        return self.checkpoints.restore_latest()

    def patience_end(self) -> int | None:
        stopper = self.stopper
        if not stopper.has_best:
            return None
        return max(
            int(stopper.patience_from.numpy()) + stopper.patience,
            stopper.start_from_step,
        )

    def boundaries(self, step: int) -> list[int]:
        at = self.config.unfreeze_at
        return [at] if at is not None and step < at else []  # the step changes there

    # -- what the controller calls ----------------------------------------------

    def start(self, resumed: bool) -> None:
        self.stopper.prune()
        if self.frozen and not self._unfreeze_if_due():
            until = self.config.unfreeze_at
            self.log(
                f"frozen: {', '.join(self.frozen)} (not trained, batch norm in "
                "inference mode; their regularization and max-norm are left out)"
                + (f" until step {until}" if until is not None else "")
            )

    def run(self, num_steps: int) -> str | None:
        self._unfreeze_if_due()
        step = self.step
        means = step_lib.as_numpy(self.train_step.run(num_steps))
        bad = [name for name, value in means.items() if not math.isfinite(value)]
        if bad:
            where = f"in steps {step + 1}-{step + num_steps}"
            return f"training loss ({bad[0]} = {means[bad[0]]}) {where}"
        self.running.add(means, num_steps)
        return None

    def evaluate(self) -> Evaluated:
        step = self.step
        if not checkpointing.finite_weights(self.model):
            # The training means come from before each update: the last one
            # may have broken the weights, and an improving training metric
            # would then make them the best snapshot.
            return Evaluated(step, broken=f"weights at step {step}")
        swa_from = self.train_step.options.swa_from
        if swa_from is not None and step >= swa_from:
            # SWA's mean takes the weights of every evaluation from swa_from on.
            self.train_step.update_swa()
        # With `ema` or `swa_from`, the averaged weights are what is evaluated
        # and, if best, snapshotted (the latest checkpoint keeps the weights
        # themselves).
        with self.train_step.averaged_weights():
            val = self.evaluator(self.x_val, self.y_val)
            evaluation = self._evaluation(step, val)
            self.stopper.update(step, evaluation.monitored())
        self.running.reset()
        self.train_step.reset_maxnorm_bound()  # the diagnostic covers one interval
        finite = math.isfinite(evaluation.val_cross_entropy)
        return Evaluated(
            step,
            rows=[evaluation.as_dict()],
            board={None: evaluation},
            unit_norms=summaries.max_unit_norms(self.model),
            progress=(
                f"{evaluation.progress()}  best @ {int(self.stopper.best_step.numpy())}"
            ),
            broken=None if finite else f"validation cross-entropy at step {step}",
        )

    def save(self) -> bool:
        return self.checkpoints.save()

    def finish(self, reason: str) -> None:
        """Logs why training stopped and restores the best snapshot."""
        stopper = self.stopper
        best_step = int(stopper.best_step.numpy())
        best = float(stopper.best_value.numpy())
        if reason == "patience":
            idle = int(stopper.steps_without_progress.numpy())
            self.log(
                f"early stop at step {self.step}: {stopper.monitor} has not "
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
                f"(step {self.step}), whose weights are finite"
            )
        else:
            self.log("no best snapshot was recorded; the model keeps its last weights")

    # -- pieces ---------------------------------------------------------------

    def _unfreeze_if_due(self) -> bool:
        """Unfreezes every layer once the step reaches ``unfreeze_at``; True if it did."""
        at = self.config.unfreeze_at
        if at is None or self.step < at or not transfer.frozen_layers(self.model):
            return False
        transfer.unfreeze(self.model)
        rate = learning_rate(self.optimizer)
        self.log(
            f"step {self.step}: unfroze {', '.join(self.frozen)} (unfreeze_at "
            f"{at}); every layer trains from here"
            + (f" at learning rate {rate:g}" if rate is not None else "")
            + " (the step is traced once more)"
        )
        return True

    def _evaluation(self, step: int, val: dict) -> Evaluation:
        """The record of the evaluation at ``step`` with validation scores ``val``."""
        train = self.running.means()
        clipped = None
        if train is None:  # step 0: no training step to average yet
            regularization = float(regularizers.total_regularization_loss(self.model))
            train = {"cross_entropy": None, "accuracy": None, "total_loss": None}
        else:
            regularization = train["regularization_loss"]
            clipped = self.train_step.maxnorm_clipped_fraction()
        return Evaluation(
            step=step,
            train_cross_entropy=train["cross_entropy"],
            train_accuracy=train["accuracy"],
            val_cross_entropy=val["cross_entropy"],
            val_accuracy=val["accuracy"],
            regularization_loss=regularization,
            total_loss=train["total_loss"],
            learning_rate=learning_rate(self.optimizer),
            maxnorm_clipped_fraction=clipped,
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
