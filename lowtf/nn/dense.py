"""A fully connected layer."""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks
from lowtf.nn.base import Layer, activation_fn, member_seeds


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
        Stacked: K seeds (or None), member k's kernel being the one ``seed[k]``
        gives an ordinary layer.
      name: module name.
      trainable: False freezes the layer (see :class:`lowtf.nn.Layer`);
        default True.
      members: None (default) for an ordinary layer; K for a stack of K:
        kernel ``[K, in, units]``, bias ``[K, units]``, inputs
        ``[K, batch, in]``, one batched product for all members. Its
        regularizers and constraint may then hold per-member settings
        (``lowtf.Regularizer(l2=(...))``, ``lowtf.MaxNorm((...))``).
    """

    # What lowtf.nn.stack requires equal across members, and what it gathers
    # per member; each is a constructor argument stored under its own name.
    _architecture = ("units", "activation", "use_bias")
    _per_member = (
        "seed",
        "kernel_regularizer",
        "bias_regularizer",
        "kernel_constraint",
    )

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
        members: int | None = None,
    ):
        super().__init__(name=name, trainable=trainable, members=members)
        _checks.positive_int("units", units)
        self.units = units
        self.activation = activation_fn(activation)
        self.use_bias = use_bias
        self.kernel_regularizer = kernel_regularizer
        self.bias_regularizer = bias_regularizer
        self.kernel_constraint = kernel_constraint
        self.seed = member_seeds(seed, members)

    def build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError(f"{self.name}: the input's last dimension must be known")
        self.kernel = self.add_weight(
            "kernel",
            self._glorot([fan_in, self.units]),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                "bias",
                tf.zeros([*self._lead, self.units]),
                regularizer=self.bias_regularizer,
            )

    def call(self, x, training):
        # Converted by AutoGraph (the activation may be a user's function);
        # the affine part is lowtf's own and is not.
        return self.activation(self._affine(x))

    @tf.autograph.experimental.do_not_convert
    def _affine(self, x):
        # Checked here, at trace time, so a wrong batch fails with one readable
        # error instead of an XLA/matmul shape or dtype trace from the graph.
        fan_in = self.kernel.shape[-2]
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
        # Stacked: [K, B, in] @ [K, in, out], one batched product.
        y = tf.matmul(x, self._along(self.kernel, x))
        if self.use_bias:
            y = self._add_bias(y, self.bias)
        return y
