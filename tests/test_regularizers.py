"""Regularizers: TensorFlow's definitions, kernels only, gathered, added by hand."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf

RS = np.random.RandomState(1)
W = RS.randn(7, 5).astype(np.float32)


def _sgd_step(model, x, y, **options):
    """A one-step TrainStep with plain SGD (graph mode, fast to trace)."""
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.SGD(0.1),
        options=lowtf.StepOptions(jit_compile=False, **options),
    )
    return step, lowtf.train.step.as_numpy(step(x, y))


def _sigmoid_xent(logits, labels):
    """Sigmoid cross-entropy in float64 numpy, the textbook formula."""
    z = logits.astype(np.float64).reshape(-1)
    return np.mean(np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z))))


@pytest.mark.parametrize(
    "ours, expected",
    [
        (lowtf.l1(0.01), 0.01 * np.abs(W).sum()),
        (lowtf.l2(0.01), 0.01 * np.square(W).sum()),
        (lowtf.l1_l2(0.01, 0.003), 0.01 * np.abs(W).sum() + 0.003 * np.square(W).sum()),
    ],
)
def test_penalties_follow_tensorflow_definitions_without_a_half(ours, expected):
    assert float(ours(tf.constant(W))) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "ours, keras",
    [
        (lowtf.l1(0.02), tf.keras.regularizers.L1(0.02)),
        (lowtf.l2(0.02), tf.keras.regularizers.L2(0.02)),
        (lowtf.l1_l2(0.02, 0.5), tf.keras.regularizers.L1L2(l1=0.02, l2=0.5)),
    ],
)
def test_penalties_equal_keras_regularizers(ours, keras):
    w = tf.constant(W)
    np.testing.assert_allclose(float(ours(w)), float(keras(w)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(l1=-0.1), dict(l2=float("nan")), dict(l1=0.0, l2=0.0), dict(l2="0.1")],
)
def test_bad_scales_raise(kwargs):
    with pytest.raises(ValueError, match="l1|l2"):
        lowtf.Regularizer(**kwargs)


def test_only_kernels_carry_a_regularizer_by_default():
    # Batch norm and biases both present: neither may add to the penalty.
    model = lowtf.mlp((6, 4), l2=0.01, batchnorm=True, seed=3)
    model(tf.zeros([2, 5]))
    biased = lowtf.mlp((6, 4), l2=0.01, seed=3)
    biased(tf.zeros([2, 5]))
    for m in (model, biased):
        for var in m.trainable_variables:
            if "kernel" not in var.name:
                var.assign(var + 3.0)  # a non-zero bias / gamma / beta
        kernels = [v.numpy() for v in m.trainable_variables if "kernel" in v.name]
        assert len(kernels) == 3
        losses = lowtf.regularization_losses(m)
        assert len(losses) == 3
        expected = sum(0.01 * np.square(k).sum() for k in kernels)
        assert float(lowtf.nn.total_regularization_loss(m)) == pytest.approx(
            expected, 1e-6
        )


def test_bias_regularizer_is_opt_in():
    layer = lowtf.Dense(3, bias_regularizer=lowtf.l1(0.5), seed=0)
    layer(tf.zeros([1, 2]))
    layer.bias.assign([1.0, -2.0, 0.5])
    (loss,) = lowtf.regularization_losses(layer)
    assert float(loss) == pytest.approx(0.5 * 3.5)


def test_gathers_every_loss_in_a_nested_tree():
    class Tower(tf.Module):
        def __init__(self):
            super().__init__()
            self.blocks = {
                "a": lowtf.Sequential(
                    [lowtf.Dense(4, kernel_regularizer=lowtf.l2(0.1), seed=1)]
                ),
                "b": [
                    lowtf.Dense(3, kernel_regularizer=lowtf.l1(0.2), seed=2),
                    lowtf.Sequential(
                        [
                            lowtf.Dense(
                                2, kernel_regularizer=lowtf.l1_l2(0.3, 0.4), seed=3
                            )
                        ]
                    ),
                ],
            }
            self.free = lowtf.Dense(2, seed=4)  # unregularized: contributes nothing

        def __call__(self, x):
            h = self.blocks["a"](x)
            h = self.blocks["b"][1](self.blocks["b"][0](h))
            return self.free(h)

    tower = Tower()
    tower(tf.ones([1, 5]))
    k1 = tower.blocks["a"].layers[0].kernel.numpy()
    k2 = tower.blocks["b"][0].kernel.numpy()
    k3 = tower.blocks["b"][1].layers[0].kernel.numpy()
    expected = sorted(
        [
            0.1 * np.square(k1).sum(),
            0.2 * np.abs(k2).sum(),
            0.3 * np.abs(k3).sum() + 0.4 * np.square(k3).sum(),
        ]
    )
    got = sorted(float(v) for v in lowtf.regularization_losses(tower))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert lowtf.regularization_losses(lowtf.mlp("tiny")) == []
    assert float(lowtf.nn.total_regularization_loss(lowtf.mlp("tiny"))) == 0.0


def test_step_adds_the_penalty_by_hand_and_reports_both_terms(binary_data):
    x, y = binary_data[0][:100], binary_data[1][:100]
    model = lowtf.mlp("small", l2=0.01, l1=0.001, seed=5)
    model(x[:1])
    logits = model(x, training=True).numpy()  # no dropout: same as the step's
    kernels = [v.numpy() for v in model.trainable_variables if "kernel" in v.name]
    penalty = sum(0.01 * np.square(k).sum() + 0.001 * np.abs(k).sum() for k in kernels)

    _, metrics = _sgd_step(model, x, y, require_regularization=True)
    assert metrics["cross_entropy"] == pytest.approx(_sigmoid_xent(logits, y), rel=1e-5)
    assert metrics["regularization_loss"] == pytest.approx(penalty, rel=1e-5)
    assert metrics["total_loss"] == pytest.approx(
        metrics["cross_entropy"] + metrics["regularization_loss"], rel=1e-6
    )


def test_losses_with_and_without_regularization_differ_by_the_penalty(binary_data):
    x, y = binary_data[0][:100], binary_data[1][:100]
    plain = lowtf.mlp("tiny", seed=6)
    regularized = lowtf.mlp("tiny", l2=0.05, seed=6)  # same seed: same weights
    plain(x[:1]), regularized(x[:1])
    kernels = [v.numpy() for v in regularized.trainable_variables if "kernel" in v.name]
    penalty = sum(0.05 * np.square(k).sum() for k in kernels)

    _, m_plain = _sgd_step(plain, x, y)
    _, m_reg = _sgd_step(regularized, x, y)
    assert m_plain["regularization_loss"] == 0.0
    assert m_reg["cross_entropy"] == pytest.approx(m_plain["cross_entropy"], abs=1e-7)
    assert m_reg["total_loss"] - m_plain["total_loss"] == pytest.approx(
        penalty, rel=1e-5
    )


def test_penalty_enters_the_gradient(binary_data):
    """One SGD step moves each kernel by lr * (dCE/dw + 2 * lambda * w)."""
    x, y = binary_data[0][:64], binary_data[1][:64]
    model = lowtf.mlp("tiny", l2=0.1, seed=7)
    model(x[:1])
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    with tf.GradientTape() as tape:
        logits = tf.reshape(model(x, training=True), [-1])
        ce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, logits))
    ce_grads = tape.gradient(ce, variables)

    _sgd_step(model, x, y)
    for var, w0, g in zip(variables, before, ce_grads):
        decay = 2 * 0.1 * w0 if "kernel" in var.name else 0.0
        np.testing.assert_allclose(
            var.numpy(), w0 - 0.1 * (g.numpy() + decay), atol=1e-6
        )


def test_require_regularization_without_a_regularizer_raises(binary_data):
    x, y = binary_data[0][:8], binary_data[1][:8]
    with pytest.raises(ValueError, match="regularization was requested.*lowtf.l2"):
        _sgd_step(lowtf.mlp("tiny"), x, y, require_regularization=True)


def test_keyword_names_are_keras_ones():
    w = tf.constant([[1.0, -2.0], [3.0, 0.5]])
    ours = lowtf.l1_l2(l1=0.01, l2=0.02)(w).numpy()
    theirs = tf.keras.regularizers.l1_l2(l1=0.01, l2=0.02)(w).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert lowtf.l1_l2(l2=0.1).l1 == 0.0
    with pytest.raises(ValueError, match="needs `l1` or `l2`"):
        lowtf.l1_l2()
