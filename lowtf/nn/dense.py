"""A fully connected layer."""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks, random
from lowtf.nn.base import Layer, activation_fn, glorot_uniform


class Dense(Layer):
    """A fully connected layer ``activation(x @ kernel + bias)``.

    Args:
      units: output width (> 0).
      activation: name (``"elu"``, ``"relu"``, ...) or callable; None is linear.
      use_bias: whether to add a bias (default True).
      kernel_regularizer: e.g. ``lowtf.l2(1e-4)``; default None.
      bias_regularizer: default None (biases are normally left free).
      kernel_constraint: e.g. ``lowtf.max_norm(3.0)``; default None.
      seed: seed of the Glorot-uniform kernel init; default a fresh one.
      name: module name.
      trainable: False freezes the layer (see :class:`lowtf.nn.Layer`);
        default True.
    """

    def __init__(
        self,
        units: int,
        activation=None,
        *,
        use_bias: bool = True,
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        seed: int | None = None,
        name: str | None = None,
        trainable: bool = True,
    ):
        super().__init__(name=name, trainable=trainable)
        _checks.positive_int("units", units)
        self.units = units
        self.activation = activation_fn(activation)
        self.use_bias = use_bias
        self.kernel_regularizer = kernel_regularizer
        self.bias_regularizer = bias_regularizer
        self.kernel_constraint = kernel_constraint
        self.seed = random.next_layer_seed() if seed is None else seed

    def build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError(f"{self.name}: the input's last dimension must be known")
        self.kernel = self.add_weight(
            "kernel",
            glorot_uniform([fan_in, self.units], self.seed),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                "bias", tf.zeros([self.units]), regularizer=self.bias_regularizer
            )

    def call(self, x, training):
        # Converted by AutoGraph (the activation may be a user's function);
        # the affine part is lowtf's own and is not.
        return self.activation(self._affine(x))

    @tf.autograph.experimental.do_not_convert
    def _affine(self, x):
        # Checked here, at trace time, so a wrong batch fails with one readable
        # error instead of an XLA/matmul shape or dtype trace from the graph.
        fan_in = self.kernel.shape[0]
        if x.shape[-1] is not None and x.shape[-1] != fan_in:
            raise ValueError(
                f"{self.name}: expects inputs with {fan_in} features (the width it "
                f"was built with), got shape {x.shape}; feed every batch at that width"
            )
        if x.dtype != self.kernel.dtype:
            raise ValueError(
                f"{self.name}: input dtype {x.dtype.name} differs from the kernel's "
                f"{self.kernel.dtype.name}; cast the input, e.g. x.astype(np.float32)"
            )
        y = tf.matmul(x, self.kernel)
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        return y
