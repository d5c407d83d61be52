"""Max-norm: incoming-weight norms capped after every step, nothing else moved."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf

RS = np.random.RandomState(2)
TOL = 1e-6


def _column_norms(w):
    return np.sqrt(np.square(np.asarray(w, np.float64)).sum(axis=0))


def _data(n=64, width=32):
    x = RS.randn(n, width).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.float32)


def _hidden_and_output(model):
    dense = [layer for layer in model.layers if isinstance(layer, lowtf.Dense)]
    return dense[:-1], dense[-1]


def test_max_norm_clips_only_units_over_the_cap():
    # Columns (units) with norms about 1.7, 2.1, 7.2 and 16.7 against r = 3.
    w = (RS.randn(50, 4) * [0.2, 0.35, 1.0, 2.0]).astype(np.float32)
    before = _column_norms(w)
    assert before[0] < 3 and before[1] < 3 and before[2] > 3 and before[3] > 3
    out = lowtf.max_norm(3.0)(tf.constant(w)).numpy()
    after = _column_norms(out)
    assert np.all(after <= 3.0 + TOL)
    # Units under the cap: bit-for-bit unchanged, where a bare clip_by_norm,
    # computing (w * r) / r, moves some of them by a rounding step.
    assert np.array_equal(out[:, :2], w[:, :2])
    assert not np.array_equal(
        tf.clip_by_norm(w, 3.0, axes=[0]).numpy()[:, :2], w[:, :2]
    )
    # Units over it: brought to the cap, direction kept.
    np.testing.assert_allclose(after[2:], 3.0, rtol=1e-6)
    np.testing.assert_allclose(out[:, 2:], w[:, 2:] * (3.0 / before[2:]), rtol=1e-5)
    np.testing.assert_allclose(lowtf.nn.unit_norms(out).numpy(), after, rtol=1e-6)


def test_conv_kernel_norm_is_taken_over_axes_0_1_2():
    w = RS.randn(3, 3, 2, 5).astype(np.float32)  # [h, w, in, out]
    norms = np.sqrt(np.square(w.astype(np.float64)).sum(axis=(0, 1, 2)))
    assert lowtf.max_norm(1.0).norm_axes(4) == [0, 1, 2]
    np.testing.assert_allclose(lowtf.nn.unit_norms(w).numpy(), norms, rtol=1e-6)
    out = lowtf.max_norm(1.0)(tf.constant(w)).numpy()
    np.testing.assert_allclose(lowtf.nn.unit_norms(out).numpy(), 1.0, rtol=1e-6)
    explicit = lowtf.max_norm(1.0, axis=[0, 1, 2])(tf.constant(w)).numpy()
    assert np.array_equal(out, explicit)


def test_clipping_rows_axis_1_is_the_wrong_constraint():
    """TF1-style ``clip_by_norm(w, r, axes=1)`` caps each input's fan-out."""
    w = (RS.randn(10, 4) * [0.2, 0.5, 1.0, 2.0]).astype(np.float32)
    rows = tf.clip_by_norm(w, 1.0, axes=[1]).numpy()
    # Units stay over the cap...
    assert _column_norms(rows).max() > 2.0
    # ...and a unit already under it is shrunk anyway.
    assert _column_norms(w)[0] < 1.0
    assert not np.allclose(rows[:, 0], w[:, 0])
    # lowtf's default (axis 0 of a Dense kernel) caps every unit.
    cols = lowtf.max_norm(1.0)(tf.constant(w)).numpy()
    assert _column_norms(cols).max() <= 1.0 + TOL
    assert lowtf.max_norm(1.0).norm_axes(2) == [0]


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "3"])
def test_bad_cap_raises(bad):
    with pytest.raises(ValueError, match="max_value"):
        lowtf.max_norm(bad)


@pytest.mark.parametrize("jit", [False, True])
def test_step_clips_over_units_and_leaves_the_rest_bitwise_unchanged(jit):
    # With a zero learning rate the only change a step can make is the clip.
    x, y = _data()
    model = lowtf.mlp((32, 32), maxnorm=3.0, maxnorm_output=True, seed=1)
    model(x[:1])
    dense = [layer for layer in model.layers if isinstance(layer, lowtf.Dense)]
    for layer in dense:
        layer.kernel.assign(layer.kernel * 3.0)  # unit norms now about 3 = r
    before = [layer.kernel.numpy() for layer in dense]
    under = [_column_norms(k) <= 3.0 for k in before]
    # Both kinds of units exist, and a bare clip_by_norm would move some bits
    # of the units under the cap: the test can fail either way.
    assert any(u.any() for u in under) and any((~u).any() for u in under)
    bare = [tf.clip_by_norm(k, 3.0, axes=[0]).numpy() for k in before]
    assert any(
        not np.array_equal(c[:, u], k[:, u]) for c, k, u in zip(bare, before, under)
    )

    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.SGD(0.0),
        options=lowtf.StepOptions(jit_compile=jit, require_constraints=True),
    )
    step(x, y)
    for layer, k0, keep in zip(dense, before, under):
        k1 = layer.kernel.numpy()
        assert np.array_equal(k1[:, keep], k0[:, keep])
        np.testing.assert_allclose(_column_norms(k1[:, ~keep]), 3.0, rtol=1e-6)
        assert np.array_equal(layer.bias.numpy(), np.zeros(layer.units, np.float32))


@pytest.mark.parametrize("maxnorm_output", [False, True])
@pytest.mark.e2e
def test_every_hidden_unit_is_capped_after_every_xla_step(maxnorm_output):
    x, y = _data()
    r = 0.8
    model = lowtf.mlp((32, 32, 32), maxnorm=r, maxnorm_output=maxnorm_output, seed=2)
    step = lowtf.TrainStep(model, tf.keras.optimizers.Adam(0.05))  # XLA default
    hidden, output = _hidden_and_output(model)
    for _ in range(4):
        step(x, y)
        for layer in hidden:
            assert _column_norms(layer.kernel.numpy()).max() <= r + TOL
        out_norm = _column_norms(output.kernel.numpy()).max()
        if maxnorm_output:
            assert out_norm <= r + TOL
        else:
            assert out_norm > r  # left free: 32 -> 1 init has norm about 1.4


class _Conv(lowtf.Layer):
    """A bare 3x3 convolution, to put a 4-D constrained kernel in a step."""

    def __init__(self, filters, constraint):
        super().__init__(name="conv")
        self.filters = filters
        self.constraint = constraint

    def build(self, input_shape):
        init = tf.random.stateless_normal([3, 3, input_shape[-1], self.filters], [1, 2])
        self.kernel = self.add_weight("kernel", init, constraint=self.constraint)

    def call(self, x, training):
        return tf.nn.elu(tf.nn.conv2d(x, self.kernel, 1, "SAME"))


def test_conv_kernel_is_capped_per_output_channel_in_the_step():
    x = RS.randn(16, 6, 6, 2).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0).astype(np.float32)
    conv = _Conv(4, lowtf.max_norm(1.5))
    model = lowtf.Sequential([conv, lowtf.Flatten(), lowtf.Dense(1, seed=0)])
    model(x[:1])
    assert lowtf.nn.unit_norms(conv.kernel).numpy().min() > 1.5  # 18 N(0,1) draws
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(0.01),
        options=lowtf.StepOptions(jit_compile=False),
    )
    for i in range(2):
        step(x, y)
        norms = np.sqrt(
            np.square(conv.kernel.numpy().astype(np.float64)).sum((0, 1, 2))
        )
        assert norms.max() <= 1.5 + TOL
        if i == 0:  # every channel started far over the cap (norm about 4)
            np.testing.assert_allclose(norms, 1.5, rtol=1e-6)


def test_require_constraints_without_a_constrained_variable_raises():
    x, y = _data(8)
    step = lowtf.TrainStep(
        lowtf.mlp("tiny", l2=1e-3),
        tf.keras.optimizers.SGD(0.1),
        options=lowtf.StepOptions(jit_compile=False, require_constraints=True),
    )
    with pytest.raises(ValueError, match="no variable of the model carries one"):
        step(x, y)


def test_max_norm_takes_keras_arguments_and_matches_keras_on_a_dense_kernel():
    w = np.random.RandomState(3).randn(6, 5).astype(np.float32) * 2
    ours = lowtf.MaxNorm(max_value=1.5, axis=0)(tf.constant(w)).numpy()
    theirs = tf.keras.constraints.MaxNorm(max_value=1.5, axis=0)(tf.constant(w)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=0).max(), 1.5, rtol=1e-6)
    assert lowtf.MaxNorm(2.0, axis=1).norm_axes(2) == [1]


@pytest.mark.parametrize("axis", ["0", [], [0, 1.5], True])
def test_max_norm_refuses_a_bad_axis_at_construction(axis):
    with pytest.raises(ValueError, match="`axis`"):
        lowtf.MaxNorm(1.0, axis=axis)
