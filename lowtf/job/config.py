"""A training job's settings, checked without TensorFlow: :class:`JobConfig`.

``bin/train`` and ``bin/sweep`` turn their flags (:mod:`lowtf.job.flags`)
into :class:`JobConfig` objects before TensorFlow is imported, so that a bad
value or combination is one line in a fraction of a second;
:func:`lowtf.job.run_job` then runs one. Nothing here imports TensorFlow:
the choices of the library's modules that do (data sets, presets,
activations, strategies) are spelled out, and tests/test_job.py checks that
they agree.

An error names the flags (``--weight_decay``), so that the binary prints it
as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

from lowtf import _checks

# The library's choices (lowtf.data.DATASETS, lowtf.models.PRESETS,
# lowtf.nn.ACTIVATIONS, lowtf.distribute.STRATEGIES, lowtf.train.metrics.MONITORS),
# here without their packages' TensorFlow import.
DATASETS = ("digits", "higgs", "npz", "csv", "synthetic", "tfrecord")
PRESETS = ("tiny", "small", "medium", "large")
MODELS = (*PRESETS, "cnn")
ACTIVATIONS = ("linear", "elu", "relu", "selu", "gelu", "tanh", "sigmoid", "swish")
OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd", "momentum")
STRATEGIES = ("default", "mirrored", "multi_worker")
MONITORS = (
    "train_cross_entropy",
    "train_accuracy",
    "val_cross_entropy",
    "val_accuracy",
    "regularization_loss",
    "total_loss",
)
# The data sets that read --data_path, and those made of images.
FILE_DATASETS = ("higgs", "npz", "csv", "tfrecord")
# The data sets --stream reads as they go (lowtf.data.streamed.STREAMED), and
# the default shuffle buffer of a stream (lowtf.data.tfrecords).
STREAMED_DATASETS = ("higgs", "csv", "tfrecord")
DEFAULT_SHUFFLE_BUFFER = 10_000
IMAGE_DATASETS = ("digits", "npz")
# The digits' fixed split (lowtf.data.datasets): 1,797 rows, the last 300 of
# a fixed permutation for test, 300 for validation by default.
DIGITS_ROWS, DIGITS_TEST_SIZE, DIGITS_VALIDATION_SIZE = 1797, 300, 300
SYNTHETIC_TRAIN_SIZE = 2000
# Seconds a multi_worker job waits for the other workers to start.
STARTUP_TIMEOUT = 300.0
# The fields that say what a run is: they name its default model directory
# and a resume must repeat them. What a resume may change (max_steps,
# patience, learning_rate, the cadences, ...) is not among them, nor is
# where the data come from (the data's content is checked instead).
DEFINING = (
    "dataset", "label_column", "train_size", "validation_size", "data_seed",
    "model", "activation", "dropout", "l1", "l2", "maxnorm", "batchnorm", "augment",
    "optimizer", "weight_decay", "batch_size", "monitor", "seed",
    "init_from", "freeze", "unfreeze_at", "ensemble",
    "input_noise", "hidden_noise", "label_smoothing", "mixup", "cutmix", "ema", "swa_from",
)  # fmt: skip
# Defining settings newer than the records of earlier runs: left out of
# defining_flags() while off, so that those runs still resume.
_NEWER = (
    "ensemble", "input_noise", "hidden_noise", "label_smoothing", "mixup", "cutmix", "ema",
    "swa_from",
)  # fmt: skip
# A default model directory's suffix longer than this becomes a hash.
_MAX_SUFFIX = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything :func:`lowtf.job.run_job` needs; checked when made.

    One field per flag of ``bin/train`` (:data:`lowtf.job.flags.SETTINGS`),
    with the same name, default and meaning; ``bin/sweep`` varies some of
    them (``dataclasses.replace`` of one base config per configuration).

    Attributes:
      dataset: one of :data:`lowtf.data.DATASETS` (default ``"digits"``).
      data_path: the file of higgs, npz and csv (default None).
      label_column: csv only: header name or column index of the label
        (default None: the last column).
      train_size, validation_size: rows of the splits (default None: per
        data set, see :func:`lowtf.load_dataset`).
      data_seed: seed of the npz/csv split and of the synthetic data (0).
      stream: read ``data_path`` as training goes instead of loading it
        (:func:`lowtf.data.open_stream`): csv and higgs when True, tfrecord
        unless False (default None).
      shuffle_buffer: rows in a stream's shuffle buffer (default 10,000).
      stats_rows: a stream's standardization statistics from the first this
        many training rows (default None: one pass over all of them).
      model: a preset of :data:`lowtf.models.PRESETS` or ``"cnn"`` (default
        None: ``"medium"``, unless ``hidden`` is given).
      hidden: hidden widths instead of ``model`` (default None).
      activation: one of :data:`lowtf.nn.ACTIVATIONS` (default None: relu
        for the cnn, elu otherwise).
      dropout: dropout rate after each hidden layer, in [0, 1); 0 is off.
      l1, l2: penalty scales on the kernels; 0 is off.
      maxnorm: max-norm cap of each hidden unit's incoming weights; 0 is off.
      batchnorm: batch norm before each hidden activation (default False).
      input_noise: stddev of Gaussian noise added to the inputs in training
        (:class:`lowtf.nn.GaussianNoise`); 0 (default) is off.
      hidden_noise: stddev of Gaussian noise after each hidden activation
        (the cnn: its dense layers); 0 (default) is off.
      augment: a :func:`lowtf.augment.parse` spec for the training images,
        e.g. ``"translate:1,rotate:10"`` (default ``""``: none).
      optimizer: one of :data:`OPTIMIZERS` (default ``"adam"``); momentum is
        SGD with momentum 0.9.
      learning_rate: initial learning rate, > 0 (default 1e-3).
      lr_decay_steps: inverse-time decay ``lr / (1 + step / n)``; 0
        (default) is constant.
      weight_decay: decoupled weight decay of adamw; 0 (default) is off.
      label_smoothing, mixup, cutmix, ema: as in :class:`lowtf.StepOptions`:
        the training targets' smoothing in [0, 1), the Beta shapes of mixup
        and CutMix in [0, 2] (CutMix: images only), the momentum of a moving
        average of the weights in [0, 1) that is evaluated and kept; 0
        (default) is off.
      swa_from: stochastic weight averaging from this step on
        (``StepOptions(swa_from=)``): the equal-weight mean of the weights at
        each evaluation from then is evaluated and kept; 0 (default) is
        off. Not with ``ema``.
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
      startup_timeout: multi_worker only: seconds to wait for the other
        workers to start before giving up (default None:
        :data:`STARTUP_TIMEOUT`, 300).
      model_dir: the output directory (default None:
        :attr:`resolved_model_dir`, ``runs/<dataset>-<model>`` and the
        defining settings off their defaults).
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
      ensemble: train this many seeds (``seed``, ``seed + 1``, ...) of the
        configuration as one population and average their probabilities
        (a deep ensemble, :mod:`lowtf.ensemble.job`); 0 or 1 (default 0) is
        one model.
    """

    # -- data
    dataset: str = "digits"
    data_path: str | None = None
    label_column: str | int | None = None
    train_size: int | None = None
    validation_size: int | None = None
    data_seed: int = 0
    stream: bool | None = None
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    stats_rows: int | None = None
    # -- model
    model: str | None = None
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    maxnorm: float = 0.0
    batchnorm: bool = False
    input_noise: float = 0.0
    hidden_noise: float = 0.0
    augment: str = ""
    # -- optimizer
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_decay_steps: int = 0
    weight_decay: float = 0.0
    # -- training techniques
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    swa_from: int = 0
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
    startup_timeout: float | None = None
    # -- output
    model_dir: str | None = None
    export_dir: str | None = None
    # -- transfer
    init_from: str | None = None
    freeze: int = 0
    unfreeze_at: int | None = None
    # -- ensemble
    ensemble: int = 0

    def __post_init__(self):
        _checks.one_of("dataset", self.dataset, DATASETS)
        for name in ("train_size", "validation_size", "stats_rows"):
            if getattr(self, name) is not None:
                _checks.positive_int(name, getattr(self, name))
        for name in ("data_seed", "lr_decay_steps", "warmup", "seed", "ensemble", "swa_from"):
            _checks.non_negative_int(name, getattr(self, name))
        if self.ensemble > 1 and self.strategy != "default":
            raise ValueError(
                f"--ensemble={self.ensemble} trains its members as one population "
                f"on one device; drop --strategy={self.strategy}"
            )
        if self.ensemble > 1 and (self.init_from or self.freeze):
            raise ValueError(
                f"--ensemble={self.ensemble} trains fresh seeds; it does not take "
                "--init_from or --freeze (train the ensemble, or fine-tune one model)"
            )
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
            object.__setattr__(self, "hidden", tuple(self.hidden))
            for i, width in enumerate(self.hidden):
                _checks.positive_int(f"hidden[{i}]", width)
            if self.model is not None:
                raise ValueError("give --model or --hidden, not both")
        if self.activation is not None:
            _checks.one_of("activation", self.activation, ACTIVATIONS)
        for name in ("dropout", "label_smoothing", "ema"):
            _checks.rate(name, getattr(self, name))
        for name in (
            "l1", "l2", "maxnorm", "input_noise", "hidden_noise", "weight_decay", "min_delta"
        ):  # fmt: skip
            _checks.non_negative(name, getattr(self, name))
        for name in ("mixup", "cutmix"):
            _checks.beta_shape(name, getattr(self, name))
        _checks.boolean("batchnorm", self.batchnorm)
        if self.stream is not None:
            _checks.boolean("stream", self.stream)
        _checks.positive_int("shuffle_buffer", self.shuffle_buffer)
        if not isinstance(self.augment, str):
            raise ValueError(f"--augment ({self.augment!r}) must be a spec string")  # noqa: TRY004
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
        _checks.one_of("monitor", self.monitor, MONITORS)
        if self.xla is not None:
            _checks.boolean("xla", self.xla)
        _checks.one_of("strategy", self.strategy, STRATEGIES)
        for name in ("collective_timeout", "startup_timeout"):
            if getattr(self, name) is not None:
                _checks.positive(name, getattr(self, name))
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(
                f"--init_from ({self.init_from!r}) must be a path: a lowtf model "
                "directory or its best/ folder"
            )
        _checks.non_negative_int("freeze", self.freeze)
        if self.unfreeze_at is not None:
            _checks.positive_int("unfreeze_at", self.unfreeze_at)
        self._check_combinations()
        self._check_data()
        if self.augment.strip():
            # The spec's grammar lives with the ops, which import TensorFlow:
            # checked last, so that every other refusal comes without it.
            from lowtf import augment as augment_lib

            augment_lib.parse(self.augment)

    def _check_combinations(self) -> None:
        """The combinations that no single field's bounds can refuse."""
        if self.ema and self.swa_from:
            raise ValueError(
                f"--ema={self.ema} and --swa_from={self.swa_from} are two averages of "
                "the weights, and only one can be evaluated: drop one"
            )
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(
                f"--weight_decay is the decoupled decay of AdamW; add --optimizer=adamw "
                f"(not {self.optimizer}) or use --l2"
            )
        for name in ("collective_timeout", "startup_timeout"):
            if getattr(self, name) is not None and self.strategy != "multi_worker":
                what = (
                    "how long a worker waits for the others"
                    if name == "collective_timeout"
                    else "how long a worker waits for the others to start"
                )
                raise ValueError(
                    f"--{name} bounds {what}, so it needs --strategy=multi_worker "
                    f"(not {self.strategy}); drop it"
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

    def _check_data(self) -> None:
        """The data flags' combinations: a file for the data sets that read one, sizes."""
        dataset, path = self.dataset, self.data_path
        if dataset in FILE_DATASETS and not path:
            raise ValueError(f"--dataset={dataset} reads a file: add --data_path=FILE")
        if dataset not in FILE_DATASETS and path:
            raise ValueError(
                f"--data_path={path} is not read by --dataset={dataset} (its data "
                f"{'are embedded' if dataset == 'digits' else 'are generated'}); "
                f"{_dataset_for(path)}"
            )
        if self.label_column is not None and dataset != "csv":
            raise ValueError(
                f"--label_column is for --dataset=csv only, not {dataset}; drop it"
            )
        self._check_stream()
        needs_images = [
            what
            for what, used in (
                ("--model=cnn", self.model == "cnn"),
                (f"--augment={self.augment}", self.augments),
                (f"--cutmix={self.cutmix}", self.cutmix),
            )
            if used
        ]
        if needs_images and dataset not in IMAGE_DATASETS:
            what = needs_images[0]
            raise ValueError(
                f"{what} needs images: --dataset=digits, or an npz of [n, h, w] or "
                f"[n, h, w, c] images; {dataset} examples are rows of features"
            )
        if dataset == "digits":
            rest = DIGITS_ROWS - DIGITS_TEST_SIZE
            val = self.validation_size or DIGITS_VALIDATION_SIZE
            train = self.train_size or rest - val
            if val + train > rest or train < 1:
                raise ValueError(
                    f"--train_size ({train}) + --validation_size ({val}) exceed the "
                    f"{rest:,} digits rows outside the {DIGITS_TEST_SIZE} test rows; "
                    "lower them"
                )
            check_batch_size(self, train, most=rest - val)
        elif dataset == "synthetic":
            check_batch_size(self, self.train_size or SYNTHETIC_TRAIN_SIZE, most=None)

    def _check_stream(self) -> None:
        """--stream and its settings: only for the data sets read as they go."""
        if self.stream and self.dataset not in STREAMED_DATASETS:
            raise ValueError(
                f"--stream reads --data_path as training goes: for --dataset=csv, "
                f"higgs or tfrecord, not {self.dataset} (loaded in memory); drop it"
            )
        if not self.streams:
            for name, off in (
                ("shuffle_buffer", self.shuffle_buffer != DEFAULT_SHUFFLE_BUFFER),
                ("stats_rows", self.stats_rows is not None),
            ):
                if off:
                    raise ValueError(
                        f"--{name} is for streamed data (--stream with --dataset=csv or "
                        f"higgs, or --dataset=tfrecord); {self.dataset} is loaded in "
                        "memory and reshuffled whole every epoch: drop it"
                    )

    @property
    def streams(self) -> bool:
        """Whether the training data are streamed from ``data_path`` (:func:`lowtf.data.open_stream`)."""
        if self.dataset == "tfrecord":
            return self.stream is not False
        return bool(self.stream) and self.dataset in STREAMED_DATASETS

    @property
    def augments(self) -> bool:
        """Whether ``augment`` names any op (``""`` and ``"none"`` do not)."""
        return self.augment.strip().lower() not in ("", "none")

    @property
    def model_name(self) -> str:
        """The preset (or ``"cnn"``), or the hidden widths joined by ``x``."""
        if self.hidden is not None:
            return "x".join(map(str, self.hidden))
        return self.model or "medium"

    def defining_flags(self) -> dict:
        """The settings that say what this run is, as flag name -> value.

        The fields of :data:`DEFINING`, with the library's defaults filled
        in (``model`` is :attr:`model_name`, ``activation`` elu or relu) and
        the settings the data set ignores left out (``data_seed`` of the
        fixed digits and higgs splits, ``label_column`` outside csv).
        Recorded in run.json; a resume must give the same.
        """
        flags = {name: getattr(self, name) for name in DEFINING}
        flags["model"] = self.model_name
        flags["activation"] = self.activation or default_activation(self.model)
        spec = re.sub(r"\s+", "", self.augment).lower()
        flags["augment"] = "" if spec == "none" else spec
        if self.dataset in ("digits", "higgs", "tfrecord") or self.streams:
            del flags["data_seed"]
        if self.dataset != "csv":
            del flags["label_column"]
        for name in _NEWER:
            if not flags[name]:
                del flags[name]
        # Streamed runs only (newer than the records of earlier runs): how the
        # batches are drawn and standardized.
        if self.dataset == "tfrecord" and not self.streams:
            flags["stream"] = False
        elif self.streams and self.dataset != "tfrecord":
            flags["stream"] = True
        if self.streams and self.shuffle_buffer != DEFAULT_SHUFFLE_BUFFER:
            flags["shuffle_buffer"] = self.shuffle_buffer
        if self.streams and self.stats_rows is not None:
            flags["stats_rows"] = self.stats_rows
        return flags

    @property
    def resolved_model_dir(self) -> str:
        """``model_dir``, or a directory named by what the run is.

        ``runs/<dataset>-<model>``, then each defining flag (:data:`DEFINING`)
        off its default, e.g. ``runs/digits-small-dropout0.2-l2_0.0001-maxnorm3``;
        a hash of them instead when they make a long or awkward name
        (``runs/digits-medium-3f2a9c1b``). The same flags give the same
        directory, so running the same command again resumes.
        """
        if self.model_dir:
            return self.model_dir
        flags = self.defining_flags()
        defaults = {f.name: f.default for f in dataclasses.fields(JobConfig)}
        defaults["activation"] = default_activation(self.model)
        changed = [
            (name, value)
            for name, value in flags.items()
            if name not in ("dataset", "model") and value != defaults[name]
        ]
        return directory_name("runs", f"{self.dataset}-{self.model_name}", changed)


def directory_name(parent: str, base: str, changed: list) -> str:
    """``parent/base-<flag><value>-...``: a default directory named by what differs.

    ``changed`` is ``[(flag name, value)]`` off the defaults, in order; a
    list of values (a sweep's) is joined by ``+``. A hash of them replaces
    the flags when they make a long or awkward name
    (``runs/digits-medium-3f2a9c1b``).
    """
    parts = [_name_part(name, value) for name, value in changed]
    suffix = "-".join(parts)
    readable = all(re.fullmatch(r"[A-Za-z0-9_.+@=]+", part) for part in parts)
    if len(suffix) > _MAX_SUFFIX or not readable:
        text = json.dumps(dict(changed), sort_keys=True, default=str)
        suffix = hashlib.sha256(text.encode()).hexdigest()[:8]
    return os.path.join(parent, f"{base}-{suffix}" if suffix else base)


def check_batch_size(config, train_rows: int, *, most: int | None) -> None:
    """Refuses a batch larger than the training rows, naming the flag that helps.

    Args:
      config: the :class:`JobConfig` (or a sweep's config: ``batch_size``,
        ``train_size``).
      train_rows: the training rows the data set gives.
      most: the most training rows ``--train_size`` could give (None: no
        limit); raising it is advised only when that would help.
    """
    if config.batch_size <= train_rows:
        return
    if most is not None:
        grows = most >= config.batch_size
    else:  # the file's size is not known here
        grows = config.train_size is not None or config.dataset in (
            "higgs",
            "synthetic",
        )
    fix = f"lower it to at most {train_rows}" + (
        " or raise --train_size" if grows else ""
    )
    raise ValueError(
        f"--batch_size ({config.batch_size}) exceeds the {train_rows:,} training "
        f"examples of {config.dataset}; {fix}"
    )


def default_activation(model: str | None) -> str:
    """The activation when none is given: relu for the cnn, elu for an MLP."""
    return "relu" if model == "cnn" else "elu"


def _dataset_for(path: str) -> str:
    """What to do about a --data_path given to a data set that reads none."""
    name = os.path.basename(path).lower()
    if name.endswith(".npz"):
        return "add --dataset=npz"
    if "tfrecord" in name or "*" in name:
        return "add --dataset=tfrecord"
    if "higgs" in name:
        return "add --dataset=higgs (or --dataset=csv for any numeric CSV)"
    if name.endswith((".csv", ".csv.gz", ".gz", ".txt")):
        return "add --dataset=csv"
    return "add --dataset=csv, npz or higgs, or drop --data_path"


def _name_part(name: str, value) -> str:
    """One flag in a directory name: ``dropout0.2``, ``l2_0.0001``, ``batchnorm``, ``optimizer_sgd``.

    A sweep's list of values: ``l2_0+0.0001+0.001``.
    """
    if value is True:
        return name
    if isinstance(value, (list, tuple)):
        return f"{name}_" + "+".join(_name_value(v) for v in value)
    text = _name_value(value)
    glue = "_" if name[-1].isdigit() or isinstance(value, str) else ""
    return f"{name}{glue}{text}"


def _name_value(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    # An augmentation spec: translate:1,rotate:10 -> translate1+rotate10.
    return text.replace(":", "").replace(",", "+")
