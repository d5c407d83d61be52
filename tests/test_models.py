"""MLP presets of the overfitting tutorial, any width, one logit for two classes."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf


def _dense(model):
    return [layer for layer in model.layers if isinstance(layer, lowtf.Dense)]


@pytest.mark.parametrize(
    "preset, widths",
    [
        ("tiny", (16,)),
        ("small", (16, 16)),
        ("medium", (64, 64, 64)),
        ("large", (512, 512, 512, 512)),
    ],
)
def test_presets_match_the_tutorials_models(preset, widths):
    assert lowtf.models.PRESETS[preset] == widths
    model = lowtf.mlp(preset)
    out = model(tf.zeros([2, 28]))
    assert out.shape == (2, 1)
    shapes = [tuple(layer.kernel.shape) for layer in _dense(model)]
    fan_in = (28,) + widths
    assert shapes == list(zip(fan_in, widths + (1,)))
    assert all(layer.activation is tf.nn.elu for layer in _dense(model)[:-1])
    assert _dense(model)[-1].activation is tf.identity  # logits


@pytest.mark.parametrize("width", [1, 7, 300])
def test_any_input_width(width):
    model = lowtf.mlp("small", num_classes=5)
    x = np.random.RandomState(0).randn(3, width).astype(np.float32)
    assert model(x).shape == (3, 5)
    assert _dense(model)[0].kernel.shape == (width, 16)


@pytest.mark.parametrize("classes, logits", [(2, 1), (3, 3), (10, 10)])
def test_one_logit_for_two_classes_else_one_per_class(classes, logits):
    assert lowtf.mlp("tiny", num_classes=classes)(tf.zeros([4, 6])).shape == (4, logits)


def test_activation_and_explicit_widths():
    model = lowtf.mlp((8, 4), activation="relu", seed=1)
    x = np.random.RandomState(1).randn(5, 3).astype(np.float32)
    out = model(x).numpy()
    k = [layer.kernel.numpy() for layer in _dense(model)]
    h = np.maximum(x @ k[0], 0)  # biases start at 0
    h = np.maximum(h @ k[1], 0)
    np.testing.assert_allclose(out, h @ k[2], rtol=1e-5, atol=1e-6)


def test_switches_place_the_layers():
    model = lowtf.mlp("small", dropout=0.5, batchnorm=True, l2=1e-4, maxnorm=3.0)
    kinds = [type(layer).__name__ for layer in model.layers]
    block = ["Dense", "BatchNorm", "Lambda", "Dropout"]
    assert kinds == block + block + ["Dense"]
    dense = _dense(model)
    assert [d.use_bias for d in dense] == [False, False, True]  # BN's beta is the bias
    assert all(d.kernel_regularizer == lowtf.l2(1e-4) for d in dense)
    assert [d.kernel_constraint for d in dense] == [lowtf.max_norm(3.0)] * 2 + [None]
    out = lowtf.mlp("tiny", maxnorm=3.0, maxnorm_output=True)
    assert _dense(out)[-1].kernel_constraint == lowtf.max_norm(3.0)


def test_same_seed_same_initial_weights():
    a, b, c = (
        lowtf.mlp("small", seed=3),
        lowtf.mlp("small", seed=3),
        lowtf.mlp("small", seed=4),
    )
    for m in (a, b, c):
        m(tf.zeros([1, 5]))
    assert all(
        np.array_equal(u.numpy(), v.numpy()) for u, v in zip(a.variables, b.variables)
    )
    assert not np.array_equal(_dense(a)[0].kernel.numpy(), _dense(c)[0].kernel.numpy())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="huge"), "`model` .'huge'. must be one of 'tiny', 'small'"),
        (dict(model=(16, 0)), r"`hidden\[1\]` \(0\) must be a positive integer"),
        (dict(model=(16, -4)), r"hidden\[1\]"),
        (dict(model=(8.5,)), r"hidden\[0\]"),
        (dict(model=(True,)), r"hidden\[0\]"),
        (dict(num_classes=1), "`num_classes` .1. must be at least 2"),
        (dict(num_classes=0), "num_classes"),
        (dict(dropout=1.0), "dropout"),
        (dict(maxnorm=-1.0), "maxnorm"),
        (dict(l2=-1e-4), "l2"),
        (dict(activation="softmaxish"), "activation"),
    ],
)
def test_bad_arguments_raise_one_readable_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lowtf.mlp(**kwargs)
