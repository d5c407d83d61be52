"""Conformance: the same checks for every layer and model (STYLE.md habit 10).

One registry of (factory, input shape), covering every layer of
:mod:`lowtf.nn` and the models of :mod:`lowtf.models`, drives:

* eager vs ``tf.function`` vs ``jit_compile=True``: the same outputs in
  training (under a step key, so dropout is on: lowtf.random draws the same
  masks in every mode) and at inference;
* a checkpoint round trip: save, overwrite, restore in place and into a
  fresh module, ``assert_consumed()``, every value bit for bit;
* a SavedModel round trip: a ``tf.Module`` serving the layer at inference
  through a ``tf.function`` with an input signature, saved, loaded, the same
  outputs.

Stacked layers and models (``members=K``, :func:`lowtf.nn.stack`) take the
same checks, their dropout keyed by each member's step key
(:func:`lowtf.random.member_words`).
"""

import inspect

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
    "conv2d": (
        lambda: lowtf.Conv2D(
            3, 3, activation="relu", kernel_constraint=lowtf.max_norm(1.0), seed=9
        ),
        (2, 6, 6, 2),
    ),
    "conv2d_strided_valid": (
        lambda: lowtf.Conv2D(4, 2, strides=2, padding="VALID", use_bias=False, seed=10),
        (2, 7, 7, 3),
    ),
    "max_pool2d": (lambda: lowtf.MaxPool2D(2), (2, 6, 6, 3)),
    "avg_pool2d_same": (
        lambda: lowtf.AvgPool2D(3, strides=2, padding="SAME"),
        (2, 5, 5, 2),
    ),
    "dropout": (lambda: lowtf.Dropout(0.3, seed=3), (4, 6)),
    "gaussian_noise": (lambda: lowtf.nn.GaussianNoise(0.2, seed=4), (4, 6)),
    "batchnorm": (lambda: lowtf.BatchNorm(momentum=0.9), (8, 5)),
    "batchnorm_images": (lambda: lowtf.BatchNorm(center=False), (2, 3, 3, 4)),
    "flatten": (lambda: lowtf.Flatten(), (4, 2, 3)),
    "reshape": (lambda: lowtf.Reshape((4, 4, 2)), (3, 32)),
    "lambda": (lambda: lowtf.Lambda(tf.nn.softplus), (3, 5)),
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
    "mlp_tiny": (lambda: lowtf.mlp("tiny", seed=7), (4, 28)),
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
    "cnn_digits": (
        lambda: lowtf.cnn(
            "digits", filters=(4,), dense=(16,), batchnorm=True, dropout=0.2, seed=8
        ),
        (4, 64),
    ),
}

MEMBERS = 2


def _stack(make, example_shape):
    """The stack of ``make(k)`` for each member, each built on one example."""
    models = [make(k) for k in range(MEMBERS)]
    for model in models:
        model(tf.zeros([1, *example_shape]))
    return lowtf.nn.stack(models)


REGISTRY.update(
    {
        "stacked_conv2d_strided_valid_capped": (
            lambda: lowtf.Conv2D(
                4,
                2,
                strides=2,
                padding="VALID",
                kernel_constraint=lowtf.MaxNorm((1.0, 0.0)),
                seed=(10, 11),
                members=MEMBERS,
            ),
            (MEMBERS, 2, 7, 7, 3),
        ),
        "stacked_avg_pool2d_same": (
            lambda: lowtf.AvgPool2D(3, strides=2, padding="SAME", members=MEMBERS),
            (MEMBERS, 2, 5, 5, 2),
        ),
        "stacked_mlp_all_switches": (
            lambda: _stack(
                lambda k: lowtf.mlp(
                    "small",
                    num_classes=4,
                    dropout=(0.2, 0.0)[k],  # member 1's mlp has no Dropout
                    batchnorm=True,
                    l1=1e-5,
                    l2=(1e-4, 0.0)[k],
                    maxnorm=(2.0, 0.0)[k],
                    seed=k,
                ),
                (9,),
            ),
            (MEMBERS, 4, 9),
        ),
        "stacked_cnn_digits": (
            lambda: _stack(
                lambda k: lowtf.cnn(
                    "digits",
                    filters=(4,),
                    dense=(16,),
                    batchnorm=True,
                    dropout=(0.2, 0.4)[k],
                    seed=8 + k,
                ),
                (64,),
            ),
            (MEMBERS, 4, 64),
        ),
    }
)

CASES = pytest.mark.parametrize("name", sorted(REGISTRY))


def _member_words(step):
    """Member k's fold-in words at ``step`` (run seed k), as a population's."""
    keys = np.array([[k, step] for k in range(MEMBERS)], np.int64)
    return tf.constant(random.fold_in_words(keys))


def _input(shape, seed=0):
    return tf.random.stateless_normal(shape, [seed, 1])


def _built(name):
    factory, shape = REGISTRY[name]
    module = factory()
    module(_input(shape), training=False)
    return module, shape


def _modules(module):
    return [module, *module.submodules]


def _perturb(module, seed):
    """Gives every variable distinct non-default values (variances stay > 0)."""
    for i, var in enumerate(module.variables):
        noise = tf.random.stateless_normal(var.shape, [seed, i], dtype=var.dtype)
        if "moving_variance" in var.name:
            noise = tf.abs(noise) + 0.5
        # Kernels scaled by fan-in, so activations stay O(1) through 4 layers.
        fan_in = np.prod(var.shape[:-1]) if var.shape.rank > 1 else 4
        var.assign(noise / np.sqrt(fan_in))


def test_the_registry_covers_every_layer_of_lowtf_nn():
    layers = {
        cls
        for cls in vars(lowtf.nn).values()
        if inspect.isclass(cls) and issubclass(cls, lowtf.nn.Layer)
    } - {lowtf.nn.Layer}
    registered = {
        type(m) for factory, _ in REGISTRY.values() for m in _modules(factory())
    }
    assert layers - registered == set()
    assert {"mlp_tiny", "mlp_all_switches", "cnn_digits"} <= set(REGISTRY)


@CASES
@pytest.mark.e2e
def test_eager_function_and_xla_agree_in_training_and_at_inference(name):
    module, shape = _built(name)
    _perturb(module, seed=1)
    x = _input(shape, seed=2)
    initial = [v.numpy() for v in module.variables]

    def both(t, step, words):
        # A step's key, a tensor as in TrainStep: dropout is on, with the
        # masks of that global step (a stacked model's: its members' words).
        with random.step_key(random.make_key(0, step)), random.member_words(words):
            training = module(t, training=True)
        return training, module(t, training=False)

    outputs = {}
    for mode, fn in {
        "eager": both,
        "graph": tf.function(both),
        "xla": tf.function(both, jit_compile=True),
    }.items():
        # Training moves batch-norm statistics: every mode starts from the same.
        for var, value in zip(module.variables, initial):
            var.assign(value)
        step = tf.constant(5, tf.int64)
        outputs[mode] = [t.numpy() for t in fn(x, step, _member_words(5))]
    training, inference = outputs["eager"]
    assert inference.shape[0] == shape[0] and np.isfinite(training).all()
    # Only dropout and noise draw: with them, another step's key gives another output.
    other_step = both(x, tf.constant(6, tf.int64), _member_words(6))[0].numpy()
    drawing = (lowtf.Dropout, lowtf.nn.GaussianNoise)
    if any(isinstance(m, drawing) for m in _modules(module)):
        assert not np.allclose(other_step, training)
    else:
        np.testing.assert_array_equal(other_step, training)
    for mode in ("graph", "xla"):
        for got, want in zip(outputs[mode], outputs["eager"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@CASES
def test_checkpoint_round_trip_into_a_fresh_module(name, tmp_path):
    module, shape = _built(name)
    _perturb(module, seed=6)
    x = _input(shape, seed=7)
    saved = [v.numpy() for v in module.variables]
    expected = module(x, training=False).numpy()
    path = tf.train.Checkpoint(module=module).save(str(tmp_path / "ckpt"))

    _perturb(module, seed=8)  # overwrite, then restore in place
    if saved:
        assert not np.array_equal(module.variables[0].numpy(), saved[0])
    tf.train.Checkpoint(module=module).restore(path).assert_consumed()
    for var, value in zip(module.variables, saved):
        assert np.array_equal(var.numpy(), value)

    fresh, _ = _built(name)
    tf.train.Checkpoint(module=fresh).restore(path).assert_consumed()
    assert len(fresh.variables) == len(saved)
    for var, value in zip(fresh.variables, saved):
        assert np.array_equal(var.numpy(), value)
    assert np.array_equal(fresh(x, training=False).numpy(), expected)


class _Served(tf.Module):
    """A layer served at inference, any batch size."""

    def __init__(self, layer, example_shape, lead=()):
        super().__init__()
        self.layer = layer
        self.weights = list(layer.variables)
        # A stacked layer: any batch size, its K members.
        spec = tf.TensorSpec([*lead, None, *example_shape], tf.float32)
        self.serve = tf.function(
            lambda x: self.layer(x, training=False), input_signature=[spec]
        )


@CASES
def test_saved_model_round_trip(name, tmp_path):
    module, shape = _built(name)
    _perturb(module, seed=9)
    x = _input(shape, seed=10)
    lead = shape[:1] if module.members else ()
    served = _Served(module, shape[len(lead) + 1 :], lead)
    expected = served.serve(x).numpy()
    np.testing.assert_allclose(
        expected, module(x, training=False).numpy(), rtol=1e-6, atol=1e-7
    )
    tf.saved_model.save(served, str(tmp_path / "saved"))

    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    assert np.array_equal(loaded.serve(x).numpy(), expected)
    # Another batch size runs through the same signature.
    first = (slice(None),) * len(lead) + (slice(0, 1),)  # one example (each member's)
    np.testing.assert_allclose(
        loaded.serve(x[first]).numpy(), expected[first], rtol=1e-5, atol=1e-6
    )
    assert len(loaded.weights) == len(module.variables)
    for var, want in zip(loaded.weights, module.variables):
        assert np.array_equal(var.numpy(), want.numpy())
