"""End-to-end tests of bin/sweep's storage: a SIGKILLed sweep resumes its
population from the checkpoint, and two processes on one journal split the
grid exactly once."""

import csv
import glob
import io
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin", "sweep")
# Off XLA: a step's compilation would take most of each run (about 10 s).
DIGITS = [
    "--model=small", "--train_size=400", "--validation_size=200", "--eval_every=50",
    "--checkpoint_every=50", "--steps_per_call=25", "--noxla", "--noretrain",
]  # fmt: skip
# Everything in results.csv but where and when it ran.
SCORED = (
    "rank", "winner", "architecture", "l1", "l2", "dropout", "maxnorm", "status",
    "score_mean", "score_std", "folds", "best_step", "gap",
)  # fmt: skip


def start(args, log_path, prefix=()):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    log = open(log_path, "w")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen(
        [*prefix, sys.executable, BIN, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    process.log = log
    return process


def finish(process, timeout=240):
    process.wait(timeout=timeout)
    process.log.close()
    with open(process.log.name) as f:
        return f.read()


def results(sweep_dir):
    with open(os.path.join(sweep_dir, "results.csv")) as f:
        return [{c: row[c] for c in SCORED} for row in csv.DictReader(f)]


def populations(sweep_dir):
    path = os.path.join(sweep_dir, "populations")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def latest_step(sweep_dir):
    """The step of the checkpoint a resume would read (the manager's state file)."""
    paths = glob.glob(os.path.join(sweep_dir, "populations", "*", "ckpt", "checkpoint"))
    steps = []
    for path in paths:
        with open(path) as f:
            found = re.search(
                r'^model_checkpoint_path: "ckpt-(\d+)"', f.read(), re.MULTILINE
            )
        steps += [int(found.group(1))] if found else []
    return max(steps, default=None)


@pytest.mark.e2e
def test_two_processes_on_one_journal_train_each_configuration_once(tmp_path):
    journal = str(tmp_path / "study.log")
    args = [
        *DIGITS, "--l2=0,1e-3", "--dropout=0,0.2", "--max_steps=200", "--claim=2",
        f"--storage=journal:{journal}",
    ]  # fmt: skip
    dirs = [str(tmp_path / f"p{i}") for i in range(2)]
    processes = [
        start([*args, f"--sweep_dir={d}"], tmp_path / f"p{i}.log")
        for i, d in enumerate(dirs)
    ]
    outputs = [finish(p) for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-2000:]
    trained = [
        sum(map(int, re.findall(r": (\d+) configurations x 1 folds", out)))
        for out in outputs
    ]
    print(f"configurations trained by each process: {trained}")
    assert sum(trained) == 4

    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(
        study_name="lowtf-sweep", storage=JournalStorage(JournalFileBackend(journal))
    )
    done = [t for t in study.get_trials() if t.user_attrs.get("status") == "ok"]
    keys = sorted(t.user_attrs["key"] for t in done)
    assert len(keys) == len(set(keys)) == 4
    assert {(t.params["l2"], t.params["dropout"]) for t in done} == {
        (0.0, 0.0), (0.0, 0.2), (1e-3, 0.0), (1e-3, 0.2)
    }  # fmt: skip
    # A population of two per claim, in the directory of the process that
    # trained it, none twice.
    names = [name for d in dirs for name in populations(d)]
    assert len(names) == len(set(names)) == 2
    assert [2 * len(populations(d)) for d in dirs] == trained
    # Both reports rank all four, identically.
    assert results(dirs[0]) == results(dirs[1]) and len(results(dirs[0])) == 4


CONFIG = {
    "dataset": "synthetic",
    "architectures": ("4",),
    "l2": (0.0, 1e-3),
    "retrain": False,
}


def _one_line_naming(error, path):
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    return message


def test_a_damaged_study_db_or_journal_is_one_line_naming_the_file(tmp_path):
    from lowtf import sweep
    from lowtf.sweep import study as study_lib

    config = sweep.SweepConfig(**CONFIG, sweep_dir=str(tmp_path))
    (tmp_path / "study.db").write_bytes(b"not a database " * 100)
    with pytest.raises(ValueError) as error:
        study_lib.open_study(config, config.resolved_storage)
    assert "file is not a database" in _one_line_naming(error, tmp_path / "study.db")
    # A journal with a damaged line, as a killed writer or a bad disk leaves.
    journal = tmp_path / "study.log"
    study = study_lib.open_study(config, f"journal:{journal}")
    study_lib.claim(study, config, 1)
    text = journal.read_bytes()
    journal.write_bytes(text[:40] + b"\x00{{damaged\n" + text[40:])
    with pytest.raises(ValueError) as error:
        study_lib.ledger(study_lib.open_study(config, f"journal:{journal}"))
    _one_line_naming(error, journal)


def test_a_read_only_study_db_is_one_line_naming_the_file(tmp_path):
    from lowtf import sweep
    from lowtf.sweep import study as study_lib

    config = sweep.SweepConfig(**CONFIG, sweep_dir=str(tmp_path))
    study_lib.open_study(config, config.resolved_storage)
    # Read-only as SQLite sees it (root ignores file modes).
    url = f"sqlite:///file:{tmp_path / 'study.db'}?mode=ro&uri=true"
    with pytest.raises(study_lib.StorageError) as error:
        study_lib.open_study(config, url)
    message = _one_line_naming(error, tmp_path / "study.db")
    assert "attempt to write a readonly database" in message


def test_a_read_only_sweep_dir_names_the_sweep_dir_flag(tmp_path, monkeypatch):
    from lowtf import sweep

    config = sweep.SweepConfig(**CONFIG, sweep_dir=str(tmp_path / "s"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user
    with pytest.raises(ValueError, match=r"^--sweep_dir \(.*/s\): .* is not writable"):
        sweep.run_sweep(config, log=lambda line: None)


STEPS = 500
ARGS = [*DIGITS, "--l2=0,1e-3", f"--max_steps={STEPS}"]


def wait_for(condition, process, what, timeout=180):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, finish(process)[-2000:]
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


def history(sweep_dir):
    (name,) = populations(sweep_dir)
    return pathlib.Path(sweep_dir, "populations", name, "history.csv").read_text()


def assert_ended_alike(b, a):
    """Sweep ``b`` ended as ``a``: the same results bit for bit, and the same
    evaluations in history.csv to float32 round-off.

    Not bit for bit in history.csv: two fresh processes were once seen to
    differ by an ulp in one total_loss cell, at step 50, before any stop (when
    the step loop still summed the total apart from its two terms).
    """
    assert results(b) == results(a)
    rows = [list(csv.DictReader(io.StringIO(history(d)))) for d in (b, a)]
    assert len(rows[0]) == len(rows[1])
    for row_b, row_a in zip(*rows):
        assert row_b.keys() == row_a.keys()
        for k in row_a:
            if row_b[k] != row_a[k]:
                assert float(row_b[k]) == pytest.approx(float(row_a[k]), rel=1e-6), k


def evaluated_past(sweep_dir, step):
    """Whether a population of ``sweep_dir`` has evaluated beyond ``step``."""
    paths = glob.glob(os.path.join(sweep_dir, "populations", "*", "history.csv"))
    steps = [
        int(line.split(",")[1])
        for path in paths
        for line in pathlib.Path(path).read_text().splitlines()[1:]
        if line.count(",") > 1
    ]
    return max(steps, default=-1) > step


def _unshare_works() -> bool:
    try:
        run = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "true"],
            check=False, capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return run.returncode == 0


def _stop_with_sigint_then_sigterm(tmp_path, c):
    """Ctrl-C in the population, SIGTERM in the winner's retraining, a rerun ends it."""
    # No checkpoint before the end: the one a stop saves is its own.
    # (bin/sweep takes --checkpoint_every once: ARGS' 50 replaced.)
    args = [*(a for a in ARGS if a != "--checkpoint_every=50"), "--checkpoint_every=1000"]
    first = start([*args, f"--sweep_dir={c}"], tmp_path / "c1.log")
    wait_for(lambda: evaluated_past(c, 100), first, "evaluation past step 100")
    first.send_signal(signal.SIGINT)  # Ctrl-C during the population
    output = finish(first, timeout=120)
    assert first.returncode == 3, output[-2000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    (stopped,) = re.findall(r"SIGINT received at step (\d+): stopping", output)
    assert latest_step(c) == int(stopped) < STEPS
    assert output.rstrip().endswith(
        "sweep interrupted with 0/2 configurations done; rerun the same command "
        "to finish it"
    )
    assert not os.path.exists(os.path.join(c, "results.csv"))

    # The rerun resumes the population; SIGTERM lands in the winner's retraining.
    second = start([*args, "--retrain", f"--sweep_dir={c}"], tmp_path / "c2.log")
    # A line of its loop (step 0's comes before fit answers signals).
    retraining = re.compile(rf"retraining the winner .*\n(.*\n)*step [1-9]\d*/{STEPS} ")
    wait_for(
        lambda: retraining.search(pathlib.Path(tmp_path / "c2.log").read_text()),
        second, "progress line of the winner's retraining",
    )  # fmt: skip
    second.send_signal(signal.SIGTERM)
    output = finish(second, timeout=120)
    assert second.returncode == 3, output[-2000:]
    assert (
        f"resuming from {c}/populations/" in output and f"at step {stopped}" in output
    )
    assert re.search(r"SIGTERM received at step \d+: stopping", output)
    assert "sweep interrupted while retraining the winner" in output
    report = pathlib.Path(c, "results.md").read_text()
    assert "retraining was interrupted at step" in report
    assert "test accuracy" not in report

    third = start([*args, "--retrain", f"--sweep_dir={c}"], tmp_path / "c3.log")
    output = finish(third)
    assert third.returncode == 0, output[-2000:]
    assert f"resuming from {c}/winner/ckpt" in output
    assert "test accuracy" in pathlib.Path(c, "results.md").read_text()


@pytest.mark.e2e
def test_stopped_or_killed_sweeps_resume_and_end_as_an_uninterrupted_one(tmp_path):
    """SIGKILL twice (each time in a new pid namespace where unshare works), or
    SIGINT then SIGTERM: each rerun resumes, and both end as a straight run.

    In a new pid namespace the sweep is pid 1: the rerun in another namespace
    is pid 1 too, the same pid as the dead owner, and outside pid 1 is init,
    alive. Both must take the dead owner's trials over.
    """
    a, b, c = (str(tmp_path / name) for name in "abc")
    inside = ["unshare", "--pid", "--fork", "--kill-child"] if _unshare_works() else []
    straight = start([*ARGS, f"--sweep_dir={a}"], tmp_path / "a.log")
    steps = []
    for i in range(2):  # killed (inside a namespace), then again (inside another)
        killed = start([*ARGS, f"--sweep_dir={b}"], tmp_path / f"b{i}.log", inside)
        wait_for(lambda: (latest_step(b) or 0) > max(steps, default=0), killed,
                 "checkpoint past the last one")  # fmt: skip
        killed.send_signal(signal.SIGKILL)  # (unshare, whose child dies with it)
        output = finish(killed)
        steps.append(latest_step(b))
        assert 0 < steps[-1] < STEPS  # interrupted mid-run
        assert not os.path.exists(os.path.join(b, "results.csv"))
        if i:
            assert "queued again the configurations of an interrupted run" in output
            assert re.search(rf"resuming from \S+ at step {steps[0]}\b", output)
    rerun = start([*ARGS, f"--sweep_dir={b}"], tmp_path / "b2.log")
    output = finish(rerun)
    assert rerun.returncode == 0, output[-2000:]
    assert "queued again the configurations of an interrupted run" in output
    resumed = re.findall(r"resuming from (\S+) at step (\d+)", output)
    assert len(resumed) == 1 and int(resumed[0][1]) == steps[1], output[-2000:]
    _stop_with_sigint_then_sigterm(tmp_path, c)
    assert finish(straight).count("population small-") == 1
    assert straight.returncode == 0
    # One population directory, the interrupted one: named by what it trains,
    # the same in both sweep directories.
    names = [populations(d) for d in (a, b)]
    assert names[0] == names[1] and len(names[0]) == 1 == len(populations(c))
    assert os.path.dirname(os.path.dirname(resumed[0][0])) == os.path.join(
        b, "populations", names[0][0]
    )
    assert len(results(a)) == 2 and all(r["status"] == "ok" for r in results(a))
    # A header and a row per member per evaluation, steps 0 to STEPS.
    assert history(a).count("\n") == 1 + 2 * (STEPS // 50 + 1)
    # The stops and their resumes change nothing: the same scores and evaluations.
    assert_ended_alike(b, a)
    assert_ended_alike(c, a)


def test_a_sweep_is_compared_by_meaning_not_spelling(tmp_path):
    import dataclasses

    from lowtf import sweep
    from lowtf.sweep import study as study_lib

    base = sweep.SweepConfig(l2=(0.0, 1e-4), dropout=(0.2, 0.0), data_path=None)
    storage = "sqlite:///" + str(tmp_path / "study.db")
    study_lib.open_study(base, storage)
    # Lists in another order, --xla spelled out: the same sweep, resumed.
    same = dataclasses.replace(base, l2=(1e-4, 0.0), dropout=(0.0, 0.2), xla=True)
    study_lib.open_study(same, storage)
    with pytest.raises(ValueError, match="holds another sweep"):
        study_lib.open_study(dataclasses.replace(base, l2=(0.0, 1e-3)), storage)
    relative = study_lib.meaning({"data_path": "data.csv"})
    assert relative["data_path"] == os.path.join(os.getcwd(), "data.csv")
