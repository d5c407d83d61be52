"""What a sweep's bookkeeping costs per configuration: claiming and recording.

Claims every point of an N-point grid in one SQLite study (as ``bin/sweep``
does, in a fresh temporary directory), then records a result for each (the
user attrs ``run_sweep`` stores and the score), and prints, per N, the
seconds of each and their cost per configuration. No training: the numbers
are the study's alone. Claiming N configurations should cost about N
times one claim.

    python -m lowtf.bench.sweep_claims --points=60,240,1000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from lowtf.sweep import study as study_lib
from lowtf.sweep.config import SweepConfig


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
    return {"points": points, "claim_s": claiming, "record_s": recording}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="30,60,120,240,500,1000")
    args = parser.parse_args()
    print("| points | claim s | ms per claim | record s | ms per record |")
    print("|---|---|---|---|---|")
    for n in (int(p) for p in args.points.split(",")):
        with tempfile.TemporaryDirectory() as directory:
            r = measure(n, directory)
        print(
            f"| {n} | {r['claim_s']:.2f} | {1e3 * r['claim_s'] / n:.1f} | "
            f"{r['record_s']:.2f} | {1e3 * r['record_s'] / n:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
