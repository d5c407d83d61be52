"""Additive Gaussian noise, in training only."""

from __future__ import annotations

import math

import tensorflow as tf

from lowtf import _checks, random
from lowtf.nn.base import Layer, member_seeds, member_values


class GaussianNoise(Layer):
    """Adds zero-mean Gaussian noise of standard deviation ``stddev`` in training.

    A regularizer as Keras' ``GaussianNoise`` (Bishop 1995: training with
    input noise is akin to Tikhonov regularization): in training the layer
    returns ``x + stddev * n`` with ``n`` standard normal, at inference ``x``
    itself. The draws come from the step's key folded with the layer's
    ``seed`` (:func:`lowtf.random.normal`: Box-Muller of the one generator's
    uniforms), new at every step and the same for the same seed and step;
    outside a lowtf step (no key) it falls back to ``tf.random.normal``.

    Stacked (``members=K``), member ``k`` adds noise of ``stddev[k]`` drawn
    under its own step key and ``seed[k]`` (:func:`lowtf.random.member_words`),
    the draws of an ordinary layer with that stddev and seed.

    Args:
      stddev: the standard deviation (>= 0; 0 is the identity). Stacked: one
        for all members or K values.
      seed: folded into the step key; default a fresh one. Stacked: K seeds
        or None.
      name: module name.
      members: None (default), or K for a stacked layer.
    """

    _architecture = ()
    _per_member = ("stddev", "seed")
    _optional = True

    def __init__(self, stddev, *, seed=None, name=None, members: int | None = None):
        super().__init__(name=name, members=members)
        stddev = member_values("stddev", stddev, members, _checks.non_negative)
        self.stddev = float(stddev) if members is None else tuple(map(float, stddev))
        self.seed = member_seeds(seed, members)

    @classmethod
    def identity(cls, name=None) -> GaussianNoise:
        """A stddev-0 layer: what a member without this layer has in its place."""
        return cls(0.0, seed=0, name=name)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        stddevs = self.stddev if self.members is not None else (self.stddev,)
        if not training or not any(stddevs):
            return x
        if self.members is None:
            key = random.current_key()
            if key is None:
                return x + self.stddev * tf.random.normal(tf.shape(x), dtype=x.dtype)
            noise = random.normal(tf.shape(x), random.fold_in(key, self.seed), x.dtype)
        else:
            shape = x.shape[1:] if x.shape[1:].is_fully_defined() else tf.shape(x)[1:]
            seeds = tf.constant(self.seed, tf.int64)
            pairs = tf.concat([[2], shape], 0) if tf.is_tensor(shape) else [2, *shape]
            u = random.uniform_members(pairs, seeds, x.dtype)
            if u is None:
                return x + self._along(tf.cast(self.stddev, x.dtype), x) * tf.random.normal(
                    tf.shape(x), dtype=x.dtype
                )
            # Box-Muller of each member's pair of draws, as random.normal.
            radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[:, 0]))
            noise = radius * tf.cos(2.0 * math.pi * u[:, 1])
        return x + self._along(tf.cast(self.stddev, x.dtype), x) * noise
