"""The base layer and the layers that only move or wrap values.

Each layer takes its hyper-parameters (and rejects bad ones) in the
constructor, makes its variables on the first call from the input's static
shape, and takes the mode as a call argument: ``layer(x, training=...)``.
A weight can carry a regularizer (:mod:`lowtf.nn.regularizers`) and a
constraint (:mod:`lowtf.nn.constraints`); the layer lists them in its public
``regularized_weights`` and ``constrained_weights``, which is all the step
reads. By default only kernels carry them, never biases or batch-norm scale
and offset.

A layer can be frozen (``layer.trainable = False``, or ``trainable=False`` in
its constructor), as in Keras: its variables leave ``trainable_variables``
(so no gradient is taken for them), its regularization losses and
constraints are left out, and a frozen :class:`BatchNorm` runs in inference
mode even in a training step. Setting ``trainable`` on a layer sets it on
every layer nested in it. ``tf.Variable.trainable`` is fixed when a variable
is made, so freezing filters the module's lists instead of changing the
variables: checkpoints are the same whether layers are frozen or not.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from lowtf import _checks

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


# Bumped whenever a layer's ``trainable`` changes, so that a training step can
# tell in O(1) whether its list of variables may have changed (and retrace).
_trainability_version = 0


def trainability_version() -> int:
    """A counter bumped by every change of a layer's ``trainable`` flag."""
    return _trainability_version


class Layer(tf.Module):
    """Base layer: lazy build, weights with regularizers and constraints.

    Args:
      name: module name.
      trainable: False freezes the layer (see the module docstring); default
        True. Also settable later: ``layer.trainable = False``.
    """

    def __init__(self, name: str | None = None, *, trainable: bool = True):
        super().__init__(name=name)
        _checks.boolean("trainable", trainable)
        self._trainable = bool(trainable)
        self._built = False
        # (variable, regularizer) and (variable, constraint) pairs of this
        # layer's own weights, in the order they were made.
        self.regularized_weights: list = []
        self.constrained_weights: list = []

    @property
    def trainable(self) -> bool:
        """Whether the layer trains; setting it sets every nested layer too."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        _checks.boolean("trainable", value)
        global _trainability_version
        _trainability_version += 1
        for module in (self, *self.submodules):
            if isinstance(module, Layer):
                module._trainable = bool(value)

    def __setattr__(self, name, value):
        if name == "trainable":
            # AutoTrackable skips `self.x = v` when `self.x is v` already: the
            # setter must still run, to reach the nested layers.
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @property
    def trainable_variables(self) -> tuple:
        """The variables made trainable, less those of frozen layers."""
        if not self._trainable:
            return ()
        return trainable_variables(self)

    @property
    def non_trainable_variables(self) -> tuple:
        """Every other variable: moving statistics, and frozen layers' weights."""
        kept = {v.ref() for v in self.trainable_variables}
        return tuple(v for v in self.variables if v.ref() not in kept)

    def __call__(self, x, training: bool = False):
        x = tf.convert_to_tensor(x)
        if not self._built:
            with self.name_scope:
                self.build(x.shape)
            self._built = True
        if tf.is_tensor(training):
            # lowtf's layers branch on a Python bool (their code skips
            # AutoGraph); a tensor known at trace time is one, any other
            # picks one of the two traces at run time.
            static = tf.get_static_value(training)
            if static is None:
                return tf.cond(
                    training,
                    lambda: self.call(x, training=True),
                    lambda: self.call(x, training=False),
                )
            training = bool(static)
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
            self.regularized_weights.append((var, regularizer))
        if constraint is not None:
            self.constrained_weights.append((var, constraint))
        return var


def frozen_variables(module) -> set:
    """The refs (``v.ref()``) of every variable of the frozen layers in a module tree."""
    frozen = set()
    for m in (module, *module.submodules):
        if isinstance(m, Layer) and not m.trainable:
            frozen.update(v.ref() for v in m.variables)
    return frozen


def trainable_variables(module) -> tuple:
    """What a training step differentiates: trainable variables outside frozen layers.

    Works on any ``tf.Module`` tree holding lowtf layers (a frozen layer is
    honoured wherever it sits) and on a Keras model (its own
    ``trainable_variables``, which Keras' ``trainable`` flags already filter).
    """
    if isinstance(module, tf.keras.layers.Layer):
        return tuple(module.trainable_variables)
    frozen = frozen_variables(module)
    every = tf.Module.trainable_variables.fget(module)
    return tuple(v for v in every if v.ref() not in frozen)


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


class Flatten(Layer):
    """Reshapes ``[batch, ...]`` to ``[batch, prod(...)]``."""

    @tf.autograph.experimental.do_not_convert
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

    def __init__(
        self, layers: Sequence[Layer], name: str | None = None, *, trainable=True
    ):
        super().__init__(name=name)
        self.layers = list(layers)
        if not trainable:  # set once the layers are held, so it reaches them
            self.trainable = trainable

    def call(self, x, training):
        for layer in self.layers:
            x = layer(x, training=training)
        return x


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

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        size = math.prod(x.shape[1:]) if x.shape[1:].is_fully_defined() else None
        if size is not None and size != math.prod(self.shape):
            raise ValueError(
                f"{self.name}: cannot reshape examples of shape {tuple(x.shape[1:])} "
                f"({size} values) to {self.shape} ({math.prod(self.shape)} values)"
            )
        return tf.reshape(x, (-1, *self.shape))


def keras_layers(model) -> list:
    """A Keras model or layer and every layer nested in it, through the public ``layers``."""
    found = [model]
    for layer in getattr(model, "layers", ()):
        found.extend(keras_layers(layer))
    return found
