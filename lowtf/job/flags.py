"""The flags of ``bin/train`` and ``bin/sweep``, defined once: :data:`SETTINGS`.

One :class:`Setting` per field of :class:`lowtf.job.JobConfig`, in the order
of ``--help``: its flag's type, default, help text, bounds or choices, the
checks beyond them, and what a sweep may do with it:

* ``MEMBER``: a sweep compares a list of values (or, with TPE, a range),
  and configurations that differ only in such settings train as members of
  one :class:`lowtf.Population` (each its own learning rate, penalty,
  dropout rate, augmentation, seed, ...);
* ``SPLIT``: a list of values too, but each value changes a shape or the
  shared step (the architecture, batch norm, the activation, the batch
  size, the optimizer and its schedule, the loop's length), so it trains in
  populations of its own;
* ``FIXED``: one value for the whole sweep (the data every configuration is
  scored on, the score itself, how the steps run); given twice it is
  refused, naming the flag;
* ``REFUSED``: a sweep cannot honour it (off its default it is refused in
  one line saying why; ``bin/sweep --help`` lists them).

:func:`define_train_flags` defines them as ``bin/train``'s absl flags (the
bounds as absl's, the checks as validators); :func:`job_config` reads them
into a :class:`JobConfig`. :func:`define_sweep_flags` defines the same names
for ``bin/sweep``, each keeping the text of every time it is given
(:func:`given`); :mod:`lowtf.sweep.config` reads them with
:meth:`Setting.parse`, so a value means and is checked the same in both
binaries. :func:`command_line` writes a :class:`JobConfig` back as
``bin/train`` flags. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math

from absl import flags

from lowtf.job.config import (
    ACTIVATIONS,
    DATASETS,
    DEFAULT_SHUFFLE_BUFFER,
    MODELS,
    MONITORS,
    OPTIMIZERS,
    STARTUP_TIMEOUT,
    STRATEGIES,
    JobConfig,
)

MEMBER, SPLIT, FIXED, REFUSED = "member", "split", "fixed", "refused"
KINDS = ("float", "int", "bool", "enum", "string", "widths")
# Why a sweep takes one value of these settings.
_DATA = "every configuration is scored on the same data"
_HOW = "it changes how the steps run, not their numbers"
_ONE_DEVICE = "a sweep trains each population on one device"
_FRESH = "a sweep's configurations start from fresh random weights"
_IN_MEMORY = (
    "a sweep trains its populations from data in memory (tfrecord shards are read "
    "whole), reshuffled every epoch"
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One flag of ``bin/train`` and ``bin/sweep``: one field of :class:`JobConfig`.

    Attributes:
      name: the flag's and the field's name.
      kind: one of :data:`KINDS`; ``"widths"`` is a comma-separated list of
        positive integers (``--hidden=512,512``).
      default: the flag's default (shown by ``--help``).
      help: the help text.
      sweep: ``MEMBER``, ``SPLIT``, ``FIXED`` or ``REFUSED`` (module doc).
      why: ``FIXED`` and ``REFUSED``: why a sweep takes one value, or none.
      lower, upper: bounds of a number (absl's ``lower_bound``/``upper_bound``).
      choices: the values of an enum.
      checks: ``(predicate, message)`` pairs beyond the bounds, as absl
        validators (a float is also refused unless finite).
      unset: not given, the field is None and the library decides (the
        model, activation and XLA follow other flags).
      log: its values are plotted on a log axis when all are > 0.
    """

    name: str
    kind: str
    default: object
    help: str
    sweep: str
    why: str = ""
    lower: float | None = None
    upper: float | None = None
    choices: tuple = ()
    checks: tuple = ()
    unset: bool = False
    log: bool = False

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    @property
    def sweepable(self) -> bool:
        """Whether a sweep may compare several values."""
        return self.sweep in (MEMBER, SPLIT)

    def parser(self) -> flags.ArgumentParser:
        """absl's parser of one value, with the bounds."""
        if self.kind == "float":
            return flags.FloatParser(lower_bound=self.lower, upper_bound=self.upper)
        if self.kind == "int":
            return flags.IntegerParser(lower_bound=self.lower, upper_bound=self.upper)
        if self.kind == "bool":
            return flags.BooleanParser()
        if self.kind == "enum":
            return flags.EnumParser(self.choices)
        if self.kind == "widths":
            return _WidthsParser()
        return flags.ArgumentParser()

    def validators(self) -> tuple:
        """``(predicate, message)`` of every check beyond the bounds."""
        finite = ()
        if self.kind == "float":
            finite = (
                (math.isfinite, f"--{self.name} must be a finite number (not nan or inf)"),
            )
        return (*finite, *self.checks)

    def parse(self, text: str):
        """One value from its text, checked as ``bin/train`` checks the flag.

        Raises:
          ValueError: absl's words for a flag value, ``flag --NAME=TEXT: why``.
        """
        try:
            value = self.parser().parse(text)
        except ValueError as error:
            raise ValueError(f"flag --{self.name}={text}: {error}") from None
        for predicate, message in self.validators():
            if value is not None and not predicate(value):
                raise ValueError(f"flag --{self.name}={value}: {message}")
        return value

    def flag(self, value) -> str:
        """``--name=value`` as ``bin/train`` reads it back (every digit of a float)."""
        if isinstance(value, bool):
            return f"--{self.name}" if value else f"--no{self.name}"
        if isinstance(value, tuple):
            return f"--{self.name}={','.join(map(str, value))}"
        return f"--{self.name}={value!r}" if isinstance(value, float) else f"--{self.name}={value}"


class _WidthsParser(flags.ListParser):
    """Hidden widths: ``512,512`` as ``(512, 512)``."""

    def parse(self, argument):
        if isinstance(argument, tuple):
            return argument
        widths = super().parse(argument)
        if not all(w.strip().isdigit() and int(w) > 0 for w in widths):
            raise ValueError("widths must be positive integers, e.g. 512,512")
        return tuple(int(w) for w in widths)

    def flag_type(self):
        return "comma separated list of positive integers"


def _below_one(name: str, off: str = "0 turns it off") -> tuple:
    return ((lambda value: value < 1, f"--{name} must be in [0, 1); {off}"),)


def _positive(name: str, what: str = "") -> tuple:
    return ((lambda value: value > 0, f"--{name} must be > 0{what}"),)


SETTINGS = (
    # -- data
    Setting("dataset", "enum", "digits",
            "Data set; digits is embedded; tfrecord reads shards of tf.train.Example "
            "(features, label), streamed.", FIXED, _DATA, choices=DATASETS),
    Setting("data_path", "string", None,
            "File to read: required by higgs (.csv or .csv.gz), npz and csv; tfrecord: a "
            "directory written by bin/convert (train-*, validation-*, test-*, spec.json), "
            "or a glob of shards (any tf.io.gfile path, gs:// too).", FIXED, _DATA),
    Setting("label_column", "string", None,
            "csv only: header name or column index of the label; default the last column.",
            FIXED, _DATA),
    Setting("train_size", "int", None,
            "Training rows; default: higgs 10000, synthetic 2000, otherwise all that the "
            "split leaves (streamed: every row after the held-out ones).", FIXED, _DATA,
            lower=1),
    Setting("validation_size", "int", None,
            "Validation rows; default: digits 300, higgs 1000, synthetic 500, npz 10% and "
            "csv 15% of the rows. Streamed: the first rows are validation, the next as "
            "many test (default 1000 each; tfrecord: its validation-*/test-* shards if "
            "any).", FIXED, _DATA, lower=1),
    Setting("data_seed", "int", 0,
            "Seed of the npz/csv split and of the synthetic data (digits and higgs splits "
            "are fixed); of a sweep's folds too.", FIXED, _DATA, lower=0),
    Setting("stream", "bool", False,
            "Read --data_path as training goes instead of loading it (csv, higgs; "
            "tfrecord streams unless --nostream): shards interleaved in parallel, a "
            "seeded shuffle buffer, prefetch; standardization statistics from one "
            "streaming pass over the training rows before training, kept for bin/export.",
            REFUSED, _IN_MEMORY, unset=True),
    Setting("shuffle_buffer", "int", DEFAULT_SHUFFLE_BUFFER,
            "Streamed data: rows in the training shuffle buffer (saved with every "
            "checkpoint, 4 bytes per value).", REFUSED, _IN_MEMORY, lower=1),
    Setting("stats_rows", "int", None,
            "Streamed data: standardization statistics from the first this many training "
            "rows instead of all of them (faster; right only for a file in no particular "
            "order).", REFUSED, _IN_MEMORY, lower=1),
    # -- model
    Setting("model", "enum", "medium",
            "MLP preset: tiny 16, small 16-16, medium 64-64-64, large 512x4; or cnn, the "
            "small CNN for images (digits, or npz images [n, h, w(, c)]; relu unless "
            "--activation).", SPLIT, choices=MODELS, unset=True),
    Setting("hidden", "widths", None, "Hidden widths instead of --model, e.g. 512,512.",
            SPLIT),
    Setting("activation", "enum", "elu", "Hidden activation.", SPLIT, choices=ACTIVATIONS,
            unset=True),
    Setting("dropout", "float", 0.0,
            "Dropout rate after each hidden layer, in [0, 1); 0 is off.", MEMBER, lower=0.0,
            checks=_below_one("dropout")),
    Setting("l1", "float", 0.0, "L1 penalty scale on the kernels; 0 is off.", MEMBER,
            lower=0.0, log=True),
    Setting("l2", "float", 0.0, "L2 penalty scale on the kernels; 0 is off.", MEMBER,
            lower=0.0, log=True),
    Setting("maxnorm", "float", 0.0,
            "Max-norm cap of each hidden unit's incoming weights; 0 is off.", MEMBER,
            lower=0.0),
    Setting("batchnorm", "bool", False, "Batch norm before each hidden activation.", SPLIT),
    Setting("input_noise", "float", 0.0,
            "Stddev of Gaussian noise added to the inputs in training; 0 is off.", MEMBER,
            lower=0.0),
    Setting("hidden_noise", "float", 0.0,
            "Stddev of Gaussian noise after each hidden activation (the cnn: its dense "
            "layers) in training; 0 is off.", MEMBER, lower=0.0),
    Setting("augment", "string", "",
            "In-graph augmentation of the training images, e.g. translate:1,rotate:10,"
            "noise:0.05 (ops: translate, rotate, zoom, flip, brightness, contrast, noise; "
            "NAME:MAGNITUDE[@PROB]). Images only; an MLP gets each image augmented, then "
            "flattened. Default: none.", MEMBER),
    # -- optimization
    Setting("optimizer", "enum", "adam", "Keras optimizer; momentum is SGD with momentum 0.9.",
            SPLIT, choices=OPTIMIZERS),
    Setting("learning_rate", "float", 1e-3, "Initial learning rate (> 0).", MEMBER,
            lower=0.0, checks=_positive("learning_rate"), log=True),
    Setting("lr_decay_steps", "int", 0,
            "Inverse-time decay, lr / (1 + step / lr_decay_steps), as in the TF overfitting "
            "tutorial; 0 is constant.", SPLIT, lower=0),
    Setting("weight_decay", "float", 0.0,
            "Decoupled weight decay of --optimizer=adamw; 0 is off.", MEMBER, lower=0.0,
            log=True),
    Setting("label_smoothing", "float", 0.0,
            "Smooth the training targets by this much, in [0, 1) (the evaluations stay the "
            "plain cross-entropy); 0 is off.", MEMBER, lower=0.0,
            checks=_below_one("label_smoothing")),
    Setting("mixup", "float", 0.0,
            "Mixup's Beta(a, a) shape a, in [0, 2] (usually 0.1-0.4): each batch is mixed "
            "with itself reversed; 0 is off.", MEMBER, lower=0.0, upper=2.0),
    Setting("cutmix", "float", 0.0,
            "CutMix's Beta(a, a) shape, in [0, 2] (usually 1); images only; with --mixup "
            "each step does one of them; 0 is off.", MEMBER, lower=0.0, upper=2.0),
    Setting("ema", "float", 0.0,
            "Momentum of an exponential moving average of the weights, in [0, 1) (e.g. "
            "0.99), evaluated, kept as best and exported instead of the weights; 0 is off.",
            MEMBER, lower=0.0, checks=_below_one("ema")),
    Setting("swa_from", "int", 0,
            "Stochastic weight averaging from this step on: the equal-weight mean of the "
            "weights at each evaluation from then (batch-norm statistics recomputed for "
            "it) is evaluated, kept as best and exported; 0 is off. Not with --ema.",
            MEMBER, lower=0),
    # -- loop
    Setting("batch_size", "int", 128, "Examples per training step.", SPLIT, lower=1),
    Setting("max_steps", "int", 10000, "Stop at this step at the latest.", SPLIT, lower=1),
    Setting("eval_every", "int", 100, "Evaluate on the validation set every this many steps.",
            SPLIT, lower=1),
    Setting("patience", "int", 1000, "Stop once --monitor has not improved for this many steps.",
            MEMBER, lower=1),
    Setting("min_delta", "float", 0.0,
            "Smallest change of --monitor that counts as an improvement.", MEMBER, lower=0.0),
    Setting("monitor", "enum", "val_cross_entropy",
            "Metric of early stopping (accuracies are maximized); a sweep's score.", FIXED,
            "it is the score every configuration is ranked by", choices=MONITORS),
    Setting("warmup", "int", 0, "No early stop before this step.", SPLIT, lower=0),
    Setting("steps_per_call", "int", 100,
            "Training steps per compiled call (at most; calls land on evaluations).", FIXED,
            _HOW, lower=1),
    Setting("checkpoint_every", "int", 1000, "Save the latest checkpoint every this many steps.",
            FIXED, _HOW, lower=1),
    Setting("xla", "bool", True,
            "Compile the training step with XLA. Unset, XLA is used except for --model=cnn "
            "on a machine without a GPU, where a graph step is as fast and compiles sooner "
            "(BENCHMARKS.md).", FIXED, _HOW, unset=True),
    Setting("seed", "int", 0, "Seed of the initial weights, dropout masks and batch order.",
            MEMBER, lower=0),
    # -- distribution
    Setting("strategy", "enum", "default",
            "tf.distribute strategy: default (one device), mirrored (every local GPU, else "
            "the CPU) or multi_worker (the cluster in TF_CONFIG: run the same command on "
            "every worker, with --model_dir on a file system they share). --batch_size is "
            "the global batch.", REFUSED, _ONE_DEVICE, choices=STRATEGIES),
    Setting("collective_timeout", "float", None,
            "multi_worker only: seconds that one collective op (all-reduce, barrier) may "
            "wait for the other workers before this worker stops with an error: for a "
            "worker that hangs without dying (one that dies is seen within about 10 s "
            "without it). Costs one sleeping thread per collective op for that long (about "
            "8 ops per step), so keep it short, yet above the longest wait of a healthy run "
            "(a slower worker's first compile, the chief's checkpoint writes). Default: no "
            "limit.", REFUSED, _ONE_DEVICE,
            checks=_positive("collective_timeout", " seconds; leave it out for no limit")),
    Setting("startup_timeout", "float", None,
            f"multi_worker only: seconds to wait for the other workers to start before "
            f"giving up (one line, status 3, nothing written); a waiting worker names the "
            f"missing ones every 30 s. Default: {STARTUP_TIMEOUT:g}.", REFUSED, _ONE_DEVICE,
            checks=_positive("startup_timeout", " seconds")),
    # -- outputs
    Setting("model_dir", "string", None,
            "Output directory; default runs/<dataset>-<model>[-<flags that define the run, "
            "off their defaults>] under the current directory, e.g. "
            "runs/digits-small-dropout0.2-l2_0.0001 (a hash instead when that is long). "
            "bin/sweep: the winner's directory (default <sweep_dir>/winner).", FIXED,
            "it names the winner's directory"),
    Setting("export_dir", "string", None,
            "At the end, export the best snapshot as a SavedModel version DIR/<n>/ (as "
            "bin/export); bin/sweep: the winner's (its --ensemble: bin/export --sweep_dir). "
            "Default: no export.", FIXED,
            "it exports the winner; bin/export --sweep_dir exports the sweep's ensemble"),
    # -- transfer learning
    Setting("init_from", "string", None,
            "Start from this run's best snapshot (a model directory, or its best/ folder): "
            "layers are matched in order and by shape; an output layer for another number "
            "of classes (or a first layer for another input width) starts afresh, reported "
            "in one line.", REFUSED, _FRESH),
    Setting("freeze", "int", 0,
            "Freeze the first N hidden layers (each with its batch norm, which then runs in "
            "inference mode); their regularization and max-norm are left out. Needs "
            "--init_from.", REFUSED, _FRESH, lower=0),
    Setting("unfreeze_at", "int", None,
            "Unfreeze every layer at this step and fine-tune everything from there at "
            "--learning_rate. Needs --freeze.", REFUSED, _FRESH, lower=1),
    # -- ensemble
    Setting("ensemble", "int", 0,
            "Train this many seeds (--seed, --seed+1, ...) as one population and average "
            "their probabilities (a deep ensemble; reported per member and together, "
            "exported as one model). 0 or 1: one model. bin/sweep: the most picks of an "
            "ensemble chosen from the sweep's trained configurations beside the winner "
            "(exported by bin/export --sweep_dir).",
            FIXED, "it is the sweep's ensemble, not a configuration's: at most N picks, "
            "with replacement, on validation (with --folds, out-of-fold) predictions only, "
            "scored on test beside the winner; bin/export --sweep_dir exports it", lower=0),
)  # fmt: skip
BY_NAME = {s.name: s for s in SETTINGS}


# The settings that pick the data and its split: what bin/convert takes.
DATA_SETTINGS = (
    "dataset", "data_path", "label_column", "train_size", "validation_size", "data_seed",
    "stream", "stats_rows",
)  # fmt: skip


def define_train_flags(
    flag_values: flags.FlagValues = flags.FLAGS, *, only: tuple | None = None
) -> dict:
    """Defines every setting as ``bin/train``'s flag; returns ``{name: FlagHolder}``.

    Args:
      flag_values: where to define them.
      only: define these settings only (``bin/convert``: :data:`DATA_SETTINGS`);
        default None: all.
    """
    holders = {}
    for s in SETTINGS:
        if only is not None and s.name not in only:
            continue
        args = (s.name, s.default, s.help)
        if s.kind == "bool":
            holder = flags.DEFINE_bool(*args, flag_values=flag_values)
        elif s.kind == "enum":
            holder = flags.DEFINE_enum(
                s.name, s.default, s.choices, s.help, flag_values=flag_values
            )
        elif s.kind == "float":
            holder = flags.DEFINE_float(
                *args, lower_bound=s.lower, upper_bound=s.upper, flag_values=flag_values
            )
        elif s.kind == "int":
            holder = flags.DEFINE_integer(
                *args, lower_bound=s.lower, upper_bound=s.upper, flag_values=flag_values
            )
        elif s.kind == "widths":
            holder = flags.DEFINE(
                _WidthsParser(), *args, flag_values=flag_values,
                serializer=flags.CsvListSerializer(","),
            )  # fmt: skip
        else:
            holder = flags.DEFINE_string(*args, flag_values=flag_values)
        for predicate, message in s.validators():
            # A validator sees the default too: None is "not given".
            flags.register_validator(
                s.name,
                lambda value, check=predicate: value is None or check(value),
                message=message,
                flag_values=flag_values,
            )
        holders[s.name] = holder
    return holders


def job_config(flag_values: flags.FlagValues = flags.FLAGS) -> JobConfig:
    """The :class:`JobConfig` of ``bin/train``'s parsed flags.

    Not given, the ``unset`` settings (--model, --activation, --xla) are
    None: the library's rules decide (--hidden instead of medium, relu for
    the cnn, XLA where it pays).

    Raises:
      ValueError: a bad combination, in flag terms.
    """
    values = {}
    for s in SETTINGS:
        if s.name not in flag_values:
            continue  # a binary that defines some of them (bin/convert)
        flag = flag_values[s.name]
        if not (s.unset and not flag.present):
            values[s.name] = flag.value
    return JobConfig(**values)


def sweep_help(s: Setting) -> str:
    """What ``bin/sweep`` does with a setting, for its ``--help``."""
    if s.sweep == REFUSED:
        return f"bin/sweep: refused off its default ({s.why})."
    if s.sweep == FIXED:
        return f"bin/sweep: one value ({s.why})."
    if s.kind in ("string", "widths"):
        listed = "repeat the flag to compare values (commas belong to a value)"
    else:
        listed = "compares a comma-separated list (or repeat the flag)"
        if s.numeric:
            listed += "; with --search=tpe a range lo..hi or lo..hi:log"
    shared = (
        "members of one population"
        if s.sweep == MEMBER
        else "each value in populations of its own"
    )
    return f"bin/sweep: {listed}; {shared}."


class _Given(flags.Flag):
    """A flag of ``bin/sweep``: the text of every time it is given, in order.

    A bool setting keeps absl's forms: ``--batchnorm`` is ``"true"``,
    ``--nobatchnorm`` ``"false"``, and ``--batchnorm=false,true`` a list.
    """

    def __init__(self, setting: Setting):
        super().__init__(
            flags.ArgumentParser(),
            flags.ArgumentSerializer(),
            setting.name,
            None,
            f"{setting.help} {sweep_help(setting)}",
            boolean=setting.kind == "bool",
        )

    def parse(self, argument) -> None:
        self.value = [*(self.value or []), argument]
        self.present += 1

    def flag_type(self) -> str:
        return "string"


def define_sweep_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
    """Defines every setting as a ``bin/sweep`` flag; returns ``{name: FlagHolder}``."""
    return {
        s.name: flags.DEFINE_flag(_Given(s), flag_values) for s in SETTINGS
    }


def given(holders: dict) -> dict[str, list[str]]:
    """``bin/sweep``'s settings on the command line: ``{name: [text, ...]}``."""
    return {name: list(h.value) for name, h in holders.items() if h.value is not None}


def command_line(job: JobConfig) -> list[str]:
    """``bin/train`` flags that reproduce ``job``: its settings off their defaults."""
    default = JobConfig()
    return [
        BY_NAME[name].flag(value)
        for name in BY_NAME
        for value in (getattr(job, name),)
        if value is not None and value != getattr(default, name)
    ]
