"""lowtf.nn._xla_cpu: the XLA-on-CPU forms equal tf.nn's ops, values and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from lowtf.nn import _xla_cpu

CONVS = [  # image [h, w, in], kernel [kh, kw, out], strides, padding
    ((8, 8, 1), (3, 3, 4), (1, 1), "SAME"),
    ((7, 9, 3), (3, 3, 5), (2, 2), "SAME"),
    ((7, 9, 3), (5, 3, 2), (1, 2), "VALID"),
    ((6, 6, 2), (1, 1, 3), (1, 1), "VALID"),
    ((5, 5, 2), (4, 4, 3), (3, 2), "SAME"),
]


def _normal(shape, seed):
    # Drawn eagerly, outside the compiled functions: XLA may pick another
    # algorithm for the same stateless seed.
    return tf.random.stateless_normal(shape, seed=[seed, 0])


def _xla(fn):
    """``fn`` compiled by XLA, traced as lowtf's step traces its model."""

    def traced(*args):
        with _xla_cpu.compiled_by_xla():
            return fn(*args)

    return tf.function(traced, jit_compile=True)


def _ops_in(fn, *args) -> set:
    graph = _xla(fn).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("image, kernel, strides, padding", CONVS)
def test_conv2d_under_xla_equals_tf_nn_with_gradients(image, kernel, strides, padding):
    x = _normal([4, *image], 1)
    w = _normal([kernel[0], kernel[1], image[2], kernel[2]], 2)

    cotangent = _normal(tf.nn.conv2d(x, w, strides, padding).shape, 3)

    def value_and_grads(conv):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = conv(x, w, strides, padding)
            loss = tf.reduce_sum(y * cotangent)
        return (y, *tape.gradient(loss, [x, w]))

    expected = value_and_grads(tf.nn.conv2d)  # eager: TensorFlow's own kernels
    actual = _xla(lambda: value_and_grads(_xla_cpu.conv2d))()
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "image, pool, padding",
    [
        ((8, 8, 3), (2, 2), "VALID"),
        ((7, 9, 2), (2, 3), "VALID"),
        ((6, 8, 2), (2, 2), "SAME"),
    ],
)
@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool2d"])
def test_pooling_under_xla_equals_tf_nn_with_gradients(image, pool, padding, name):
    x = _normal([3, *image], 4)  # continuous values: no ties within a window

    cotangent = _normal(getattr(tf.nn, name)(x, pool, pool, padding).shape, 5)

    def value_and_grad(pool_fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pool_fn(x, pool, pool, padding)
            loss = tf.reduce_sum(y * cotangent)
        return y, tape.gradient(loss, x)

    expected = value_and_grad(getattr(tf.nn, name))
    actual = _xla(lambda: value_and_grad(getattr(_xla_cpu, name)))()
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)


def test_xla_on_cpu_takes_the_matmul_forms_and_tf_nn_elsewhere():
    x, w = tf.zeros([2, 8, 8, 1]), tf.zeros([3, 3, 1, 4])

    def step(x, w):
        y = _xla_cpu.conv2d(x, w, (1, 1), "SAME")
        return _xla_cpu.max_pool2d(y, (2, 2), (2, 2), "VALID")

    under_xla = _ops_in(step, x, w)
    assert "MatMul" in under_xla and not {"Conv2D", "MaxPool"} & under_xla
    graph = tf.function(step).get_concrete_function(x, w).graph
    assert {"Conv2D", "MaxPool"} <= {op.type for op in graph.get_operations()}
    # Overlapping windows keep tf.nn's pooling, under XLA too.
    overlapping = _ops_in(lambda x: _xla_cpu.max_pool2d(x, (3, 3), (2, 2), "VALID"), x)
    assert "MaxPool" in overlapping


@pytest.mark.parametrize(
    "shape", [(512, 512), (28, 512), (3, 3, 32, 64), (96, 7), (64,), ()]
)
def test_total_under_xla_equals_the_float64_sum(shape):
    t = tf.square(_normal(shape, 6))
    expected = np.sum(t.numpy().astype(np.float64))
    actual = _xla(_xla_cpu.total)(t)
    np.testing.assert_allclose(actual, expected, rtol=2e-6)
    assert float(_xla_cpu.total(t)) == float(
        tf.reduce_sum(t)
    )  # eager: tf.reduce_sum itself


def test_total_takes_blocks_only_for_long_reductions():
    assert "MatMul" in _ops_in(_xla_cpu.total, tf.zeros([512, 512]))
    assert "MatMul" not in _ops_in(_xla_cpu.total, tf.zeros([28, 512]))  # fused already
    assert "MatMul" not in _ops_in(_xla_cpu.total, tf.zeros([100, 3]))  # no even blocks
