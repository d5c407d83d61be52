"""What every augmentation op shares: the batch check and the per-image choice.

The ops draw only through :mod:`lowtf.random` (:func:`lowtf.random.uniform_from`,
:func:`lowtf.random.normal`, :func:`lowtf.random.fold_in`), whose draws are
the same eagerly, in a graph and under XLA; any other draw would make
compiled and uncompiled training steps augment differently.
"""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks, random

# The value range every op defaults to: pixel values in [0, 1].
UNIT = (0.0, 1.0)


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


def with_prob(images, augmented, prob, seed):
    """Keeps ``augmented`` for each image with probability ``prob``."""
    probability("prob", prob)
    if prob >= 1:
        return augmented
    if prob <= 0:
        return images
    # A key of its own, so the choice is independent of the op's magnitude.
    u = random.uniform_from(tf.shape(images)[:1], random.fold_in(seed, 0x9E3779B1))
    return tf.where((u < prob)[:, None, None, None], augmented, images)
