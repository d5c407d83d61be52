"""What a sweep's bookkeeping costs per configuration: claiming and recording.

Claims every point of an N-point grid in one SQLite study (as ``bin/sweep``
does, in a fresh temporary directory), then records a result for each (the
user attrs ``run_sweep`` stores and the score), and prints, per N, the
seconds of each and their cost per configuration. No training: the numbers
are the study's alone. Claiming N configurations should cost about N
times one claim.

``--kill_while_claiming``: times ``bin/sweep`` on a 60-point grid (tiny MLP,
synthetic data) fresh, then killed (SIGKILL) while it claims and run again:
the rerun should cost no more than the fresh run.

    python -m lowtf.bench.sweep_claims --points=60,240,1000
    python -m lowtf.bench.sweep_claims --kill_while_claiming --repeats=3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import optuna

from lowtf.sweep import study as study_lib
from lowtf.sweep.config import SweepConfig
from lowtf.train import rundir


def measure(points: int, directory: str) -> dict:
    """Seconds to claim and to record every point of a ``points``-point grid."""
    config = SweepConfig(
        architectures=("tiny",),
        l2=tuple(i * 1e-5 for i in range(points)),
        sweep_dir=directory,
        retrain=False,
    )
    study = study_lib.open_study(config, config.resolved_storage)
    started = time.perf_counter()
    claimed = study_lib.claim(study, config, config.batch)
    claiming = time.perf_counter() - started
    assert len(claimed) == points, len(claimed)
    curve = {"step": list(range(0, 1001, 100)), "val": [0.5] * 11, "train": [0.4] * 11}
    started = time.perf_counter()
    for trial, _ in claimed:
        attrs = {
            "status": "ok",
            "scores": [0.5],
            "best_steps": [500],
            "gap": -0.1,
            "wall_seconds": 1.0,
            "curve": curve,
        }
        study_lib.record(study, trial, attrs, 0.5)
    recording = time.perf_counter() - started
    assert len(study_lib.ledger(study)["finished"]) == points
    return {
        "points": points,
        "claim_s": claiming,
        "record_s": recording,
        "rerun_claim_s": _claim_after_a_kill(config, os.path.join(directory, "killed")),
    }


def _claim_after_a_kill(config: SweepConfig, directory: str) -> float:
    """Seconds a rerun takes to free and claim the grid after a kill half way through claiming.

    The killed process's claims are made as it makes them, owned by a
    process that is gone (this pid, another start time: as after a restart).
    """
    os.makedirs(directory)
    config = dataclasses.replace(config, sweep_dir=directory)
    study = study_lib.open_study(config, config.resolved_storage)
    dead = {**rundir.this_process(), "start": 1}
    dists = study_lib.distributions(config)
    for point in config.points()[: len(config.points()) // 2]:
        template = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=point.params(),
            distributions=dists,
            user_attrs={"owner": dead, "key": point.key},
        )
        study.storage.create_new_trial(study.study_id, template)
    started = time.perf_counter()
    freed = study_lib.requeue_interrupted(study, config)
    claimed = study_lib.claim(study, config, config.batch)
    assert freed == len(config.points()) // 2 and len(claimed) == len(config.points())
    return time.perf_counter() - started


# 6 x 10 = 60 configurations of one architecture: one population.
SWEEP = [
    "--dataset=synthetic", "--train_size=400", "--validation_size=200",
    "--model=tiny", "--l2=0,1e-5,1e-4,3e-4,1e-3,3e-3",
    "--dropout=0,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45",
    "--batch_size=32", "--max_steps=200", "--eval_every=50", "--noxla", "--noretrain",
]  # fmt: skip
BIN = os.path.join(os.path.dirname(__file__), "..", "..", "bin", "sweep")


def _cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def kill_while_claiming(directory: str) -> dict:
    """Wall and CPU seconds of a fresh sweep, and of a rerun after a kill while claiming.

    CPU seconds as well: on a shared machine the wall time of one run can
    double with the load of others.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = lambda d: [sys.executable, BIN, *SWEEP, f"--sweep_dir={d}"]
    started, cpu = time.monotonic(), _cpu()
    subprocess.run(run(f"{directory}/fresh"), env=env, check=True, capture_output=True)
    fresh, fresh_cpu = time.monotonic() - started, _cpu() - cpu
    killed = subprocess.Popen(run(f"{directory}/killed"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    database, claimed = f"{directory}/killed/study.db", 0
    while not 30 <= claimed < 60:  # half the grid claimed, half not
        assert killed.poll() is None, "the sweep ended before it was killed"
        try:
            with sqlite3.connect(database, timeout=0.1) as c:
                claimed = c.execute("SELECT count(*) FROM trials").fetchone()[0]
        except sqlite3.Error:
            pass  # not made yet
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    started, cpu = time.monotonic(), _cpu()
    subprocess.run(run(f"{directory}/killed"), env=env, check=True, capture_output=True)
    return {
        "fresh_s": fresh,
        "fresh_cpu_s": fresh_cpu,
        "claimed": claimed,
        "rerun_s": time.monotonic() - started,
        "rerun_cpu_s": _cpu() - cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="30,60,120,240,500,1000")
    parser.add_argument("--kill_while_claiming", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.kill_while_claiming:
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as directory:
                r = kill_while_claiming(directory)
            print(
                f"fresh {r['fresh_s']:.1f} s ({r['fresh_cpu_s']:.1f} s CPU); killed "
                f"after {r['claimed']} of 60 claims, rerun {r['rerun_s']:.1f} s "
                f"({r['rerun_cpu_s']:.1f} s CPU): {r['rerun_s'] / r['fresh_s']:.2f}x "
                f"wall, {r['rerun_cpu_s'] / r['fresh_cpu_s']:.2f}x CPU",
                flush=True,
            )
        return
    print(
        "| points | claim s | ms per claim | record s | ms per record | "
        "free + claim s after a kill half way |"
    )
    print("|---|---|---|---|---|---|")
    for n in (int(p) for p in args.points.split(",")):
        with tempfile.TemporaryDirectory() as directory:
            r = measure(n, directory)
        print(
            f"| {n} | {r['claim_s']:.2f} | {1e3 * r['claim_s'] / n:.1f} | "
            f"{r['record_s']:.2f} | {1e3 * r['record_s'] / n:.1f} | "
            f"{r['rerun_claim_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
