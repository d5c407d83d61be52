#!/usr/bin/env python3
"""Does in-graph augmentation help a net trained on few digits?

Trains the same model on a small subset of the embedded 8x8 digits (300
images by default) twice per seed, without and with augmentation, for the
same number of steps, and reports the held-out accuracy of both: every
digit not in the training subset (1,497 images by default) is held out.
The subset, the initial weights and the batch order depend on the seed and
are shared by the paired runs, so the difference isolates the augmentation.

    python examples/augment_digits.py --seeds=0,1,2 --augment=translate:1,rotate:10

Pixels are scaled to [0, 1] (raw counts / 16); the digits stay flat rows of
64 and the pipeline reshapes them to 8x8x1 images, augments and flattens
them back, so the same pipeline serves the CNN and the MLP.
"""

from __future__ import annotations

import gzip
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags

import lowtf

_DATA = flags.DEFINE_string(
    "data",
    "/work/shared/data/digits.csv.gz",
    "The digits CSV (64 pixels, then the label).",
)
_MODEL = flags.DEFINE_enum("model", "cnn", ["cnn", "mlp"], "cnn, or the 'medium' MLP.")
_AUGMENT = flags.DEFINE_string("augment", "translate:1,rotate:10", "Augmentation spec.")
_TRAIN_SIZE = flags.DEFINE_integer(
    "train_size", 300, "Training images.", lower_bound=10
)
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per run.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 50, "Batch size.", lower_bound=1)
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0)
_DROPOUT = flags.DEFINE_float("dropout", 0.0, "Dropout rate of the dense layers.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (subset, init, batches).")


def load_digits(path):
    """Pixels scaled to [0, 1] as float32 ``[n, 64]`` and labels ``[n]``."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return (table[:, :64] / 16.0).astype(np.float32), table[:, 64].astype(np.int32)


def run_once(x, y, seed, augment_spec):
    """Trains one model; returns held-out accuracy and seconds taken."""
    order = np.random.default_rng(seed).permutation(len(y))
    train, held_out = order[: _TRAIN_SIZE.value], order[_TRAIN_SIZE.value :]
    if _MODEL.value == "cnn":
        model = lowtf.cnn("digits", num_classes=10, dropout=_DROPOUT.value, seed=seed)
    else:
        model = lowtf.mlp("medium", num_classes=10, dropout=_DROPOUT.value, seed=seed)
    pipeline = lowtf.augment.parse(
        augment_spec, image_shape=(8, 8, 1), value_range=(0, 1)
    )
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(_LR.value),
        data=lowtf.InMemoryBatches(x[train], y[train], _BATCH.value, seed=seed),
        augment=pipeline if pipeline.ops else None,
        options=lowtf.StepOptions(seed=seed),
    )
    start = time.perf_counter()
    metrics = lowtf.train.step.as_numpy(step.run(_STEPS.value))
    seconds = time.perf_counter() - start
    evaluate = lowtf.Evaluator(model)
    return evaluate(x[held_out], y[held_out])["accuracy"], metrics["accuracy"], seconds


def main(argv):
    del argv
    # Every run builds a new step, so TensorFlow's retracing warning is expected.
    tf.get_logger().setLevel("ERROR")
    x, y = load_digits(_DATA.value)
    seeds = [int(s) for s in _SEEDS.value]
    results = {"none": [], _AUGMENT.value: []}
    for seed in seeds:
        for spec, accuracies in results.items():
            held_out, train_acc, seconds = run_once(
                x, y, seed, "" if spec == "none" else spec
            )
            accuracies.append(held_out)
            print(
                f"seed {seed}  augment={spec:<28} held-out accuracy {held_out:.4f}  "
                f"(training batches, mean over the run {train_acc:.3f}; {seconds:.0f} s)",
                flush=True,
            )
    base, aug = (np.array(v) for v in results.values())
    print(
        f"\n{_MODEL.value}, {_TRAIN_SIZE.value} training images, {len(y) - _TRAIN_SIZE.value} "
        f"held out, {_STEPS.value} steps of {_BATCH.value}, seeds {seeds}:"
    )
    print(
        f"  no augmentation      {base.mean():.4f} ± {base.std(ddof=1) if len(seeds) > 1 else 0:.4f}"
    )
    print(
        f"  {_AUGMENT.value:<20} {aug.mean():.4f} ± {aug.std(ddof=1) if len(seeds) > 1 else 0:.4f}"
    )
    diff = aug - base
    print(
        f"  gain (paired)        {diff.mean():+.4f} ± {diff.std(ddof=1) if len(seeds) > 1 else 0:.4f}"
        f"  (min {diff.min():+.4f}, max {diff.max():+.4f})"
    )


if __name__ == "__main__":
    app.run(main)
