"""What a sweep is: one base job, what is swept, and how it is searched.

:class:`SweepConfig` is a :class:`lowtf.job.JobConfig` (the base: every
setting with one value) plus the settings that take several: for each, a
list of values or, for a number with ``search="tpe"``, a :class:`Range`.
Every configuration is ``dataclasses.replace`` of the base by its
:class:`Point` (:meth:`SweepConfig.job_config`), so it means what the same
flags mean to ``bin/train``. Which settings may be swept, and how, is
:data:`lowtf.job.flags.SETTINGS`' ``sweep`` column: ``MEMBER`` settings
vary inside one :class:`lowtf.Population`, ``SPLIT`` ones make populations
of their own (:meth:`SweepConfig.population_key`).

``search="grid"``: :meth:`SweepConfig.points` lists every combination.
``search="tpe"``: Optuna's TPE samples ``trials`` points, the lists as
categorical choices and the ranges as numbers. :func:`from_flags` reads
``bin/sweep``'s flags (:func:`lowtf.job.flags.given`); nothing here imports
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re

from lowtf import _checks
from lowtf.job import flags as job_flags
from lowtf.job.config import MODELS, JobConfig, default_activation, directory_name
from lowtf.job.flags import BY_NAME, FIXED, MEMBER, REFUSED, SPLIT

# A range entry: two numbers, no dot next to the "..", and an optional ":log".
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?i:inf(?:inity)?|nan)"
_RANGE = re.compile(rf"({_NUMBER})(?<!\.)\.\.(?!\.)({_NUMBER})(:log)?")
# The architecture is one axis of a sweep, whichever of --model and --hidden
# gives it: a preset, "cnn", or hidden widths joined by "x" ("512x512").
ARCHITECTURE = "architecture"
# Every setting a sweep can vary, in flag order: the columns of results.csv.
SWEPT = (
    ARCHITECTURE,
    *(s.name for s in job_flags.SETTINGS if s.sweepable and s.name not in ("model", "hidden")),
)
SEARCHES = ("grid", "tpe")
# TPE's configurations per round when --claim is 0. A round's configurations
# of one population train together, so a larger batch trains faster (one
# compiled step for more members), but each of its points is sampled knowing
# only the trials finished before the round (the running ones enter as
# constant-liar guesses); 8 keeps both sides reasonable.
TPE_BATCH = 8
# What says where a sweep's outputs go, not what it compares.
_PLACES = ("model_dir", "export_dir")


@dataclasses.dataclass(frozen=True)
class Range:
    """A swept number sampled from ``[low, high]`` (``--l2=1e-6..1e-2:log``).

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

    def __str__(self) -> str:
        """As the flag spells it: ``1e-06..0.01:log``."""
        return f"{self.low!r}..{self.high!r}" + (":log" if self.log else "")


def parse_range(flag: str, text: str, kind: str = "float") -> Range:
    """``lo..hi`` or ``lo..hi:log`` as a :class:`Range` (ints for an int setting).

    Raises:
      ValueError: not spelled ``lo..hi[:log]`` with two finite numbers.
    """
    given = f"--{flag}={text}"
    found = _RANGE.fullmatch(text)
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
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ValueError(f"{given}: --{flag} is an integer; so are a range's ends")
        low, high = int(low), int(high)
    return Range(low, high, log)


def parse_values(flag: str, entries) -> tuple | Range:
    """A numeric flag's entries as a tuple of floats or one :class:`Range`.

    Args:
      flag: the flag's name, for the error (``"l2"``).
      entries: its comma-separated entries (``["0", "1e-4"]``), or one range
        entry ``"lo..hi"`` (uniform) or ``"lo..hi:log"`` (log-uniform).

    Raises:
      ValueError: an entry that is not a number, a range with other entries,
        a range not spelled ``lo..hi[:log]``.
    """
    entries = list(entries)
    if any(".." in e for e in entries):
        if len(entries) != 1:
            raise ValueError(
                f"--{flag}={','.join(entries)}: a range is the flag's one entry (e.g. "
                f"--{flag}=1e-6..1e-2:log), not part of a list"
            )
        return parse_range(flag, entries[0])
    values = []
    for text in entries:
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"--{flag}={','.join(entries)}: {text!r} is not a number") from None
    return tuple(values)


def architecture(job: JobConfig) -> str:
    """A job's architecture as a sweep names it: a preset, ``"cnn"`` or ``"512x512"``."""
    return job.model_name


def _architecture_fields(name: str) -> dict:
    """The JobConfig fields of an architecture name (``"cnn"``, ``"16x64"``, ``"16:64"``)."""
    if name in MODELS:
        return {"model": name, "hidden": None}
    widths = re.split(r"[x:,]", name) if isinstance(name, str) else []
    if not widths or not all(w.isdigit() and int(w) > 0 for w in widths):
        raise ValueError(
            f"--model/--hidden: architecture {name!r} is neither a model "
            f"({', '.join(MODELS)}) nor positive hidden widths (e.g. --hidden=16,64)"
        )
    return {"model": None, "hidden": tuple(int(w) for w in widths)}


def _architecture_name(value) -> str:
    """A canonical architecture name: a model, or widths joined by ``x``."""
    if isinstance(value, str) and value in MODELS:
        return value
    if isinstance(value, str):
        fields = _architecture_fields(value)
        return "x".join(map(str, fields["hidden"]))
    return "x".join(map(str, value))


@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration: a value for each swept setting.

    Attributes:
      values: ``(name, value)`` pairs in the order of :data:`SWEPT`.
    """

    values: tuple

    @classmethod
    def of(cls, mapping: dict) -> Point:
        """The point of ``{name: value}`` (any order; Optuna's trial params)."""
        unknown = set(mapping) - set(SWEPT)
        if unknown:
            raise ValueError(f"not sweepable settings: {', '.join(sorted(unknown))}")
        return cls(tuple((n, mapping[n]) for n in SWEPT if n in mapping))

    def __getitem__(self, name: str):
        return dict(self.values)[name]

    @property
    def key(self) -> str:
        """A canonical label, the same in every process and storage."""
        return " ".join(f"{n}={v!r}" for n, v in self.values) or "base"

    def params(self) -> dict:
        """Its values as Optuna trial parameters."""
        return dict(self.values)


@dataclasses.dataclass(frozen=True, init=False)
class SweepConfig:
    """Everything :func:`lowtf.sweep.run_sweep` needs; checked when made.

    Made from :class:`lowtf.job.JobConfig`'s fields, each given one value
    (the base job's) or several: a tuple or list of values, or a
    :class:`Range` (numbers, ``search="tpe"``)::

        SweepConfig(model=("tiny", "cnn"), learning_rate=(1e-3, 3e-3),
                    l2=Range(1e-6, 1e-2, log=True), search="tpe", trials=16,
                    dataset="digits", max_steps=1500)

    Several architectures are ``model=(...)`` presets, ``hidden=((64, 64),
    (16,))`` widths, or ``architectures=("tiny", "16x64")`` names. A setting
    a sweep takes one value of (``FIXED`` in :data:`lowtf.job.flags.SETTINGS`:
    the data, the monitor, ...) given several, or one it cannot honour
    (``REFUSED``) off its default, is refused naming the flag.

    Attributes:
      job: the base :class:`JobConfig`; a swept setting holds its first value.
      swept: ``{name: tuple of values | Range}``, names of :data:`SWEPT` in
        that order, each with two values or more, or a range.
      search: ``"grid"`` (default): every combination of the lists, and no
        range; ``"tpe"``: Optuna's TPE samples ``trials`` configurations,
        the lists as categorical choices and the ranges as numbers (at least
        one range).
      trials: how many configurations TPE samples (``search="tpe"`` only,
        where it is required; default 0).
      folds: 1 (default): score on the fixed validation split; k >= 2:
        stratified k-fold cross-validation on the training rows, each
        configuration trained once per fold.
      sweep_dir: where the study, populations, report and winner go
        (default None: ``sweeps/<dataset>-<architectures joined by +>``, then
        what else defines the sweep: :attr:`resolved_sweep_dir`).
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
      ensemble: ``--ensemble=N``: also choose an ensemble of at most N picks
        from the trained configurations, by greedy selection with
        replacement on their validation predictions (with ``folds`` > 1,
        out-of-fold predictions), and score it on test beside the winner
        (default 0: none; :mod:`lowtf.sweep.ensemble`). It is no part of
        any configuration (their jobs keep ``ensemble=0``) nor of the
        sweep's definition: a rerun with another N chooses again from the
        same trained members.
    """

    job: JobConfig
    swept: dict
    search: str = "grid"
    trials: int = 0
    folds: int = 1
    sweep_dir: str | None = None
    storage: str | None = None
    claim: int = 0
    retrain: bool = True
    ensemble: int = 0

    def __init__(
        self,
        *,
        job: JobConfig | None = None,
        swept: dict | None = None,
        search: str = "grid",
        trials: int = 0,
        folds: int = 1,
        sweep_dir: str | None = None,
        storage: str | None = None,
        claim: int = 0,
        retrain: bool = True,
        ensemble: int = 0,
        **settings,
    ):
        base = {} if job is None else _fields(job)
        # A job's --ensemble (bin/train's deep ensemble) is the sweep's here:
        # each configuration is one model.
        ensemble = ensemble or base.pop("ensemble", 0)
        base.pop("ensemble", None)
        space = dict(swept or {})
        for name, value in _settings(settings).items():
            space.pop(name, None)
            if isinstance(value, Range) or (isinstance(value, tuple) and len(value) > 1):
                space[name] = value
            else:
                one = value[0] if isinstance(value, tuple) else value
                base.update(_job_fields(name, one))
        _check_refused(base)
        space = {n: space[n] for n in SWEPT if n in space} | {
            n: v for n, v in space.items() if n not in SWEPT
        }
        _check_swept(space)
        # The base holds each swept setting's first value (a range's low
        # end), so that it is one of the configurations.
        for name, values in space.items():
            first = values.low if isinstance(values, Range) else values[0]
            base.update(_job_fields(name, first))
        for name, value in dict(
            job=JobConfig(**base), swept=space, search=search, trials=trials,
            folds=folds, sweep_dir=sweep_dir, storage=storage, claim=claim,
            retrain=retrain, ensemble=ensemble,
        ).items():  # fmt: skip
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        _checks.one_of("search", self.search, SEARCHES)
        _checks.non_negative_int("trials", self.trials)
        ranges = self.ranges()
        if ranges and self.search != "tpe":
            name, value = next(iter(ranges.items()))
            raise ValueError(
                f"--{name}={value} is a range: ranges need --search=tpe --trials=N "
                "(or give a list of values for the grid)"
            )
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
            if not ranges:
                raise ValueError(
                    "--search=tpe samples ranges, and every swept setting is a list; "
                    "give one as a range (e.g. --l2=1e-6..1e-2:log) or drop "
                    "--search=tpe to train the grid"
                )
        _checks.positive_int("folds", self.folds)
        _checks.non_negative_int("claim", self.claim)
        _checks.boolean("retrain", self.retrain)
        _checks.non_negative_int("ensemble", self.ensemble)
        # Every configuration is a valid bin/train run: JobConfig checks each
        # one (cheap, and one rule in one place); a range's two ends stand for
        # the values between them.
        ends = self._values()
        for values in itertools.product(*ends.values()):
            self.job_config(Point(tuple(zip(ends, values))))

    # -- the grid or the sampled space ------------------------------------------

    def points(self) -> list[Point]:
        """Every combination of the swept values (in flag order, the first slowest).

        Raises:
          ValueError: a TPE sweep, whose points are sampled, not listed.
        """
        if self.search != "grid":
            raise ValueError(
                f"a --search={self.search} sweep samples its points; only a grid "
                "lists them"
            )
        names = list(self.swept)
        return [
            Point(tuple(zip(names, values)))
            for values in itertools.product(*self.swept.values())
        ]

    def search_space(self) -> dict[str, list | Range]:
        """Per swept setting, its list of values or its :class:`Range`.

        A grid's is what Optuna's GridSampler takes.
        """
        return {n: v if isinstance(v, Range) else list(v) for n, v in self.swept.items()}

    def ranges(self) -> dict[str, Range]:
        """The settings given as ranges."""
        return {n: v for n, v in self.swept.items() if isinstance(v, Range)}

    def swept_names(self) -> tuple[str, ...]:
        """The settings that vary, in flag order."""
        return tuple(self.swept)

    @property
    def configurations(self) -> int:
        """How many configurations the sweep finishes: the grid's, or ``trials``."""
        if self.search == "tpe":
            return self.trials
        return math.prod(len(v) for v in self.swept.values())

    @property
    def batch(self) -> int:
        """Configurations a process claims per round (see ``claim``)."""
        if self.claim:
            return self.claim
        return TPE_BATCH if self.search == "tpe" else self.configurations

    def _values(self) -> dict[str, list]:
        """Each setting's values, a range as its two ends."""
        return {
            n: [v.low, v.high] if isinstance(v, Range) else list(v)
            for n, v in self.swept.items()
        }

    # -- one configuration as a bin/train run -----------------------------------

    def job_config(self, point: Point) -> JobConfig:
        """The :class:`lowtf.job.JobConfig` that trains ``point`` alone (``bin/train``'s)."""
        changes = {}
        for name, value in point.values:
            changes.update(_job_fields(name, value))
        return dataclasses.replace(self.job, **changes)

    def population_key(self, point: Point) -> tuple:
        """What a population shares: the point's values of the ``SPLIT`` settings.

        Points with the same key differ in ``MEMBER`` settings only (learning
        rate, penalties, dropout, augmentation, seed, ...) and can train as
        one :class:`lowtf.Population`.
        """
        return tuple((n, v) for n, v in point.values if _setting(n).sweep == SPLIT)

    def row_values(self, point: Point) -> dict:
        """Every sweepable setting of ``point``'s job, as results.csv shows it."""
        job = self.job_config(point)
        values = {name: getattr(job, name, None) for name in SWEPT}
        values[ARCHITECTURE] = architecture(job)
        values["activation"] = job.activation or default_activation(job.model)
        return values

    # -- names, paths, the definition -------------------------------------------

    @property
    def architectures(self) -> tuple[str, ...]:
        """The architectures compared (one unless swept)."""
        return tuple(self.swept.get(ARCHITECTURE, (architecture(self.job),)))

    @property
    def resolved_sweep_dir(self) -> str:
        """``sweep_dir``, or a directory named by what the sweep is.

        ``sweeps/<dataset>-<architectures joined by +>``, then each swept
        setting with its values and each other part of the definition off
        its default (``sweeps/digits-small+medium-l2_0+0.0001-folds5``); a
        hash of them when that makes a long or awkward name. The same
        command gives the same directory, so running it again resumes.
        """
        if self.sweep_dir:
            return self.sweep_dir
        own = {
            f.name: f.default
            for f in dataclasses.fields(SweepConfig)
            if f.default is not dataclasses.MISSING
        }
        defaults = json.loads(json.dumps({**_fields(JobConfig()), **own}))
        definition = self.definition()
        named = ("dataset", ARCHITECTURE)  # the base's
        names = [n for n in self.swept if n not in named]
        names += [n for n in definition if n not in names and n not in named]
        changed = [
            (name, definition[name])
            for name in names
            if name in self.swept or definition[name] != defaults.get(name)
        ]
        base = f"{self.job.dataset}-" + "+".join(self.architectures)
        return directory_name("sweeps", base, changed)

    @property
    def resolved_storage(self) -> str:
        if self.storage:
            return self.storage
        return "sqlite:///" + os.path.abspath(
            os.path.join(self.resolved_sweep_dir, "study.db")
        )

    @property
    def winner_dir(self) -> str:
        """Where the winner is retrained: ``--model_dir``, or ``<sweep_dir>/winner``."""
        return self.job.model_dir or os.path.join(self.resolved_sweep_dir, "winner")

    def definition(self) -> dict:
        """What defines the sweep's results: every setting, the search and the folds.

        A swept setting is its list (a range as its text); where the outputs
        go and how many points a process claims are left out. JSON values,
        as a study's user attrs hold them.
        """
        fields = {
            n: v
            for n, v in _fields(self.job).items()
            if n not in ("model", "hidden", *_PLACES)
        }
        fields[ARCHITECTURE] = architecture(self.job)
        for name, values in self.swept.items():
            fields[name] = str(values) if isinstance(values, Range) else list(values)
        fields.update(search=self.search, trials=self.trials, folds=self.folds)
        return json.loads(json.dumps(fields))


def _setting(name: str):
    """The :class:`lowtf.job.flags.Setting` of a swept name (the architecture's: --model's)."""
    return BY_NAME.get("model" if name == ARCHITECTURE else name)


def _check_swept(space: dict) -> None:
    """Each swept setting sweepable, its list or range valid as bin/train takes it."""
    for name, values in space.items():
        setting = _setting(name)
        if setting is None or not setting.sweepable:
            why = setting.why if setting else "it is no setting of bin/train"
            raise ValueError(f"--{name} takes one value in a sweep ({why}); give it once")
        if isinstance(values, Range):
            _check_range(name, values, setting)
        else:
            _check_list(name, values, setting)


def _check_refused(fields: dict) -> None:
    """Refuses a setting a sweep cannot honour, off its default, saying why."""
    defaults = {f.name: f.default for f in dataclasses.fields(JobConfig)}
    for s in job_flags.SETTINGS:
        if s.sweep == REFUSED and fields.get(s.name, defaults[s.name]) != defaults[s.name]:
            raise ValueError(f"--{s.name} is not for bin/sweep: {s.why}; drop it")


def _fields(job: JobConfig) -> dict:
    return {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}


def _job_fields(name: str, value) -> dict:
    """The JobConfig fields of one swept value."""
    if name == ARCHITECTURE:
        return _architecture_fields(value)
    return {name: value}


def _settings(settings: dict) -> dict:
    """``SweepConfig``'s keyword settings as ``{name: value | tuple | Range}``.

    A tuple or list is several values (``hidden``: a tuple of ints is one
    architecture); ``model``, ``hidden`` and ``architectures`` become the one
    ``architecture`` axis.
    """
    names = {f.name for f in dataclasses.fields(JobConfig)}
    out, architectures = {}, []
    for name, value in settings.items():
        if name not in names and name != "architectures":
            raise ValueError(f"`{name}` is no setting of a job (lowtf.job.JobConfig)")
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and not value:
            raise ValueError(
                f"--{'model' if name == 'architectures' else name} is empty; give at "
                "least one value, e.g. --" + ("model=small" if name in ("model", "architectures") else f"{name}=0")
            )
        kind = BY_NAME[name].kind if name in BY_NAME else None
        if isinstance(value, tuple) and kind in ("float", "int"):
            value = tuple(_number(name, v, kind) for v in value)
        if name == "hidden" and isinstance(value, tuple) and value:
            if all(isinstance(v, int) for v in value):
                value = (value,)  # one architecture
            architectures += [_architecture_name(v) for v in value]
        elif name in ("model", "architectures") and value is not None:
            if isinstance(value, Range):
                raise ValueError(
                    f"--model/--hidden ({value}) is a range; architectures are a list "
                    "(e.g. --model=tiny,small), ranges are for numbers"
                )
            values = value if isinstance(value, tuple) else (value,)
            architectures += [_architecture_name(v) for v in values]
        elif name != "hidden" or value is not None:
            out[name] = value
    if architectures:
        out[ARCHITECTURE] = tuple(architectures)
    return out


def _number(name: str, value, kind: str):
    """A listed number as its setting's type (an L2 of 0 is 0.0, as the flag reads it)."""
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, float) and value == int(value):
        return int(value)
    return value


def _check_list(name: str, values: tuple, setting) -> None:
    """A list: no value twice, each valid as ``bin/train`` takes the flag."""
    if len(set(values)) != len(values):
        raise ValueError(
            f"--{name}={','.join(map(str, values))} repeats a value; give each once"
        )
    if setting.numeric:
        for v in values:
            setting.parse(repr(v))


def _check_range(name: str, value: Range, setting) -> None:
    """A number's range: both ends valid, ``low < high``, ``low > 0`` on a log scale."""
    given = f"--{name}={value}"
    if not setting.numeric:
        raise ValueError(
            f"{given}: --{name} is not a number; give a list of values "
            f"(ranges are for numbers)"
        )
    for end in (value.low, value.high):
        try:
            setting.parse(repr(end))
        except ValueError as error:
            raise ValueError(f"{given}: {str(error).split(': ', 1)[1]}") from None
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


def from_flags(given: dict[str, list[str]], **options) -> SweepConfig:
    """The :class:`SweepConfig` of ``bin/sweep``'s job flags.

    Args:
      given: each job flag on the command line with the text of every time
        it was given (:func:`lowtf.job.flags.given`). A number, bool or
        choice takes comma-separated values (``--l2=0,1e-4``); a repeated
        flag adds values; ``--augment`` and ``--hidden`` take one value per
        time (their commas belong to the value). A number may instead be one
        range, ``lo..hi`` or ``lo..hi:log``.
      **options: the sweep's own settings (``search``, ``trials``, ...).

    Raises:
      ValueError: a bad value (as ``bin/train`` words it), a setting given
        several values where a sweep takes one, naming the flag.
    """
    settings = {}
    for name, texts in given.items():
        s = BY_NAME[name]
        if s.sweep == REFUSED and len(texts) > 1:
            raise ValueError(f"--{name} is not for bin/sweep: {s.why}; drop it")
        if s.kind in ("string", "widths"):
            entries = texts
        else:
            entries = [item for text in texts for item in text.split(",")]
        if s.numeric and any(".." in e for e in entries):
            if len(entries) != 1:
                raise ValueError(
                    f"--{name}={','.join(entries)}: a range is the flag's one entry "
                    f"(e.g. --{name}=1e-6..1e-2:log), not part of a list"
                )
            settings[name] = parse_range(name, entries[0], s.kind)
            continue
        values = tuple(s.parse(e) for e in entries)
        if not s.sweepable:
            values = tuple(dict.fromkeys(values))  # the same value twice is one
        if len(values) > 1 and not s.sweepable:
            raise ValueError(
                f"--{name} takes one value in a sweep ({s.why}): given "
                f"{', '.join(map(str, values))}; give it once"
            )
        settings[name] = values if len(values) > 1 else values[0]
    return SweepConfig(**settings, **options)
