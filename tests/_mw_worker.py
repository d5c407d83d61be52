"""One worker of a two-process MultiWorkerMirroredStrategy run of lowtf.fit.

Run by tests/test_distribute.py, twice, with TF_CONFIG naming this worker:

    python tests/_mw_worker.py OUT_DIR

In one strategy (a process may make only one), it runs ``fit`` once to
step 80 on the rows in memory (``straight``), then three times to step 40
on the TFRecord shards the test wrote to ``OUT_DIR/shards`` (4 files of
the same rows), each worker reading its own two
(:func:`lowtf.data.tfrecord_stream` per worker): ``shards``, stopped at
step 20 by a SIGTERM that only worker 1 gets; ``shards`` again, which must
pick up from the chief's step-20 checkpoint; and ``shards_straight``, in
one go. After each run
it saves the model's weights to ``OUT_DIR/<task index>-<run>-<session>.npz``
and prints one ``RESULT`` JSON line with what ``fit`` returned.
"""

import functools
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# tests/_fixtures.py: this script's folder comes first on sys.path.
import _fixtures  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import lowtf  # noqa: E402
from lowtf import distribute  # noqa: E402


def data():
    """A small noisy problem that a wide net overfits within a few steps."""
    return _fixtures.noisy_split(64, 96, 8, seed=0, weights=(1.0,), noise=0.6)


def _sigterm_at(step, lines, line):
    """Worker 1 alone gets SIGTERM after its evaluation at ``step``."""
    lines.append(line)
    if line.startswith(f"step {step}/"):
        os.kill(os.getpid(), signal.SIGTERM)


# (run, session, max_steps, the step worker 1 gets SIGTERM at, or None)
RUNS = [
    ("straight", 0, 80, None),
    ("shards", 0, 40, 20),
    ("shards", 1, 40, None),
    ("shards_straight", 0, 40, None),
]


def main(out_dir):
    # Made first, before any other TensorFlow op, as the strategy requires.
    strategy = distribute.make_strategy("multi_worker", timeout_seconds=90)
    tf.config.experimental.enable_op_determinism()
    _, index = distribute.task(strategy)
    train, validation = data()
    results = {
        "describe": distribute.describe(strategy),
        "chief": distribute.is_chief(strategy),
    }
    for run, session, max_steps, stop_at in RUNS:
        lines = []
        log = lines.append
        if stop_at is not None and index == 1:
            log = functools.partial(_sigterm_at, stop_at, lines)
        with strategy.scope():
            model = lowtf.mlp(
                (32,), l2=1e-4, maxnorm=2.0, dropout=0.1, batchnorm=True, seed=1
            )
            optimizer = tf.keras.optimizers.Adam(0.002)
            stream = None
            if run.startswith("shards"):
                # Global batch 16: each worker's one replica reads 8 of its files'.
                stream = lowtf.data.tfrecord_stream(
                    os.path.join(out_dir, "shards", "train-*"),
                    batch_size=16,
                    feature_shape=(8,),
                    shuffle_buffer=32,
                    seed=0,
                )
            result = lowtf.fit(
                model,
                optimizer,
                train=stream or train,
                validation=validation,
                model_dir=os.path.join(out_dir, "model_" + run),
                config=lowtf.TrainConfig(
                    batch_size=16,
                    max_steps=max_steps,
                    eval_every=10,
                    steps_per_call=10,
                    patience=1000,
                    checkpoint_every=20,
                ),
                log=log,
            )
        np.savez(
            os.path.join(out_dir, f"{index}-{run}-{session}.npz"),
            *[v.numpy() for v in model.trainable_variables],
            moving_mean=model.layers[1].moving_mean.numpy(),
        )
        results[f"{run}-{session}"] = {
            "best_step": result.best_step,
            "best_value": result.best_value,
            "last_step": result.last_step,
            "stop_reason": result.stop_reason,
            "log": lines,
        }
        if stream is not None:
            results[f"{run}-{session}"]["data"] = {
                "identity": stream.identity,
                "per_worker": stream.per_worker,
                "batches_read": int(stream.position.numpy()),
            }
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
