"""A training set held in memory and batched inside the compiled step."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lowtf import _checks, random
from lowtf.data import checks


class InMemoryBatches(tf.Module):
    """A training set held in memory, batched inside the compiled step.

    Batches are drawn without replacement from a fresh permutation every
    epoch (a stateless shuffle keyed by ``seed`` and the epoch number, see
    :func:`lowtf.random.permute`), the incomplete tail of each epoch is dropped,
    and the position (epoch, cursor) lives in variables, so a checkpoint
    resumes the exact stream.

    Args:
      x: features, ``[n, ...]``.
      y: labels, ``[n]``.
      batch_size: examples per global batch (<= n).
      seed: seed of the per-epoch shuffles, default 0.
    """

    def __init__(self, x, y, batch_size: int, *, seed: int = 0, name=None):
        super().__init__(name=name)
        _checks.positive_int("batch_size", batch_size)
        self.x = tf.convert_to_tensor(x)
        self.y = tf.convert_to_tensor(y)
        n = int(self.x.shape[0])
        if int(self.y.shape[0]) != n:
            raise ValueError(f"x has {n} rows but y has {int(self.y.shape[0])}")
        # The same rules as a batch given to the step, checked here and not
        # deep inside the compiled loop that draws the batches (the labels
        # wait for the model's head, in TrainStep.build).
        checks.check_batch(self.x, self.y)
        checks.check_finite(np.asarray(self.x), "x")
        if batch_size > n:
            raise ValueError(f"`batch_size` ({batch_size}) exceeds the {n} examples")
        self.size = n
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.cursor = tf.Variable(0, dtype=tf.int64, trainable=False, name="cursor")
        self._offsets = tf.range(batch_size, dtype=tf.int64)
        # A cache of the permutation of epoch `order_epoch`, for the
        # materialized path of `next`; the per-batch path leaves it stale.
        self.order = tf.Variable(self._permutation(0), trainable=False, name="order")
        self.order_epoch = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="order_epoch"
        )

    def example(self):
        """The first ``(x, y)`` example as a batch of one, for building a model."""
        return self.x[:1], self.y[:1]

    def _permutation(self, epoch):
        return random.permutation(self.size, random.make_key(self.seed, epoch))

    @tf.autograph.experimental.do_not_convert
    def next(self, *, per_batch: bool = False):
        """The next ``(x, y)`` batch; advances the position variables.

        Args:
          per_batch: compute the batch's rows of the epoch's permutation
            directly (a few element-wise passes over the batch: best under
            XLA) instead of materializing the whole permutation once per
            epoch (fewer ops per step: best in a plain TF graph). Both give
            the same batches. Default False.
        """
        # Not converted by AutoGraph (converting lowtf's own functions took
        # seconds of every trace): the branches on tensors are explicit.
        wrap = self.cursor + self.batch_size > self.size  # the tail is dropped
        self.epoch.assign_add(tf.cast(wrap, self.epoch.dtype))
        self.cursor.assign(tf.where(wrap, tf.zeros_like(self.cursor), self.cursor))
        positions = self.cursor + self._offsets
        if per_batch:
            index = random.permute(
                positions, self.size, random.make_key(self.seed, self.epoch)
            )
        else:

            def reorder():
                self.order.assign(self._permutation(self.epoch))
                self.order_epoch.assign(self.epoch)
                return tf.constant(True)

            # Once per epoch, not per step: the whole permutation.
            tf.cond(
                tf.not_equal(self.order_epoch, self.epoch),
                reorder,
                lambda: tf.constant(False),
            )
            # A gather, not tf.slice: XLA would take the slice's start as a
            # compile-time constant and compile once per cursor value.
            index = tf.gather(self.order, positions)
        self.cursor.assign_add(self.batch_size)
        return tf.gather(self.x, index), tf.gather(self.y, index)
