"""The sweep's Optuna study: storage, definition, claims and the ledger.

One study per sweep. A process *claims* configurations by making trials
for them, trains them, and records their scores. Every claimed trial
carries user attrs: ``key`` (the :attr:`Point.key`), ``owner`` (the claiming
process, :func:`lowtf.train.rundir.this_process`) and, once recorded,
``status`` (``"ok"`` or ``"diverged"``) with its fold scores.

* A grid's points are listed by :meth:`SweepConfig.points`; a claim makes a
  RUNNING trial per free point, its key and owner stored with it in one
  write, so every claim in the storage is complete: two processes racing
  for a point settle it at once (the lower trial number keeps it), and a
  process killed while claiming leaves no half-made claim to wait for.
* TPE (``search="tpe"``): Optuna's ``TPESampler`` draws each point
  (``ask``), at most ``trials`` in all; lists as categorical distributions,
  ranges as float (or, for an integer setting, int) ones.

A RUNNING trial whose owner is gone (:func:`lowtf.train.rundir.owner_state`:
a killed run, even when its pid now belongs to another process) is failed as
``"interrupted"`` and its point claimed again, so a rerun finishes it.

Everything goes through Optuna's public API: the ``optuna.Study``, and the
storage's ``BaseStorage`` methods for what a study does not offer (writing
attrs of a trial by number). An error of the storage (a damaged or
read-only file, a lost database) is one :class:`StorageError` line naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import time
import uuid

import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from lowtf.job.flags import BY_NAME
from lowtf.sweep.config import Point, Range, SweepConfig
from lowtf.train import rundir

DEFINITION = "definition"
STUDY_NAME = "lowtf-sweep"
FINISHED = ("ok", "diverged")
# A TPE trial is asked, then given its owner: one without an owner older
# than this never got one (its process died in between) and is failed.
CLAIM_WAIT_SECONDS = 10.0
# TPE: draws of an already taken point in a row before the space counts as
# exhausted.
MAX_RESAMPLES = 20
# Seconds between claiming's progress lines.
CLAIM_LOG_SECONDS = 2.0


class StorageError(ValueError):
    """The study's storage cannot be read or written (one line naming it)."""


class Exhausted(Exception):
    """TPE draws only points already taken: the space holds no new one."""


@dataclasses.dataclass(frozen=True)
class Study:
    """A sweep's Optuna study and the storage it is kept in.

    Attributes:
      study: the ``optuna.Study``.
      storage: its storage (Optuna keeps a study's storage and id private;
        writing a trial's attrs by number needs both).
      study_id: the study's id in ``storage``.
      where: the file or URL named in errors.
    """

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    study_id: int
    where: str


@dataclasses.dataclass(frozen=True)
class Claim:
    """A trial this process claimed: its number and id in the storage."""

    number: int
    trial_id: int


def describe(url: str) -> str:
    """The file of a ``sqlite:///`` or ``journal:`` URL, else the URL without its password."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if url.startswith("journal:"):
        return url[len("journal:") :]
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


@contextlib.contextmanager
def _reported(where: str):
    """Turns any error of the storage inside into one :class:`StorageError` line."""
    try:
        yield
    except (StorageError, Exhausted):
        raise
    except Exception as error:  # noqa: BLE001 - drivers and backends raise many kinds
        raise StorageError(
            f"the sweep's study {where} cannot be read or written ({_gist(error)}); "
            "if it is damaged, restore it from a copy or start over in a new "
            "--sweep_dir (or --storage); if it is read-only, make it writable"
        ) from None


def _gist(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause (the driver's own words)."""
    while True:
        inner = error.__cause__ or (
            None if error.__suppress_context__ else error.__context__
        )
        if inner is None:
            break
        error = inner
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def open_storage(url: str):
    """An Optuna storage for ``url`` (a database URL or ``journal:<path>``).

    Raises:
      ValueError: it cannot be opened (bad URL, missing driver, unreachable,
        a damaged file).
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url[len("journal:") :]))
        if url.startswith("sqlite:///") and "?" not in url:
            _write_ahead(url[len("sqlite:///") :])
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # drivers raise many kinds
        if url.startswith(("sqlite:///", "journal:")):
            with _reported(describe(url)):
                raise
        raise ValueError(
            f"--storage ({describe(url)}) cannot be opened: {_gist(error)}; "
            "give a database URL such as sqlite:///path/study.db or "
            "postgresql://user@host/db, or journal:<file>"
        ) from None


def _write_ahead(path: str) -> None:
    """Puts the SQLite file at ``path`` (made if missing) in write-ahead-log mode.

    SQLite's default rollback journal syncs the disk several times per
    commit, and a sweep commits each claim and each recorded attr: 20 ms a
    commit on this project's machine, 2 ms with the write-ahead log
    (BENCHMARKS.md, "A sweep's bookkeeping"). The mode is kept in the file;
    like any SQLite file shared by processes, it must be on a local disk.
    Errors are left to the storage, which reports them (a damaged file).
    """
    import sqlite3

    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass


def open_study(config: SweepConfig, storage) -> Study:
    """The sweep's study, made or loaded; refuses one of another definition.

    Args:
      config: the sweep.
      storage: a storage URL (see :func:`open_storage`) or an Optuna storage.

    Raises:
      ValueError: the storage cannot be opened, or holds another sweep.
      StorageError: it cannot be read or written.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = "storage"
    if isinstance(storage, str):
        where = describe(storage)
        storage = open_storage(storage)
    mode = "maximize" if "accuracy" in config.job.monitor else "minimize"
    with _reported(where):
        study = optuna.create_study(
            storage=storage,
            study_name=STUDY_NAME,
            sampler=sampler(config),
            direction=mode,
            load_if_exists=True,
        )
        mine = meaning(config.definition())
        stored = study.user_attrs.get(DEFINITION)
        stored = None if stored is None else meaning(stored)
        if stored is None:
            study.set_user_attr(DEFINITION, mine)
        study_id = storage.get_study_id_from_name(STUDY_NAME)
    if stored is not None and stored != mine:
        differ = [
            f"{k}: stored {json.dumps(stored.get(k))}, given {json.dumps(mine.get(k))}"
            for k in sorted(set(stored) | set(mine))
            if stored.get(k) != mine.get(k)
        ]
        raise ValueError(
            f"--sweep_dir/--storage holds another sweep ({'; '.join(differ)}); "
            "rerun with its flags to resume it, or pick a new --sweep_dir"
        )
    return Study(study, storage, study_id, where)


def meaning(definition: dict) -> dict:
    """A sweep's definition as what it means, not how it was spelled.

    Lists of swept values in any order are one set (sorted); a local
    ``data_path`` is absolute (a relative path names the same file from
    another spelling); ``xla`` is left out (a compiled and an uncompiled
    step give the same numbers, so it does not define the results, and
    ``--xla`` spelled out at its default is no other sweep).
    """
    out = {}
    for key, value in definition.items():
        if key == "xla":
            continue
        if isinstance(value, list) and all(
            isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value
        ):
            value = sorted(set(value), key=lambda v: (str(type(v)), v))
        if key == "data_path" and isinstance(value, str) and "://" not in value:
            value = os.path.abspath(value)
        out[key] = value
    return out


def sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    """TPE for ``search="tpe"``; for a grid, a sampler that never samples.

    TPE asks a round's trials before any is told, so ``constant_liar``
    counts the running ones as (bad) results: the points of one batch spread
    out instead of piling on the same promising spot. ``multivariate``
    models the settings jointly (L2 and dropout interact); both are Optuna
    5.0's defaults, spelled out for older versions.

    A grid's trials are made with their points (see the module doc), not
    asked: Optuna's ``GridSampler`` reads every trial of the study on each
    ``ask`` and each ``tell``, so claiming and recording N points cost N
    squared reads (240 points: 110 s claiming, 60 s recording; measured in
    BENCHMARKS.md). The study still needs a sampler; the random one does
    nothing on ``tell``.
    """
    if config.search == "tpe":
        return _tpe(config.job.seed)
    return optuna.samplers.RandomSampler(seed=config.job.seed)


def _tpe(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def distributions(config: SweepConfig) -> dict:
    """Per setting, a list as a categorical distribution, a range as a number's."""
    return {n: _distribution(n, v) for n, v in config.search_space().items()}


def _distribution(name: str, values):
    if not isinstance(values, Range):
        return CategoricalDistribution(values)
    if name in BY_NAME and BY_NAME[name].kind == "int":
        return IntDistribution(int(values.low), int(values.high), log=values.log)
    return FloatDistribution(values.low, values.high, log=values.log)


def point_of(trial) -> Point:
    return Point.of(trial.params)


def ledger(study: Study) -> dict:
    """Per key: the finished trial (latest) and whether one is running or queued.

    Returns ``{"finished": {key: FrozenTrial}, "running": set, "waiting": set}``.
    """
    with _reported(study.where):
        trials = study.study.get_trials(deepcopy=False)
    finished, running, waiting = {}, set(), set()
    for t in trials:
        key = t.user_attrs.get("key")
        if t.state == TrialState.WAITING:
            fixed = t.system_attrs.get("fixed_params")
            if fixed:
                waiting.add(Point.of(fixed).key)
        elif key is None:
            continue
        elif t.state == TrialState.RUNNING:
            running.add(key)
        elif t.user_attrs.get("status") in FINISHED:
            finished[key] = t
    return {"finished": finished, "running": running, "waiting": waiting}


def requeue_interrupted(study: Study, config: SweepConfig) -> int:
    """Fails the trials whose owner is gone; their points can be claimed again.

    Returns how many configurations were freed. A grid point is free once
    its trial failed; a TPE point is queued (``enqueue_trial``), so that it
    is asked again with its very floats. A trial without an owner (its
    process died between TPE's ``ask`` and claiming it, which takes
    milliseconds) is failed as ``"abandoned"`` once older than
    ``CLAIM_WAIT_SECONDS``, on any host: it never held a point.
    """
    now = datetime.datetime.now()
    states, count, book = {}, 0, None
    with _reported(study.where):
        running = study.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        owner = t.user_attrs.get("owner")
        if owner is None:
            started = t.datetime_start or now
            if (now - started).total_seconds() > CLAIM_WAIT_SECONDS:
                _fail(study, t.number, "abandoned")
            continue
        # One look per owner: a dead process leaves many trials.
        mark = json.dumps(owner, sort_keys=True)
        if mark not in states:
            states[mark] = rundir.owner_state(owner)
        if states[mark] != rundir.GONE:
            continue
        key = t.user_attrs.get("key")
        if not _fail(study, t.number, "interrupted" if key else "abandoned") or not key:
            continue
        count += 1
        if config.search == "tpe":
            book = book or ledger(study)
            if key not in book["finished"] and key not in book["waiting"]:
                with _reported(study.where):
                    study.study.enqueue_trial(
                        point_of(t).params(), skip_if_exists=False
                    )
                book["waiting"].add(key)
    return count


def release(study: Study, config: SweepConfig, claims) -> None:
    """Gives up this process's unfinished ``claims`` (a stop, an error) as interrupted.

    Their points can be claimed again at once (a TPE point is queued), by a
    rerun in this process or by another one.
    """
    book = None
    for c in claims:
        if not _fail(study, c.number, "interrupted", c.trial_id):
            continue
        if config.search != "tpe":
            continue
        with _reported(study.where):
            frozen = study.storage.get_trial(c.trial_id)
        book = book or ledger(study)
        key = frozen.user_attrs.get("key")
        if key and key not in book["finished"] and key not in book["waiting"]:
            with _reported(study.where):
                study.study.enqueue_trial(
                    point_of(frozen).params(), skip_if_exists=False
                )
            book["waiting"].add(key)


def _fail(study: Study, number: int, status: str, trial_id=None) -> bool:
    """Fails a running trial as ``status``; False if another process just did."""
    with _reported(study.where):
        if trial_id is None:
            trial_id = study.storage.get_trial_id_from_study_id_trial_number(
                study.study_id, number
            )
        try:
            study.storage.set_trial_user_attr(trial_id, "status", status)
            study.study.tell(number, state=TrialState.FAIL)
        # ValueError: "Cannot tell a FAIL trial", the other process was first.
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            return False
    return True


def record(study: Study, trial: Claim, attrs: dict, value: float | None) -> None:
    """Stores a trained configuration: its ``attrs``, then ``value`` (None: failed).

    ``attrs["status"]`` is a user attr of its own (the ledger reads it), the
    others go together into ``result`` (see :func:`result`): each attr is
    a write of its own, and a sweep records every configuration. A trial
    another process failed meanwhile (it took this one for dead) is left as
    it is: its point was claimed again.
    """
    attrs = dict(attrs)
    status = attrs.pop("status")
    with _reported(study.where):
        try:
            study.storage.set_trial_user_attr(trial.trial_id, "result", attrs)
            study.storage.set_trial_user_attr(trial.trial_id, "status", status)
        except optuna.exceptions.UpdateFinishedTrialError:
            return
        if value is None:
            study.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            study.study.tell(trial.number, value, skip_if_finished=True)


def result(trial) -> dict:
    """A recorded trial's attrs as :func:`record` was given them (``status`` included).

    Trials recorded by an older lowtf hold each attr apart: read alike.
    """
    return {**trial.user_attrs, **trial.user_attrs.get("result", {})}


def claim(
    study: Study,
    config: SweepConfig,
    limit: int,
    *,
    sample: bool = True,
    log=None,
    stop=None,
) -> list:
    """Claims up to ``limit`` configurations nobody has finished or is running.

    Returns ``[(Claim, point)]``.

    Grid: free points in grid order; a point another process claimed with a
    lower trial number is failed here as ``"duplicate"`` and another one
    taken. TPE: at most
    ``config.trials`` less those finished or running (in any process) are
    asked, by a sampler seeded with the study's size (a rerun draws new
    points); a point already finished, running or drawn is failed as
    ``"duplicate"`` and drawn again; while interrupted points are queued, a
    round takes exactly those. ``sample=False``: queued points only.

    Args:
      log: called with a progress line every 2 s while claiming (default None).
      stop: called before each grid claim; once it returns true, the claims
        made so far are returned (default None: never).

    Raises:
      Exhausted: TPE drew 20 taken points in a row and none new.
      StorageError: the storage cannot be read or written.
    """
    with _reported(study.where):
        if config.search == "tpe":
            return _claim_sampled(study, config, limit, sample)
        return _claim_grid(study, config, limit, log, stop or (lambda: False))


def _claim_grid(study: Study, config: SweepConfig, limit: int, log, stop) -> list:
    points = {p.key: p for p in config.points()}
    dists = distributions(config)
    me = rundir.this_process()
    claimed, started, said = [], time.monotonic(), time.monotonic()
    while len(claimed) < limit and not stop():
        book = ledger(study)
        taken = set(book["finished"]) | book["running"]
        # In grid order: an interrupted claim's points are the first free
        # ones (the claims before it finished), so a rerun with the same
        # --claim takes them again, and their population resumes.
        keys = [k for k in points if k not in taken][: limit - len(claimed)]
        if not keys:
            break
        token, ids = uuid.uuid4().hex, {}
        for i, key in enumerate(keys):
            if stop():
                break
            # One write per claim: the trial is made RUNNING with its point,
            # key and owner, so no other process ever sees it half made.
            template = optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params=points[key].params(),
                distributions=dists,
                user_attrs={"owner": me, "key": key, "claim": token},
            )
            ids[key] = study.storage.create_new_trial(study.study_id, template)
            if log is not None and time.monotonic() - said >= CLAIM_LOG_SECONDS:
                said = time.monotonic()
                log(
                    f"claiming: {len(claimed) + i + 1}/{len(claimed) + len(keys)} "
                    f"configurations ({said - started:.0f} s)"
                )
        for key, (number, lost) in _settle(study, token, ids).items():
            if lost:
                _fail(study, number, "duplicate", ids[key])
            else:
                claimed.append((Claim(number, ids[key]), points[key]))
    return claimed


def _settle(study: Study, token: str, ids: dict) -> dict:
    """Per key of this claim (``token``, ``ids``: {key: trial id}): its number, and lost.

    A point is lost when a lower-numbered live claim holds it. Trial numbers
    are handed out once by the storage, and each claim is stored whole, so
    the lowest-numbered claim of a key is one answer in every process that
    reads after making its own: it keeps the point. One read of the study.
    """
    trials = study.study.get_trials(deepcopy=False)
    numbers = {
        t.user_attrs["key"]: t.number
        for t in trials
        if t.user_attrs.get("claim") == token and t.user_attrs.get("key") in ids
    }
    lost = set()
    for t in trials:
        key = t.user_attrs.get("key")
        if key not in numbers or t.number >= numbers[key]:
            continue
        status = t.user_attrs.get("status")
        if (t.state == TrialState.RUNNING and status is None) or status in FINISHED:
            lost.add(key)
    return {key: (number, key in lost) for key, number in numbers.items()}


def _claim_sampled(study: Study, config: SweepConfig, limit: int, sample: bool) -> list:
    book = ledger(study)
    # A queued (interrupted) point is asked first and replaces its failed
    # trial, so it does not count apart from the running and finished ones.
    left = config.trials - len(book["finished"]) - len(book["running"])
    if book["waiting"] or not sample:
        # The queued points alone: they re-form the interrupted population,
        # whose directory (named by its members) holds the checkpoint to resume.
        limit = min(limit, len(book["waiting"]))
    # Seeded by the study's size: a rerun, or another process, draws new
    # points rather than the first run's random start-up points again.
    study.study.sampler = _tpe(
        config.job.seed + len(study.study.get_trials(deepcopy=False))
    )
    dists = distributions(config)
    taken = set(book["finished"]) | book["running"]
    claimed, duplicates = [], 0
    while len(claimed) < min(limit, left):
        trial = study.study.ask(dists)
        # Before anything else: a process killed from here on leaves a trial
        # that requeue_interrupted can tell is dead.
        trial.set_user_attr("owner", rundir.this_process())
        point = point_of(trial)
        if point.key in taken:  # a value drawn twice (a list, or a narrow range)
            _fail(study, trial.number, "duplicate")
            duplicates += 1
            if duplicates > MAX_RESAMPLES and claimed:
                break  # these first; the next round finds the space exhausted
            if duplicates > MAX_RESAMPLES:
                raise Exhausted(
                    f"TPE drew {duplicates} configurations in a row that were already "
                    f"taken: the space ({_space(config)}) holds no new one; the sweep "
                    f"ends with the {len(taken)} it has of --trials={config.trials}"
                )
            continue
        duplicates = 0
        trial.set_user_attr("key", point.key)
        taken.add(point.key)
        trial_id = study.storage.get_trial_id_from_study_id_trial_number(
            study.study_id, trial.number
        )
        claimed.append((Claim(trial.number, trial_id), point))
    return claimed


def _space(config: SweepConfig) -> str:
    return ", ".join(
        f"{n} in {v}"
        if isinstance(v, Range)
        else f"{n} in {{{', '.join(map(str, v))}}}"
        for n, v in config.search_space().items()
        if isinstance(v, Range) or len(v) > 1
    )
