"""Mixing examples within a training batch: mixup and CutMix.

* **mixup** (Zhang et al. 2018, "mixup: Beyond Empirical Risk
  Minimization"): each example becomes ``lam * x + (1 - lam) * x'`` and its
  target ``lam * t + (1 - lam) * t'``;
* **CutMix** (Yun et al. 2019): a box covering a share ``1 - lam`` of each
  image is pasted from ``x'``, and the targets mix by the box's actual area.

``lam`` is one Beta(alpha, alpha) draw per batch and ``x'`` is the batch
reversed, as timm pairs examples (the batch order is already a random
permutation of the training rows, so the pairs are random too). Every draw
comes from the step's key through :mod:`lowtf.random` (folded with
:data:`MIX_SEED`), so eager, graph and XLA steps mix the same batch, every
step mixes anew, and a resumed run mixes as the uninterrupted one.

Targets are soft (:func:`lowtf.nn.losses.targets`, label smoothing
included); the reported training accuracy compares the prediction with the
mixed targets' argmax.
"""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks, random

# Folded into the step key: mixing never shares draws with dropout or augmentation.
MIX_SEED = 0x313C


def check_alpha(name: str, alpha) -> float:
    """A Beta shape ``alpha`` in [0, 2] (0: off); larger ones are refused."""
    return _checks.beta_shape(name, alpha)


def mixup(x, soft, key, alpha):
    """Mixes the batch ``x`` (any shape ``[batch, ...]``) and its soft targets.

    Args:
      x: the batch.
      soft: its soft targets, ``[batch, logits]`` or ``[batch]``.
      key: an int ``[2]`` key (e.g. the step key folded with MIX_SEED).
      alpha: the Beta shape (> 0).

    Returns:
      ``(mixed_x, mixed_targets)``.
    """
    lam = random.beta(1, random.fold_in(key, 0), alpha)[0]
    return _mix(x, lam), _mix(soft, lam)


def cutmix(images, soft, key, alpha):
    """Pastes a box of the reversed batch into ``images`` ``[batch, h, w, c]``.

    The box has about a share ``1 - lam`` of the area, a centre drawn
    uniformly and is clipped to the image; the targets mix by the area it
    actually covers.
    """
    height, width = images.shape[1], images.shape[2]
    lam = random.beta(1, random.fold_in(key, 0), alpha)[0]
    u = random.uniform_from([2], random.fold_in(key, 1))
    cut = tf.sqrt(1.0 - lam)
    half_h = tf.cast(tf.floor(height * cut), tf.int32) // 2
    half_w = tf.cast(tf.floor(width * cut), tf.int32) // 2
    cy = tf.cast(tf.floor(u[0] * height), tf.int32)
    cx = tf.cast(tf.floor(u[1] * width), tf.int32)
    rows, cols = tf.range(height), tf.range(width)
    inside_h = (rows >= cy - half_h) & (rows < cy + half_h)
    inside_w = (cols >= cx - half_w) & (cols < cx + half_w)
    box = inside_h[:, None] & inside_w[None, :]  # [h, w]
    pasted = tf.where(box[None, :, :, None], tf.reverse(images, [0]), images)
    covered = tf.reduce_sum(tf.cast(box, tf.float32)) / float(height * width)
    return pasted, _mix(soft, 1.0 - covered)


def mix(x, soft, key, *, mixup_alpha=0.0, cutmix_alpha=0.0, image_shape=None):
    """What a training step mixes: mixup, CutMix, or one of them per step.

    With both on, each step does one or the other (a fair draw from the
    key), as timm's ``switch_prob=0.5``. Flat examples are seen as images of
    ``image_shape`` for CutMix.
    """
    key = random.fold_in(key, MIX_SEED)
    if not cutmix_alpha:
        return mixup(x, soft, key, mixup_alpha)
    images = x
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        images = tf.reshape(x, (-1, *image_shape))
    if images.shape.rank != 4:
        raise ValueError(
            f"CutMix needs images [batch, h, w, c], got examples of shape "
            f"{tuple(x.shape[1:])}; give the image shape (e.g. (8, 8, 1))"
        )

    def cut():
        pasted, targets = cutmix(images, soft, random.fold_in(key, 2), cutmix_alpha)
        return tf.reshape(pasted, tf.shape(x)), targets

    if not mixup_alpha:
        return cut()
    coin = random.uniform_from([], random.fold_in(key, 3))
    mixed = mixup(x, soft, key, mixup_alpha)
    pasted = cut()
    use_cut = coin < 0.5
    return tf.where(use_cut, pasted[0], mixed[0]), tf.where(use_cut, pasted[1], mixed[1])


def _mix(t, lam):
    """``lam * t + (1 - lam) * reversed(t)``, the same bits in every mode.

    In float64 each product of two float32 numbers is exact, so XLA's fused
    multiply-add and the kernels' separate ops give one sum, rounded once
    to float64 and once to float32 (in float32 they differed by an ulp).
    """
    lam = tf.cast(lam, tf.float32)
    wide = tf.cast(t, tf.float64)
    mixed = tf.cast(lam, tf.float64) * wide + tf.cast(1.0 - lam, tf.float64) * tf.reverse(
        wide, [0]
    )
    return tf.cast(mixed, t.dtype)
