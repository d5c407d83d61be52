"""Conformance: the same checks for every layer and model (STYLE.md habit 10).

One registry of (factory, input shape) drives: eager vs ``tf.function`` vs
``jit_compile=True`` agreement at inference, eager vs ``tf.function`` in
training under a step key, and a checkpoint round trip into a fresh module.
"""

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import random

REGISTRY = {
    "dense": (lambda: lowtf.Dense(5, activation="elu", seed=1), (4, 3)),
    "dense_no_bias_regularized_capped": (
        lambda: lowtf.Dense(
            4,
            use_bias=False,
            kernel_regularizer=lowtf.l2(1e-3),
            kernel_constraint=lowtf.max_norm(1.0),
            seed=2,
        ),
        (4, 6),
    ),
    "dropout": (lambda: lowtf.Dropout(0.3, seed=3), (4, 6)),
    "batchnorm": (lambda: lowtf.BatchNorm(momentum=0.9), (8, 5)),
    "flatten": (lambda: lowtf.Flatten(), (4, 2, 3)),
    "sequential": (
        lambda: lowtf.Sequential(
            [
                lowtf.Flatten(),
                lowtf.Dense(6, seed=4),
                lowtf.BatchNorm(),
                lowtf.Lambda(tf.nn.relu),
                lowtf.Dropout(0.5, seed=5),
                lowtf.Dense(2, seed=6),
            ]
        ),
        (4, 3, 3),
    ),
    **{
        f"mlp_{preset}": (lambda preset=preset: lowtf.mlp(preset, seed=7), (4, 28))
        for preset in lowtf.models.PRESETS
    },
    "conv2d": (
        lambda: lowtf.Conv2D(
            3, 3, activation="relu", kernel_constraint=lowtf.max_norm(1.0)
        ),
        (2, 6, 6, 2),
    ),
    "pools_and_reshape": (
        lambda: lowtf.Sequential(
            [
                lowtf.Reshape((4, 4, 2)),
                lowtf.MaxPool2D(2),
                lowtf.AvgPool2D(2, padding="SAME"),
            ]
        ),
        (3, 32),
    ),
    "cnn_digits": (
        lambda: lowtf.cnn("digits", batchnorm=True, dropout=0.2, seed=8),
        (2, 64),
    ),
    "mlp_all_switches": (
        lambda: lowtf.mlp(
            "small",
            num_classes=4,
            dropout=0.2,
            batchnorm=True,
            l1=1e-5,
            l2=1e-4,
            maxnorm=2.0,
        ),
        (4, 9),
    ),
}

CASES = pytest.mark.parametrize("name", sorted(REGISTRY))


def _input(shape, seed=0):
    return tf.random.stateless_normal(shape, [seed, 1])


def _built(name):
    factory, shape = REGISTRY[name]
    module = factory()
    module(_input(shape), training=False)
    return module, shape


def _perturb(module, seed):
    """Gives every variable distinct non-default values (variances stay > 0)."""
    for i, var in enumerate(module.variables):
        noise = tf.random.stateless_normal(var.shape, [seed, i], dtype=var.dtype)
        if "moving_variance" in var.name:
            noise = tf.abs(noise) + 0.5
        # Kernels scaled by fan-in, so activations stay O(1) through 4 layers.
        fan_in = np.prod(var.shape[:-1]) if var.shape.rank > 1 else 4
        var.assign(noise / np.sqrt(fan_in))


@CASES
def test_eager_function_and_xla_agree_at_inference(name):
    module, shape = _built(name)
    _perturb(module, seed=1)
    x = _input(shape, seed=2)
    eager = module(x, training=False).numpy()
    graph = tf.function(lambda t: module(t, training=False))(x).numpy()
    xla = tf.function(lambda t: module(t, training=False), jit_compile=True)(x).numpy()
    assert eager.shape[0] == shape[0] and np.isfinite(eager).all()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xla, eager, rtol=1e-5, atol=1e-6)


@CASES
def test_eager_and_function_agree_in_training_under_a_step_key(name):
    module, shape = _built(name)
    _perturb(module, seed=3)
    x = _input(shape, seed=4)

    def train(t):
        with random.step_key(random.make_key(0, 5), random.GRAPH_ALG):
            return module(t, training=True)

    eager = train(x).numpy()
    graph = tf.function(train)(x).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)


@CASES
def test_checkpoint_round_trip_into_a_fresh_module(name, tmp_path):
    module, shape = _built(name)
    _perturb(module, seed=6)
    x = _input(shape, seed=7)
    saved = [v.numpy() for v in module.variables]
    expected = module(x, training=False).numpy()
    path = tf.train.Checkpoint(module=module).save(str(tmp_path / "ckpt"))

    _perturb(module, seed=8)  # overwrite, then restore in place
    tf.train.Checkpoint(module=module).restore(path).assert_consumed()
    for var, value in zip(module.variables, saved):
        assert np.array_equal(var.numpy(), value)

    fresh, _ = _built(name)
    tf.train.Checkpoint(module=fresh).restore(path).assert_consumed()
    assert len(fresh.variables) == len(saved)
    for var, value in zip(fresh.variables, saved):
        assert np.array_equal(var.numpy(), value)
    assert np.array_equal(fresh(x, training=False).numpy(), expected)
