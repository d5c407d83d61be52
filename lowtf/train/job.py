"""A whole training job in one call: what ``bin/train`` runs.

:class:`JobConfig` holds everything a run needs (data, model, optimizer,
loop, distribution, output), validated when it is made; :func:`run_job`
makes the strategy, loads the data, builds the model, its augmentation and
optimizer, calls :func:`lowtf.fit`, evaluates the restored best snapshot on
the test set and writes ``summary.json`` (the fields of :class:`JobResult`),
``flags.txt`` and ``curves.png`` into the model directory::

    config = lowtf.train.JobConfig(model="small", l2=1e-4, max_steps=2000)
    result = lowtf.train.run_job(config)
    print(result.test_accuracy)

The fields are ``bin/train``'s flags, one for one, with the same defaults;
an error about a combination of them names them as flags (``--weight_decay``),
so that the binary prints it as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import tensorflow as tf

from lowtf import _checks, _files, distribute, models, nn
from lowtf import augment as augment_lib
from lowtf.data import datasets
from lowtf.distribute import WorkerLost
from lowtf.export import saved_model
from lowtf.export import spec as export_spec
from lowtf.train import evaluator, metrics, plot, rundir, transfer
from lowtf.train import step as step_lib
from lowtf.train.fit import TrainConfig, fit

MODELS = (*models.PRESETS, "cnn")
OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd", "momentum")
# What the restored best snapshot is scored on, per held-out split: the
# Evaluator's keys, named as in lowtf.train.metrics.STEP_METRICS.
EVALUATED = ("cross_entropy", "accuracy")
# The file names a job writes into its model directory besides fit's.
SUMMARY_FILE, FLAGS_FILE, CURVES_FILE = "summary.json", "flags.txt", "curves.png"
# The installed lowtf package: no place for a model directory.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything :func:`run_job` needs; checked when made.

    Attributes:
      dataset: one of :data:`lowtf.data.DATASETS` (default ``"digits"``).
      data_path: the file of higgs, npz and csv (default None).
      label_column: csv only: header name or column index of the label
        (default None: the last column).
      train_size, validation_size: rows of the splits (default None: per
        data set, see :func:`lowtf.load_dataset`).
      data_seed: seed of the npz/csv split and of the synthetic data (0).
      model: a preset of :data:`lowtf.models.PRESETS` or ``"cnn"`` (default
        None: ``"medium"``, unless ``hidden`` is given).
      hidden: hidden widths instead of ``model`` (default None).
      activation: one of :data:`lowtf.nn.ACTIVATIONS` (default None: relu
        for the cnn, elu otherwise).
      dropout: dropout rate after each hidden layer, in [0, 1); 0 is off.
      l1, l2: penalty scales on the kernels; 0 is off.
      maxnorm: max-norm cap of each hidden unit's incoming weights; 0 is off.
      batchnorm: batch norm before each hidden activation (default False).
      augment: a :func:`lowtf.augment.parse` spec for the training images,
        e.g. ``"translate:1,rotate:10"`` (default ``""``: none).
      optimizer: one of :data:`OPTIMIZERS` (default ``"adam"``); momentum is
        SGD with momentum 0.9.
      learning_rate: initial learning rate, > 0 (default 1e-3).
      lr_decay_steps: inverse-time decay ``lr / (1 + step / n)``; 0
        (default) is constant.
      weight_decay: decoupled weight decay of adamw; 0 (default) is off.
      batch_size, max_steps, eval_every, patience, min_delta, monitor,
        warmup, steps_per_call, checkpoint_every: as in
        :class:`lowtf.TrainConfig`; defaults 128, 10000, 100, 1000, 0.0,
        ``"val_cross_entropy"``, 0, 100, 1000.
      xla: compile the step with XLA (default None:
        :func:`lowtf.train.auto_jit_compile`).
      seed: seed of the weights, dropout masks and batch order (0).
      strategy: one of :data:`lowtf.distribute.STRATEGIES` (``"default"``).
      collective_timeout: multi_worker only: seconds a collective op may
        wait for the other workers (default None: no limit).
      model_dir: the output directory (default None:
        ``runs/<dataset>-<model>`` under the current directory).
      export_dir: where to export the best snapshot as a SavedModel at the
        end of the run (:func:`lowtf.export.export`; default None: no export).
      init_from: start from this run's best snapshot (a model directory or
        its ``best/`` folder), see :func:`lowtf.train.init_from`; default
        None: random weights. On a resume the checkpoint's weights win.
      freeze: freeze the first N hidden blocks (see
        :func:`lowtf.train.freeze`); needs ``init_from`` (frozen random
        layers would stay random). Default 0.
      unfreeze_at: fine-tune every layer from this step on, at
        ``learning_rate``; needs ``freeze``. Default None.
    """

    # -- data
    dataset: str = "digits"
    data_path: str | None = None
    label_column: str | int | None = None
    train_size: int | None = None
    validation_size: int | None = None
    data_seed: int = 0
    # -- model
    model: str | None = None
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    maxnorm: float = 0.0
    batchnorm: bool = False
    augment: str = ""
    # -- optimizer
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_decay_steps: int = 0
    weight_decay: float = 0.0
    # -- loop
    batch_size: int = 128
    max_steps: int = 10000
    eval_every: int = 100
    patience: int = 1000
    min_delta: float = 0.0
    monitor: str = "val_cross_entropy"
    warmup: int = 0
    steps_per_call: int = 100
    checkpoint_every: int = 1000
    xla: bool | None = None
    seed: int = 0
    # -- distribution
    strategy: str = "default"
    collective_timeout: float | None = None
    # -- output
    model_dir: str | None = None
    export_dir: str | None = None
    # -- transfer
    init_from: str | None = None
    freeze: int = 0
    unfreeze_at: int | None = None

    def __post_init__(self):
        _checks.one_of("dataset", self.dataset, datasets.DATASETS)
        for name in ("train_size", "validation_size"):
            if getattr(self, name) is not None:
                _checks.positive_int(name, getattr(self, name))
        for name in ("data_seed", "lr_decay_steps", "warmup", "seed"):
            _checks.non_negative_int(name, getattr(self, name))
        if self.model is not None:
            _checks.one_of("model", self.model, MODELS)
        if self.hidden is not None:
            if not len(self.hidden):
                # `--hidden=` parses to an empty list: it would train a linear model.
                raise ValueError(
                    "--hidden is empty; give the hidden widths, e.g. --hidden=64,64 "
                    "(or drop it for --model's preset)"
                )
            # A list is welcome; stored as a tuple to keep the config hashable.
            object.__setattr__(self, "hidden", models.hidden_units(tuple(self.hidden)))
            if self.model is not None:
                raise ValueError("give --model or --hidden, not both")
        if self.activation is not None:
            _checks.one_of("activation", self.activation, nn.ACTIVATIONS)
        _checks.rate("dropout", self.dropout)
        for name in ("l1", "l2", "maxnorm", "weight_decay", "min_delta"):
            _checks.non_negative(name, getattr(self, name))
        _checks.boolean("batchnorm", self.batchnorm)
        # Only the spec's grammar here; the image shape is known once data is.
        augment_lib.parse(self.augment)
        _checks.one_of("optimizer", self.optimizer, OPTIMIZERS)
        _checks.positive("learning_rate", self.learning_rate)
        for name in (
            "batch_size",
            "max_steps",
            "eval_every",
            "patience",
            "steps_per_call",
            "checkpoint_every",
        ):
            _checks.positive_int(name, getattr(self, name))
        _checks.one_of("monitor", self.monitor, metrics.MONITORS)
        if self.xla is not None:
            _checks.boolean("xla", self.xla)
        _checks.one_of("strategy", self.strategy, distribute.STRATEGIES)
        if self.collective_timeout is not None:
            _checks.positive("collective_timeout", self.collective_timeout)
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(
                f"--init_from ({self.init_from!r}) must be a path: a lowtf model "
                "directory or its best/ folder"
            )
        _checks.non_negative_int("freeze", self.freeze)
        if self.unfreeze_at is not None:
            _checks.positive_int("unfreeze_at", self.unfreeze_at)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """The combinations that no single field's bounds can refuse."""
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(
                f"--weight_decay is the decoupled decay of AdamW; add --optimizer=adamw "
                f"(not {self.optimizer}) or use --l2"
            )
        if self.collective_timeout is not None and self.strategy != "multi_worker":
            raise ValueError(
                f"--collective_timeout bounds how long a worker waits for the others, so "
                f"it needs --strategy=multi_worker (not {self.strategy}); drop it"
            )
        if self.freeze and not self.init_from:
            raise ValueError(
                f"--freeze={self.freeze} keeps the first hidden layers as they start, "
                "which without --init_from is at random; add --init_from=DIR (a "
                "trained run) or drop --freeze"
            )
        if self.unfreeze_at is not None and not self.freeze:
            raise ValueError(
                f"--unfreeze_at={self.unfreeze_at} unfreezes the layers --freeze "
                "froze; add --freeze=N or drop --unfreeze_at"
            )
        if self.monitor == "regularization_loss" and not (self.l1 or self.l2):
            # Without a penalty it stays 0.0: the run would stop after
            # `patience` steps and restore the untrained weights.
            raise ValueError(
                "--monitor=regularization_loss needs a penalty to watch: add --l1 or "
                "--l2 (e.g. --l2=1e-4), or monitor val_cross_entropy"
            )

    @property
    def model_name(self) -> str:
        """The preset (or ``"cnn"``), or the hidden widths joined by ``x``."""
        if self.hidden is not None:
            return "x".join(map(str, self.hidden))
        return self.model or "medium"

    @property
    def resolved_model_dir(self) -> str:
        """``model_dir``, or ``runs/<dataset>-<model_name>`` when it is None."""
        if self.model_dir:
            return self.model_dir
        return os.path.join("runs", f"{self.dataset}-{self.model_name}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobResult:
    """What a job reports: the fields of summary.json, in its order.

    Attributes:
      best_step, best_value, monitor, stop_reason, last_step, wall_seconds:
        as in :class:`lowtf.FitResult` (``wall_seconds`` rounded to ms).
      test_cross_entropy, test_accuracy, validation_cross_entropy,
        validation_accuracy: of the restored best snapshot.
      dataset, train_size, validation_size, test_size, num_classes: the data.
      model: :attr:`JobConfig.model_name`; augment: the spec, or None.
      num_parameters: the model's weights (frozen ones included, batch
        norm's moving statistics not).

    A non-finite number is None (JSON has no NaN or Infinity).
    """

    best_step: int
    best_value: float | None
    monitor: str
    stop_reason: str
    last_step: int
    test_cross_entropy: float | None
    test_accuracy: float | None
    validation_cross_entropy: float | None
    validation_accuracy: float | None
    wall_seconds: float
    dataset: str
    train_size: int
    validation_size: int
    test_size: int
    num_classes: int
    model: str
    augment: str | None
    num_parameters: int

    def as_dict(self) -> dict:
        """The summary as a dict, in field order."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """summary.json's text."""
        return json.dumps(self.as_dict(), indent=2) + "\n"


SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(JobResult))


def run_job(
    config: JobConfig, *, flags_text: str | None = None, log=print
) -> JobResult:
    """Runs a whole training job; resumes an existing model directory.

    In order: makes ``config.strategy`` (before any other TensorFlow op, as
    ``MultiWorkerMirroredStrategy`` requires), checks the model directory,
    loads the data, builds the model, augmentation and optimizer, trains with
    :func:`lowtf.fit`, evaluates the restored best snapshot on the
    validation and test sets, and, on the chief only, writes summary.json,
    curves.png and ``flags_text`` as flags.txt. Each file is written whole or
    not at all, through ``tf.io.gfile`` (any TensorFlow file system).

    Args:
      config: the :class:`JobConfig`.
      flags_text: the text of flags.txt (what reproduces the run, e.g. the
        binary's flags); written once fit has checked everything and made
        the model directory. Default None: no flags.txt.
      log: called with each progress line (default ``print``).

    Returns:
      The :class:`JobResult` (summary.json's numbers); ``stop_reason`` is
      ``"non_finite"`` when a NaN or Inf loss stopped the run.

    Raises:
      ValueError: an unusable model directory (a file, under a file, not
        writable, inside the lowtf package), a batch larger than the training
        set, a cnn or augmentation on data that are not images, a model
        directory whose checkpoint does not fit this run, ... (nothing is
        written then); :class:`lowtf.DataError` (a ValueError) for bad data.
      lowtf.distribute.WorkerLost: another worker of a multi_worker run
        stopped or cannot be reached; the checkpoints are left as they were.
      tf.errors.OpError, OSError: a file could not be written.
    """
    if not isinstance(config, JobConfig):
        raise ValueError(f"`config` ({config!r}) must be a lowtf.train.JobConfig")  # noqa: TRY004
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")  # noqa: TRY004
    # Made before TensorFlow runs any op (reading HIGGS does), as multi_worker
    # requires; it waits here until every worker has started.
    strategy = distribute.make_strategy(
        config.strategy, timeout_seconds=config.collective_timeout
    )
    model_dir = config.resolved_model_dir
    check_model_dir(model_dir)
    chief = distribute.is_chief(strategy)
    existed = tf.io.gfile.exists(model_dir)
    # The chief holds the directory for the whole job (fit nests inside):
    # a second run is refused before it writes flags.txt or summary.json.
    lock = rundir.RunLock(model_dir, log) if chief else None
    try:
        if lock is not None:
            lock.acquire()
        with strategy.scope():
            summary = _run_in_scope(config, model_dir, chief, flags_text, log)
        if config.export_dir and chief:
            # Out of the strategy's scope: the export rebuilds the model from
            # model_dir with plain variables.
            _export(config, model_dir, summary, log)
        return summary
    except Exception as error:
        # Once a worker is gone every collective op here fails: nothing more
        # is saved, so the checkpoints stay as they were for the rerun.
        if not distribute.lost_worker(error, strategy):
            raise
        message = distribute.lost_worker_message(
            error,
            strategy,
            checkpoint_dir=os.path.join(model_dir, "ckpt"),
            timeout_seconds=config.collective_timeout,
        )
        raise WorkerLost(message) from None
    finally:
        if lock is not None:
            lock.release()
            # The directory may never have been made (a refusal before the
            # lock): listing it then would replace the real error with its own.
            if (
                not existed
                and tf.io.gfile.isdir(model_dir)
                and not tf.io.gfile.listdir(model_dir)
            ):
                tf.io.gfile.rmtree(model_dir)  # made only for the lock of a failed start


def _export(config, model_dir, summary, log) -> None:
    """Exports the best snapshot to ``config.export_dir``, if there is one."""
    if summary.best_step < 0:
        log(f"no export to {config.export_dir}: the run has no best snapshot")
        return
    path = saved_model.export(model_dir, config.export_dir)
    log(f"exported the best snapshot (step {summary.best_step}) to {path}")


def check_model_dir(model_dir: str) -> None:
    """Refuses a model directory that fit could not write, before anything runs.

    Raises:
      ValueError: ``model_dir`` is a file, inside the lowtf package, or (on
        the local file system) under a file or a directory this process
        cannot write to.
    """
    rundir.check_path(model_dir)
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ValueError(f"--model_dir ({model_dir}) is a file; pick a directory")
    if "://" in model_dir:
        return  # gs://, ram://...: no local ancestors or permissions to look at
    package = _PACKAGE
    if os.path.commonpath([package, os.path.abspath(model_dir)]) == package:
        raise ValueError(
            f"--model_dir ({model_dir}) is inside the lowtf package; pick another directory"
        )
    # Checked here so that a path under a file or a read-only directory is
    # refused before the data are loaded, not by fit's first write.
    ancestor = os.path.abspath(model_dir)
    while not tf.io.gfile.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not tf.io.gfile.isdir(ancestor):
        raise ValueError(
            f"--model_dir ({model_dir}) is under {ancestor}, a file; pick a directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(
            f"--model_dir ({model_dir}): {ancestor} is not writable; pick a directory "
            f"you can write to"
        )


def _run_in_scope(config, model_dir, chief, flags_text, log) -> JobResult:
    """Trains in the strategy's scope; only the ``chief`` writes files of its own."""
    data = load_data(config)
    train_rows = len(data.train[1])
    if config.batch_size > train_rows:
        raise ValueError(
            f"--batch_size ({config.batch_size}) exceeds the {train_rows} training "
            f"examples; lower it or raise --train_size"
        )
    model = build_model(config, data)
    if config.init_from:
        model(data.train[0][:1])  # makes the variables init_from fills
        transfer.init_from(model, config.init_from, log=log)
    if config.freeze:
        transfer.freeze(model, config.freeze, name="--freeze")
    augment = build_augment(config, data)
    optimizer = build_optimizer(config)
    jit_compile = (
        config.xla if config.xla is not None else evaluator.auto_jit_compile(model)
    )
    options = step_lib.StepOptions(
        jit_compile=jit_compile,
        seed=config.seed,
        require_regularization=bool(config.l1 or config.l2),
        require_constraints=bool(config.maxnorm),
    )
    train_config = TrainConfig(
        batch_size=config.batch_size,
        max_steps=config.max_steps,
        eval_every=config.eval_every,
        steps_per_call=config.steps_per_call,
        patience=config.patience,
        min_delta=config.min_delta,
        monitor=config.monitor,
        start_from_step=config.warmup,
        checkpoint_every=config.checkpoint_every,
        seed=config.seed,
        unfreeze_at=config.unfreeze_at,
    )
    log(data.describe())
    augmented = f", augment {augment.spec}" if augment is not None else ""
    log(
        f"model {config.model_name}{augmented}, {config.optimizer} lr "
        f"{config.learning_rate:g}; writing to {model_dir}"
    )
    started = []

    def log_and_start(line):
        # fit logs its first line only after it checked everything and made
        # model_dir, so a failed start never touches an existing directory.
        if not started and chief and flags_text is not None:
            write_text(os.path.join(model_dir, FLAGS_FILE), flags_text)
        started.append(True)
        log(line)

    result = fit(
        model,
        optimizer,
        train=data.train,
        validation=data.validation,
        model_dir=model_dir,
        config=train_config,
        step_options=options,
        augment=augment,
        log=log_and_start,
        run_settings={
            "dataset": config.dataset,
            # Only when set, so that earlier runs' records still match.
            **({"init_from": config.init_from} if config.init_from else {}),
        },
    )
    evaluate = evaluator.Evaluator(model, jit_compile=jit_compile)
    scores = {"test": evaluate(*data.test), "validation": evaluate(*data.validation)}
    summary = JobResult(
        best_step=result.best_step,
        best_value=_finite_or_none(result.best_value),
        monitor=result.monitor,
        stop_reason=result.stop_reason,
        last_step=result.last_step,
        **{
            f"{split}_{name}": _finite_or_none(scores[split][name])
            for split in ("test", "validation")
            for name in EVALUATED
        },
        wall_seconds=round(result.wall_seconds, 3),
        dataset=data.name,
        train_size=train_rows,
        validation_size=len(data.validation[1]),
        test_size=len(data.test[1]),
        num_classes=data.num_classes,
        model=config.model_name,
        augment=augment.spec if augment is not None else None,
        # Frozen layers' weights count: they are parameters of the model,
        # trained earlier; the moving statistics of batch norm are not.
        num_parameters=int(
            sum(v.shape.num_elements() for v in model.variables if v.trainable)
        ),
    )
    if chief:  # every worker holds the same model and numbers
        write_text(os.path.join(model_dir, SUMMARY_FILE), summary.to_json())
        export_spec.write(model_dir, config, data)  # what bin/export rebuilds from
        if result.history:
            plot.write_png(
                os.path.join(model_dir, CURVES_FILE),
                result.history,
                best_step=result.best_step if result.best_step >= 0 else None,
                title=f"{data.name} {config.model_name}: best step {result.best_step}",
            )
    log(
        f"stopped: {result.stop_reason} at step {result.last_step}; best step "
        f"{result.best_step} ({result.monitor} {result.best_value:.4f}); "
        f"{result.wall_seconds:.1f} s"
    )
    test = scores["test"]
    log(
        f"test cross-entropy {test['cross_entropy']:.4f}  "
        f"test accuracy {test['accuracy']:.4f}"
    )
    return summary


def load_data(config) -> datasets.Dataset:
    """The data set a job's (or a sweep's) data settings name, loaded and checked."""
    return datasets.load(
        config.dataset,
        data_path=config.data_path,
        train_size=config.train_size,
        validation_size=config.validation_size,
        label_column=config.label_column,
        seed=config.data_seed,
    )


def image_shape(config: JobConfig, data) -> tuple:
    """``(h, w, c)`` of the examples of ``data``, for the cnn and augmentation.

    Raises:
      ValueError: the examples are not images.
    """
    shape = tuple(data.feature_shape)
    if data.name == "digits":
        return (8, 8, 1)  # Stored as 64 pixels per row, row-major.
    if data.name == "npz" and len(shape) in (2, 3):
        return shape if len(shape) == 3 else (*shape, 1)
    what = "--model=cnn" if config.model == "cnn" else f"--augment={config.augment}"
    raise ValueError(
        f"{what} needs images: --dataset=digits, or an npz of [n, h, w] or "
        f"[n, h, w, c] images; {data.name} examples have shape {shape}"
    )


def build_augment(config: JobConfig, data):
    """The augmentation pipeline of ``config.augment``, or None for none."""
    if not augment_lib.parse(config.augment).ops:
        return None
    # The loader standardizes each pixel; the pipeline undoes that, augments
    # the raw image (background and range as stored), and standardizes again.
    raw = data.train[0] * data.std + data.mean
    return augment_lib.parse(
        config.augment,
        image_shape=image_shape(config, data),
        value_range=(float(raw.min()), float(raw.max())),
        mean=data.mean,
        std=data.std,
    )


def build_model(config: JobConfig, data):
    """The cnn, or the MLP of ``config`` (images flattened first)."""
    switches = {
        "num_classes": data.num_classes,
        "dropout": config.dropout,
        "batchnorm": config.batchnorm,
        "l1": config.l1,
        "l2": config.l2,
        "maxnorm": config.maxnorm,
        "seed": config.seed,
    }
    if config.model == "cnn":
        return models.cnn(
            image_shape(config, data),
            activation=config.activation or "relu",
            **switches,
        )
    model = models.mlp(
        config.hidden if config.hidden is not None else config.model_name,
        activation=config.activation or "elu",
        **switches,
    )
    if len(data.feature_shape) > 1:
        model = nn.Sequential([nn.Flatten(), model], name="flat_mlp")
    return model


def build_optimizer(config: JobConfig):
    """The Keras optimizer of ``config``, with its learning-rate schedule."""
    learning_rate = config.learning_rate
    if config.lr_decay_steps:
        # The tutorial's schedule: 1/2 of the rate after decay_steps, 1/3 after
        # twice that...
        learning_rate = tf.keras.optimizers.schedules.InverseTimeDecay(
            learning_rate,
            decay_steps=config.lr_decay_steps,
            decay_rate=1.0,
            staircase=False,
        )
    optimizers = tf.keras.optimizers
    if config.optimizer == "adamw":
        return optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "momentum":
        return optimizers.SGD(learning_rate, momentum=0.9)
    return {
        "adam": optimizers.Adam,
        "nadam": optimizers.Nadam,
        "rmsprop": optimizers.RMSprop,
        "sgd": optimizers.SGD,
    }[config.optimizer](learning_rate)


def write_text(path: str, text: str) -> None:
    """Writes ``path`` whole or not at all (a temporary file, then a rename)."""
    _files.write_atomically(path, text)


def _finite_or_none(value):
    """JSON has no NaN or Infinity: a non-finite number is None (null)."""
    return value if math.isfinite(value) else None
