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

**Stacked layers.** A layer made with ``members=K`` holds K models' copies
of its weights in one set of variables with a leading member axis
(``[K, ...]``) and takes and returns ``[K, batch, ...]`` tensors, member
``k`` computing on ``x[k]`` with its own slice: one batched product per layer
for all members. Each layer's arithmetic is written once for both cases;
the few helpers below (:meth:`Layer._along`, :meth:`Layer._fold`, ...) are
the identity on an ordinary layer. :func:`lowtf.nn.stack` makes a stacked
model from K built ones.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from lowtf import _checks, random

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


def check_members(members) -> int | None:
    """``members`` checked: None (an ordinary layer) or a positive int K."""
    if members is not None:
        _checks.positive_int("members", members)
    return members


def member_values(name: str, value, members: int | None, check) -> object:
    """A per-member hyper-parameter: ``value`` itself, or K values when stacked.

    Args:
      name: the argument's name, for errors.
      value: one value, or (stacked layers only) a sequence of K values.
      members: None for an ordinary layer, else K.
      check: ``check(name, v)`` raises on a bad value ``v``.

    Returns:
      ``value`` for an ordinary layer; a K-tuple for a stacked one (one value
      is repeated for every member).
    """
    if not _is_sequence(value):
        check(name, value)
        return value if members is None else (value,) * members
    if members is None or len(value) != members:
        raise ValueError(
            f"`{name}` ({tuple(value)!r}) must be one value"
            + ("" if members is None else f" or {members} values, one per member")
        )
    for k, v in enumerate(value):
        check(f"{name}[{k}]", v)
    return tuple(value)


def member_seeds(seed, members: int | None):
    """A layer's init seed: ``seed`` or a fresh one; K distinct ones when stacked."""
    if members is None:
        return random.next_layer_seed() if seed is None else seed
    if seed is None:
        return tuple(random.next_layer_seed() for _ in range(members))
    if not _is_sequence(seed) or len(seed) != members:
        # One seed for all would make K copies of one model: say so rather
        # than repeat it.
        raise ValueError(
            f"`seed` ({seed!r}) of a stack of {members} members must be {members} "
            "seeds, one per member, or None"
        )
    return tuple(int(s) for s in seed)


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


class Layer(tf.Module):
    """Base layer: lazy build, weights with regularizers and constraints.

    Args:
      name: module name.
      trainable: False freezes the layer (see the module docstring); default
        True. Also settable later: ``layer.trainable = False``.
      members: None (default) for an ordinary layer; K for a stack of K
        members, whose variables and inputs have a leading member axis (see
        the module docstring).
    """

    # How lowtf.nn.stack makes a layer's stacked twin, by constructor argument
    # (each stored under its own name): the settings that must be equal across
    # the members, and those that become K-tuples. None: not stackable.
    _architecture: tuple[str, ...] | None = None
    _per_member: tuple[str, ...] = ()
    # A layer a builder may leave out when it would be the identity (a
    # Dropout of rate 0): stack() gives members that lack it `identity()`.
    _optional = False

    def __init__(
        self,
        name: str | None = None,
        *,
        trainable: bool = True,
        members: int | None = None,
    ):
        super().__init__(name=name)
        _checks.boolean("trainable", trainable)
        self._trainable = bool(trainable)
        self._members = check_members(members)
        self._built = False
        self._input_shape = None
        # (variable, regularizer) and (variable, constraint) pairs of this
        # layer's own weights, in the order they were made.
        self.regularized_weights: list = []
        self.constrained_weights: list = []

    @property
    def members(self) -> int | None:
        """None for an ordinary layer; K for a stack of K members."""
        return self._members

    @property
    def built(self) -> bool:
        """Whether the layer has made its variables (on its first call)."""
        return self._built

    @property
    def input_shape(self) -> tf.TensorShape | None:
        """The shape of the input the layer was built on; None before that."""
        return self._input_shape

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
        self._check_member_axis(x)
        if not self._built:
            with self.name_scope:
                self.build(x.shape)
            self._input_shape = x.shape
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

    # -- the helpers that let one piece of arithmetic serve both cases --------

    @property
    def _lead(self) -> tuple:
        """The member axis a stacked layer's variables lead with: ``()`` or ``(K,)``."""
        return () if self._members is None else (self._members,)

    def _along(self, value, x):
        """A per-member ``value`` ``[K, *rest]`` broadcastable against ``x``.

        Ones go between the member axis and ``rest``, so that a bias
        ``[K, C]`` meets activations ``[K, B, H, W, C]`` as ``[K, 1, 1, 1, C]``
        and a kernel ``[K, in, out]`` meets ``[K, B, T, in]`` as
        ``[K, 1, in, out]``. An ordinary layer's value (and None) is returned
        as it is.
        """
        if value is None or self._members is None:
            return value
        value = tf.convert_to_tensor(value)
        ones = [1] * (x.shape.rank - value.shape.rank)
        return tf.reshape(value, [self._members, *ones, *value.shape[1:]])

    def _fold(self, x):
        """A stacked layer's ``[K, B, ...]`` as ``[K * B, ...]``, for ops that
        treat examples alike (pooling); the identity otherwise."""
        if self._members is None:
            return x
        return tf.reshape(x, _shape_after(x, [-1], 2))

    def _unfold(self, y):
        """The inverse of :meth:`_fold`: ``[K * B, ...]`` back to ``[K, B, ...]``."""
        if self._members is None:
            return y
        return tf.reshape(y, _shape_after(y, [self._members, -1], 1))

    def _add_bias(self, y, bias):
        """``y + bias`` over the last axis, per member when stacked."""
        if self._members is None:
            return tf.nn.bias_add(y, bias)  # its gradient is one kernel
        return y + self._along(bias, y)

    def _glorot(self, shape):
        """The initial kernel of ``shape``: Glorot-uniform from ``self.seed``.

        Stacked, member ``k``'s slice is drawn from ``self.seed[k]``, bit for
        bit the kernel an ordinary layer with that seed starts from.
        """
        if self._members is None:
            return glorot_uniform(shape, self.seed)
        return tf.stack([glorot_uniform(shape, s) for s in self.seed])

    def _check_member_axis(self, x):
        if self._members is None or x.shape.rank is None:
            return
        if x.shape.rank < 2 or x.shape[0] not in (None, self._members):
            raise ValueError(
                f"{self.name}: a stack of {self._members} members takes inputs "
                f"[{self._members}, batch, ...] (member k's batch at index k), got "
                f"shape {x.shape}"
            )

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
        """Makes a variable and records its regularizer and constraint.

        On a stacked layer an ordinary :class:`lowtf.Regularizer` or
        :class:`lowtf.MaxNorm` is repeated for every member.
        """
        if self._members is not None:
            regularizer = _for_members(regularizer, self._members)
            constraint = _for_members(constraint, self._members)
        var = tf.Variable(initial_value, name=name, trainable=trainable, **kwargs)
        if regularizer is not None:
            self.regularized_weights.append((var, regularizer))
        if constraint is not None:
            self.constrained_weights.append((var, constraint))
        return var


def _for_members(penalty, members):
    """A regularizer or constraint per member: K copies of an ordinary one."""
    if penalty is None or getattr(penalty, "members", members) == members:
        return penalty
    if penalty.members is None:
        return type(penalty).of_members([penalty] * members)
    raise ValueError(
        f"{penalty!r} has {penalty.members} members; the layer has {members}"
    )


def _shape_after(x, lead, start):
    """``lead`` followed by ``x``'s shape from axis ``start`` (static where known)."""
    rest = x.shape[start:]
    if rest.is_fully_defined():
        return [*lead, *rest]
    return tf.concat([lead, tf.shape(x)[start:]], 0)


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
    """Reshapes ``[batch, ...]`` to ``[batch, prod(...)]``.

    Stacked, ``[K, batch, ...]`` to ``[K, batch, prod(...)]``.

    Args:
      name: module name.
      members: None (default), or K for a stacked layer.
    """

    # What lowtf.nn.stack compares across members (see Dense).
    _architecture = ()
    _per_member = ()

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        example = x.shape[1 + len(self._lead) :]
        width = math.prod(example) if example.is_fully_defined() else -1
        return tf.reshape(x, [*self._lead, -1, width])


class Lambda(Layer):
    """Wraps a function of ``x`` (e.g. an activation) as a layer.

    Stacked, ``fn`` gets the whole ``[K, batch, ...]`` tensor: fine for
    element-wise functions such as activations.

    Args:
      fn: the function.
      name: module name.
      members: None (default), or K for a stacked layer.
    """

    _architecture = ("fn",)
    _per_member = ()

    def __init__(self, fn: Callable, name=None, *, members: int | None = None):
        super().__init__(name=name, members=members)
        self.fn = fn

    def call(self, x, training):
        return self.fn(x)


class Sequential(Layer):
    """Runs layers in order, passing ``training`` to each.

    Stacked when its layers are (they must all have the same ``members``).

    Args:
      layers: the layers, in order.
      name: module name.
      trainable: False freezes every layer; default True.
    """

    _architecture = ()
    _per_member = ()

    def __init__(
        self, layers: Sequence[Layer], name: str | None = None, *, trainable=True
    ):
        layers = list(layers)
        counts = {getattr(layer, "members", None) for layer in layers}
        if len(counts) > 1:
            raise ValueError(
                f"`layers` mix stacks of {sorted(counts, key=str)} members; stack "
                "every layer of a model together (lowtf.nn.stack)"
            )
        super().__init__(name=name, members=counts.pop() if counts else None)
        self.layers = layers
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
      members: None (default), or K for a stacked layer (``[K, batch, ...]``).
    """

    _architecture = ("shape",)
    _per_member = ()

    def __init__(self, shape: Sequence[int], name=None, *, members=None):
        super().__init__(name=name, members=members)
        self.shape = tuple(shape)
        for i, size in enumerate(self.shape):
            _checks.positive_int(f"shape[{i}]", size)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        example = x.shape[1 + len(self._lead) :]
        size = math.prod(example) if example.is_fully_defined() else None
        if size is not None and size != math.prod(self.shape):
            raise ValueError(
                f"{self.name}: cannot reshape examples of shape {tuple(example)} "
                f"({size} values) to {self.shape} ({math.prod(self.shape)} values)"
            )
        return tf.reshape(x, (*self._lead, -1, *self.shape))


def keras_layers(model) -> list:
    """A Keras model or layer and every layer nested in it, through the public ``layers``."""
    found = [model]
    for layer in getattr(model, "layers", ()):
        found.extend(keras_layers(layer))
    return found
