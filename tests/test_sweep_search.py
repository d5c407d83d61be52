"""Tests of bin/sweep's TPE search: range entries, their refusals, a sampled sweep
that resumes and refuses another definition, the requeue of an interrupted
sampled trial, and the scores picture against a continuous value."""

import csv
import dataclasses
import math
import os
import subprocess
import sys

import optuna
import pytest
from _fixtures import QUICK_SWEEP, SWEEP_BIN
from optuna.trial import TrialState

import lowtf
from lowtf import sweep
from lowtf.sweep import report
from lowtf.sweep import study as study_lib
from lowtf.sweep.config import TPE_BATCH
from lowtf.job import JobConfig
from lowtf.train import rundir

BIN, QUICK = SWEEP_BIN, QUICK_SWEEP
L2 = sweep.Range(1e-6, 1e-2, log=True)
RATE = sweep.Range(1e-4, 1e-2, log=True)


@pytest.fixture(scope="module")
def data():
    return lowtf.load_dataset("synthetic", train_size=120, validation_size=60)


@pytest.mark.parametrize(
    "entries, expected",
    [
        (["0", "1e-4"], (0.0, 1e-4)),
        (["1e-6..1e-2:log"], sweep.Range(1e-6, 1e-2, log=True)),
        (["0..0.5"], sweep.Range(0.0, 0.5, log=False)),
        ([".5..1."], sweep.Range(0.5, 1.0, log=False)),
        (["1E-6..+1e-2:log"], sweep.Range(1e-6, 1e-2, log=True)),
        ([], ()),
    ],
)
def test_entries_parse_as_floats_or_one_range(entries, expected):
    assert sweep.parse_values("l2", entries) == expected


@pytest.mark.parametrize(
    "entries, message",
    [
        (["0", "1e-6..1e-2"], r"--l2=0,1e-6..1e-2: a range is the flag's one entry"),
        (["a..b"], r"--l2=a..b: a range is lo..hi \(uniform\) or lo..hi:log"),
        (["1..2..3"], r"--l2=1..2..3: a range is lo..hi"),
        (["1e-6..1e-2:lg"], r"--l2=1e-6..1e-2:lg: a range is lo..hi"),
        (["x"], r"--l2=x: 'x' is not a number"),
        (["inf..1"], r"--l2=inf..1: the ends of a range must be finite numbers"),
        # A third dot is not part of a number: not 1e-6..0.001 (".1e-2").
        (["1e-6...1e-2"], r"--l2=1e-6...1e-2: a range is lo..hi .* exactly two dots"),
        (["1...2:log"], r"--l2=1...2:log: a range is lo..hi"),
        (["1e-6....1e-2"], r"--l2=1e-6....1e-2: a range is lo..hi"),
        (["1e-6..1e-2:log:log"], r"--l2=1e-6..1e-2:log:log: a range is lo..hi"),
        (["..1e-2"], r"--l2=..1e-2: a range is lo..hi"),
        (["1e-6 ..1e-2"], r"--l2=1e-6 ..1e-2: a range is lo..hi"),
    ],
)
def test_bad_entries_are_refused(entries, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_values("l2", entries)


TPE = {"search": "tpe", "trials": 4}


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"l2": L2},
            r"--l2=1e-06..0.01:log is a range: ranges need --search=tpe --trials=N",
        ),
        ({"trials": 3}, r"--trials \(3\) only applies to --search=tpe"),
        ({"search": "tpe", "l2": L2}, r"--search=tpe needs --trials=N \(N > 0\)"),
        (
            {**TPE, "l2": (0.0, 1e-3)},
            r"--search=tpe samples ranges, and every swept setting is a list",
        ),
        (
            {**TPE, "l2": sweep.Range(0.0, 1e-2, log=True)},
            r"--l2=0.0..0.01:log: a log range needs a low end > 0",
        ),
        (
            {**TPE, "l2": sweep.Range(1e-2, 1e-3)},
            r"--l2=0.01..0.001: the low end \(0.01\) must be below the high end",
        ),
        (
            {**TPE, "dropout": sweep.Range(0.0, 1.0)},
            r"--dropout=0.0..1.0: --dropout must be in \[0, 1\)",
        ),
        (
            {**TPE, "maxnorm": sweep.Range(-1.0, 3.0)},
            r"--maxnorm=-1.0..3.0: -1.0 is not a non-negative number",
        ),
        ({**TPE, "architectures": sweep.Range(1.0, 2.0)}, r"--model/--hidden .* range"),
        ({**TPE, "batchnorm": sweep.Range(0.0, 1.0)}, r"--batchnorm=0.0..1.0: .* not a number"),
        ({"search": "random"}, r"`search` \('random'\) must be one of 'grid', 'tpe'"),
    ],
)
def test_bad_searches_and_ranges_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        sweep.SweepConfig(**fields)


def test_tpe_config_counts_trials_and_batches():
    config = sweep.SweepConfig(**TPE, l2=L2, dropout=(0.0, 0.3))
    assert config.configurations == 4
    assert config.batch == TPE_BATCH == 8
    assert dataclasses.replace(config, claim=3).batch == 3
    assert config.swept_names() == ("dropout", "l2")
    assert config.ranges() == {"l2": L2}
    assert config.definition()["l2"] == "1e-06..0.01:log"
    assert config.definition()["search"] == "tpe"
    assert config.definition()["trials"] == 4
    # A grid's definition is the one it had before TPE (old studies resume).
    assert sweep.SweepConfig(l2=(0.0, 1e-3)).definition()["search"] == "grid"
    with pytest.raises(ValueError, match="only a grid lists them"):
        config.points()
    dists = study_lib.distributions(config)
    assert dists["l2"] == optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)
    assert dists["dropout"] == optuna.distributions.CategoricalDistribution([0.0, 0.3])


@pytest.mark.e2e
def test_tpe_sweep_samples_resumes_and_refuses_another_range(tmp_path, data):
    # bin/sweep --search=tpe --learning_rate=1e-4..1e-2:log --l2=1e-6..1e-2:log,
    # small: 6 trials of 30 steps, a listed dropout beside the two ranges.
    config = sweep.SweepConfig(
        **QUICK, search="tpe", trials=6, learning_rate=RATE, l2=L2,
        dropout=(0.0, 0.3), claim=4, sweep_dir=str(tmp_path / "s"),
    )  # fmt: skip
    lines = []
    first = sweep.run_sweep(config, data=data, log=lines.append)
    # Two rounds (4 + 2 configurations), each one population: the learning
    # rates are per member.
    assert first.trained == 6 and len(first.rows) == 6
    assert sum("population" in line and "configurations x 1 folds" in line
               for line in lines) == 2  # fmt: skip
    assert len({r["key"] for r in first.rows}) == 6
    for row in first.rows:
        assert row["status"] == "ok"
        assert 1e-4 <= row["learning_rate"] <= 1e-2 and 1e-6 <= row["l2"] <= 1e-2
        assert row["dropout"] in (0.0, 0.3)
        assert math.isfinite(row["score_mean"]) and row["score_mean"] > 0
    assert len({r["learning_rate"] for r in first.rows}) == 6
    scores = [r["score_mean"] for r in first.rows]
    assert scores == sorted(scores)
    # The study holds exactly the 6 trials, all told.
    study = study_lib.open_study(config, config.resolved_storage)
    trials = study.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6

    with open(tmp_path / "s" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6
    # Every digit of a sampled value survives the CSV.
    assert [float(r["learning_rate"]) for r in table] == [
        r["learning_rate"] for r in first.rows
    ]
    assert [float(r["score_mean"]) for r in table] == pytest.approx(scores)
    # The score against the learning rate on a log axis, every trial at its rate.
    fig = report.scores_figure(config, first.rows)
    ax = fig.axes[[a.get_xlabel() for a in fig.axes].index("learning_rate")]
    assert ax.get_xscale() == "log" and ax.get_xlim() == pytest.approx((1e-4, 1e-2))
    drawn = sorted(x for line in ax.get_lines()[:2] for x in line.get_xdata())
    assert drawn == sorted(r["learning_rate"] for r in first.rows)
    assert (tmp_path / "s" / "scores.png").stat().st_size > 0
    md = (tmp_path / "s" / "results.md").read_text()
    assert (
        "Sampled by TPE: dropout in {0.0, 0.3}" not in md
        and "Sampled by TPE: l2 in 1e-06..0.01:log, learning_rate in 0.0001..0.01:log." in md
    )
    # The winner's command carries its sampled rate and L2 to the last digit.
    winner = first.winner
    assert winner is first.rows[0]
    command = next(line for line in md.splitlines() if "bin/train --" in line).split()
    assert {f"--l2={winner['l2']!r}", f"--learning_rate={winner['learning_rate']!r}"} <= set(
        command
    )
    job = config.job_config(winner["point"])
    assert isinstance(job, JobConfig) and job.learning_rate == winner["learning_rate"]

    # The same command again: 6 trials are finished, nothing is trained.
    again = sweep.run_sweep(config, data=data, log=lambda line: None)
    assert again.trained == 0
    assert [(r["key"], r["score_mean"]) for r in again.rows] == [
        (r["key"], r["score_mean"]) for r in first.rows
    ]

    # Another range, or more trials, in the same sweep_dir is refused.
    other = dataclasses.replace(config, l2=sweep.Range(1e-5, 1e-2, log=True))
    with pytest.raises(
        ValueError,
        match=r'holds another sweep \(l2: stored "1e-06..0.01:log", '
        r'given "1e-05..0.01:log"\)',
    ):
        sweep.run_sweep(other, data=data, log=lambda line: None)
    with pytest.raises(ValueError, match=r"holds another sweep \(trials: stored 6"):
        sweep.run_sweep(
            dataclasses.replace(config, trials=8), data=data, log=lambda line: None
        )


def test_interrupted_sampled_trials_are_asked_again_with_their_floats():
    config = sweep.SweepConfig(
        search="tpe", trials=5, l2=L2, dropout=sweep.Range(0.0, 0.5)
    )
    study = study_lib.open_study(config, optuna.storages.InMemoryStorage())
    first = study_lib.claim(study, config, 2)
    assert len(first) == 2
    # Their process is gone: it had this process's pid (a restart reused it).
    gone = {**rundir.this_process(), "start": 1}
    for trial, _ in first:
        study.storage.set_trial_user_attr(trial.trial_id, "owner", gone)
    assert study_lib.requeue_interrupted(study, config) == 2
    book = study_lib.ledger(study)
    assert book["waiting"] == {p.key for _, p in first}
    assert book["running"] == set() and book["finished"] == {}
    # Asked first and alone, with the very same floats: the interrupted
    # population forms again (and resumes from its checkpoint).
    again = study_lib.claim(study, config, 8)
    assert [p for _, p in again] == [p for _, p in first]
    # Then new samples up to 5 trials, none a point already taken.
    more = study_lib.claim(study, config, 8)
    assert len(more) == 3
    keys = {p.key for _, p in again + more}
    assert len(keys) == 5
    for _, p in again + more:
        assert 1e-6 <= p["l2"] <= 1e-2 and 0.0 <= p["dropout"] <= 0.5
    # All 5 running: nothing is left to claim.
    assert study_lib.claim(study, config, 8) == []


def test_a_rerun_samples_new_points_and_an_ownerless_trial_is_abandoned(monkeypatch):
    config = sweep.SweepConfig(search="tpe", trials=6, l2=L2)
    storage = optuna.storages.InMemoryStorage()
    study = study_lib.open_study(config, storage)
    first = study_lib.claim(study, config, 3)
    for trial, _ in first:
        study_lib.record(study, trial, {"status": "ok"}, 1.0)
    # A second process (or a rerun) on the same storage: its sampler is
    # seeded by the study's size, so it does not draw the first 3 again.
    rerun = study_lib.open_study(config, storage)
    second = study_lib.claim(rerun, config, 3)
    assert len(second) == 3
    assert not {p.key for _, p in first} & {p.key for _, p in second}
    # A trial asked by a process that died before claiming it (no owner):
    # failed as abandoned once older than CLAIM_WAIT_SECONDS, never requeued.
    orphan = rerun.study.ask(study_lib.distributions(config))
    monkeypatch.setattr(study_lib, "CLAIM_WAIT_SECONDS", -1.0)
    assert study_lib.requeue_interrupted(rerun, config) == 0
    stored = rerun.study.get_trials(deepcopy=False)[orphan.number]
    assert stored.state == TrialState.FAIL
    assert stored.user_attrs["status"] == "abandoned"
    assert study_lib.ledger(rerun)["waiting"] == set()


def test_scores_picture_scatters_a_range_on_a_log_axis():
    config = sweep.SweepConfig(**TPE, l2=L2, dropout=(0.0, 0.3))
    rows = [
        {"l2": l2, "dropout": d, "status": "ok", "score_mean": s, "winner": i == 0}
        for i, (l2, d, s) in enumerate(
            [(1e-4, 0.0, 0.2), (3e-6, 0.3, 0.4), (5e-3, 0.0, 0.3), (2e-5, 0.3, 0.5)]
        )
    ]
    fig = report.scores_figure(config, rows)
    ax_dropout, ax_l2 = fig.axes
    assert ax_l2.get_xscale() == "log"
    assert ax_l2.get_xlim() == pytest.approx((1e-6, 1e-2))
    points = {
        line.get_label(): list(zip(*line.get_data())) for line in ax_l2.get_lines()
    }
    assert points["dropout=0.0"] == [(1e-4, 0.2), (5e-3, 0.3)]
    assert points["dropout=0.3"] == [(3e-6, 0.4), (2e-5, 0.5)]
    assert points["winner"] == [(1e-4, 0.2)]
    # The listed setting keeps categorical positions, best score over the rest.
    assert ax_dropout.get_xscale() == "linear"
    (line,) = ax_dropout.get_lines()
    assert list(line.get_ydata()) == [0.2, 0.4]
    # Listed learning rates sit at their values on a log axis; a listed L2
    # with 0 at categorical positions.
    config = sweep.SweepConfig(l2=(0.0, 1e-3), learning_rate=(1e-3, 1e-2))
    rows = [
        {"l2": l2, "learning_rate": lr, "status": "ok", "score_mean": l2 + lr}
        for l2 in (0.0, 1e-3)
        for lr in (1e-3, 1e-2)
    ]
    ax_l2, ax_rate = report.scores_figure(config, rows).axes
    assert (ax_l2.get_xscale(), ax_rate.get_xscale()) == ("linear", "log")
    assert list(ax_rate.get_lines()[0].get_xdata()) == [1e-3, 1e-2]


@pytest.mark.e2e
def test_bin_sweep_refuses_bad_values_and_ranges_in_one_line(tmp_path):
    # bin/sweep's two error paths (a flag's values, then SweepConfig), one
    # process each: every refusal is tested in process above.
    cases = [
        (["--dropout=0,0..1"], "error: --dropout=0,0..1: a range is the flag's one entry"),
        (["--l2=1e-6..1e-2:log"], "error: --l2=1e-06..0.01:log is a range: ranges "
                                  "need --search=tpe --trials=N"),
    ]  # fmt: skip
    for args, message in cases:
        result = subprocess.run(
            [sys.executable, BIN, *args, f"--sweep_dir={tmp_path / 's'}"],
            check=False, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        # lowtf's own lines only: TensorFlow's start-up log may say "error" too
        # (oneDNN's "round-off errors" on some processors).
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(message), errors
    assert not (tmp_path / "s").exists()


@pytest.mark.e2e
def test_a_tpe_search_that_cannot_draw_a_new_point_ends_in_one_line(tmp_path, data):
    # Two floats lie in [0, 5e-324]: with two dropout values, 4 points exist,
    # fewer than --trials. The sweep trains them and ends, in one line,
    # instead of polling for ever and failing trial after trial.
    config = sweep.SweepConfig(
        **{**QUICK, "max_steps": 10}, search="tpe", trials=6, architectures=("4",),
        l2=sweep.Range(0.0, 5e-324), dropout=(0.0, 0.1), sweep_dir=str(tmp_path / "s"),
    )  # fmt: skip
    lines = []
    result = sweep.run_sweep(config, data=data, log=lines.append)
    ended = [line for line in lines if "holds no new one" in line]
    assert len(ended) == 1, lines
    assert ended[0].startswith("TPE drew 21 configurations in a row that were")
    assert len(result.rows) == len({r["key"] for r in result.rows}) <= 4
    assert not result.interrupted and result.winner is not None
    study = study_lib.open_study(config, config.resolved_storage)
    failed = [t for t in study.study.get_trials() if t.state == TrialState.FAIL]
    # The draws of one exhausted claim, no more: nothing polls afterwards.
    assert len(failed) <= 2 * (study_lib.MAX_RESAMPLES + 1)
