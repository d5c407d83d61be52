"""The geometric augmentation ops and the bilinear sampler behind them.

Translation moves images by whole pixels exactly, with gathers and a mask,
never by resampling. Rotation and zoom resample through :func:`affine`,
lowtf's own bilinear sampler made of gathers, because
``tf.raw_ops.ImageProjectiveTransformV3`` has no XLA kernel on CPU. Pixels
that a shift, rotation or zoom uncovers take ``value_range[0]``, the
background of digits. Users reach these ops as ``lowtf.augment.<name>``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from lowtf import _checks, random
from lowtf.augment._common import UNIT, as_images, with_prob


def translate(images, seed, max_shift: int = 1, *, prob=1.0, value_range=UNIT):
    """Shifts each image by whole pixels, up to ``max_shift`` in each direction.

    Each image draws a vertical and a horizontal shift, uniform over the
    integers ``-max_shift..max_shift``. The shift is exact: pixel ``(i, j)``
    of the output is pixel ``(i - dy, j - dx)`` of the input, or the
    background (``value_range[0]``) where that falls outside the image.

    Args:
      images: ``[batch, h, w, c]`` float images.
      seed: int ``[2]`` key.
      max_shift: largest shift in pixels (an integer >= 0), default 1.
      prob: probability of shifting each image, default 1.
      value_range: ``(low, high)`` of the pixel values, default ``(0, 1)``.
    """
    _checks.non_negative_int("max_shift", max_shift)
    images = as_images(images)
    if max_shift == 0:
        return images
    batch = tf.shape(images)[0]
    # floor(u * (2k + 1)) - k is uniform over -k..k (u < 1 keeps it <= k).
    u = random.uniform_from([2, batch], seed)
    shifts = tf.cast(tf.floor(u * (2 * max_shift + 1)), tf.int32) - max_shift
    shifted = shift(images, shifts[0], shifts[1], fill=value_range[0])
    return with_prob(images, shifted, prob, seed)


def shift(images, dy, dx, fill=0.0):
    """Moves image ``b`` down by ``dy[b]`` and right by ``dx[b]`` whole pixels.

    The exact, deterministic core of :func:`translate`: two gathers along
    the rows and columns, and a mask that fills what was uncovered.
    """
    images = as_images(images)
    fill = tf.cast(fill, images.dtype)
    shape = tf.shape(images)
    rows = tf.range(shape[1])[None, :] - tf.cast(dy, tf.int32)[:, None]  # [b, h]
    cols = tf.range(shape[2])[None, :] - tf.cast(dx, tf.int32)[:, None]  # [b, w]
    row_ok = (rows >= 0) & (rows < shape[1])
    col_ok = (cols >= 0) & (cols < shape[2])
    out = tf.gather(
        images, tf.clip_by_value(rows, 0, shape[1] - 1), axis=1, batch_dims=1
    )
    out = tf.gather(out, tf.clip_by_value(cols, 0, shape[2] - 1), axis=2, batch_dims=1)
    inside = row_ok[:, :, None, None] & col_ok[:, None, :, None]
    return tf.where(inside, out, fill)


def rotate(images, seed, max_degrees: float = 10.0, *, prob=1.0, value_range=UNIT):
    """Rotates each image about its centre by up to ``±max_degrees``.

    Bilinear sampling (:func:`affine`); the corners uncovered by the
    rotation take the background value.

    Args:
      images: ``[batch, h, w, c]`` float images.
      seed: int ``[2]`` key.
      max_degrees: largest rotation in degrees, in [0, 180]; default 10.
      prob, value_range: as in :func:`translate`.
    """
    _checks.non_negative("max_degrees", max_degrees)
    if max_degrees > 180:
        raise ValueError(f"`max_degrees` ({max_degrees!r}) must be <= 180")
    images = as_images(images)
    batch = tf.shape(images)[0]
    limit = math.radians(max_degrees)
    angle = random.uniform_from([batch], seed, -limit, limit)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The inverse map (output -> source) of a rotation by `angle`.
    matrix = tf.stack([tf.stack([cos, sin], -1), tf.stack([-sin, cos], -1)], -2)
    rotated = affine(images, matrix, fill=value_range[0])
    return with_prob(images, rotated, prob, seed)


def zoom(images, seed, max_zoom: float = 0.1, *, prob=1.0, value_range=UNIT):
    """Rescales each image about its centre by a factor in ``1 ± max_zoom``.

    A factor above 1 zooms in (a centre crop rescaled to full size), below 1
    zooms out (a smaller image framed by background); the output keeps the
    input's size. Height and width share the factor, so shapes keep their
    aspect. Combine with ``translate`` for a random crop position.

    Args:
      images: ``[batch, h, w, c]`` float images.
      seed: int ``[2]`` key.
      max_zoom: largest relative change of scale, in [0, 1); default 0.1.
      prob, value_range: as in :func:`translate`.
    """
    _checks.rate("max_zoom", max_zoom)
    images = as_images(images)
    batch = tf.shape(images)[0]
    scale = random.uniform_from([batch], seed, 1.0 - max_zoom, 1.0 + max_zoom)
    inverse = 1.0 / scale
    zeros = tf.zeros_like(inverse)
    matrix = tf.stack(
        [tf.stack([inverse, zeros], -1), tf.stack([zeros, inverse], -1)], -2
    )
    zoomed = affine(images, matrix, fill=value_range[0])
    return with_prob(images, zoomed, prob, seed)


def flip(images, seed, *, prob=0.5, value_range=UNIT):
    """Mirrors each image left-right with probability ``prob`` (default 0.5).

    Not for digits or text, whose mirror images are not realistic examples;
    no pipeline flips unless its spec names ``flip``.
    """
    del value_range  # A mirror image stays in range.
    images = as_images(images)
    return with_prob(images, tf.reverse(images, axis=[2]), prob, seed)


def affine(images, matrix, offset=None, fill=0.0):
    """Resamples images under per-image affine maps, bilinearly, with gathers.

    Output pixel ``p`` (``(row, col)``, measured from the image centre) reads
    the input at ``matrix[b] @ p + offset[b]``; the four pixels around that
    point are blended bilinearly, and points outside the image read
    ``fill``. Gathers and arithmetic only, so XLA compiles it on any device.

    Args:
      images: ``[batch, h, w, c]`` float images.
      matrix: ``[batch, 2, 2]`` inverse (output-to-source) linear maps.
      offset: ``[batch, 2]`` source offsets in pixels; default none.
      fill: value of the pixels outside the input, default 0.
    """
    images = as_images(images)
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    dtype = images.dtype
    centre = tf.cast(tf.stack([height - 1, width - 1]), dtype) / 2.0
    rows, cols = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    grid = (
        tf.cast(tf.reshape(tf.stack([rows, cols], -1), [-1, 2]), dtype) - centre
    )  # [hw, 2]
    source = (
        tf.einsum("bij,pj->bpi", tf.cast(matrix, dtype), grid) + centre
    )  # [b, hw, 2]
    if offset is not None:
        source += tf.cast(offset, dtype)[:, None, :]
    top_left = tf.floor(source)
    frac = source - top_left  # [b, hw, 2]
    top_left = tf.cast(top_left, tf.int32)
    flat = tf.reshape(images, [batch, -1, channels])
    fill = tf.cast(fill, dtype)
    out = tf.zeros([batch, height * width, channels], dtype)
    # Blend the four neighbours; a neighbour outside the image reads `fill`.
    for drow in (0, 1):
        for dcol in (0, 1):
            r = top_left[..., 0] + drow
            c = top_left[..., 1] + dcol
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            index = tf.clip_by_value(r, 0, height - 1) * width + tf.clip_by_value(
                c, 0, width - 1
            )
            values = tf.where(
                inside[..., None], tf.gather(flat, index, batch_dims=1), fill
            )
            weight = (frac[..., 0] if drow else 1 - frac[..., 0]) * (
                frac[..., 1] if dcol else 1 - frac[..., 1]
            )
            out += values * weight[..., None]
    return tf.reshape(out, shape)
