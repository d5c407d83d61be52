"""Runs deterministic fit()s for the kill-and-resume test of tests/test_trainer.py.

Usage:
  python tests/_resume_worker.py [--pause_on_best_after STEP] MODEL_DIR=OUT_PREFIX ...

Runs one fit per MODEL_DIR=OUT_PREFIX, one after the other, each with fresh
objects, and prints fit's progress lines (flushed). With
--pause_on_best_after it sleeps after the first line, at or past STEP, that
reports a new best, so that the test can SIGKILL the process right after a
best snapshot was written and before the next checkpoint. A run that ends
writes OUT_PREFIX.json (the FitResult) and OUT_PREFIX.npz (the final,
restored weights).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import lowtf  # noqa: E402

CONFIG = lowtf.TrainConfig(
    batch_size=25,
    max_steps=2000,
    eval_every=20,
    steps_per_call=7,
    patience=60,
    # Never on an evaluation step before a kill: the resumed run starts
    # mid-interval, from checkpointed running means.
    checkpoint_every=15,
)


def data():
    """Few noisy examples and a wide net: validation loss turns up early."""
    rs = np.random.RandomState(1)
    x = rs.randn(300, 12).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 1.5 * rs.randn(300) > 0).astype(np.float32)
    return (x[:100], y[:100]), (x[100:], y[100:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="MODEL_DIR=OUT_PREFIX")
    parser.add_argument("--pause_on_best_after", type=int, default=None)
    args = parser.parse_args()
    tf.config.experimental.enable_op_determinism()
    train, validation = data()

    def log(line):
        print(line, flush=True)
        step = line.split("/")[0].removeprefix("step ")
        if (
            args.pause_on_best_after is not None
            and line.startswith("step ")
            and int(step) >= args.pause_on_best_after
            and line.endswith(f" @ {step}")
        ):
            time.sleep(120)  # the test kills us here

    for run in args.runs:
        model_dir, out = run.split("=")
        model = lowtf.mlp((64, 64), dropout=0.2, l2=1e-4, seed=3)
        result = lowtf.fit(
            model,
            tf.keras.optimizers.Adam(3e-3),
            train=train,
            validation=validation,
            model_dir=model_dir,
            config=CONFIG,
            log=log,
        )
        fields = dataclasses.asdict(result)
        del fields["wall_seconds"]
        with open(out + ".json", "w") as f:
            json.dump(fields, f)
        np.savez(out + ".npz", *[v.numpy() for v in model.variables])
    return 0


if __name__ == "__main__":
    sys.exit(main())
