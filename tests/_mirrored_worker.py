"""MirroredStrategy over two logical CPU devices vs one device; prints JSON.

Run by tests/test_distribute.py in a subprocess: logical devices must be
configured before TensorFlow initializes its devices, which the test
process has done long before. Every check trains tiny models for a few
steps and reports numbers; the test asserts on them.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import numpy as np  # noqa: E402

import lowtf  # noqa: E402
from lowtf import distribute  # noqa: E402

# One strategy for the whole process: two MirroredStrategy objects over the
# same devices reuse collective instance keys, and the runtime then mixes up
# their all-reduces of different shapes.
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
RS = np.random.RandomState(0)
X = RS.randn(96, 8).astype(np.float32)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float32)


def _max_diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


def _train(strategy, *, jit, feed, steps=9, batchnorm=False):
    """L2 + max-norm with a large SGD rate, so that the cap binds."""
    with strategy.scope():
        model = lowtf.mlp((8,), l2=1e-2, maxnorm=0.6, batchnorm=batchnorm, seed=1)
        step = lowtf.TrainStep(
            model,
            tf.keras.optimizers.SGD(0.5),
            data=lowtf.InMemoryBatches(X, Y, 16, seed=3),
            options=lowtf.StepOptions(jit_compile=jit),
        )
    if feed:  # batches fed from Python, the same for both runs
        for i in range(steps):
            rows = slice((i * 16) % 96, (i * 16) % 96 + 16)
            metrics = step(X[rows], Y[rows])
    else:  # batches drawn in the graph, across an epoch boundary (6 per epoch)
        step.run(steps - 4)
        metrics = step.run(4)
    return model, step, lowtf.train.step.as_numpy(metrics)


def check_same_weights():
    out = {}
    for name, jit, feed in [("graph", False, False), ("xla", True, True)]:
        one, _, m_one = _train(tf.distribute.get_strategy(), jit=jit, feed=feed)
        two, step_two, m_two = _train(MIRRORED, jit=jit, feed=feed)
        norms = lowtf.nn.unit_norms(one.layers[0].kernel).numpy()
        out[name] = {
            "weight_diff": _max_diff(_weights(one), _weights(two)),
            "metric_diff": max(abs(m_one[k] - m_two[k]) for k in m_one),
            "regularization_loss": [
                m_one["regularization_loss"],
                m_two["regularization_loss"],
            ],
            "units_at_cap": int(np.sum(np.abs(norms - 0.6) < 1e-5)),
            "max_norm": float(norms.max()),
            "replica_norm_diff": _replica_diff(two.layers[0].kernel),
            "trace_count": step_two.trace_count,
            "mirrored_type": type(two.layers[0].kernel).__name__,
            "data_type": type(step_two.data.cursor).__name__,
        }
    # XLA-compiled replicas vs graph replicas, both under MirroredStrategy and
    # both shuffling in the graph: the same numbers.
    a, _, _ = _train(MIRRORED, jit=True, feed=False)
    b, _, _ = _train(MIRRORED, jit=False, feed=False)
    out["xla_vs_graph_mirrored"] = _max_diff(_weights(a), _weights(b))
    return out


def _replica_diff(var):
    """Largest difference between the copies of a mirrored variable."""
    copies = [c.numpy() for c in var.values]
    return max(float(np.abs(c - copies[0]).max()) for c in copies)


class _Recorder(lowtf.Layer):
    """Keeps the last training input of each replica (an ON_READ variable)."""

    def build(self, input_shape):
        self.seen = self.add_weight(
            "seen",
            tf.zeros([4, input_shape[-1]]),
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )

    def call(self, x, training):
        if training:
            self.seen.assign(x)
        return x


def check_dropout_masks():
    strategy = MIRRORED
    with strategy.scope():
        recorder = _Recorder()
        model = lowtf.Sequential(
            [lowtf.Dropout(0.5, seed=7), recorder, lowtf.Dense(1, seed=2)]
        )
        step = lowtf.TrainStep(model, tf.keras.optimizers.SGD(0.1))
    # Every replica gets the same rows (all ones): only the key can differ.
    step(np.ones([8, 64], np.float32), np.ones([8], np.float32))
    masks = [c.numpy() != 0 for c in strategy.experimental_local_results(recorder.seen)]
    return {
        "kept": [float(m.mean()) for m in masks],
        "differ": float(np.mean(masks[0] != masks[1])),
    }


def check_batchnorm():
    """One step: every replica's moving mean is the one-device moving mean."""
    one, _, _ = _train(
        tf.distribute.get_strategy(), jit=True, feed=True, steps=1, batchnorm=True
    )
    strategy = MIRRORED
    two, _, _ = _train(strategy, jit=True, feed=True, steps=1, batchnorm=True)
    bn_one, bn_two = one.layers[1], two.layers[1]
    copies = [
        c.numpy() for c in strategy.experimental_local_results(bn_two.moving_mean)
    ]
    # A checkpoint of the mirrored model holds the replicas' mean.
    path = tf.train.Checkpoint(model=two).write("/tmp/_lowtf_bn_" + str(os.getpid()))
    fresh = lowtf.mlp((8,), l2=1e-2, maxnorm=0.6, batchnorm=True, seed=1)
    fresh(X[:1])
    tf.train.Checkpoint(model=fresh).read(path).assert_consumed()
    return {
        "mean_vs_one_device": float(
            np.abs(bn_two.moving_mean.numpy() - bn_one.moving_mean.numpy()).max()
        ),
        "copies_diff": float(np.abs(copies[0] - copies[1]).max()),
        "restored_vs_mean": float(
            np.abs(fresh.layers[1].moving_mean.numpy() - np.mean(copies, 0)).max()
        ),
    }


def check_evaluator():
    x = RS.randn(1001, 8).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    model = lowtf.mlp((8,), seed=1)
    model(x[:1])
    one = lowtf.Evaluator(model, batch_size=300)(x, y)
    strategy = MIRRORED
    with strategy.scope():
        mirrored = lowtf.mlp((8,), seed=1)
        mirrored(x[:1])
        two = lowtf.Evaluator(mirrored, batch_size=300)(x, y)
    return {"one": one, "two": two}


def check_errors():
    strategy = MIRRORED
    errors = {}
    outside = tf.keras.optimizers.SGD(0.1)
    with strategy.scope():
        model = lowtf.mlp((4,), seed=1)
        try:
            lowtf.TrainStep(model, outside)
        except ValueError as e:
            errors["optimizer"] = str(e)
        step = lowtf.TrainStep(model, tf.keras.optimizers.SGD(0.1))
    try:
        step(X[:15], Y[:15])
    except ValueError as e:
        errors["batch"] = str(e)
    errors["describe"] = distribute.describe(strategy)
    errors["chief"] = distribute.is_chief(strategy)
    return errors


if __name__ == "__main__":
    checks = {
        "same_weights": check_same_weights,
        "dropout": check_dropout_masks,
        "batchnorm": check_batchnorm,
        "evaluator": check_evaluator,
        "errors": check_errors,
    }
    names = sys.argv[1:] or list(checks)
    print("RESULT " + json.dumps({name: checks[name]() for name in names}))
