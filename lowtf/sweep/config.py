"""What a sweep is: the shared settings, the swept values and how they are searched.

:class:`SweepConfig` holds ``bin/train``'s data, model, optimizer and loop
settings once, and for each swept setting (architectures, L1, L2, dropout,
max-norm) a list of values or, for the numeric ones, a :class:`Range`.
``search="grid"`` (lists only): :meth:`SweepConfig.points` expands the grid,
every combination is a :class:`Point`. ``search="tpe"``: Optuna's TPE samples
``trials`` points, lists as categorical choices and ranges as floats.
:func:`by_architecture` groups points that can share one
:class:`lowtf.Population` (one architecture). :func:`parse_values` reads a
flag's entries (``0,1e-4`` or ``1e-6..1e-2:log``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re

from lowtf import _checks, models
from lowtf.train import metrics
from lowtf.train.job import OPTIMIZERS, JobConfig

# A range entry: two numbers, no dot next to the "..", and an optional ":log".
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?i:inf(?:inity)?|nan)"
_RANGE = re.compile(rf"({_NUMBER})(?<!\.)\.\.(?!\.)({_NUMBER})(:log)?")
# The swept settings, in the order of a configuration's label and the grid.
SWEPT = ("architecture", "l1", "l2", "dropout", "maxnorm")
REGULARIZERS = ("l1", "l2", "dropout", "maxnorm")
SEARCHES = ("grid", "tpe")
# TPE's configurations per round when --claim is 0. A round's configurations
# of one architecture train as one population, so a larger batch trains
# faster (one compiled step for more members), but each of its points is
# sampled knowing only the trials finished before the round (the running ones
# enter as constant-liar guesses); 8 keeps both sides reasonable.
TPE_BATCH = 8


@dataclasses.dataclass(frozen=True)
class Range:
    """A swept numeric setting sampled from ``[low, high]`` (``--l2=1e-6..1e-2:log``).

    Attributes:
      low, high: the ends, ``low < high``.
      log: sample ``log(value)`` uniformly (``low > 0``) instead of ``value``
        (default False).
    """

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        _checks.finite("low", self.low)
        _checks.finite("high", self.high)
        _checks.boolean("log", self.log)
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    def __str__(self) -> str:
        """As the flag spells it: ``1e-06..0.01:log``."""
        return f"{self.low!r}..{self.high!r}" + (":log" if self.log else "")


def parse_values(flag: str, entries) -> tuple | Range:
    """A swept numeric flag's entries as a tuple of floats or one :class:`Range`.

    Args:
      flag: the flag's name, for the error (``"l2"``).
      entries: its comma-separated entries (``["0", "1e-4"]``), or one range
        entry ``"lo..hi"`` (uniform) or ``"lo..hi:log"`` (log-uniform).

    Raises:
      ValueError: an entry that is not a number, a range with other entries,
        a range not spelled ``lo..hi[:log]``.
    """
    entries = list(entries)
    given = f"--{flag}={','.join(entries)}"
    if any(".." in e for e in entries):
        if len(entries) != 1:
            raise ValueError(
                f"{given}: a range is the flag's one entry (e.g. --{flag}=1e-6..1e-2:log), "
                "not part of a list"
            )
        found = _RANGE.fullmatch(entries[0])
        if found is None:
            # Not float() on each side of "..": "1e-6...1e-2" would read as
            # 1e-6 and .1e-2, a range the user never wrote.
            raise ValueError(
                f"{given}: a range is lo..hi (uniform) or lo..hi:log (log-uniform) "
                f"with two numbers and exactly two dots between them, e.g. "
                f"--{flag}=1e-6..1e-2:log"
            )
        low, high, log = float(found[1]), float(found[2]), bool(found[3])
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{given}: the ends of a range must be finite numbers")
        return Range(low, high, log)
    values = []
    for text in entries:
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"{given}: {text!r} is not a number") from None
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of the grid.

    Attributes:
      architecture: a preset name (``"small"``) or widths joined by ``:``
        (``"16:64"``), as ``--model``/``--hidden`` spell it.
      l1, l2, dropout, maxnorm: its regularization; 0 is off.
    """

    architecture: str
    l1: float
    l2: float
    dropout: float
    maxnorm: float

    @property
    def key(self) -> str:
        """A canonical label, the same in every process and storage."""
        return " ".join(f"{n}={getattr(self, n)!r}" for n in SWEPT)

    @property
    def units(self) -> tuple[int, ...]:
        return architecture_units(self.architecture)

    def params(self) -> dict:
        """Its values as Optuna trial parameters."""
        return {n: getattr(self, n) for n in SWEPT}


def architecture_units(architecture: str) -> tuple[int, ...]:
    """The hidden widths of a preset name or of ``"16:64"``."""
    if architecture in models.PRESETS:
        return models.PRESETS[architecture]
    return tuple(int(w) for w in architecture.split(":"))


def by_architecture(items, point=lambda item: item) -> dict[str, list]:
    """Items grouped by their point's architecture, in their given order.

    ``point`` gives an item's :class:`Point` (default: the item is one), e.g.
    ``lambda pair: pair[1]`` for ``(trial, point)`` pairs.
    """
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(point(item).architecture, []).append(item)
    return groups


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Everything :func:`lowtf.sweep.run_sweep` needs; checked when made.

    The shared fields are :class:`lowtf.train.JobConfig`'s, with its
    defaults (the MLP ones: populations are MLPs, so no cnn, augmentation or
    distribution strategy; a sweep has no warmup).

    Attributes:
      architectures: presets (``"tiny"``) or widths joined by ``:``
        (``"16:64"``), one per architecture (default ``("medium",)``, as bin/train).
      l1, l2, dropout, maxnorm: the swept values of each: a non-empty tuple
        (default ``(0.0,)`` each) or, with ``search="tpe"``, a :class:`Range`.
      search: ``"grid"`` (default): every combination of the lists, and no
        range; ``"tpe"``: Optuna's TPE samples ``trials`` configurations,
        the lists as categorical choices and the ranges as floats (at least
        one range).
      trials: how many configurations TPE samples (``search="tpe"`` only,
        where it is required; default 0).
      folds: 1 (default): score on the fixed validation split; k >= 2:
        stratified k-fold cross-validation on the training rows, each
        configuration trained once per fold.
      sweep_dir: where the study, populations, report and winner go
        (default None: ``sweeps/<dataset>-<architectures joined by +>``).
      storage: an Optuna storage URL shared by several processes, or
        ``journal:<path>`` for a journal file (default None:
        ``sqlite:///<sweep_dir>/study.db``).
      claim: configurations a process takes per round (default 0: all that
        are left of a grid, ``TPE_BATCH`` (8) with TPE); with several
        processes on one storage, a small number splits the grid between
        them. With TPE, a round's points are sampled before any of them is
        scored: a larger claim makes larger populations (faster) but TPE
        learns from fewer finished trials.
      retrain: retrain the winner with ``run_job`` and score it on test
        (default True).
    """

    # -- data
    dataset: str = "digits"
    data_path: str | None = None
    label_column: str | int | None = None
    train_size: int | None = None
    validation_size: int | None = None
    data_seed: int = 0
    # -- swept
    architectures: tuple = ("medium",)
    l1: tuple = (0.0,)
    l2: tuple = (0.0,)
    dropout: tuple = (0.0,)
    maxnorm: tuple = (0.0,)
    search: str = "grid"
    trials: int = 0
    # -- model, optimizer, loop (shared)
    activation: str | None = None
    batchnorm: bool = False
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_decay_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 128
    max_steps: int = 10000
    eval_every: int = 100
    patience: int = 1000
    min_delta: float = 0.0
    monitor: str = "val_cross_entropy"
    steps_per_call: int = 100
    checkpoint_every: int = 1000
    xla: bool | None = None
    seed: int = 0
    # -- the sweep
    folds: int = 1
    sweep_dir: str | None = None
    storage: str | None = None
    claim: int = 0
    retrain: bool = True

    def __post_init__(self):
        if isinstance(self.architectures, Range):
            raise ValueError(  # noqa: TRY004 - a flag's value, as every check here
                f"--model/--hidden ({self.architectures}) is a range; architectures "
                "are a list (e.g. --model=tiny,small), ranges are for --l1, --l2, "
                "--dropout and --maxnorm"
            )
        archs = _nonempty("architectures", "model", self.architectures)
        for a in archs:
            if not isinstance(a, str) or not (
                a in models.PRESETS
                or all(w.isdigit() and int(w) > 0 for w in a.split(":"))
            ):
                raise ValueError(
                    f"--model/--hidden: architecture {a!r} is neither a preset "
                    f"({', '.join(models.PRESETS)}) nor positive widths joined by ':' "
                    "(e.g. 16:64)"
                )
        object.__setattr__(self, "architectures", archs)
        _checks.one_of("search", self.search, SEARCHES)
        _checks.non_negative_int("trials", self.trials)
        checks = {
            "l1": _checks.non_negative,
            "l2": _checks.non_negative,
            "maxnorm": _checks.non_negative,
            "dropout": _checks.rate,
        }
        for name, check in checks.items():
            value = getattr(self, name)
            if isinstance(value, Range):
                _check_range(name, value, check)
                if self.search != "tpe":
                    raise ValueError(
                        f"--{name}={value} is a range: ranges need --search=tpe "
                        "--trials=N (or give a list of values for the grid)"
                    )
                continue
            values = _nonempty(name, name, value)
            for v in values:
                try:
                    check(name, v)
                except ValueError as e:
                    raise ValueError(
                        f"--{name}={','.join(map(str, values))}: {e}"
                    ) from None
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if self.search == "grid" and self.trials:
            raise ValueError(
                f"--trials ({self.trials}) only applies to --search=tpe; drop it for "
                "the grid (which trains every combination)"
            )
        if self.search == "tpe":
            if self.trials < 1:
                raise ValueError(
                    "--search=tpe needs --trials=N (N > 0): how many configurations "
                    "it samples"
                )
            if not self.ranges():
                raise ValueError(
                    "--search=tpe samples ranges, and every swept setting is a list; "
                    "give one as a range (e.g. --l2=1e-6..1e-2:log) or drop "
                    "--search=tpe to train the grid"
                )
        _checks.positive_int("folds", self.folds)
        _checks.non_negative_int("claim", self.claim)
        _checks.boolean("retrain", self.retrain)
        _checks.one_of("monitor", self.monitor, metrics.MONITORS)
        _checks.one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.monitor == "regularization_loss":
            raise ValueError(
                "--monitor=regularization_loss cannot rank configurations (it is the "
                "penalty, not a fit); monitor val_cross_entropy or val_accuracy"
            )
        # Every configuration is a valid bin/train run: JobConfig checks the
        # shared fields once per point (cheap, and one rule in one place); a
        # range's two ends stand for the values between them.
        for values in itertools.product(*self._values().values()):
            self.job_config(Point(*values), model_dir=None)

    # -- the grid or the sampled space ------------------------------------------

    def points(self) -> list[Point]:
        """Every combination of the swept values (architecture varies slowest).

        Raises:
          ValueError: a TPE sweep, whose points are sampled, not listed.
        """
        if self.search != "grid":
            raise ValueError(
                f"a --search={self.search} sweep samples its points; only a grid "
                "lists them"
            )
        return [
            Point(*values) for values in itertools.product(*self._values().values())
        ]

    def search_space(self) -> dict[str, list | Range]:
        """Per swept setting, its list of values or its :class:`Range`.

        A grid's is what Optuna's GridSampler takes.
        """
        return {
            n: v if isinstance(v, Range) else list(v)
            for n, v in (
                (n, getattr(self, n if n != "architecture" else "architectures"))
                for n in SWEPT
            )
        }

    def ranges(self) -> dict[str, Range]:
        """The settings given as ranges."""
        return {n: v for n, v in self.search_space().items() if isinstance(v, Range)}

    def swept(self) -> tuple[str, ...]:
        """The settings that vary: a range, or a list of more than one value."""
        return tuple(
            n
            for n, v in self.search_space().items()
            if isinstance(v, Range) or len(v) > 1
        )

    @property
    def configurations(self) -> int:
        """How many configurations the sweep finishes: the grid's, or ``trials``."""
        if self.search == "tpe":
            return self.trials
        return math.prod(len(v) for v in self.search_space().values())

    @property
    def batch(self) -> int:
        """Configurations a process claims per round (see ``claim``)."""
        if self.claim:
            return self.claim
        return TPE_BATCH if self.search == "tpe" else self.configurations

    def _values(self) -> dict[str, list]:
        """Each setting's values, a range as its two ends."""
        return {
            n: [v.low, v.high] if isinstance(v, Range) else v
            for n, v in self.search_space().items()
        }

    # -- names, paths, the definition -------------------------------------------

    @property
    def resolved_sweep_dir(self) -> str:
        if self.sweep_dir:
            return self.sweep_dir
        name = "+".join(self.architectures)
        return os.path.join("sweeps", f"{self.dataset}-{name}")

    @property
    def resolved_storage(self) -> str:
        if self.storage:
            return self.storage
        return "sqlite:///" + os.path.abspath(
            os.path.join(self.resolved_sweep_dir, "study.db")
        )

    def definition(self) -> dict:
        """What defines the sweep's results: all but where it is stored and run.

        JSON-normalized (tuples become lists), as a study's user attrs hold it.
        """
        skip = {"sweep_dir", "storage", "claim", "retrain"}
        if self.search == "grid":
            # A grid's definition stays what it was before TPE existed, so a
            # study.db made then still resumes.
            skip |= {"search", "trials"}
        fields = {
            f.name: str(v) if isinstance(v, Range) else v
            for f in dataclasses.fields(self)
            if f.name not in skip
            for v in (getattr(self, f.name),)
        }
        return json.loads(json.dumps(fields))

    # -- one configuration as a bin/train run -----------------------------------

    def job_config(self, point: Point, *, model_dir: str | None) -> JobConfig:
        """The :class:`lowtf.train.JobConfig` that trains ``point`` alone."""
        preset = point.architecture in models.PRESETS
        return JobConfig(
            dataset=self.dataset,
            data_path=self.data_path,
            label_column=self.label_column,
            train_size=self.train_size,
            validation_size=self.validation_size,
            data_seed=self.data_seed,
            model=point.architecture if preset else None,
            hidden=None if preset else point.units,
            activation=self.activation,
            dropout=point.dropout,
            l1=point.l1,
            l2=point.l2,
            maxnorm=point.maxnorm,
            batchnorm=self.batchnorm,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            lr_decay_steps=self.lr_decay_steps,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            eval_every=self.eval_every,
            patience=self.patience,
            min_delta=self.min_delta,
            monitor=self.monitor,
            steps_per_call=self.steps_per_call,
            checkpoint_every=self.checkpoint_every,
            xla=self.xla,
            seed=self.seed,
            model_dir=model_dir,
        )


def train_flags(job: JobConfig) -> list[str]:
    """``bin/train`` flags that reproduce ``job``: its fields off their defaults."""
    default = JobConfig()
    out = []
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if value is None or (value == getattr(default, f.name) and f.name != "model"):
            continue
        if isinstance(value, bool):
            out.append(f"--{f.name}" if value else f"--no{f.name}")
        elif isinstance(value, tuple):
            out.append(f"--{f.name}={','.join(map(str, value))}")
        else:
            out.append(f"--{f.name}={value}")
    return out


def _check_range(name: str, value: Range, check) -> None:
    """Both ends valid for ``name``, ``low < high``, ``low > 0`` on a log scale."""
    given = f"--{name}={value}"
    try:
        check(name, value.low)
        check(name, value.high)
    except ValueError as e:
        raise ValueError(f"{given}: {e}") from None
    if not value.low < value.high:
        raise ValueError(
            f"{given}: the low end ({value.low!r}) must be below the high end "
            f"({value.high!r}); write lo..hi"
        )
    if value.log and value.low <= 0:
        raise ValueError(
            f"{given}: a log range needs a low end > 0 (log 0 is -inf), e.g. "
            f"--{name}=1e-6..{value.high!r}:log; or drop :log for a uniform range"
        )


def _nonempty(name: str, flag: str, values) -> tuple:
    values = tuple(values) if not isinstance(values, (str, float, int)) else (values,)
    if not values:
        raise ValueError(
            f"--{flag} is empty; give at least one value, e.g. --{flag}="
            + ("small" if flag == "model" else "0")
        )
    if len(set(values)) != len(values):
        raise ValueError(
            f"--{flag}={','.join(map(str, values))} repeats a value; give each once"
        )
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"--{flag}: {v} is not a finite number")
    return values
