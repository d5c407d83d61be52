"""Tests of lowtf.random: one generator in every mode, the sort-free shuffle."""

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import random

SIZES = (1, 2, 7, 500, 4097)


@pytest.mark.e2e
def test_permutation_holds_every_index_once_with_and_without_xla():
    # Every size in one function: one trace (and one XLA compile) per mode.
    outputs = []
    for jit in (False, True):
        fn = tf.function(
            lambda epoch: [
                random.permutation(size, random.make_key(3, epoch)) for size in SIZES
            ],
            jit_compile=jit,
        )
        outputs.append([t.numpy() for t in fn(tf.constant(5, tf.int64))])
    for size, graph, xla in zip(SIZES, *outputs):
        np.testing.assert_array_equal(np.sort(graph), np.arange(size))
        np.testing.assert_array_equal(graph, xla)


def test_permute_is_random_access_into_the_permutation():
    key = random.make_key(1, 2)
    full = random.permutation(1000, key).numpy()
    positions = tf.constant([999, 0, 500, 17], tf.int64)
    np.testing.assert_array_equal(
        random.permute(positions, 1000, key).numpy(), full[[999, 0, 500, 17]]
    )


def test_permutations_differ_by_key_and_look_shuffled():
    size, epochs = 1000, 200
    # One graph, called per epoch: the same draws as eager calls, faster.
    fn = tf.function(lambda e: random.permutation(size, random.make_key(7, e)))
    perms = np.stack([fn(tf.constant(e, tf.int64)).numpy() for e in range(epochs)])
    assert len({p.tobytes() for p in perms}) == epochs
    # Where element 0 lands is uniform over the ten deciles (chi-square, 9 dof,
    # 99.9% quantile 27.9), and neighbours in a permutation are uncorrelated.
    landing = np.argmax(perms == 0, axis=1)
    counts = np.bincount(landing * 10 // size, minlength=10)
    assert np.sum((counts - epochs / 10) ** 2 / (epochs / 10)) < 27.9
    gaps = np.abs(np.diff(perms, axis=1)).mean()
    assert gaps == pytest.approx((size + 1) / 3, rel=0.02)


@pytest.mark.e2e
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


MODES = {"eager": None, "graph": False, "xla": True}


def _in_mode(fn, mode):
    """``fn`` run eagerly, as a tf.function graph, or compiled by XLA."""
    return fn if MODES[mode] is None else tf.function(fn, jit_compile=MODES[mode])


@pytest.mark.parametrize("mode", ["graph", "xla"])
@pytest.mark.e2e
def test_every_draw_is_the_same_in_eager_graph_and_xla(mode):
    # A first key word above 2**32 is where auto_select fold-ins differed
    # under XLA; float32 philox draws differed for any key.
    def draws(key):
        with random.step_key(key):
            dropout = [
                random.uniform([64, 33], seed=7, dtype=dtype)
                for dtype in (tf.float32, tf.float64, tf.bfloat16)
            ]
        folded = random.fold_in(key, 11)
        return (
            *dropout,
            folded,
            random.uniform_from([500], folded),
            random.permutation(1000, folded),
        )

    key = tf.constant([2**40 + 3, 5], tf.int64)
    eager = [t.numpy() for t in draws(key)]
    other = [t.numpy() for t in _in_mode(draws, mode)(key)]
    for got, want in zip(other, eager):
        np.testing.assert_array_equal(got, want)
    # Rescaled and transformed draws may round differently under XLA (a fused
    # multiply-add, its own log and cos), by a few float32 ulps at most.
    scaled = _in_mode(lambda k: random.uniform_from([500], k, -2.0, 3.0), mode)(key)
    want = -2.0 + 5.0 * random.uniform_from([500], key)
    np.testing.assert_allclose(scaled, want, rtol=0, atol=2**-21)
    normal = _in_mode(lambda k: random.normal([8, 3, 5], k), mode)(key)
    np.testing.assert_allclose(
        normal, random.normal([8, 3, 5], key), rtol=1e-6, atol=1e-6
    )


def test_uniform_draws_sit_on_the_grid_of_their_type_below_one():
    key = random.make_key(4, 9)
    for dtype, bits in ((tf.float32, 24), (tf.float64, 32), (tf.float16, 11)):
        u = random.uniform_from([4096], key, dtype=dtype).numpy().astype(np.float64)
        np.testing.assert_array_equal(u * 2**bits, np.floor(u * 2**bits))
        assert 0 <= u.min() < 0.002 and 0.998 < u.max() < 1 and 0.48 < u.mean() < 0.52
    with pytest.raises(ValueError, match="`dtype` \\(int32\\) must be a float type"):
        random.uniform_from([4], key, dtype=tf.int32)


def test_normal_draws_have_unit_moments():
    z = random.normal([200_000], random.make_key(1, 1)).numpy()
    assert z.mean() == pytest.approx(0.0, abs=0.01)
    assert z.std() == pytest.approx(1.0, abs=0.01)
    assert np.mean(np.abs(z) > 3) == pytest.approx(0.0027, abs=0.0006)


def test_outside_a_step_key_there_is_no_current_key_and_no_dropout_draw():
    assert random.current_key() is None
    assert random.uniform([3], seed=1) is None
    with random.step_key(random.make_key(0, 1)) as outer:
        with random.step_key(random.make_key(0, 2)):
            assert int(random.current_key()[1]) == 2
        assert random.current_key() is outer
    assert random.current_key() is None


@pytest.mark.parametrize("jit", [False, True])
def test_dropout_draws_are_uniform_and_new_at_every_step(jit):
    @tf.function(jit_compile=jit)
    def draws(step):
        with random.step_key(random.make_key(0, step)):
            return random.uniform([400, 256], seed=7), random.uniform(
                [400, 256], seed=8
            )

    a, other_layer = (t.numpy() for t in draws(tf.constant(1, tf.int64)))
    b, _ = (t.numpy() for t in draws(tf.constant(2, tf.int64)))
    assert 0.0 <= a.min() and a.max() < 1.0
    assert a.mean() == pytest.approx(0.5, abs=0.005)
    assert a.std() == pytest.approx(np.sqrt(1 / 12), abs=0.005)
    for u, v in ((a, b), (a, other_layer), (a[:, 1:], a[:, :-1]), (a[1:], a[:-1])):
        assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.02
    np.testing.assert_array_equal(a, draws(tf.constant(1, tf.int64))[0].numpy())


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.e2e
def test_batched_draws_equal_each_keys_own_draws_bit_for_bit(mode):
    # What a population's step relies on: K members' masks and batch rows in
    # one pass are exactly those K single runs draw, sizes differing too.
    seeds = [0, 1, 5, 2**40 + 3]
    keys = [random.fold_in(random.make_key(s, 7 + s), 500 + s) for s in seeds]
    sizes = [9000, 9000, 1007, 513]

    def draws():
        position = tf.math.floormod(
            tf.range(500, dtype=tf.int64)[None, :] + [[0], [3], [6], [9]],
            tf.constant(sizes, tf.int64)[:, None],
        )
        patterns = random.permutation_patterns(np.stack([k.numpy() for k in keys]))
        batched = random.permute_batch(position, sizes, patterns)
        singles = [random.permute(position[k], sizes[k], keys[k]) for k in range(4)]
        masks = random.uniform_batch([37, 16], tf.stack(keys))
        each = [random.uniform_from([37, 16], k) for k in keys]
        return batched, tf.stack(singles), masks, tf.stack(each)

    batched, singles, masks, each = _in_mode(draws, mode)()
    assert batched.shape == (4, 500) and masks.shape == (4, 37, 16)
    np.testing.assert_array_equal(batched, singles)
    np.testing.assert_array_equal(masks, each)
    assert 0.45 < float(tf.reduce_mean(masks)) < 0.55


def test_host_philox_words_are_tensorflows_fold_ins_and_patterns_bit_for_bit():
    # A population draws its members' dropout keys and batch orders from
    # these NumPy tables; they must be the numbers TensorFlow's philox ops
    # give its single runs, for any int64 key (negative words and words
    # above 2**32 included).
    rng = np.random.default_rng(0)
    keys = np.concatenate(
        [
            rng.integers(-(2**63), 2**63 - 1, size=(12, 2), dtype=np.int64),
            rng.integers(0, 1000, size=(12, 2), dtype=np.int64),
            [[0, 0], [-1, -1], [2**63 - 1, -(2**63)], [2**40 + 3, 7]],
        ]
    )
    words = random.fold_in_words(keys.reshape(4, 7, 2))
    assert words.shape == (4, 7) and words.dtype == np.int64
    for key, word in zip(keys, words.reshape(-1)):
        np.testing.assert_array_equal(
            random.fold_in(key, 500 + int(key[0] % 7)), [word, 500 + int(key[0] % 7)]
        )
    assert len(np.unique(words)) == len(keys)
    size = 2**31 - 1
    permuted = random.permute_batch(
        tf.zeros([len(keys), 1], tf.int64),
        [size] * len(keys),
        random.permutation_patterns(keys),
    )
    singles = [random.permute(tf.zeros([1], tf.int64), size, k) for k in keys]
    np.testing.assert_array_equal(permuted, np.stack(singles))
