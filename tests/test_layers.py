"""Layers: Dense, Dropout (stateless masks per step), BatchNorm, Flatten, Sequential."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import random

RS = np.random.RandomState(3)


def _dropout_in_step(layer, x, step, seed=0):
    """The layer's training output under the key of global step ``step``."""
    with random.step_key(random.make_key(seed, step)):
        return layer(x, training=True)


# -- Dense ----------------------------------------------------------------------


def test_dense_is_lazy_and_computes_activation_of_affine_map():
    layer = lowtf.Dense(3, activation="elu", seed=4)
    assert layer.trainable_variables == ()  # no variables before the first call
    x = RS.randn(5, 4).astype(np.float32)
    layer(x)
    k = layer.kernel.numpy()
    assert k.shape == (4, 3) and layer.bias.shape == (3,)
    limit = np.sqrt(6.0 / (4 + 3))  # Glorot uniform
    assert np.abs(k).max() <= limit
    layer.bias.assign([0.1, -0.2, 0.3])
    out = layer(x).numpy()
    z = x @ k + [0.1, -0.2, 0.3]
    np.testing.assert_allclose(
        out, np.where(z > 0, z, np.expm1(z)), rtol=1e-5, atol=1e-6
    )


def test_dense_init_is_reproducible_from_its_seed():
    a, b, c = lowtf.Dense(8, seed=1), lowtf.Dense(8, seed=1), lowtf.Dense(8, seed=2)
    for layer in (a, b, c):
        layer(tf.zeros([1, 6]))
    assert np.array_equal(a.kernel.numpy(), b.kernel.numpy())
    assert not np.array_equal(a.kernel.numpy(), c.kernel.numpy())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(units=0), "units"),
        (dict(units=2.5), "units"),
        (dict(units=4, activation="softplusx"), "activation"),
    ],
)
def test_dense_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lowtf.Dense(**kwargs)


def test_dense_rejects_another_width_or_dtype_after_build():
    layer = lowtf.Dense(2, seed=0)
    layer(tf.zeros([1, 3]))
    with pytest.raises(ValueError, match="expects inputs with 3 features"):
        layer(tf.zeros([1, 4]))
    with pytest.raises(ValueError, match="float64.*cast the input"):
        layer(np.zeros([1, 3]))


# -- Dropout --------------------------------------------------------------------


def test_dropout_is_the_identity_at_inference():
    x = RS.randn(50, 20).astype(np.float32)
    layer = lowtf.Dropout(0.5, seed=1)
    assert np.array_equal(layer(x, training=False).numpy(), x)
    assert np.array_equal(_dropout_in_step(lowtf.Dropout(0.0), x, 0).numpy(), x)


def test_dropout_scales_kept_units_and_preserves_the_mean():
    rate = 0.3
    x = RS.rand(400, 500).astype(np.float32) + 0.5
    out = _dropout_in_step(lowtf.Dropout(rate, seed=2), x, 7).numpy()
    kept = out != 0
    scale = np.float32(1.0 / (1.0 - rate))
    np.testing.assert_array_equal(out[kept], x[kept] * scale)
    assert kept.mean() == pytest.approx(1 - rate, abs=0.005)  # 200k draws
    assert out.mean() == pytest.approx(x.mean(), rel=0.01)


@pytest.mark.parametrize("jit", [None, False, True], ids=["eager", "graph", "xla"])
def test_dropout_masks_change_per_step_and_repeat_per_key(jit):
    layer = lowtf.Dropout(0.5, seed=3)
    other = lowtf.Dropout(0.5, seed=4)

    def eager_masks(step):
        x = tf.ones([64, 32])
        with random.step_key(random.make_key(0, step)):
            return layer(x, training=True) != 0, other(x, training=True) != 0

    masks = eager_masks if jit is None else tf.function(eager_masks, jit_compile=jit)
    m0, o0 = (t.numpy() for t in masks(tf.constant(0, tf.int64)))
    # One generator: every mode draws the eager mask.
    np.testing.assert_array_equal(m0, eager_masks(tf.constant(0, tf.int64))[0])
    m1, _ = (t.numpy() for t in masks(tf.constant(1, tf.int64)))
    m0_again, _ = (t.numpy() for t in masks(tf.constant(0, tf.int64)))
    assert np.array_equal(m0, m0_again)  # same seed and step: same mask
    assert (m0 != m1).mean() > 0.3  # another step: a fresh mask (0.5 expected)
    assert (m0 != o0).mean() > 0.3  # two layers never share a mask
    assert 0.4 < m0.mean() < 0.6


def test_the_step_draws_new_masks_every_step(binary_data):
    # A zero learning rate: only the dropout masks can change the loss.
    x, y = binary_data[0][:100], binary_data[1][:100]
    losses = {}
    for rate in (0.0, 0.5):
        step = lowtf.TrainStep(
            lowtf.mlp("tiny", dropout=rate, seed=1),
            tf.keras.optimizers.SGD(0.0),
            options=lowtf.StepOptions(jit_compile=False),
        )
        losses[rate] = [float(step(x, y)["cross_entropy"]) for _ in range(3)]
    assert len(set(losses[0.0])) == 1
    assert len(set(losses[0.5])) == 3


@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan")])
def test_dropout_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match="rate"):
        lowtf.Dropout(rate)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.e2e
def test_same_seed_gives_the_same_run(binary_data, jit):
    x, y = binary_data

    def train(seed):
        model = lowtf.mlp("tiny", dropout=0.5, seed=1)
        step = lowtf.TrainStep(
            model,
            tf.keras.optimizers.Adam(0.01),
            options=lowtf.StepOptions(jit_compile=jit, seed=seed),
        )
        for i in range(4):  # fixed batches: only the masks are random
            step(x[i * 100 : i * 100 + 100], y[i * 100 : i * 100 + 100])
        return [v.numpy() for v in model.trainable_variables]

    first, again = train(5), train(5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    if not jit:  # one mode suffices (compiles are slow): the seed key is shared
        # Only the dropout masks depend on the step seed: the runs must differ.
        other = train(6)
        assert not all(np.array_equal(a, b) for a, b in zip(first, other))


# -- BatchNorm ------------------------------------------------------------------


def test_batchnorm_training_uses_batch_statistics_and_updates_moving_averages():
    x = (RS.randn(32, 4) * [1.0, 2.0, 0.5, 3.0] + [0.0, 1.0, -2.0, 5.0]).astype(
        np.float32
    )
    layer = lowtf.BatchNorm(momentum=0.9, epsilon=1e-3)
    out = layer(x, training=True).numpy()
    mean, var = x.mean(0), x.var(0)  # biased variance, as tf.nn.moments
    np.testing.assert_allclose(
        out, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), 0.9 + 0.1 * var, rtol=1e-5
    )
    layer(x, training=True)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), 0.9 * 0.1 * mean + 0.1 * mean, rtol=1e-5, atol=1e-6
    )


def test_batchnorm_inference_uses_moving_statistics():
    x = RS.randn(8, 3).astype(np.float32)
    layer = lowtf.BatchNorm()
    layer(x)
    layer.moving_mean.assign([1.0, -1.0, 0.5])
    layer.moving_variance.assign([4.0, 0.25, 1.0])
    layer.gamma.assign([2.0, 1.0, 0.5])
    layer.beta.assign([0.0, 1.0, -1.0])
    out = layer(x, training=False).numpy()
    expected = (x - [1.0, -1.0, 0.5]) / np.sqrt(np.array([4.0, 0.25, 1.0]) + 1e-3)
    np.testing.assert_allclose(
        out, expected * [2.0, 1.0, 0.5] + [0.0, 1.0, -1.0], rtol=1e-5
    )
    moving = layer.moving_mean.numpy()
    layer(x, training=False)
    assert np.array_equal(layer.moving_mean.numpy(), moving)  # inference: no update
    assert not layer.moving_mean.trainable and not layer.moving_variance.trainable


@pytest.mark.e2e
def test_batchnorm_moving_averages_update_inside_the_compiled_step(binary_data):
    x, y = binary_data[0][:128], binary_data[1][:128]
    model = lowtf.mlp("tiny", batchnorm=True, seed=2)
    model(x[:1])
    dense, bn = model.layers[0], model.layers[1]
    h = x @ dense.kernel.numpy()  # no bias before batch norm
    step = lowtf.TrainStep(model, tf.keras.optimizers.Adam(0.01))  # XLA
    step(x, y)
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), 0.01 * h.mean(0), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), 0.99 + 0.01 * h.var(0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, match", [(dict(momentum=1.0), "momentum"), (dict(epsilon=0), "epsilon")]
)
def test_batchnorm_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lowtf.BatchNorm(**kwargs)


# -- Flatten, Lambda, Sequential ------------------------------------------------


def test_flatten_keeps_the_batch_and_the_order():
    x = RS.randn(3, 2, 4, 5).astype(np.float32)
    out = lowtf.Flatten()(x).numpy()
    assert np.array_equal(out, x.reshape(3, 40))


def test_sequential_passes_training_to_every_layer():
    model = lowtf.Sequential(
        [lowtf.Lambda(lambda t: t * 2.0), lowtf.Dropout(0.5, seed=9), lowtf.Flatten()]
    )
    x = np.ones([4, 2, 3], np.float32)
    assert np.array_equal(model(x, training=False).numpy(), np.full([4, 6], 2.0))
    out = _dropout_in_step(model, x, 0).numpy()
    assert set(np.unique(out)) == {0.0, 4.0}
