"""What a sweep is: the shared settings, the swept lists and their grid.

:class:`SweepConfig` holds ``bin/train``'s data, model, optimizer and loop
settings once, and a list for each swept setting (architectures, L1, L2,
dropout, max-norm). :meth:`SweepConfig.points` expands the grid: every
combination is a :class:`Point`; :func:`by_architecture` groups points that
can share one :class:`lowtf.Population` (one architecture).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os

from lowtf import _checks, models
from lowtf.train import metrics
from lowtf.train.job import OPTIMIZERS, JobConfig

# The swept settings, in the order of a configuration's label and the grid.
SWEPT = ("architecture", "l1", "l2", "dropout", "maxnorm")
REGULARIZERS = ("l1", "l2", "dropout", "maxnorm")


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


def by_architecture(points) -> dict[str, list[Point]]:
    """Points grouped by architecture, groups and points in their given order."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.architecture, []).append(p)
    return groups


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Everything :func:`lowtf.sweep.run_sweep` needs; checked when made.

    The shared fields are :class:`lowtf.train.JobConfig`'s, with its
    defaults (the MLP ones: populations are MLPs, so no cnn, augmentation or
    distribution strategy; a sweep has no warmup).

    Attributes:
      architectures: presets (``"tiny"``) or widths joined by ``:``
        (``"16:64"``), one per architecture (default ``("small",)``).
      l1, l2, dropout, maxnorm: the swept values of each, non-empty tuples
        (default ``(0.0,)`` each).
      folds: 1 (default): score on the fixed validation split; k >= 2:
        stratified k-fold cross-validation on the training rows, each
        configuration trained once per fold.
      sweep_dir: where the study, populations, report and winner go
        (default None: ``sweeps/<dataset>-<architectures joined by +>``).
      storage: an Optuna storage URL shared by several processes, or
        ``journal:<path>`` for a journal file (default None:
        ``sqlite:///<sweep_dir>/study.db``).
      claim: configurations a process takes per round (default 0: all that
        are left); with several processes on one storage, a small number
        splits the grid between them.
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
    architectures: tuple = ("small",)
    l1: tuple = (0.0,)
    l2: tuple = (0.0,)
    dropout: tuple = (0.0,)
    maxnorm: tuple = (0.0,)
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
        checks = {
            "l1": _checks.non_negative,
            "l2": _checks.non_negative,
            "maxnorm": _checks.non_negative,
            "dropout": _checks.rate,
        }
        for name, check in checks.items():
            values = _nonempty(name, name, getattr(self, name))
            for v in values:
                try:
                    check(name, v)
                except ValueError as e:
                    raise ValueError(
                        f"--{name}={','.join(map(str, values))}: {e}"
                    ) from None
            object.__setattr__(self, name, tuple(float(v) for v in values))
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
        # shared fields once per point (cheap, and one rule in one place).
        for p in self.points():
            self.job_config(p, model_dir=None)

    # -- the grid ---------------------------------------------------------------

    def points(self) -> list[Point]:
        """Every combination of the swept values (architecture varies slowest)."""
        return [
            Point(*values)
            for values in itertools.product(
                self.architectures, self.l1, self.l2, self.dropout, self.maxnorm
            )
        ]

    def search_space(self) -> dict[str, list]:
        """The grid as Optuna's GridSampler takes it."""
        return {
            n: list(getattr(self, n if n != "architecture" else "architectures"))
            for n in SWEPT
        }

    def swept(self) -> tuple[str, ...]:
        """The settings with more than one value."""
        return tuple(n for n, values in self.search_space().items() if len(values) > 1)

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
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip
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
