"""What every augmentation op shares: the batch check and its random draws.

The draws here are stateless and *the same with and without XLA* for the
same RNG algorithm. TensorFlow 2.21 gives other float32 philox values and
other ``auto_select`` fold-ins under XLA (BUILD_NOTES.md), so floats are made
from raw uint32 draws and keys are folded with explicit philox. The ops of
:mod:`lowtf.augment` draw only through these functions; any other draw would
make compiled and uncompiled training steps augment differently.
"""

from __future__ import annotations

import math

import tensorflow as tf

from lowtf import _checks, random

# The keyword defaults every op shares: pixel values in [0, 1], philox draws.
UNIT = (0.0, 1.0)
ALG = random.GRAPH_ALG


def as_images(images):
    """``images`` as a tensor, which must be a ``[batch, h, w, c]`` batch."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(
            f"images must be a batch [batch, height, width, channels]; got shape {images.shape}"
        )
    return images


def probability(name, value):
    """Checks that ``value`` is a probability in [0, 1] (1 included, unlike a rate)."""
    _checks.finite(name, value)
    if not 0 <= value <= 1:
        raise ValueError(f"`{name}` ({value!r}) must be in [0, 1]")


def with_prob(images, augmented, prob, seed, alg):
    """Keeps ``augmented`` for each image with probability ``prob``."""
    probability("prob", prob)
    if prob >= 1:
        return augmented
    if prob <= 0:
        return images
    # A key of its own, so the choice is independent of the op's magnitude.
    u = uniform(tf.shape(images)[:1], fold_in(seed, 0x9E3779B1), alg)
    return tf.where((u < prob)[:, None, None, None], augmented, images)


def uniform(shape, seed, alg, minval=0.0, maxval=1.0):
    """Stateless U[minval, maxval) float32 draws, equal with and without XLA.

    Built from raw uint32 draws, because TensorFlow's kernels and XLA turn
    the same philox bits into *different* float32 values (measured with TF
    2.21: ``stateless_uniform(alg="philox")`` differs under
    ``jit_compile=True``, while its uint32, int32 and float64 draws agree).
    """
    bits = tf.random.stateless_uniform(
        shape, seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg=alg
    )
    # The top 24 bits fill a float32 mantissa exactly: u in [0, 1 - 2^-24].
    u = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
    return minval + (maxval - minval) * u


def normal(shape, seed, alg):
    """Standard normal draws by Box-Muller from :func:`uniform` pairs."""
    u = uniform(tf.concat([[2], shape], 0), seed, alg)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0]))  # 1 - u is in (0, 1].
    return radius * tf.cos(2.0 * math.pi * u[1])


def fold_in(key, data):
    """A new key from ``key`` and ``data``, equal with and without XLA.

    ``tf.random.experimental.stateless_fold_in`` (and :func:`lowtf.random.fold_in`)
    default to ``alg="auto_select"``, which under XLA gives other keys than
    TensorFlow's kernels once the key's first word is large; philox int64
    draws agree in both modes.
    """
    return tf.random.experimental.stateless_fold_in(
        tf.cast(key, tf.int64), tf.cast(data, tf.int64), alg=random.GRAPH_ALG
    )
