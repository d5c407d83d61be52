"""A whole training job in one call: what ``bin/train`` runs.

:class:`~lowtf.job.JobConfig` holds everything a run needs (data, model,
optimizer, loop, distribution, output), validated when it is made;
:func:`run_job` makes the strategy, loads the data, builds the model, its
augmentation and optimizer, calls :func:`lowtf.fit`, evaluates the restored
best snapshot on the test set and writes ``summary.json`` (the fields of
:class:`JobResult`), ``flags.txt``, ``curves.png`` and the model's spec into
the model directory::

    config = lowtf.job.JobConfig(model="small", l2=1e-4, max_steps=2000)
    result = lowtf.job.run_job(config)
    print(result.test_accuracy)

Data that :attr:`JobConfig.streams` (``--stream``, ``--dataset=tfrecord``)
is not loaded: :func:`load_job_data` opens it as a
:class:`lowtf.data.Stream` of training batches and held-out arrays
(:func:`lowtf.data.open_stream`), whose standardization statistics the job
writes beside the model as it does a loaded data set's.

The builders (:func:`model_spec`, :func:`build_model`, :func:`build_augment`,
:func:`build_optimizer`) are the job's, used as they are by what runs many
jobs at once (``bin/sweep``'s populations, ``--ensemble``), so that a member
of a population is the network, augmentation and optimizer its own job
would train.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import types

import tensorflow as tf

from lowtf import _files, distribute
from lowtf import augment as augment_lib
from lowtf.data import datasets, streamed
from lowtf.distribute import WorkerLost
from lowtf.export import saved_model
from lowtf.export import spec as export_spec
from lowtf.job.config import (
    STARTUP_TIMEOUT,
    JobConfig,
    check_batch_size,
    default_activation,
)
from lowtf.models import ModelSpec
from lowtf.train import evaluator, plot, rundir, transfer
from lowtf.train import step as step_lib
from lowtf.train.fit import TrainConfig, fit

# What the restored best snapshot is scored on, per held-out split: the
# Evaluator's keys, named as in lowtf.train.metrics.STEP_METRICS.
EVALUATED = ("cross_entropy", "accuracy")
# The file names a job writes into its model directory besides fit's.
SUMMARY_FILE, FLAGS_FILE, CURVES_FILE = "summary.json", "flags.txt", "curves.png"
# The installed lowtf package: no place for a model directory.
# The lowtf package directory (this file is lowtf/job/run.py).
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobResult:
    """What a job reports: the fields of summary.json, in its order.

    Attributes:
      best_step, best_value, monitor, stop_reason, last_step, wall_seconds:
        as in :class:`lowtf.FitResult` (``wall_seconds`` rounded to ms).
      test_cross_entropy, test_accuracy, validation_cross_entropy,
        validation_accuracy: of the restored best snapshot.
      dataset, train_size, validation_size, test_size, num_classes: the data
        (``train_size`` None for streamed rows that were not counted: the
        statistics from the first ``--stats_rows`` only, no ``--train_size``).
      model: :attr:`JobConfig.model_name`; augment: the spec, or None.
      num_parameters: the model's weights (frozen ones included, batch
        norm's moving statistics not).
      ensemble, members: ``--ensemble=K`` only (else None, and left out of
        summary.json): the ensemble's and each member's validation and test
        cross-entropy, accuracy and calibration error; the fields above are
        then the ensemble's (``best_step`` the members' latest best step).

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
    ensemble: dict | None = None
    members: list | None = None

    def as_dict(self) -> dict:
        """The summary as a dict, in field order (an ensemble's parts only if set)."""
        summary = dataclasses.asdict(self)
        for name in ("ensemble", "members"):
            if summary[name] is None:
                del summary[name]
        return summary

    def to_json(self) -> str:
        """summary.json's text."""
        return json.dumps(self.as_dict(), indent=2) + "\n"


# The ensemble parts are written only for --ensemble runs.
SUMMARY_FIELDS = tuple(
    f.name for f in dataclasses.fields(JobResult) if f.name not in ("ensemble", "members")
)


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
        raise ValueError(f"`config` ({config!r}) must be a lowtf.job.JobConfig")  # noqa: TRY004
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")  # noqa: TRY004
    # Made before TensorFlow runs any op (reading HIGGS does), as multi_worker
    # requires; it waits here until every worker has started.
    multi_worker = config.strategy == "multi_worker"
    strategy = distribute.make_strategy(
        config.strategy,
        timeout_seconds=config.collective_timeout,
        **(
            {"startup_timeout": config.startup_timeout or STARTUP_TIMEOUT, "log": log}
            if multi_worker
            else {}
        ),
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
        # A directory of another run is refused in flag terms before the
        # data load (after the lock: a run in progress is the first news).
        flags = recorded_flags(config, model_dir)
        with strategy.scope():
            summary = _run_in_scope(config, model_dir, chief, flags_text, log, flags)
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
            rundir.remove_if_made_empty(model_dir, existed)


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


def recorded_flags(config: JobConfig, model_dir: str) -> dict | None:
    """The defining flags to record in run.json; refuses another run's directory.

    Returns:
      ``config.defining_flags()``, or None when ``model_dir`` holds a run
      recorded before flags were (its identity is then compared as it was).

    Raises:
      ValueError: ``model_dir`` holds a run whose recorded flags differ,
        naming each flag with both values.
    """
    flags = json.loads(json.dumps(config.defining_flags()))  # as run.json holds them
    record = rundir.read_record(model_dir)
    if record is None or not rundir.traces(model_dir):
        return flags  # nothing trained there yet: this run starts it
    recorded = record["identity"].get("flags")
    if recorded is None:
        return None
    differ = [
        f"--{name}: {_show(recorded.get(name))} in the run, {_show(flags.get(name))} now"
        for name in sorted(set(recorded) | set(flags))
        if recorded.get(name) != flags.get(name)
    ]
    if differ:
        raise ValueError(
            f"--model_dir={model_dir} belongs to another run ({'; '.join(differ)}); "
            "pick another --model_dir"
        )
    return flags


def _show(value) -> str:
    """A flag's value as the refusal shows it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "none"


def _run_in_scope(config, model_dir, chief, flags_text, log, flags) -> JobResult:
    """Trains in the strategy's scope; only the ``chief`` writes files of its own."""
    if config.ensemble > 1 and config.streams:
        # Its members train as one population, from arrays.
        raise ValueError(
            f"--ensemble={config.ensemble} trains its members from data in memory; "
            + (
                "add --nostream (the shards are then read whole)"
                if config.dataset == "tfrecord"
                else "drop --stream"
            )
        )
    data = load_job_data(config)
    train_rows = data.train_size if config.streams else len(data.train[1])
    if train_rows is not None:
        check_batch_size(config, train_rows, most=None)
    if config.ensemble > 1:
        return _run_ensemble(config, model_dir, data, flags_text, log)
    model = build_model(config, data)
    loaded = None
    if config.init_from:
        model(_first_example(data))  # makes the variables init_from fills
        loaded = transfer.init_from(model, config.init_from, log=log).loaded
    if config.freeze:
        transfer.freeze(model, config.freeze, name="--freeze", loaded=loaded)
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
        label_smoothing=config.label_smoothing,
        mixup=config.mixup,
        cutmix=config.cutmix,
        # CutMix cuts boxes out of images: flat ones are reshaped to these.
        image_shape=image_shape(data, f"--cutmix={config.cutmix}") if config.cutmix else None,
        ema=config.ema,
        swa_from=config.swa_from or None,
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
            **({"flags": flags} if flags is not None else {}),
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
        export_spec.write(model_dir, model_spec(config, data), data)  # for bin/export
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


def _run_ensemble(config, model_dir, data, flags_text, log) -> JobResult:
    """``--ensemble=K``: K seeds as one population, their average scored and kept."""
    from lowtf.ensemble import job as ensemble_job  # it builds with this module

    started = time.monotonic()
    log(data.describe())
    if flags_text is not None:
        tf.io.gfile.makedirs(model_dir)
        write_text(os.path.join(model_dir, FLAGS_FILE), flags_text)
    builders = types.SimpleNamespace(
        model=build_model, optimizer=build_optimizer, augment=build_augment,
        spec=model_spec, image_shape=image_shape,
    )  # fmt: skip
    scores, result, models = ensemble_job.run(
        config, model_dir=model_dir, data=data, build=builders, log=log
    )
    augment = build_augment(config, data)
    summary = JobResult(
        best_step=max(m.best_step for m in result.members),
        best_value=_finite_or_none(scores["validation_cross_entropy"]),
        monitor=result.monitor,
        stop_reason=(
            "patience"
            if all(m.stop_reason == "patience" for m in result.members)
            else "max_steps"
        ),
        last_step=result.last_step,
        **{
            f"{split}_{name}": _finite_or_none(scores[f"{split}_{name}"])
            for split in ("test", "validation")
            for name in EVALUATED
        },
        wall_seconds=round(time.monotonic() - started, 3),
        dataset=data.name,
        train_size=len(data.train[1]),
        validation_size=len(data.validation[1]),
        test_size=len(data.test[1]),
        num_classes=data.num_classes,
        model=config.model_name,
        augment=augment.spec if augment is not None else None,
        num_parameters=int(
            sum(v.shape.num_elements() for m in models for v in m.variables if v.trainable)
        ),
        ensemble=scores["ensemble"],
        members=scores["members"],
    )
    write_text(os.path.join(model_dir, SUMMARY_FILE), summary.to_json())
    return summary


def load_data(config) -> datasets.Dataset:
    """The data set a job's (or a sweep's) data settings name, loaded and checked.

    Always in memory (a sweep's populations and an ensemble train from
    arrays; tfrecord shards are read whole); :func:`load_job_data` streams
    what ``config`` streams.

    Raises:
      lowtf.DataError: as :func:`lowtf.load_dataset`, naming the flags
        (``--train_size``) where the loader names its arguments.
    """
    try:
        return datasets.load(
            config.dataset,
            data_path=config.data_path,
            train_size=config.train_size,
            validation_size=config.validation_size,
            label_column=config.label_column,
            seed=config.data_seed,
        )
    except datasets.DataError as error:
        raise datasets.DataError(_flag_names(error)) from None


def load_job_data(config):
    """What one job trains on: :func:`load_data`, or the streamed data set.

    With :attr:`JobConfig.streams` (``--stream``, ``--dataset=tfrecord``):
    a :class:`lowtf.data.StreamedData` from :func:`lowtf.data.open_stream`:
    its training split a :class:`lowtf.data.Stream` batched by
    ``batch_size`` and shuffled by ``seed``, held-out arrays, and the
    training rows' mean and std (one streaming pass, or the first
    ``stats_rows``), which the job writes beside the model for bin/export
    as it does a loaded data set's.

    Raises:
      lowtf.DataError: bad files, named with the flags, before training.
    """
    if not config.streams:
        return load_data(config)
    try:
        return streamed.open_stream(
            config.dataset,
            config.data_path,
            batch_size=config.batch_size,
            train_size=config.train_size,
            validation_size=config.validation_size,
            label_column=config.label_column,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            stats_rows=config.stats_rows,
        )
    except datasets.DataError as error:
        raise datasets.DataError(_flag_names(error)) from None


def _flag_names(error) -> str:
    """The loader's argument names as the flags that set them."""
    return re.sub(
        r"`(data_path|train_size|validation_size|label_column|stats_rows)`",
        r"--\1",
        str(error),
    )


def _first_example(data):
    """One training example ``[1, ...]``, to build a model's variables."""
    if isinstance(data, streamed.StreamedData):
        return data.train.example()[0]
    return data.train[0][:1]


def image_shape(data, what: str) -> tuple:
    """``(h, w, c)`` of the examples of ``data``, for the cnn, augmentation and CutMix.

    Args:
      data: the :class:`lowtf.Dataset` (its ``name`` and ``feature_shape``).
      what: the flag that needs images, for the error (``"--model=cnn"``).

    Raises:
      ValueError: the examples are not images.
    """
    shape = tuple(data.feature_shape)
    if data.name == "digits":
        return (8, 8, 1)  # Stored as 64 pixels per row, row-major.
    if data.name == "npz" and len(shape) in (2, 3):
        return shape if len(shape) == 3 else (*shape, 1)
    raise ValueError(
        f"{what} needs images: --dataset=digits, or an npz of [n, h, w] or "
        f"[n, h, w, c] images; {data.name} examples have shape {shape}"
    )


def build_augment(config: JobConfig, data, *, rows=None, mean=None, std=None):
    """The augmentation pipeline of ``config.augment``, or None for none.

    The loader standardizes each pixel; the pipeline undoes that, augments
    the raw image (background and range as stored), and standardizes again.

    Args:
      config: the job's settings.
      data: the loaded :class:`lowtf.Dataset`.
      rows, mean, std: a sweep's fold: the training rows it trains on and
        the statistics its copy of them is standardized with (default: the
        whole training split, as loaded).
    """
    if not config.augments:
        return None
    raw = data.train[0] * data.std + data.mean
    if rows is not None:
        raw = raw[rows]
    return augment_lib.parse(
        config.augment,
        image_shape=image_shape(data, f"--augment={config.augment}"),
        value_range=(float(raw.min()), float(raw.max())),
        mean=data.mean if mean is None else mean,
        std=data.std if std is None else std,
    )


def model_spec(config: JobConfig, data) -> ModelSpec:
    """The :class:`lowtf.models.ModelSpec` of ``config`` for ``data``'s examples and classes."""
    cnn = config.model == "cnn"
    return ModelSpec(
        model=None if config.hidden is not None else config.model_name,
        hidden=config.hidden,
        activation=config.activation or default_activation(config.model),
        dropout=config.dropout,
        batchnorm=config.batchnorm,
        l1=config.l1,
        l2=config.l2,
        maxnorm=config.maxnorm,
        input_noise=config.input_noise,
        hidden_noise=config.hidden_noise,
        seed=config.seed,
        num_classes=data.num_classes,
        feature_shape=tuple(data.feature_shape),
        image_shape=image_shape(data, "--model=cnn") if cnn else None,
    )


def build_model(config: JobConfig, data):
    """The untrained network of ``config`` for ``data`` (:meth:`ModelSpec.build`)."""
    return model_spec(config, data).build()


def build_optimizer(config: JobConfig):
    """The Keras optimizer of ``config``, with its learning-rate schedule.

    A population of several weight decays takes the optimizer of
    ``weight_decay=0`` and the decays per member.
    """
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
