"""tf.Module layers: Dense, Conv2D, pooling, Dropout, BatchNorm, Reshape, Sequential.

Each layer takes its hyper-parameters (and rejects bad ones) in the
constructor, makes its variables on the first call from the input's static
shape, and takes the mode as a call argument: ``layer(x, training=...)``.
A weight can carry a regularizer (:mod:`lowtf.regularizers`) and a
constraint (:mod:`lowtf.constraints`); by default only kernels do, never
biases or batch-norm scale and offset.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from lowtf import _checks, _xla_cpu, rng

_ACTIVATIONS = {
    None: tf.identity,
    "linear": tf.identity,
    "elu": tf.nn.elu,
    "relu": tf.nn.relu,
    "selu": tf.nn.selu,
    "gelu": tf.nn.gelu,
    "tanh": tf.math.tanh,
    "sigmoid": tf.math.sigmoid,
    "swish": tf.nn.silu,
}

ACTIVATIONS = tuple(name for name in _ACTIVATIONS if name)


def activation_fn(activation) -> Callable:
    """Maps an activation name (or a callable) to the function it names."""
    if callable(activation):
        return activation
    _checks.one_of("activation", activation, ACTIVATIONS + (None,))
    return _ACTIVATIONS[activation]


class Layer(tf.Module):
    """Base layer: lazy build, weights with regularizers and constraints."""

    def __init__(self, name: str | None = None):
        super().__init__(name=name)
        self._built = False
        self._lowtf_regularizers = []
        self._lowtf_constraints = []

    def __call__(self, x, training: bool = False):
        x = tf.convert_to_tensor(x)
        if not self._built:
            with self.name_scope:
                self.build(x.shape)
            self._built = True
        return self.call(x, training=training)

    def build(self, input_shape: tf.TensorShape) -> None:
        """Makes the layer's variables; the default layer has none."""

    def call(self, x, training: bool):
        raise NotImplementedError

    def add_weight(
        self,
        name: str,
        initial_value,
        *,
        regularizer=None,
        constraint=None,
        trainable: bool = True,
        **kwargs,
    ) -> tf.Variable:
        """Makes a variable and records its regularizer and constraint."""
        var = tf.Variable(initial_value, name=name, trainable=trainable, **kwargs)
        if regularizer is not None:
            self._lowtf_regularizers.append((var, regularizer))
        if constraint is not None:
            self._lowtf_constraints.append((var, constraint))
        return var


def glorot_uniform(shape: Sequence[int], seed: int, dtype=tf.float32) -> tf.Tensor:
    """Glorot & Bengio (2010) uniform init, stateless from ``seed``.

    Fans follow Keras: a kernel's last axis is fan-out, the one before it
    fan-in, and any leading (spatial) axes multiply both.
    """
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tf.random.stateless_uniform(
        shape, seed=[seed, 0], minval=-limit, maxval=limit, dtype=dtype
    )


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
    ):
        super().__init__(name=name)
        _checks.positive_int("units", units)
        self.units = units
        self.activation = activation_fn(activation)
        self.use_bias = use_bias
        self.kernel_regularizer = kernel_regularizer
        self.bias_regularizer = bias_regularizer
        self.kernel_constraint = kernel_constraint
        self.seed = rng.next_layer_seed() if seed is None else seed

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
        return self.activation(y)


class Dropout(Layer):
    """Inverted dropout (Srivastava et al. 2014): training only.

    In training each unit is zeroed with probability ``rate`` and the kept
    ones are scaled by ``1 / (1 - rate)``, so the expected activation is
    unchanged and inference is the identity. The mask comes from a stateless
    draw (threefry under XLA, philox otherwise) keyed by the step's key (:mod:`lowtf.rng`) and this layer's
    seed: different at every step, identical for the same seed and step, and
    compilable by XLA. Called in training outside a lowtf step (no key), it
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
        self.seed = rng.next_layer_seed() if seed is None else seed

    def call(self, x, training):
        if not training or self.rate == 0:
            return x
        uniform = rng.uniform(tf.shape(x), self.seed, x.dtype)
        if uniform is None:
            uniform = tf.random.uniform(tf.shape(x), dtype=x.dtype)
        keep = uniform >= tf.cast(self.rate, x.dtype)
        scale = tf.cast(1.0 / (1.0 - self.rate), x.dtype)
        return tf.where(keep, x * scale, tf.zeros_like(x))


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
    """

    def __init__(
        self, *, momentum=0.99, epsilon=1e-3, center=True, scale=True, name=None
    ):
        super().__init__(name=name)
        _checks.rate("momentum", momentum)
        _checks.positive("epsilon", epsilon)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        depth = input_shape[-1]
        self.gamma = self.add_weight("gamma", tf.ones([depth])) if self.scale else None
        self.beta = self.add_weight("beta", tf.zeros([depth])) if self.center else None
        local = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
        )
        self.moving_mean = self.add_weight("moving_mean", tf.zeros([depth]), **local)
        self.moving_variance = self.add_weight(
            "moving_variance", tf.ones([depth]), **local
        )

    def call(self, x, training):
        if training:
            axes = list(range(x.shape.rank - 1))
            mean, variance = tf.nn.moments(x, axes=axes)
            decay = tf.cast(1.0 - self.momentum, x.dtype)
            self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
            self.moving_variance.assign_sub((self.moving_variance - variance) * decay)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return tf.nn.batch_normalization(
            x, mean, variance, self.beta, self.gamma, self.epsilon
        )


class Flatten(Layer):
    """Reshapes ``[batch, ...]`` to ``[batch, prod(...)]``."""

    def call(self, x, training):
        width = math.prod(x.shape[1:]) if x.shape[1:].is_fully_defined() else -1
        return tf.reshape(x, [-1, width])


class Lambda(Layer):
    """Wraps a function of ``x`` (e.g. an activation) as a layer."""

    def __init__(self, fn: Callable, name=None):
        super().__init__(name=name)
        self.fn = fn

    def call(self, x, training):
        return self.fn(x)


class Sequential(Layer):
    """Runs layers in order, passing ``training`` to each."""

    def __init__(self, layers: Sequence[Layer], name: str | None = None):
        super().__init__(name=name)
        self.layers = list(layers)

    def call(self, x, training):
        for layer in self.layers:
            x = layer(x, training=training)
        return x


def _pair(name: str, value) -> tuple[int, int]:
    """An int or an (int, int) pair, checked positive, as a pair."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"`{name}` ({value!r}) must be an int or a pair of ints")
    for v in pair:
        _checks.positive_int(name, v)
    return pair


PADDINGS = ("SAME", "VALID")


class Conv2D(Layer):
    """A 2-D convolution ``activation(conv(x, kernel) + bias)`` on NHWC images.

    The kernel has shape ``[h, w, in, out]``: each output channel is one
    unit whose incoming weights span axes ``[0, 1, 2]``, which is where
    ``lowtf.max_norm`` (default axes: all but the last) takes its norm.

    Args:
      filters: output channels (> 0).
      kernel_size: int or ``(h, w)``, default 3.
      strides: int or ``(h, w)``, default 1.
      padding: ``"SAME"`` (default) or ``"VALID"``.
      activation: name or callable; None (default) is linear.
      use_bias: whether to add a bias (default True).
      kernel_regularizer: e.g. ``lowtf.l2(1e-4)``; default None.
      bias_regularizer: default None.
      kernel_constraint: e.g. ``lowtf.max_norm(3.0)``; default None.
      seed: seed of the Glorot-uniform kernel init; default a fresh one.
      name: module name.
    """

    def __init__(
        self,
        filters: int,
        kernel_size=3,
        *,
        strides=1,
        padding: str = "SAME",
        activation=None,
        use_bias: bool = True,
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        seed: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        _checks.positive_int("filters", filters)
        self.filters = filters
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.strides = _pair("strides", strides)
        padding = padding.upper() if isinstance(padding, str) else padding
        _checks.one_of("padding", padding, PADDINGS)
        self.padding = padding
        self.activation = activation_fn(activation)
        self.use_bias = use_bias
        self.kernel_regularizer = kernel_regularizer
        self.bias_regularizer = bias_regularizer
        self.kernel_constraint = kernel_constraint
        self.seed = rng.next_layer_seed() if seed is None else seed

    def build(self, input_shape):
        if input_shape.rank != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: expects images [batch, height, width, channels] with "
                f"known channels, got shape {input_shape}; reshape flat inputs first "
                "(lowtf.Reshape)"
            )
        shape = [*self.kernel_size, input_shape[-1], self.filters]
        self.kernel = self.add_weight(
            "kernel",
            glorot_uniform(shape, self.seed),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                "bias", tf.zeros([self.filters]), regularizer=self.bias_regularizer
            )

    def call(self, x, training):
        channels = self.kernel.shape[2]
        if x.shape.rank != 4 or x.shape[-1] != channels:
            raise ValueError(
                f"{self.name}: expects images with {channels} channels (as built), "
                f"got shape {x.shape}"
            )
        y = _xla_cpu.conv2d(x, self.kernel, self.strides, self.padding)
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        return self.activation(y)


class _Pool2D(Layer):
    """Shared arguments of the pooling layers."""

    _op = None

    def __init__(self, pool_size=2, *, strides=None, padding: str = "VALID", name=None):
        super().__init__(name=name)
        self.pool_size = _pair("pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair("strides", strides)
        padding = padding.upper() if isinstance(padding, str) else padding
        _checks.one_of("padding", padding, PADDINGS)
        self.padding = padding

    def call(self, x, training):
        if x.shape.rank != 4:
            raise ValueError(
                f"{self.name}: expects images [batch, height, width, channels], "
                f"got shape {x.shape}"
            )
        return self._op(x, self.pool_size, self.strides, self.padding)


class MaxPool2D(_Pool2D):
    """Max pooling over ``pool_size`` windows (default 2, stride = pool size, VALID)."""

    _op = staticmethod(_xla_cpu.max_pool2d)


class AvgPool2D(_Pool2D):
    """Average pooling over ``pool_size`` windows (default 2, stride = pool size, VALID)."""

    _op = staticmethod(_xla_cpu.avg_pool2d)


class Reshape(Layer):
    """Reshapes ``[batch, ...]`` to ``[batch, *shape]``, e.g. flat pixels to images.

    Args:
      shape: the per-example shape, e.g. ``(8, 8, 1)``; its size must match
        the input's per-example size.
      name: module name.
    """

    def __init__(self, shape: Sequence[int], name=None):
        super().__init__(name=name)
        self.shape = tuple(shape)
        for i, size in enumerate(self.shape):
            _checks.positive_int(f"shape[{i}]", size)

    def call(self, x, training):
        size = math.prod(x.shape[1:]) if x.shape[1:].is_fully_defined() else None
        if size is not None and size != math.prod(self.shape):
            raise ValueError(
                f"{self.name}: cannot reshape examples of shape {tuple(x.shape[1:])} "
                f"({size} values) to {self.shape} ({math.prod(self.shape)} values)"
            )
        return tf.reshape(x, (-1, *self.shape))
