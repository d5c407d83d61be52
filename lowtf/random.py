"""One stateless random generator for every mode: eager, graph and XLA.

Every random op in a lowtf training step (dropout masks, augmentation, batch
sampling) is *stateless*: its seed is a key derived from the run's seed and
the global step, so a run is reproducible from its seed, every step draws new
randomness, and a resumed run draws exactly what an uninterrupted one would.
The step publishes its key with :func:`step_key` while it traces the model;
a layer folds in its own seed (:func:`fold_in`, :func:`next_layer_seed`) so
that two dropout layers never share a mask.

**One generator.** The same seed and step give the same numbers eagerly, in
a ``tf.function`` graph and under ``jit_compile=True``, because whether a
step is compiled is not a property of the run: ``jit_compile="auto"``
depends on whether a GPU is present, so a run resumed on another machine
must continue the same random stream. Every draw here therefore goes through
operations whose results TensorFlow's kernels and XLA compute alike:

* keys are folded with explicit philox (:func:`fold_in`): the default
  ``alg="auto_select"`` picks another algorithm under XLA and gives other
  keys once the key's first word is large (TF 2.21);
* floats come from :func:`_hash_uniform`, a keyed integer hash of each
  element's index in pure uint32 arithmetic, never from
  ``tf.random.stateless_uniform``'s float draws, whose philox bits XLA turns
  into *other* float32 values than TensorFlow's kernels (its uint32, int32
  and float64 draws agree; BUILD_NOTES.md);
* the hash, not threefry, because under XLA on CPU it costs about a tenth of
  a threefry draw (0.03 vs 0.4 ms for a 500 x 512 dropout mask), and
  threefry has no kernel outside XLA;
* the permutation's integer pattern is a philox uint32 draw, which agrees.

Draw only through these functions inside a training step: any other draw
would make compiled and uncompiled steps train differently.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import tensorflow as tf

_state = threading.local()

# The algorithm of the integer draws (fold-ins, the permutation's pattern):
# philox integers are the same numbers under XLA and TensorFlow's kernels.
_INT_ALG = "philox"


@contextlib.contextmanager
def step_key(key):
    """Makes ``key`` (an int ``[2]`` tensor) the current step's random key.

    Args:
      key: the step's key, e.g. :func:`make_key` of the seed and step.
    """
    stack = _stack()
    stack.append(key)
    try:
        yield key
    finally:
        stack.pop()


@tf.autograph.experimental.do_not_convert
def current_key():
    """The innermost :func:`step_key`'s key, or None outside one."""
    stack = _stack()
    return stack[-1] if stack else None


@tf.autograph.experimental.do_not_convert
def make_key(seed, step) -> tf.Tensor:
    """The key for global step ``step`` of a run seeded with ``seed``."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])


@tf.autograph.experimental.do_not_convert
def fold_in(key, data) -> tf.Tensor:
    """A new int64 ``[2]`` key derived from ``key`` and an integer ``data``.

    The same key in every mode: philox, not the default ``auto_select``,
    which picks another algorithm under XLA.
    """
    return tf.random.experimental.stateless_fold_in(
        tf.cast(key, tf.int64), tf.cast(data, tf.int64), alg=_INT_ALG
    )


@tf.autograph.experimental.do_not_convert
def uniform(shape, seed: int, dtype=tf.float32):
    """U[0, 1) draws keyed by the current step and a layer's ``seed``.

    What dropout draws its masks from: :func:`uniform_from` of the step's
    key folded with ``seed``.

    Returns None outside a :func:`step_key` context.
    """
    key = current_key()
    if key is None:
        return None
    return _hash_uniform(shape, fold_in(key, seed), dtype)


def uniform_from(shape, key, minval=0.0, maxval=1.0, dtype=tf.float32):
    """Stateless U[minval, maxval) draws from ``key``, equal in every mode.

    The unit draws (:func:`_hash_uniform`) are exact multiples of
    ``2**-24`` for float32, the same bits eagerly, in a graph and under XLA;
    a rescaled draw may differ under XLA by one ulp (a fused multiply-add).

    Args:
      shape: the output shape (ints or scalar int tensors).
      key: an int ``[2]`` key, e.g. :func:`fold_in` of the step's key.
      minval: lower bound, included; default 0.
      maxval: upper bound, excluded; default 1.
      dtype: a float type, default float32.
    """
    return minval + (maxval - minval) * _hash_uniform(shape, key, dtype)


def normal(shape, key, dtype=tf.float32) -> tf.Tensor:
    """Standard normal draws from ``key`` by Box-Muller of :func:`uniform_from` pairs."""
    u = uniform_from(tf.concat([[2], shape], 0), key, dtype=dtype)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0]))  # 1 - u is in (0, 1].
    return radius * tf.cos(2.0 * math.pi * u[1])


@contextlib.contextmanager
def member_words(words):
    """Makes ``words`` the current step's fold-in words of K stacked members.

    What a stacked model's Dropout keys its masks with: member ``k``'s word
    is :func:`fold_in_words` of its own step key, ``make_key(seed_k, step)``
    (computed on the host, where philox costs microseconds), so that
    ``[words[k], d]`` is bit for bit ``fold_in(make_key(seed_k, step), d)``.

    Args:
      words: int64 ``[K]`` tensor (or array).
    """
    stack = _member_stack()
    stack.append(tf.convert_to_tensor(words, tf.int64))
    try:
        yield stack[-1]
    finally:
        stack.pop()


@tf.autograph.experimental.do_not_convert
def current_member_words():
    """The innermost :func:`member_words`' words, or None outside one."""
    stack = _member_stack()
    return stack[-1] if stack else None


@tf.autograph.experimental.do_not_convert
def uniform_members(shape, seeds, dtype=tf.float32):
    """``[K, *shape]`` U[0, 1) draws, row ``k`` member ``k``'s under its step key.

    Row ``k`` is bit for bit ``uniform_from(shape, [words[k], seeds[k]])``
    for the current :func:`member_words`, i.e. what :func:`uniform`
    ``(shape, seeds[k])`` draws under member ``k``'s :func:`step_key`; all
    rows in one pass (:func:`uniform_batch`).

    Args:
      shape: the shape of one member's draws (static ints, or an int tensor).
      seeds: int64 ``[K]`` layer seeds, one per member.
      dtype: a float type, default float32.

    Returns:
      The draws, or None outside a :func:`member_words` context.
    """
    words = current_member_words()
    if words is None:
        return None
    keys = tf.stack([words, tf.cast(seeds, tf.int64)], axis=1)
    if not tf.is_tensor(shape) and all(isinstance(d, int) for d in shape):
        return uniform_batch(shape, keys, dtype)
    # A shape known only at run time: uniform_batch's arithmetic, dynamic.
    shape = tf.cast(shape, tf.int32)
    k0, k1 = _hash_words(tf.transpose(keys))
    index = tf.cast(tf.range(tf.reduce_prod(shape)), tf.uint32)
    index = tf.reshape(index, tf.concat([[1], shape], 0))
    words = tf.concat([[-1], tf.ones_like(shape)], 0)
    return _hash_draws(index, tf.reshape(k0, words), tf.reshape(k1, words), dtype)


def _member_stack() -> list:
    if not hasattr(_state, "members"):
        _state.members = []
    return _state.members


# Candidates per Beta draw (Johnk's rejection): each is accepted with
# probability >= 1/2 for alpha <= 1 and 1/6 at alpha = 2, so 64 of them all
# fail with probability below 1e-5 there.
_BETA_CANDIDATES = 64


def beta(n: int, key, alpha, dtype=tf.float32) -> tf.Tensor:
    """``n`` draws of Beta(alpha, alpha) from ``key``, equal in every mode.

    Johnk's method (1964) on :func:`uniform_from` draws, with no loop: of
    64 candidate pairs ``(u, v)``, the first with ``x + y <= 1`` for
    ``x = u**(1/alpha)``, ``y = v**(1/alpha)`` gives ``x / (x + y)`` (computed in
    logs, so small alphas do not underflow). In the rare case that no pair is
    accepted (below 1e-5 for ``alpha <= 2``) the draw is 0.5. What mixup
    and CutMix mix with (Zhang et al. 2018; Yun et al. 2019).

    Args:
      n: number of draws (a static int).
      key: an int ``[2]`` key.
      alpha: the shape (> 0), a float or a scalar tensor.
      dtype: float type of the result (default float32).
    """
    # In float64, rounded to `dtype` at the end: XLA's log and exp differ from
    # the kernels' in the last bits, which float64 keeps far below a float32
    # ulp (the draws agree unless one lies within ~1e-16 of a rounding edge).
    u = uniform_from([n, _BETA_CANDIDATES, 2], key, dtype=tf.float64)
    # 1 - u lies in (0, 1]: its log is finite.
    logs = tf.math.log(1.0 - u) / tf.cast(alpha, tf.float64)
    log_x = logs[..., 0]
    log_sum = tf.reduce_logsumexp(logs, axis=-1)
    accepted = log_sum <= 0.0
    first = tf.argmax(tf.cast(accepted, tf.int32), axis=1, output_type=tf.int32)
    draws = tf.exp(log_x - log_sum)
    picked = tf.gather(draws, first, batch_dims=1)
    ok = tf.reduce_any(accepted, axis=1)
    return tf.cast(tf.where(ok, picked, 0.5), dtype)


# Significant bits of each float type: a draw keeps that many hash bits, so
# that it is exact in the type and strictly below 1.
_SIGNIFICANT_BITS = {tf.float16: 11, tf.bfloat16: 8, tf.float32: 24, tf.float64: 32}


def _hash_uniform(shape, key, dtype):
    """U[0, 1) from a keyed hash of each element's index.

    A counter-based generator in the spirit of Philox (Salmon et al. 2011,
    "Parallel random numbers: as easy as 1, 2, 3") with a cheaper mix: the
    index is multiplied by the golden ratio, then the two key words are
    mixed in by the two halves of MurmurHash3's 32-bit finalizer. XLA fuses
    the whole chain into one pass over the mask; a threefry draw takes 20
    rounds per pair of words. Integer arithmetic and an exact conversion of
    at most 24 bits (float32) make it the same numbers in every mode.
    Adequate for dropout masks and augmentation, not for cryptography or
    Monte Carlo estimates.
    """
    k0, k1 = _hash_words(key)
    index = tf.cast(tf.range(tf.reduce_prod(shape)), tf.uint32)
    return _hash_draws(tf.reshape(index, shape), k0, k1, dtype)


@tf.autograph.experimental.do_not_convert
def uniform_batch(shape, keys, dtype=tf.float32):
    """``[K, *shape]`` unit draws, row ``k`` those of ``keys[k]``, in one pass.

    Row ``k`` is bit for bit :func:`uniform_from` ``(shape, keys[k])``: the
    hash is element-wise in the key's words, so K keys cost one fused pass
    instead of K (what a population draws its members' dropout masks with).

    Args:
      shape: the shape of one row's draws (static ints).
      keys: int ``[K, 2]`` keys, e.g. a stack of :func:`fold_in` results.
      dtype: a float type, default float32.
    """
    keys = tf.convert_to_tensor(keys)
    k0, k1 = _hash_words(tf.transpose(keys))  # each [K]
    shape = [int(d) for d in shape]
    index = tf.cast(tf.range(math.prod(shape)), tf.uint32)
    index = tf.reshape(index, [1, *shape])
    words = [-1] + [1] * len(shape)
    return _hash_draws(index, tf.reshape(k0, words), tf.reshape(k1, words), dtype)


def _hash_words(key):
    """The two 32-bit words the hash mixes in, from a key's ``[2, ...]`` words."""
    xor, shr = tf.bitwise.bitwise_xor, tf.bitwise.right_shift
    key = tf.cast(key, tf.int64)  # a 32-bit key would not shift by 32 below
    # Two well-mixed 32-bit words from all 128 key bits: fold_in leaves the
    # folded-in data (a layer's seed) as a plain second word.
    low = tf.cast(key, tf.uint32)
    high = tf.cast(shr(key, tf.constant(32, key.dtype)), tf.uint32)
    k0 = _fmix32(xor(low[0], _fmix32(xor(low[1], _u32(0x9E3779B9)))))
    k1 = _fmix32(xor(high[0], _fmix32(xor(high[1], k0))))
    return k0, k1


def _hash_draws(index, k0, k1, dtype):
    """The unit draws of uint32 ``index`` under the words ``k0``, ``k1`` (broadcast)."""
    dtype = tf.as_dtype(dtype)
    if dtype not in _SIGNIFICANT_BITS:
        raise ValueError(f"`dtype` ({dtype.name}) must be a float type")
    xor, shr = tf.bitwise.bitwise_xor, tf.bitwise.right_shift
    h = xor(index * _u32(0x9E3779B9), k0)
    h = xor(h, shr(h, _u32(16))) * _u32(0x85EBCA6B)
    h = xor(h, k1)
    h = xor(h, shr(h, _u32(13))) * _u32(0xC2B2AE35)
    h = xor(h, shr(h, _u32(16)))
    bits = _SIGNIFICANT_BITS[dtype]
    draws = tf.cast(tf.bitwise.right_shift(h, _u32(32 - bits)), dtype)
    return draws * tf.constant(2.0**-bits, dtype)


@tf.autograph.experimental.do_not_convert
def permutation(size: int, key) -> tf.Tensor:
    """A pseudo-random permutation of ``[0, size)`` from ``key``, without a sort.

    ``argsort`` of uniform noise is the textbook shuffle, but a sort is slow
    under XLA on CPU (about 2.6 ms for 10,000 rows, more than the training
    steps of that epoch). This is :func:`permute` of every position instead.

    Args:
      size: the length of the permutation, ``1 <= size < 2**31`` (static).
      key: an int ``[2]`` key, e.g. :func:`make_key` of a seed and an epoch.

    Returns:
      An int64 vector holding each of ``0 .. size - 1`` once.
    """
    return permute(tf.range(size, dtype=tf.int64), size, key)


@tf.autograph.experimental.do_not_convert
def permute(position, size: int, key) -> tf.Tensor:
    """The entries at ``position`` of :func:`permutation` ``(size, key)``.

    Random access into a permutation, so a batch's rows cost a few
    element-wise passes over the batch, never a pass over the data set. The
    map is Kensler's hash permutation ("Correlated Multi-Jittered Sampling",
    Pixar 2013, ``permute``): a bijection of ``[0, 2**b)`` made of odd
    multiplications and masked xor-shifts, restricted to ``[0, size)`` by
    cycle walking and rotated by the key's pattern. It is not a uniform draw
    from all ``size!`` permutations, but positions, neighbours and
    successive epochs are as uncorrelated as SGD needs, and it gives the same
    numbers with or without XLA.

    Args:
      position: int tensor of positions in ``[0, size)``.
      size: the permutation's length, ``1 <= size < 2**31`` (static).
      key: an int ``[2]`` key.

    Returns:
      int64 tensor shaped like ``position``.
    """
    _check_size(size)
    return _permute(position, _u32(size), _pattern(key), _u32(_mask(size)))


@tf.autograph.experimental.do_not_convert
def permute_batch(position, sizes, patterns) -> tf.Tensor:
    """:func:`permute` of K permutations at once: row ``k`` of ``position``.

    Row ``k`` is bit for bit ``permute(position[k], sizes[k], keys[k])`` for
    ``patterns = permutation_patterns(keys)``: the rounds are element-wise
    given each row's pattern, mask and size, and the cycle walk leaves an
    entry alone once it has landed, so one loop over all rows ends each
    where its own loop would have.

    Args:
      position: int ``[K, B]`` positions, row ``k`` in ``[0, sizes[k])``.
      sizes: K static permutation lengths, each in ``[1, 2**31)``.
      patterns: K patterns (:func:`permutation_patterns` of the keys; a
        NumPy array or an integer tensor holding uint32 values).

    Returns:
      int64 ``[K, B]``.
    """
    sizes = [int(n) for n in sizes]
    for n in sizes:
        _check_size(n)
    pattern = tf.cast(tf.convert_to_tensor(patterns), tf.uint32)[:, None]
    limit = tf.constant(sizes, tf.uint32)[:, None]
    mask = tf.constant([_mask(n) for n in sizes], tf.uint32)[:, None]
    return _permute(position, limit, pattern, mask)


# -- philox on the host: many keys' fold-ins and patterns at once -------------
#
# A population needs, for each member, the key its single run would fold in
# at every step (dropout) and the pattern of every epoch's permutation. Drawn
# in the compiled step, one TensorFlow philox op per member made the graph
# grow with K, and even one vectorized philox (20 rounds) cost 1.5 s of XLA
# compilation per population; these tables cost the host microseconds.


def fold_in_words(keys) -> np.ndarray:
    """The word :func:`fold_in` draws from each key: ``fold_in(key, d)[0]``.

    ``fold_in(key, d)`` is ``[fold_in_words(key), d]`` for every ``d``, bit
    for bit (philox as TensorFlow's kernels and XLA run it, in NumPy).

    Args:
      keys: int64 ``[..., 2]`` keys (NumPy).

    Returns:
      int64 ``[...]``.
    """
    block = _philox(*_philox_scramble(keys))
    word = block[0].astype(np.uint64) | (block[1].astype(np.uint64) << np.uint64(32))
    return word.view(np.int64)


def permutation_patterns(keys) -> np.ndarray:
    """The pattern :func:`permute` draws from each key (uint32 ``[...]``)."""
    return _philox(*_philox_scramble(keys))[0]


# Philox-4x32-10 (Salmon et al. 2011) as TensorFlow runs it for alg="philox":
# multipliers, key increments, and the constant key with which
# random_ops_util._philox_scramble_seed turns a seed into a key and counter.
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
_PHILOX_SCRAMBLE_KEY = 0x02461E293EC8F720
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def _philox(k0, k1, counter):
    """The philox block (4 uint32 arrays) of key words ``k0, k1`` and a counter."""
    c0, c1, c2, c3 = counter
    for _ in range(10):
        p0 = c0.astype(np.uint64) * _PHILOX_M[0]
        p1 = c2.astype(np.uint64) * _PHILOX_M[1]
        lo0, hi0 = (p0 & _LOW).astype(np.uint32), (p0 >> _32).astype(np.uint32)
        lo1, hi1 = (p1 & _LOW).astype(np.uint32), (p1 >> _32).astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = k0 + _PHILOX_W[0], k1 + _PHILOX_W[1]
    return c0, c1, c2, c3


def _philox_scramble(keys):
    """Key words and counter philox draws from int64 ``keys`` ``[..., 2]`` with."""
    keys = np.ascontiguousarray(keys, np.int64).view(np.uint64)
    words = []
    for i in (0, 1):  # each int64 seed word as its low and high uint32 words
        words += [
            (keys[..., i] & _LOW).astype(np.uint32),
            (keys[..., i] >> _32).astype(np.uint32),
        ]
    ones = np.ones_like(words[0])
    mix = _philox(
        ones * np.uint32(_PHILOX_SCRAMBLE_KEY & 0xFFFFFFFF),
        ones * np.uint32(_PHILOX_SCRAMBLE_KEY >> 32),
        words,
    )
    zeros = np.zeros_like(words[0])
    return mix[0], mix[1], (zeros, zeros, mix[2], mix[3])


def _check_size(size):
    if not 1 <= size < 2**31:
        raise ValueError(f"`size` ({size}) must be in [1, 2**31)")


def _pattern(key):
    # One 32-bit pattern per key selects the permutation; a philox integer
    # draw, so that it is the same number in XLA and non-XLA graphs.
    return tf.random.stateless_uniform(
        [], seed=key, minval=None, maxval=None, dtype=tf.uint32, alg=_INT_ALG
    )


def _permute(position, limit, pattern, mask):
    """Kensler's map of ``position`` under ``pattern`` into ``[0, limit)``.

    ``limit``, ``pattern`` and ``mask`` (uint32) broadcast against ``position``.
    """
    index = _kensler_round(tf.cast(position, tf.uint32), mask, pattern)

    def walk(index):
        # A value landing in [size, 2**b) takes more rounds until it lands
        # inside; several rounds per loop iteration keep the loop short.
        for _ in range(4):
            index = tf.where(
                index >= limit, _kensler_round(index, mask, pattern), index
            )
        return (index,)

    (index,) = tf.while_loop(lambda i: tf.reduce_any(i >= limit), walk, (index,))
    return tf.cast(tf.math.floormod(index + pattern % limit, limit), tf.int64)


def _mask(size: int) -> int:
    """The all-ones mask of the smallest power of two holding ``size`` values."""
    return (1 << max((size - 1).bit_length(), 1)) - 1


def _fmix32(h):
    """MurmurHash3's 32-bit finalizer: every input bit flips half the output."""
    xor, shr = tf.bitwise.bitwise_xor, tf.bitwise.right_shift
    h = xor(h, shr(h, _u32(16))) * _u32(0x85EBCA6B)
    h = xor(h, shr(h, _u32(13))) * _u32(0xC2B2AE35)
    return xor(h, shr(h, _u32(16)))


def _u32(value) -> tf.Tensor:
    return tf.constant(value, tf.uint32)


def _kensler_round(i, mask, p):
    """Kensler's ``permute`` round: a bijection of ``[0, mask]`` (uint32)."""
    xor, band = tf.bitwise.bitwise_xor, tf.bitwise.bitwise_and

    def shr(v, bits):
        return tf.bitwise.right_shift(v, _u32(bits))

    i = xor(i, p) * _u32(0xE170893D)
    i = xor(i, shr(p, 16))
    i = xor(i, shr(band(i, mask), 4))
    i = xor(i, shr(p, 8)) * _u32(0x0929EB3F)
    i = xor(i, shr(p, 23))
    i = xor(i, shr(band(i, mask), 1)) * tf.bitwise.bitwise_or(_u32(1), shr(p, 27))
    i = i * _u32(0x6935FA69)
    i = xor(i, shr(band(i, mask), 11)) * _u32(0x74DCB303)
    i = xor(i, shr(band(i, mask), 2)) * _u32(0x9E501CC3)
    i = xor(i, shr(band(i, mask), 2)) * _u32(0xC860A3DF)
    i = band(i, mask)
    return xor(i, shr(i, 5))


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


_layer_seeds = iter(range(1_000_003, 2**31))


def next_layer_seed() -> int:
    """A process-unique default seed for a layer built without one."""
    return next(_layer_seeds)
