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

# tests/_fixtures.py: this script's folder comes first on sys.path.
import _fixtures  # noqa: E402
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
    return _fixtures.noisy_split(100, 200, 12, seed=1, weights=(1.0, -1.0), noise=1.5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="MODEL_DIR=OUT_PREFIX")
    parser.add_argument("--pause_on_best_after", type=int, default=None)
    args = parser.parse_args()
    tf.config.experimental.enable_op_determinism()
    train, validation = data()

    def log(line):
        print(line, flush=True)
        step = _fixtures.new_best_at(line)
        after = args.pause_on_best_after
        if after is not None and step is not None and step >= after:
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
