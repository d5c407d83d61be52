"""Inverted dropout, in training only."""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks, random
from lowtf.nn.base import Layer, member_seeds, member_values


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

    Stacked (``members=K``), member ``k`` drops with ``rate[k]`` and draws
    its mask from its own step key and ``seed[k]``
    (:func:`lowtf.random.uniform_members`, under
    :func:`lowtf.random.member_words`): bit for bit the mask and the output
    of an ordinary Dropout with that rate and seed under member ``k``'s step
    key. Outside a ``member_words`` context it falls back to a stateful draw.

    Args:
      rate: drop probability in [0, 1); 0 makes the layer the identity.
        Stacked: one rate for all members or K rates.
      seed: folded into the step key; default a fresh one. Stacked: K seeds
        or None.
      name: module name.
      members: None (default), or K for a stacked layer.
    """

    _architecture = ()
    _per_member = ("rate", "seed")
    _optional = True

    @classmethod
    def identity(cls, name=None) -> Dropout:
        """A rate-0 Dropout: what a member without this layer has in its place."""
        return cls(0.0, seed=0, name=name)

    def __init__(self, rate, *, seed=None, name=None, members: int | None = None):
        super().__init__(name=name, members=members)
        rate = member_values("rate", rate, members, _checks.rate)
        # Stacked: K-tuples. The rate and the scale are Python floats (doubles)
        # cast as one tensor, so each member's match the ordinary layer's.
        if members is None:
            self.rate = float(rate)
            self._scale = 1.0 / (1.0 - self.rate)
        else:
            self.rate = tuple(float(r) for r in rate)
            self._scale = tuple(1.0 / (1.0 - r) for r in self.rate)
        self.seed = member_seeds(seed, members)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        if not training or not any(self._rates()):
            return x
        if self.members is None:
            uniform = random.uniform(tf.shape(x), self.seed, x.dtype)
        else:
            shape = x.shape[1:] if x.shape[1:].is_fully_defined() else tf.shape(x)[1:]
            seeds = tf.constant(self.seed, tf.int64)
            uniform = random.uniform_members(shape, seeds, x.dtype)
        if uniform is None:
            uniform = tf.random.uniform(tf.shape(x), dtype=x.dtype)
        # A rate of 0 keeps every unit (u >= 0) and scales by 1: the identity.
        keep = uniform >= self._along(tf.cast(self.rate, x.dtype), x)
        scale = self._along(tf.cast(self._scale, x.dtype), x)
        return tf.where(keep, x * scale, tf.zeros_like(x))

    def _rates(self) -> tuple:
        return self.rate if self.members is not None else (self.rate,)
