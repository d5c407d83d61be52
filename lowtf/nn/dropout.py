"""Inverted dropout, in training only."""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks, random
from lowtf.nn.base import Layer


class Dropout(Layer):
    """Inverted dropout (Srivastava et al. 2014): training only.

    In training each unit is zeroed with probability ``rate`` and the kept
    ones are scaled by ``1 / (1 - rate)``, so the expected activation is
    unchanged and inference is the identity. The mask comes from a stateless
    draw keyed by the step's key and this layer's seed
    (:func:`lowtf.random.uniform`): different at every step, identical for
    the same seed and step whether the step runs eagerly, as a graph or
    under XLA. Called in training outside a lowtf step (no key), it
    falls back to the stateful ``tf.random.uniform``.

    Args:
      rate: drop probability in [0, 1); 0 makes the layer the identity.
      seed: folded into the step key; default a fresh one.
      name: module name.
    """

    def __init__(self, rate: float, *, seed: int | None = None, name=None):
        super().__init__(name=name)
        _checks.rate("rate", rate)
        self.rate = float(rate)
        self.seed = random.next_layer_seed() if seed is None else seed

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        if not training or self.rate == 0:
            return x
        uniform = random.uniform(tf.shape(x), self.seed, x.dtype)
        if uniform is None:
            uniform = tf.random.uniform(tf.shape(x), dtype=x.dtype)
        keep = uniform >= tf.cast(self.rate, x.dtype)
        scale = tf.cast(1.0 / (1.0 - self.rate), x.dtype)
        return tf.where(keep, x * scale, tf.zeros_like(x))
