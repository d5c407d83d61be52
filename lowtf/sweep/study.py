"""The sweep's Optuna study: storage, definition, claims and the ledger.

One study per sweep: a ``GridSampler`` over :meth:`SweepConfig.search_space`
for a grid, a ``TPESampler`` for ``search="tpe"`` (lists as categorical
distributions, ranges as float ones). A process *claims* configurations by
``ask``-ing trials (the grid sampler hands out grid points not yet finished
or running; TPE samples new points, at most ``trials`` in all), trains
them, and ``tell``-s their scores. Every trial carries user attrs: ``key`` (the
:attr:`Point.key`), ``owner`` (host and pid) and, once told, ``status``
(``"ok"`` or ``"diverged"``) with its fold scores. A trial left RUNNING by a
process of this host that is gone (an interrupted run) is failed as
``"interrupted"`` and its point queued again, so a rerun finishes it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from lowtf.sweep.config import SWEPT, Point, Range, SweepConfig

DEFINITION = "definition"
STUDY_NAME = "lowtf-sweep"
FINISHED = ("ok", "diverged")
CLAIM_WAIT_SECONDS = 10.0
# TPE: draws of an already taken point tolerated per claim before giving up.
_MAX_RESAMPLES = 20


def open_storage(url: str):
    """An Optuna storage for ``url`` (a database URL or ``journal:<path>``).

    Raises:
      ValueError: it cannot be opened (bad URL, missing driver, unreachable).
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url[len("journal:") :]))
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # noqa: BLE001 - drivers raise many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"--storage ({url}) cannot be opened: {type(error).__name__}: {first}; "
            "give a database URL such as sqlite:///path/study.db or "
            "postgresql://user@host/db, or journal:<file>"
        ) from None


def open_study(config: SweepConfig, storage) -> optuna.Study:
    """The sweep's study, made or loaded; refuses one of another definition."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mode = "maximize" if "accuracy" in config.monitor else "minimize"
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        sampler=sampler(config),
        direction=mode,
        load_if_exists=True,
    )
    mine = config.definition()
    stored = study.user_attrs.get(DEFINITION)
    if stored is None:
        study.set_user_attr(DEFINITION, mine)
    elif stored != mine:
        differ = [
            f"{k}: stored {json.dumps(stored.get(k))}, given {json.dumps(mine.get(k))}"
            for k in sorted(set(stored) | set(mine))
            if stored.get(k) != mine.get(k)
        ]
        raise ValueError(
            f"--sweep_dir/--storage holds another sweep ({'; '.join(differ)}); "
            "rerun with its flags to resume it, or pick a new --sweep_dir"
        )
    return study


def sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    """The grid's ``GridSampler``, or TPE for ``search="tpe"``.

    TPE asks a round's trials before any is told, so ``constant_liar``
    counts the running ones as (bad) results: the points of one batch spread
    out instead of piling on the same promising spot. ``multivariate``
    models the settings jointly (L2 and dropout interact); both are Optuna
    5.0's defaults, spelled out for older versions.
    """
    if config.search == "tpe":
        return _tpe(config.seed)
    return optuna.samplers.GridSampler(config.search_space(), seed=config.seed)


def _tpe(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def distributions(config: SweepConfig) -> dict:
    """Per setting, a list as a categorical distribution, a range as a float one."""
    return {
        n: FloatDistribution(v.low, v.high, log=v.log)
        if isinstance(v, Range)
        else CategoricalDistribution(v)
        for n, v in config.search_space().items()
    }


def point_of(trial) -> Point:
    return Point(*(trial.params[n] for n in SWEPT))


def ledger(study: optuna.Study) -> dict:
    """Per key: the finished trial (latest) and whether one is running or queued.

    Returns ``{"finished": {key: FrozenTrial}, "running": set, "waiting": set}``.
    """
    finished, running, waiting = {}, set(), set()
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("key")
        if t.state == TrialState.WAITING:
            fixed = t.system_attrs.get("fixed_params")
            if fixed:
                waiting.add(Point(*(fixed[n] for n in SWEPT)).key)
        elif key is None:
            continue
        elif t.state == TrialState.RUNNING:
            running.add(key)
        elif t.user_attrs.get("status") in FINISHED:
            finished[key] = t
    return {"finished": finished, "running": running, "waiting": waiting}


def requeue_interrupted(study: optuna.Study, config: SweepConfig) -> int:
    """Fails the trials of dead processes of this host and queues their points again.

    A trial without an owner (its process died between ``ask`` and claiming
    it, which takes milliseconds) is failed as ``"abandoned"`` once it is
    older than ``CLAIM_WAIT_SECONDS``, on any host: it never held a point.
    """
    host, count = socket.gethostname(), 0
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if owner is None:
            started = t.datetime_start or now
            if (now - started).total_seconds() > CLAIM_WAIT_SECONDS:
                _fail(study, t, "abandoned")
            continue
        if owner.get("host") != host or owner.get("pid") == os.getpid():
            continue
        if _alive(owner.get("pid")):
            continue
        key = t.user_attrs.get("key")
        if not _fail(study, t, "interrupted" if key else "abandoned") or not key:
            continue
        book = ledger(study)
        if key not in book["finished"] and key not in book["waiting"]:
            study.enqueue_trial(point_of(t).params(), skip_if_exists=False)
        count += 1
    return count


def _fail(study: optuna.Study, trial, status: str) -> bool:
    """Fails a running trial as ``status``; False if another process just did."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "status", status)
        tell(study, trial.number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        return False
    return True


def claim(study: optuna.Study, config: SweepConfig, limit: int) -> list:
    """Asks for up to ``limit`` configurations nobody has finished or is running.

    Returns ``[(trial, point)]``. Grid: a point handed out twice (two
    processes racing) is failed as ``"duplicate"`` and skipped. TPE: at
    most ``config.trials`` less those finished or running (in any process)
    are asked, by a sampler seeded with the study's size (a rerun draws new
    points); a point already finished, running or drawn is failed as
    ``"duplicate"`` and drawn again; while interrupted points are queued, a
    round takes exactly those, so their population forms again and resumes.
    """
    if config.search == "tpe":
        return _claim_sampled(study, config, limit)
    keys = {p.key for p in config.points()}
    dists = distributions(config)
    claimed, duplicates = [], 0
    while len(claimed) < limit and duplicates <= len(keys):
        book = ledger(study)
        free = keys - set(book["finished"]) - book["running"]
        if not free:
            break
        trial = study.ask(dists)
        point = point_of(trial)
        if point.key not in free:
            trial.set_user_attr("status", "duplicate")
            tell(study, trial, state=TrialState.FAIL)
            duplicates += 1
            continue
        _own(trial, point)
        if not _first_claim(study, trial.number, point.key):
            trial.set_user_attr("status", "duplicate")
            tell(study, trial, state=TrialState.FAIL)
            duplicates += 1
            continue
        claimed.append((trial, point))
    return claimed


def _claim_sampled(study: optuna.Study, config: SweepConfig, limit: int) -> list:
    book = ledger(study)
    # A queued (interrupted) point is asked first and replaces its failed
    # trial, so it does not count apart from the running and finished ones.
    left = config.trials - len(book["finished"]) - len(book["running"])
    if book["waiting"]:
        # The queued points alone: they re-form the interrupted population,
        # whose directory (named by its members) holds the checkpoint to resume.
        limit = min(limit, len(book["waiting"]))
    # Seeded by the study's size: a rerun, or another process, draws new
    # points rather than the first run's random start-up points again.
    study.sampler = _tpe(config.seed + len(study.get_trials(deepcopy=False)))
    dists = distributions(config)
    taken = set(book["finished"]) | book["running"]
    claimed, duplicates = [], 0
    while len(claimed) < min(limit, left) and duplicates <= _MAX_RESAMPLES:
        trial = study.ask(dists)
        point = point_of(trial)
        if point.key in taken:  # a value drawn twice (a list, or a narrow range)
            trial.set_user_attr("status", "duplicate")
            tell(study, trial, state=TrialState.FAIL)
            duplicates += 1
            continue
        taken.add(point.key)
        claimed.append((trial, _own(trial, point)))
    return claimed


def _own(trial, point: Point) -> Point:
    """Marks ``trial`` as ``point``'s, run by this process.

    The owner first: a process killed in between leaves a trial that
    :func:`requeue_interrupted` can tell is dead.
    """
    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
    trial.set_user_attr("key", point.key)
    return point


def _first_claim(study: optuna.Study, number: int, key: str) -> bool:
    """Whether trial ``number`` is the lowest-numbered live claim of ``key``.

    ``claim``'s look at the ledger comes before ``ask``, so two processes can
    both find a point free and both get it (GridSampler picks among points
    not running, two ``requeue_interrupted`` can queue one point twice).
    Trial numbers are handed out once by the storage, so "the lowest number
    keeps it" is one answer in every process, provided each sees the keys of
    all lower-numbered claims: those still between ``ask`` and setting their
    key are waited for (at most ``CLAIM_WAIT_SECONDS``, then taken as dead).
    """
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while True:
        pending = False
        for t in study.get_trials(deepcopy=False):
            if t.number >= number:
                continue
            status = t.user_attrs.get("status")
            if t.state == TrialState.RUNNING and "key" not in t.user_attrs:
                pending = True
            elif t.user_attrs.get("key") == key and (
                (t.state == TrialState.RUNNING and status is None) or status in FINISHED
            ):
                return False
        if not pending or time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tell(study: optuna.Study, trial, value=None, *, state=TrialState.COMPLETE) -> None:
    """``study.tell``, outside ``optimize``.

    GridSampler's ``after_trial`` calls ``study.stop()`` once the grid is
    exhausted, which raises outside ``optimize`` (and looks up a ``grid_id``
    that a queued trial lacks); the trial's state is stored before either
    (Optuna stores it in a ``finally``), so both are harmless here.
    """
    number = trial if isinstance(trial, int) else trial.number
    try:
        if state == TrialState.COMPLETE:
            study.tell(number, value)
        else:
            study.tell(number, state=state)
    except (RuntimeError, KeyError):
        stored = study._storage.get_trial(
            study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, number
            )
        )
        if not stored.state.is_finished():
            raise
