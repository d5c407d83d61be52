"""Label smoothing, mixup and CutMix: equal to Keras where Keras has them, reproducible."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import random
from lowtf.augment import mix
from lowtf.nn import losses


@pytest.mark.parametrize("classes", [2, 5])
def test_smoothed_loss_equals_keras(classes):
    rs = np.random.RandomState(0)
    width = 1 if classes == 2 else classes
    logits = tf.constant(rs.randn(16, width).astype(np.float32) * 3)
    y = rs.randint(0, classes, 16)
    head = "sigmoid" if width == 1 else "softmax"
    soft = losses.targets(head, y, width, 0.1)
    ours = tf.reduce_mean(losses.soft_cross_entropy(head, logits, soft)).numpy()
    if head == "sigmoid":
        keras = tf.keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1)
        theirs = keras(y[:, None].astype(np.float32), logits).numpy()
    else:
        keras = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
        theirs = keras(tf.one_hot(y, classes), logits).numpy()
    assert ours == pytest.approx(theirs, rel=1e-6)
    # Without smoothing the soft loss is the plain one.
    plain = losses.soft_cross_entropy(head, logits, losses.targets(head, y, width))
    np.testing.assert_allclose(plain, losses.cross_entropy(head, logits, y), rtol=1e-6)


def test_beta_draws_follow_beta_and_are_the_same_in_every_mode():
    key = tf.constant([3, 4], tf.int64)
    draws = random.beta(20000, key, 0.4).numpy()
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert draws.mean() == pytest.approx(0.5, abs=0.01)
    assert draws.var() == pytest.approx(1 / (4 * 1.8), rel=0.05)
    assert ((draws >= 0) & (draws <= 1)).all()
    graph = tf.function(lambda k: random.beta(64, k, 0.4))
    xla = tf.function(lambda k: random.beta(64, k, 0.4), jit_compile=True)
    for fn in (graph, xla):
        np.testing.assert_array_equal(fn(key).numpy(), random.beta(64, key, 0.4).numpy())


def test_mixed_batches_are_bit_identical_in_eager_graph_and_xla():
    x = tf.constant(np.random.RandomState(1).rand(8, 8, 8, 1).astype(np.float32))
    soft = losses.targets("softmax", np.arange(8) % 10, 10, 0.1)
    key = tf.constant([7, 11], tf.int64)

    def both(k):
        return mix.mix(x, soft, k, mixup_alpha=0.4, cutmix_alpha=1.0)

    eager = both(key)
    for fn in (tf.function(both), tf.function(both, jit_compile=True)):
        for a, b in zip(fn(key), eager):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Another step key mixes otherwise; the targets stay distributions.
    other = both(tf.constant([7, 12], tf.int64))
    assert not np.array_equal(other[0].numpy(), eager[0].numpy())
    np.testing.assert_allclose(eager[1].numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_mixes_targets_by_the_pasted_area():
    images = tf.concat([tf.zeros([1, 8, 8, 1]), tf.ones([1, 8, 8, 1])], axis=0)
    soft = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    pasted, targets = mix.cutmix(images, soft, tf.constant([1, 2], tf.int64), 1.0)
    # Image 0 (zeros) got ones where the box is: its share of ones is the
    # weight of image 1's target in its mixed target.
    share = pasted.numpy()[0].mean()
    assert 0 < share < 1
    np.testing.assert_allclose(targets.numpy()[0], [1 - share, share], rtol=1e-6)


def test_a_step_with_smoothing_and_mixup_reports_the_plain_evaluation():
    rs = np.random.RandomState(0)
    x = rs.randn(64, 6).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    results = []
    for options in (
        lowtf.StepOptions(jit_compile=False),
        lowtf.StepOptions(jit_compile=False, label_smoothing=0.2, mixup=0.4),
    ):
        model = lowtf.mlp("tiny", seed=0)
        step = lowtf.TrainStep(model, tf.keras.optimizers.Adam(1e-2), options=options)
        metrics = step(x, y)
        results.append((metrics, lowtf.Evaluator(model, jit_compile=False)(x, y)))
    (plain, _), (smoothed, evaluation) = results
    # The training loss changed, the evaluation's cross-entropy is the plain one.
    assert abs(float(smoothed["cross_entropy"]) - float(plain["cross_entropy"])) > 1e-3
    logits = model(x).numpy()[:, 0]
    plain_ce = np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-abs(logits))))
    assert evaluation["cross_entropy"] == pytest.approx(plain_ce, rel=1e-5)
    with pytest.raises(ValueError, match="`mixup` \\(3\\) must be at most 2"):
        lowtf.StepOptions(mixup=3)


def test_gaussian_noise_matches_keras_in_distribution_and_is_off_at_inference():
    x = tf.zeros([4000, 8])
    ours = lowtf.nn.GaussianNoise(0.3, seed=5)
    with random.step_key(random.make_key(1, 7)):
        drawn = ours(x, training=True).numpy().ravel()
    theirs = tf.keras.layers.GaussianNoise(0.3, seed=5)(x, training=True).numpy().ravel()
    # Same law: mean 0, stddev 0.3, and the same quantiles (two-sample KS).
    assert abs(drawn.mean()) < 0.01 and drawn.std() == pytest.approx(0.3, rel=0.02)
    grid = np.linspace(-0.9, 0.9, 37)
    ks = np.abs(
        (drawn[:, None] <= grid).mean(0) - (theirs[:, None] <= grid).mean(0)
    ).max()
    assert ks < 0.02  # 32,000 draws each: the 1% critical value is ~0.013
    np.testing.assert_array_equal(ours(x + 1.0, training=False).numpy(), 1.0)
    # A new step draws anew; the same step the same.
    with random.step_key(random.make_key(1, 7)):
        again = ours(x, training=True).numpy().ravel()
    with random.step_key(random.make_key(1, 8)):
        other = ours(x, training=True).numpy().ravel()
    np.testing.assert_array_equal(again, drawn)
    assert not np.array_equal(other, drawn)
