"""Tests of Conv2D, pooling, Reshape and the cnn builder."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf


def naive_conv(x, kernel):
    """numpy reference: VALID cross-correlation, stride 1, NHWC."""
    kh, kw, _, out = kernel.shape
    n, h, w, _ = x.shape
    y = np.zeros([n, h - kh + 1, w - kw + 1, out], np.float64)
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            patch = x[:, i : i + kh, j : j + kw, :]
            y[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return y


def test_conv2d_matches_a_direct_convolution():
    rs = np.random.RandomState(0)
    x = rs.randn(2, 6, 5, 3).astype(np.float32)
    conv = lowtf.Conv2D(4, (3, 2), padding="valid", seed=1)
    y = conv(x).numpy()
    assert conv.kernel.shape == (3, 2, 3, 4)  # [h, w, in, out]
    np.testing.assert_allclose(y, naive_conv(x, conv.kernel.numpy()), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({}, (2, 8, 8, 5)),
        ({"padding": "VALID"}, (2, 6, 6, 5)),
        ({"strides": 2}, (2, 4, 4, 5)),
        ({"kernel_size": 1, "padding": "VALID", "strides": (1, 2)}, (2, 8, 4, 5)),
    ],
)
def test_conv2d_output_shapes(kwargs, shape):
    assert lowtf.Conv2D(5, **kwargs)(tf.ones([2, 8, 8, 1])).shape == shape


def test_conv2d_init_is_seeded_and_glorot():
    a, b = lowtf.Conv2D(8, seed=3), lowtf.Conv2D(8, seed=3)
    a(tf.ones([1, 4, 4, 2]))
    b(tf.ones([1, 4, 4, 2]))
    np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
    limit = np.sqrt(6.0 / (3 * 3 * 2 + 3 * 3 * 8))  # fans times the receptive field
    assert np.abs(a.kernel.numpy()).max() <= limit
    assert np.abs(a.kernel.numpy()).max() > 0.9 * limit


def test_conv2d_regularizer_is_gathered_on_the_kernel_only():
    conv = lowtf.Conv2D(4, kernel_regularizer=lowtf.l2(0.01), seed=0)
    conv(tf.ones([1, 5, 5, 2]))
    expected = 0.01 * np.sum(np.square(conv.kernel.numpy()))
    np.testing.assert_allclose(
        float(lowtf.nn.total_regularization_loss(conv)), expected, rtol=1e-6
    )


def test_pools():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(lowtf.MaxPool2D()(x)[0, :, :, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(
        lowtf.AvgPool2D()(x)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]]
    )
    assert lowtf.MaxPool2D(3, strides=1, padding="same")(x).shape == (1, 4, 4, 1)


def test_reshape_flat_rows_to_images():
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    y = lowtf.Reshape((8, 8, 1))(x).numpy()
    np.testing.assert_array_equal(y[1, 2, 3, 0], x[1, 2 * 8 + 3])  # row-major


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: lowtf.Conv2D(0), "`filters`"),
        (lambda: lowtf.Conv2D(4, padding="full"), "`padding`"),
        (lambda: lowtf.Conv2D(4, kernel_size=(3, 3, 3)), "`kernel_size`"),
        (lambda: lowtf.MaxPool2D(0), "`pool_size`"),
        (
            lambda: lowtf.Conv2D(4)(tf.ones([2, 64])),
            r"\[batch, height, width, channels\]",
        ),
        (lambda: lowtf.Reshape((8, 8, 1))(tf.ones([2, 63])), "cannot reshape"),
        (lambda: lowtf.cnn("cifar"), "`input_shape`"),
        (lambda: lowtf.cnn((8, 8)), "height, width, channels"),
        (lambda: lowtf.cnn(filters=(32, 0)), r"`filters\[1\]`"),
    ],
)
def test_bad_arguments_raise_one_readable_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "preset, flat, image",
    [("digits", (3, 64), (3, 8, 8, 1)), ("mnist", (3, 784), (3, 28, 28, 1))],
)
def test_cnn_preset_output_shapes(preset, flat, image):
    model = lowtf.cnn(preset, num_classes=10, dropout=0.5, batchnorm=True, seed=0)
    assert model(tf.zeros(flat), training=True).shape == (3, 10)
    assert model(tf.zeros(image)).shape == (3, 10)
    assert lowtf.cnn(preset, num_classes=2)(tf.zeros(flat)).shape == (3, 1)
    pooled = [layer for layer in model.layers if isinstance(layer, lowtf.MaxPool2D)]
    assert len(pooled) == 2


def test_cnn_switches_reach_every_kernel():
    model = lowtf.cnn("digits", l1=1e-5, l2=1e-4, maxnorm=2.0, dropout=0.3, seed=0)
    model(tf.zeros([1, 64]))
    kernels = {v.name for v in model.trainable_variables if "kernel" in v.name}
    pairs = lowtf.nn.constraints.constrained_weights(model)
    # Max-norm on the two conv kernels and the dense one, not on the logits.
    assert sorted(v.shape.rank for v, _ in pairs) == [2, 4, 4]
    assert len(lowtf.regularization_losses(model)) == len(kernels) == 4
    assert sum(isinstance(layer, lowtf.Dropout) for layer in model.layers) == 1


@pytest.mark.e2e
def test_conv_max_norm_over_axes_012_holds_after_every_step():
    rs = np.random.RandomState(0)
    x = rs.rand(64, 64).astype(np.float32)
    y = rs.randint(0, 10, 64).astype(np.int32)
    r = 0.5
    model = lowtf.cnn("digits", filters=(8, 8), dense=(16,), maxnorm=r, seed=0)
    step = lowtf.TrainStep(
        model, tf.keras.optimizers.SGD(0.5), data=lowtf.InMemoryBatches(x, y, 32)
    )
    convs = [layer for layer in model.layers if isinstance(layer, lowtf.Conv2D)]
    step.build(x[:1])
    grew = False
    for _ in range(4):
        step.run(5)
        for conv in convs:
            norms = lowtf.nn.unit_norms(conv.kernel).numpy()  # over axes [0, 1, 2]
            assert norms.shape == (8,)
            assert norms.max() <= r * (1 + 1e-5)
            grew |= bool(np.isclose(norms.max(), r, rtol=1e-4))
    assert grew  # The cap was reached, so it was enforced, not idle.


@pytest.mark.e2e
def test_conv_checkpoint_round_trip(tmp_path):
    rs = np.random.RandomState(1)
    x = rs.rand(64, 64).astype(np.float32)
    y = rs.randint(0, 10, 64).astype(np.int32)

    def make():
        model = lowtf.cnn(
            "digits", filters=(4, 8), dense=(16,), batchnorm=True, dropout=0.2, seed=0
        )
        step = lowtf.TrainStep(
            model,
            tf.keras.optimizers.Adam(1e-2),
            data=lowtf.InMemoryBatches(x, y, 16),
            augment=lowtf.augment.parse("translate:1", image_shape=(8, 8, 1)),
            options=lowtf.StepOptions(jit_compile=False),
        )
        step.build(x[:1])
        return model, step

    model, step = make()
    step.run(3)
    path = tf.train.Checkpoint(step=step).write(str(tmp_path / "ckpt"))
    step.run(2)  # the uninterrupted run
    restored_model, restored = make()
    tf.train.Checkpoint(step=restored).read(path).assert_consumed()
    assert int(restored.step.numpy()) == 3
    restored.run(2)
    assert len(model.variables) == len(restored_model.variables) > 0
    for a, b in zip(model.variables, restored_model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
