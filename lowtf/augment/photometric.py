"""The photometric augmentation ops: brightness, contrast and noise.

Each changes pixel values, not positions, by a per-image (brightness,
contrast) or per-pixel (noise) random amount scaled to the value range, then
clips back into ``value_range``. Users reach these ops as
``lowtf.augment.<name>``.
"""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks, random
from lowtf.augment._common import UNIT, as_images, with_prob


def brightness(images, seed, max_delta: float = 0.1, *, prob=1.0, value_range=UNIT):
    """Adds a per-image offset up to ``±max_delta`` of the value range, then clips.

    Args:
      max_delta: largest offset as a fraction of ``high - low``, in [0, 1);
        default 0.1.
      images, seed, prob, value_range: as in :func:`lowtf.augment.translate`.
    """
    _checks.rate("max_delta", max_delta)
    images = as_images(images)
    low, high = value_range
    delta = _per_image(images, seed, -max_delta, max_delta) * (high - low)
    brighter = images + tf.cast(delta, images.dtype)
    return _clipped(images, brighter, prob, seed, value_range)


def contrast(images, seed, max_change: float = 0.2, *, prob=1.0, value_range=UNIT):
    """Scales each image's deviation from its mean by ``1 ± max_change``, then clips.

    Args:
      max_change: largest relative change of contrast, in [0, 1); default 0.2.
      images, seed, prob, value_range: as in :func:`lowtf.augment.translate`.
    """
    _checks.rate("max_change", max_change)
    images = as_images(images)
    factor = _per_image(images, seed, 1.0 - max_change, 1.0 + max_change)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    changed = (images - mean) * tf.cast(factor, images.dtype) + mean
    return _clipped(images, changed, prob, seed, value_range)


def noise(images, seed, stddev: float = 0.05, *, prob=1.0, value_range=UNIT):
    """Adds gaussian noise of ``stddev`` (a fraction of the value range), then clips.

    Args:
      stddev: noise standard deviation as a fraction of ``high - low``, >= 0;
        default 0.05.
      images, seed, prob, value_range: as in :func:`lowtf.augment.translate`.
    """
    _checks.non_negative("stddev", stddev)
    images = as_images(images)
    low, high = value_range
    draws = tf.cast(random.normal(tf.shape(images), seed), images.dtype)
    noisy = images + draws * tf.cast(stddev * (high - low), images.dtype)
    return _clipped(images, noisy, prob, seed, value_range)


def _per_image(images, seed, minval, maxval):
    """One U[minval, maxval) draw per image, shaped ``[batch, 1, 1, 1]``."""
    return random.uniform_from([tf.shape(images)[0], 1, 1, 1], seed, minval, maxval)


def _clipped(images, changed, prob, seed, value_range):
    """``changed`` clipped into ``value_range``, for each image with ``prob``.

    Clipping keeps every output a valid image of the range: a brightened
    digit saturates at ``high``, a darkened background stays at ``low``.
    """
    low, high = value_range
    return with_prob(images, tf.clip_by_value(changed, low, high), prob, seed)
