"""The sweep job: data once, populations of jobs, Optuna's ledger, the winner.

:func:`run_sweep` loads the data, opens the study (:mod:`lowtf.sweep.study`),
then claims configurations until none is left (a grid's points, or TPE's
samples in batches of ``config.batch``): the claimed ones that differ only
in per-member settings (:meth:`SweepConfig.population_key`) train as one
:class:`lowtf.Population` (one :func:`lowtf.population.fit_population`
call, ``configurations x folds`` members), each member built by the job's
own builders (:mod:`lowtf.job.run`) from its configuration's
:class:`lowtf.job.JobConfig`, and each configuration's score goes back to
the study. When every configuration of the grid, or ``trials`` sampled
ones, are finished (by this process or others) it ranks them on validation
alone, writes the report and retrains the winner with
:func:`lowtf.job.run_job` into ``--model_dir`` (default
``sweep_dir/winner``). With ``config.ensemble`` (``--ensemble=N``), each
trained configuration also keeps its members and their validation (or
out-of-fold) predictions, and an ensemble of at most N picks is chosen on
those alone (:mod:`lowtf.sweep.ensemble`). The test set is read once, at the
end: the winner's retraining and the ensemble, side by side.

A SIGTERM or a first SIGINT (Ctrl-C) is a stop request, as for
:func:`lowtf.fit`: honoured at the next boundary (in a population or the
winner's retraining by fit_population or fit themselves, after saving
their checkpoint; else between claims), with one line; the call returns
with ``interrupted`` set, its unfinished claims given up, and a rerun
finishes the sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from lowtf.data import datasets
from lowtf.job import run as job_lib
from lowtf.job.flags import command_line
from lowtf.population import Population, fit_population, k_fold
from lowtf.sweep import ensemble as ensemble_lib
from lowtf.sweep import report, scoring
from lowtf.sweep import study as study_lib
from lowtf.sweep.config import Point, Range, SweepConfig, architecture
from lowtf.train.fit import StopSignals

POLL_SECONDS = 5.0


@dataclasses.dataclass
class SweepResult:
    """What :func:`run_sweep` reports.

    Attributes:
      rows: one dict per configuration, best first (the rows of results.csv).
      winner: the best row whose training did not diverge, or None.
      winner_result: the winner's :class:`lowtf.train.JobResult` (its test
        metrics), or None when not retrained.
      trained: configurations this call trained (0 when all were finished).
      sweep_dir: where everything went.
      wall_seconds: wall time of this call.
      interrupted: a stop request (SIGTERM, Ctrl-C) ended this call before
        the sweep was finished (its winner retrained and scored, when
        ``retrain``); rerun it to finish.
      ensemble: with ``config.ensemble``, the chosen ensemble as written to
        ``ensemble.json`` (:func:`lowtf.sweep.ensemble.select`, its ``test``
        scores filled by :func:`~lowtf.sweep.ensemble.score_test`); else None.
    """

    rows: list
    winner: dict | None
    winner_result: object
    trained: int
    sweep_dir: str
    wall_seconds: float
    interrupted: bool = False
    ensemble: dict | None = None


def run_sweep(config: SweepConfig, *, data=None, log=print) -> SweepResult:
    """Runs (or resumes) a sweep; see the module doc.

    Args:
      config: the :class:`SweepConfig`.
      data: a :class:`lowtf.Dataset` to use instead of loading the base
        job's data set (tests); the winner's retraining always loads it as
        ``bin/train`` would.
      log: called with each progress line (default ``print``).

    Raises:
      ValueError: bad data for these settings (more folds than the smallest
        class has rows, a batch larger than a fold), a storage that cannot be
        opened, a sweep directory or storage of another sweep definition.
    """
    if not isinstance(config, SweepConfig):
        raise ValueError(f"`config` ({config!r}) must be a lowtf.sweep.SweepConfig")  # noqa: TRY004
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")  # noqa: TRY004
    started = time.monotonic()
    sweep_dir = config.resolved_sweep_dir
    try:
        job_lib.check_model_dir(sweep_dir)
    except ValueError as error:
        # The check is bin/train's, which names its own flag.
        message = str(error).replace("--model_dir", "--sweep_dir")
        raise ValueError(message.replace("`model_dir`", "--sweep_dir")) from None
    # A stop request outside the trainings (fit and fit_population answer
    # their own) is honoured between claims and before the retraining.
    with StopSignals() as stop:
        return _sweep(config, data, log, stop, started)


def _sweep(config, data, log, stop, started) -> SweepResult:
    """:func:`run_sweep` once its arguments are checked, ``stop`` requests watched."""
    sweep_dir = config.resolved_sweep_dir
    if data is None:
        data = job_lib.load_data(config.job)
    # Everything about the data is checked before the study exists, so a
    # refused start leaves no study behind to refuse the corrected rerun.
    shared = _splits(config, data)
    tf.io.gfile.makedirs(sweep_dir)  # the embedded SQLite file goes here
    study = study_lib.open_study(config, config.resolved_storage)
    log(data.describe())
    total = config.configurations
    progress = _Progress(study, total, config, log, started)
    trained, exhausted, pending, interrupted = 0, False, [], False
    try:
        while not (stop.requested or interrupted):
            if study_lib.requeue_interrupted(study, config):
                log("queued again the configurations of an interrupted run")
            try:
                claimed = study_lib.claim(
                    study, config, config.batch, sample=not exhausted,
                    log=progress.line, stop=lambda: stop.requested,
                )  # fmt: skip
            except study_lib.Exhausted as error:
                log(str(error))
                exhausted = True
                continue
            pending = [t for t, _ in claimed]
            if not claimed:
                book = study_lib.ledger(study)
                if len(book["finished"]) >= total or (
                    exhausted and not book["running"] and not book["waiting"]
                ):
                    break
                progress.line(
                    f"waiting for {len(book['running'])} configurations running "
                    "in other processes"
                )
                _sleep(stop, POLL_SECONDS)
                continue
            # Pairs, not a dict by key: a key may not stand for its trial.
            for pairs in by_population(config, claimed).values():
                if stop.requested:
                    break
                group = [p for _, p in pairs]
                if not _train_population(
                    config, data, shared, group, [t for t, _ in pairs],
                    study, sweep_dir, progress,
                ):  # fmt: skip
                    interrupted = True
                    break
                pending = [t for t in pending if t not in {t for t, _ in pairs}]
                trained += len(group)
                progress.trained += len(group)
    finally:
        # Claims not trained to the end (a stop, an error) go back at
        # once, so that a rerun in this process, or another, takes them.
        if pending:
            try:
                study_lib.release(study, config, pending)
            except study_lib.StorageError:
                pass  # the error that got us here is the one to report
    if stop.requested or interrupted:
        done = len(study_lib.ledger(study)["finished"])
        # fit_population said which signal, at which step, in its own line.
        what = f"{stop.requested} received: " if stop.requested else ""
        log(
            f"{what}sweep interrupted with {done}/{total} configurations done; "
            "rerun the same command to finish it"
        )
        return SweepResult(
            rows=[], winner=None, winner_result=None, trained=trained,
            sweep_dir=sweep_dir, wall_seconds=time.monotonic() - started,
            interrupted=True,
        )  # fmt: skip
    rows = scoring.rank(
        [_row(config, t) for t in study_lib.ledger(study)["finished"].values()],
        maximize="accuracy" in config.job.monitor,
    )
    winner = next((r for r in rows if r["status"] == "ok"), None)
    for r in rows:
        r["winner"] = r is winner
    command = flags_text = None
    if winner is not None:
        job = dataclasses.replace(
            config.job_config(winner["point"]), model_dir=config.winner_dir
        )
        command = winner["command"]
        flags_text = "".join(f"{f}\n" for f in command_line(job))
    # A --noretrain rerun keeps the test line of the winner retrained before.
    earlier = None
    if winner is not None and not config.retrain:
        earlier = report.read_test(config.winner_dir, flags_text)
    # The ensemble is chosen on the scored rows' predictions before any test row is read.
    chosen = None
    if config.ensemble and winner is not None:
        chosen = ensemble_lib.select(config, rows, shared, sweep_dir, log)
        if chosen is not None:
            ensemble_lib.write(sweep_dir, chosen)
    report.write(config, rows, sweep_dir, command=command, test=earlier, ensemble=chosen)
    log(f"sweep: {len(rows)} configurations ranked; report in {sweep_dir}")
    winner_result, interrupted = None, False
    if winner is not None and config.retrain:
        if not stop.requested:
            log(f"retraining the winner ({winner['key']}) on all training rows")
            # fit answers a stop request during the training itself.
            winner_result = job_lib.run_job(job, flags_text=flags_text, log=log)
        interrupted = (
            winner_result is None or winner_result.stop_reason == "interrupted"
        )
        if not interrupted:
            _score_ensemble(config, chosen, data, sweep_dir, winner_result, log)
        report.write(
            config, rows, sweep_dir, command=command, test=winner_result, ensemble=chosen
        )
        if interrupted:
            log(
                f"sweep interrupted while retraining the winner into "
                f"{job.model_dir}; rerun the same command to finish it"
            )
    elif winner is None:
        log("no configuration trained without diverging: there is no winner")
    elif chosen is not None:
        _score_ensemble(config, chosen, data, sweep_dir, earlier, log)
        report.write(config, rows, sweep_dir, command=command, test=earlier, ensemble=chosen)
    return SweepResult(
        rows=rows,
        winner=winner,
        winner_result=winner_result,
        trained=trained,
        sweep_dir=sweep_dir,
        wall_seconds=time.monotonic() - started,
        interrupted=interrupted,
        ensemble=chosen,
    )


def _score_ensemble(config, chosen, data, sweep_dir, test, log) -> None:
    """Scores the chosen ensemble and the retrained winner (``test`` not None) on test."""
    if chosen is None:
        return
    winner_dir = config.winner_dir if test is not None else None
    scores = ensemble_lib.score_test(config, chosen, data, sweep_dir, winner_dir)
    ensemble_lib.write(sweep_dir, chosen)
    sides = [("ensemble", scores["ensemble"]), ("winner", scores["winner"])]
    log(
        "test: "
        + "; ".join(
            f"{name} accuracy {s['accuracy']:.4f} cross-entropy {s['cross_entropy']:.4f} "
            f"calibration error {s['calibration_error']:.4f}"
            for name, s in sides
            if s is not None
        )
    )


@dataclasses.dataclass(frozen=True)
class _Shared:
    """The rows every population trains on, and each fold's part of them.

    Attributes:
      x, y: the shared rows (flat features).
      folds: per fold, ``(train_rows, val_rows)`` indices into them.
      scales: per fold, ``(rows, mean, std)`` for its augmentation: its
        training rows in the loaded training split and the statistics its
        copy is standardized with (None each: the split's own, as loaded).
    """

    x: np.ndarray
    y: np.ndarray
    folds: list
    scales: list


def _splits(config: SweepConfig, data) -> _Shared:
    """The shared rows and each fold's ``(train_rows, val_rows)`` into them.

    ``folds == 1``: the training and validation splits, one after the other.
    ``folds == k``: stratified k-fold of the training split alone. The test
    split is never among them.
    """
    x_train, y_train = data.train
    n = len(y_train)
    flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)
    if config.folds == 1:
        x_val, y_val = data.validation
        x = np.concatenate([flat(x_train), flat(x_val)])
        y = np.concatenate([y_train, y_val])
        folds = [(np.arange(n), n + np.arange(len(y_val)))]
        scales = [(None, None, None)]
        smallest = n
    else:
        counts = np.bincount(np.asarray(y_train, np.int64))
        least = int(counts[counts > 0].min())
        if config.folds > least:
            raise ValueError(
                f"--folds ({config.folds}) exceeds the {least} training rows of the "
                f"smallest class (label {int(np.flatnonzero(counts == least)[0])}); "
                f"use --folds={least} or fewer, or more --train_size"
            )
        folds = k_fold(np.asarray(y_train), config.folds, seed=config.job.data_seed)
        # Each fold is standardized on its own training rows, as a run on
        # them alone would be: its validation rows must not set its scale.
        # The loader's scale (the whole split's) is undone first; fold f's
        # copy of the rows sits at f * n in the shared x.
        raw = flat(x_train) * flat(data.std[None]) + flat(data.mean[None])
        copies, scales = [], []
        for train_rows, _ in folds:
            mean, std = datasets.statistics(raw[train_rows])
            copies.append(((raw - mean) / std).astype(np.float32))
            scales.append((train_rows, mean, std))
        x = np.concatenate(copies)
        y = np.tile(np.asarray(y_train), config.folds)
        folds = [(t + f * n, v + f * n) for f, (t, v) in enumerate(folds)]
        smallest = min(len(t) for t, _ in folds)
    batch = config.swept.get("batch_size", (config.job.batch_size,))
    batch = batch.high if isinstance(batch, Range) else max(batch)
    if batch > smallest:
        raise ValueError(
            f"--batch_size ({batch}) exceeds the {smallest} training rows "
            "of a fold; lower it, raise --train_size or use fewer --folds"
        )
    return _Shared(x, y, folds, scales)


def by_population(config: SweepConfig, claimed) -> dict[tuple, list]:
    """``(trial, point)`` pairs grouped by what a population shares, in their order."""
    groups: dict[tuple, list] = {}
    for pair in claimed:
        groups.setdefault(config.population_key(pair[1]), []).append(pair)
    return groups


def _population(config: SweepConfig, data, shared: _Shared, jobs: list) -> Population:
    """The population of ``jobs`` (one population key) x folds, built as each job builds.

    Member ``(j, f)`` is job ``j`` on fold ``f``: the network, augmentation,
    seed, rate and techniques its own ``run_job`` would train with; the
    kind of optimizer and its schedule, the batch size and the loop are
    the population's, shared by construction.
    """
    members = [(job, f) for job in jobs for f in range(len(shared.folds))]
    first = jobs[0]

    def per_member(name):
        return [getattr(job, name) for job, _ in members]

    augments = [
        job_lib.build_augment(job, data, rows=rows, mean=mean, std=std)
        for job, f in members
        for rows, mean, std in (shared.scales[f],)
    ]
    cutmix = any(job.cutmix for job in jobs)
    return Population(
        shared.x,
        shared.y,
        train_rows=[shared.folds[f][0] for _, f in members],
        val_rows=[shared.folds[f][1] for _, f in members],
        seeds=per_member("seed"),
        # Decoupled weight decay is the population's, one per member.
        optimizer=job_lib.build_optimizer(dataclasses.replace(first, weight_decay=0.0)),
        models=lambda k: job_lib.build_model(members[k][0], data),
        learning_rate=per_member("learning_rate"),
        weight_decay=per_member("weight_decay") if first.optimizer == "adamw" else None,
        augment=augments if any(a is not None for a in augments) else None,
        label_smoothing=per_member("label_smoothing"),
        mixup=per_member("mixup"),
        cutmix=per_member("cutmix"),
        image_shape=job_lib.image_shape(data, "--cutmix") if cutmix else None,
        ema=per_member("ema"),
        swa_from=per_member("swa_from"),
        batch_size=first.batch_size,
        monitor=first.monitor,
        patience=per_member("patience"),
        min_delta=per_member("min_delta"),
        jit_compile=first.xla if first.xla is not None else "auto",
    )


def _train_population(
    config, data, shared, points, trials, study, sweep_dir, progress
) -> bool:
    """Trains ``points`` (one population key) x folds as one population; tells the study.

    Returns False when a stop request ended the training (fit_population
    saved its checkpoint): nothing is recorded, the claims go back.

    The population's directory is named by what it trains (see
    :func:`population_name`) and its points are put in the order of their
    keys (member order is part of the checkpoint), so a rerun that claims the
    same unfinished points resumes it from its checkpoint, grid or TPE alike.
    """
    pairs = sorted(zip(points, trials), key=lambda pair: pair[0].key)
    points, trials = [p for p, _ in pairs], [t for _, t in pairs]
    jobs = [config.job_config(p) for p in points]
    population = _population(config, data, shared, jobs)
    folds, first = shared.folds, jobs[0]
    name = population_name(config, points)
    progress.running = len(points)
    progress.line(
        f"population {name}: {len(points)} configurations x {len(folds)} folds"
    )
    result = fit_population(
        population,
        model_dir=os.path.join(sweep_dir, "populations", name),
        max_steps=first.max_steps,
        eval_every=first.eval_every,
        steps_per_call=first.steps_per_call,
        checkpoint_every=first.checkpoint_every,
        start_from_step=first.warmup,
        log=progress.line,
    )
    progress.running = 0
    if any(m.stop_reason == "interrupted" for m in result.members):
        return False
    per_point = len(folds)
    for i, (point, trial) in enumerate(zip(points, trials)):
        own = result.members[i * per_point : (i + 1) * per_point]
        # fit_population stops a member whose loss or weights went NaN/Inf
        # as "diverged" and keeps only finite numbers of it.
        bad = any(
            m.stop_reason == "diverged" or scoring.diverged(m.best_value, m.history)
            for m in own
        )
        values = [m.best_value for m in own]
        gaps = [scoring.gap_at(m.history, m.best_step) for m in own]
        gaps = [g for g in gaps if g is not None]
        attrs = {
            "status": "diverged" if bad else "ok",
            "scores": [v if np.isfinite(v) else None for v in values],
            "best_steps": [m.best_step for m in own],
            "gap": float(np.mean(gaps)) if gaps else None,
            "wall_seconds": result.wall_seconds / len(points),
            "curve": scoring.mean_curve([m.history for m in own]),
        }
        score = None if bad else scoring.fold_score(values)[0]
        if config.ensemble and not bad:
            # Kept before the trial is recorded: a recorded configuration has them.
            models = [population.member(i * per_point + f) for f in range(per_point)]
            ensemble_lib.save_members(sweep_dir, point.key, models, shared)
        study_lib.record(study, trial, attrs, score)
    return True


def _sleep(stop, seconds: float) -> None:
    """Sleeps ``seconds``, or less once ``stop`` (a StopSignals) has a request."""
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.1, deadline - time.monotonic()))


def population_name(config: SweepConfig, points) -> str:
    """``<architecture>-<hash>``: the directory of the population training ``points``.

    The hash covers the sweep's definition (every shared setting, the folds
    included) and the sorted keys of the points, so the same group of the
    same sweep finds its directory again (an interrupted population resumes
    from its checkpoint), while another group, e.g. one formed when several
    processes ``--claim`` parts of the grid, gets a fresh one: a checkpoint
    is never resumed by a population it was not written for.
    """
    what = {"definition": config.definition(), "points": sorted(p.key for p in points)}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return f"{architecture(config.job_config(points[0]))}-{digest[:12]}"


def _row(config: SweepConfig, trial) -> dict:
    """A finished trial as a row of results.csv (plus its ``point`` and ``curve``)."""
    a = study_lib.result(trial)
    ok = a["status"] == "ok"
    mean, std = scoring.fold_score(a["scores"]) if ok else (float("nan"),) * 2
    point = study_lib.point_of(trial)
    # The bin/train run of this configuration alone, wherever it writes.
    alone = dataclasses.replace(config.job_config(point), model_dir=None, export_dir=None)
    return {
        "key": a["key"],
        **config.row_values(point),
        "status": a["status"],
        "score_mean": mean,
        "score_std": std,
        "folds": len(a["scores"]),
        "best_step": round(float(np.mean(a["best_steps"]))),
        "gap": a["gap"],
        "wall_seconds": a["wall_seconds"],
        "trial": trial.number,
        "command": "bin/train " + " ".join(command_line(alone)),
        "point": point,
        "curve": a["curve"],
    }


class _Progress:
    """The progress line: configurations done and running, best so far, elapsed, ETA.

    The study's storage is read at most every ``REFRESH_SECONDS`` (and after
    each of this process's groups): a population logs every evaluation, and
    reading every trial each time cost 20 ms a line.
    """

    REFRESH_SECONDS = 5.0

    def __init__(self, study, total, config, log, started):
        self.study, self.total, self.config, self.log = study, total, config, log
        self.started, self._trained, self.running = started, 0, 0
        self.maximize = "accuracy" in config.job.monitor
        self._read_at, self._done, self._best = -math.inf, 0, "-"

    @property
    def trained(self) -> int:
        return self._trained

    @trained.setter
    def trained(self, value: int) -> None:
        self._trained, self._read_at = value, -math.inf  # read the storage anew

    def _read(self) -> None:
        finished = study_lib.ledger(self.study)["finished"]
        ok = [t for t in finished.values() if t.user_attrs.get("status") == "ok"]
        self._best = "-"
        if ok:
            pick = max if self.maximize else min
            t = pick(ok, key=lambda t: t.value)
            self._best = f"{t.value:.4f} ({t.user_attrs['key']})"
        self._done, self._read_at = len(finished), time.monotonic()

    def line(self, message: str) -> None:
        if time.monotonic() - self._read_at >= self.REFRESH_SECONDS:
            self._read()
        best, done = self._best, self._done
        elapsed = time.monotonic() - self.started
        left = self.total - done
        eta = f"{elapsed / self.trained * left:.0f} s" if self.trained else "?"
        self.log(
            f"[{done}/{self.total} done, {self.running} running; best "
            f"{self.config.job.monitor} {best}; elapsed {elapsed:.0f} s, ETA {eta}] {message}"
        )
