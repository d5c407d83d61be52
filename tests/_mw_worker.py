"""One worker of a two-process MultiWorkerMirroredStrategy run of lowtf.fit.

Run by tests/test_distribute.py, twice, with TF_CONFIG naming this worker:

    python tests/_mw_worker.py OUT_DIR

In one strategy (a process may make only one), it runs ``fit`` three
times to step 80: ``resumed``, stopped at step 40 by a SIGTERM that only
worker 1 gets; ``resumed`` again, which must pick up from the chief's
step-40 checkpoint; and ``straight``, in one go. After each run it saves the model's weights to
``OUT_DIR/<task index>-<run>-<session>.npz`` and prints one ``RESULT`` JSON
line with what ``fit`` returned.
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


def _sigterm_at_step_40(lines, line):
    """Worker 1 alone gets SIGTERM after its step-40 evaluation."""
    lines.append(line)
    if line.startswith("step 40/"):
        os.kill(os.getpid(), signal.SIGTERM)


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
    for run, session in [("resumed", 0), ("resumed", 1), ("straight", 0)]:
        lines = []
        log = lines.append
        if run == "resumed" and session == 0 and index == 1:
            log = functools.partial(_sigterm_at_step_40, lines)
        with strategy.scope():
            model = lowtf.mlp(
                (32,), l2=1e-4, maxnorm=2.0, dropout=0.1, batchnorm=True, seed=1
            )
            optimizer = tf.keras.optimizers.Adam(0.002)
            result = lowtf.fit(
                model,
                optimizer,
                train=train,
                validation=validation,
                model_dir=os.path.join(out_dir, "model_" + run),
                config=lowtf.TrainConfig(
                    batch_size=16,
                    max_steps=80,
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
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
