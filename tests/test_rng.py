"""Tests of the sort-free shuffle in lowtf.rng and the batches it feeds."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import random


@pytest.mark.parametrize("size", [1, 2, 7, 500, 4097])
def test_permutation_holds_every_index_once_with_and_without_xla(size):
    outputs = []
    for jit in (False, True):
        fn = tf.function(
            lambda epoch: random.permutation(size, random.make_key(3, epoch)), jit_compile=jit
        )
        outputs.append(fn(tf.constant(5, tf.int64)).numpy())
    np.testing.assert_array_equal(np.sort(outputs[0]), np.arange(size))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_permute_is_random_access_into_the_permutation():
    key = random.make_key(1, 2)
    full = random.permutation(1000, key).numpy()
    positions = tf.constant([999, 0, 500, 17], tf.int64)
    np.testing.assert_array_equal(random.permute(positions, 1000, key).numpy(), full[[999, 0, 500, 17]])


def test_permutations_differ_by_key_and_look_shuffled():
    size, epochs = 1000, 200
    perms = np.stack([random.permutation(size, random.make_key(7, e)).numpy() for e in range(epochs)])
    assert len({p.tobytes() for p in perms}) == epochs
    # Where element 0 lands is uniform over the ten deciles (chi-square, 9 dof,
    # 99.9% quantile 27.9), and neighbours in a permutation are uncorrelated.
    landing = np.argmax(perms == 0, axis=1)
    counts = np.bincount(landing * 10 // size, minlength=10)
    assert np.sum((counts - epochs / 10) ** 2 / (epochs / 10)) < 27.9
    gaps = np.abs(np.diff(perms, axis=1)).mean()
    assert gaps == pytest.approx((size + 1) / 3, rel=0.02)


def test_per_batch_rows_equal_the_materialized_permutation():
    x = np.zeros([1000, 2], np.float32)
    y = np.arange(1000)
    eager = lowtf.InMemoryBatches(x, y, 300, seed=4)
    compiled = lowtf.InMemoryBatches(x, y, 300, seed=4)
    next_rows = tf.function(lambda: compiled.next(per_batch=True)[1], jit_compile=True)
    for _ in range(7):  # crosses two epoch boundaries
        np.testing.assert_array_equal(eager.next()[1].numpy(), next_rows().numpy())
    assert int(eager.epoch) == int(compiled.epoch) == 2
    assert int(compiled.order_epoch) == 0  # the per-batch path leaves the cache alone


def test_xla_dropout_draws_are_uniform_and_new_at_every_step():
    @tf.function(jit_compile=True)
    def draws(step):
        with random.step_key(random.make_key(0, step), random.XLA_ALG):
            return random.uniform([400, 256], seed=7), random.uniform([400, 256], seed=8)

    a, other_layer = (t.numpy() for t in draws(tf.constant(1, tf.int64)))
    b, _ = (t.numpy() for t in draws(tf.constant(2, tf.int64)))
    assert 0.0 <= a.min() and a.max() < 1.0
    assert a.mean() == pytest.approx(0.5, abs=0.005)
    assert a.std() == pytest.approx(np.sqrt(1 / 12), abs=0.005)
    for u, v in ((a, b), (a, other_layer), (a[:, 1:], a[:, :-1]), (a[1:], a[:-1])):
        assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.02
    np.testing.assert_array_equal(a, draws(tf.constant(1, tf.int64))[0].numpy())
