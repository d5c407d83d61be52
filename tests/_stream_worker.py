"""Runs fit()s on TFRecord shards for the kill-and-resume test of tests/test_streams.py.

Usage:
  python tests/_stream_worker.py SHARDS_DIR [--pause_after STEP] MODEL_DIR=OUT_PREFIX ...

Writes the shards into SHARDS_DIR if they are missing, then runs one fit per
MODEL_DIR=OUT_PREFIX, one after the other, each with fresh objects, printing
fit's lines (flushed). With --pause_after it sleeps after the first
progress line at or past STEP, so that the test can SIGKILL it there. A run
that ends writes OUT_PREFIX.json (the FitResult) and OUT_PREFIX.npz (the
final, restored weights).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# tests/_fixtures.py: this script's folder comes first on sys.path.
import _fixtures
import numpy as np
import tensorflow as tf

import lowtf

CONFIG = lowtf.TrainConfig(
    max_steps=80,
    eval_every=20,
    steps_per_call=7,
    patience=1000,
    # Off the evaluation grid: the resumed run starts mid-interval.
    checkpoint_every=15,
)


def data():
    """Noisy rows: 300 to stream from shards, 200 held out."""
    return _fixtures.noisy_split(300, 200, 12, seed=1, weights=(1.0, -1.0), noise=1.5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shards")
    parser.add_argument("runs", nargs="+", help="MODEL_DIR=OUT_PREFIX")
    parser.add_argument("--pause_after", type=int, default=None)
    args = parser.parse_args()
    (x, y), validation = data()
    if not tf.io.gfile.glob(os.path.join(args.shards, "train-*")):
        lowtf.data.write_tfrecords(x, y, args.shards, "train", shards=3)

    def log(line):
        print(line, flush=True)
        at = args.pause_after
        if at is not None and line.startswith("step "):
            step = int(line.split("/")[0].removeprefix("step "))
            if step >= at:
                time.sleep(120)  # the test kills us here

    for run in args.runs:
        model_dir, out = run.split("=")
        model = lowtf.mlp((32, 32), dropout=0.2, seed=3)
        stream = lowtf.data.tfrecord_stream(
            os.path.join(args.shards, "train-*"),
            batch_size=25,
            feature_shape=(12,),
            shuffle_buffer=64,
            seed=5,
        )
        result = lowtf.fit(
            model,
            tf.keras.optimizers.Adam(3e-3),
            train=stream,
            validation=validation,
            model_dir=model_dir,
            config=CONFIG,
            step_options=lowtf.StepOptions(jit_compile=False),
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
