"""Batch normalization."""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks
from lowtf.nn.base import Layer


class BatchNorm(Layer):
    """Batch normalization (Ioffe & Szegedy 2015) over the last axis.

    Training normalizes with the batch's mean and variance and updates the
    moving averages in place (``moving = momentum * moving + (1 - momentum)
    * batch``) inside the step; inference uses the moving statistics. The
    moving statistics are ON_READ variables averaged across replicas, as
    Keras does, so they behave under ``tf.distribute``.

    Args:
      momentum: moving-average momentum in [0, 1), default 0.99.
      epsilon: variance floor, default 1e-3.
      center: learn an offset (beta), default True.
      scale: learn a scale (gamma), default True.
      name: module name.
      trainable: False freezes gamma and beta and, as in Keras, runs the
        layer in inference mode (moving statistics, not updated) even in a
        training step; default True.
      members: None (default) for an ordinary layer; K for a stack of K:
        every variable ``[K, channels]``, each member normalizing with its
        own batch statistics (over every axis but the member and channel
        axes) and moving its own averages by the same formula.
    """

    _architecture = ("momentum", "epsilon", "center", "scale")
    _per_member = ()

    def __init__(
        self,
        *,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        name=None,
        trainable=True,
        members=None,
    ):
        super().__init__(name=name, trainable=trainable, members=members)
        _checks.rate("momentum", momentum)
        _checks.positive("epsilon", epsilon)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        depth = [*self._lead, input_shape[-1]]
        self.gamma = self.add_weight("gamma", tf.ones(depth)) if self.scale else None
        self.beta = self.add_weight("beta", tf.zeros(depth)) if self.center else None
        local = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
        )
        self.moving_mean = self.add_weight("moving_mean", tf.zeros(depth), **local)
        self.moving_variance = self.add_weight(
            "moving_variance", tf.ones(depth), **local
        )

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        # A frozen batch norm is a fixed affine map, as in Keras: its batch
        # statistics would otherwise keep moving the layers after it.
        if training and self.trainable:
            # Stacked, each member's own statistics: the member axis stays.
            axes = list(range(len(self._lead), x.shape.rank - 1))
            mean, variance = tf.nn.moments(x, axes=axes)
            decay = tf.cast(1.0 - self.momentum, x.dtype)
            self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
            self.moving_variance.assign_sub((self.moving_variance - variance) * decay)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        along = self._along
        return tf.nn.batch_normalization(
            x,
            along(mean, x),
            along(variance, x),
            along(self.beta, x),
            along(self.gamma, x),
            self.epsilon,
        )
