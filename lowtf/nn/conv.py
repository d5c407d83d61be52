"""2-D convolution and pooling on NHWC images.

Under XLA on CPU they run as matrix products and reshapes
(:mod:`lowtf.nn._xla_cpu`); elsewhere as ``tf.nn`` ops. Stacked
(``members=K``, images ``[K, B, H, W, C]``), a convolution is always one
batched product over image patches, each member with its own kernel, and
pooling runs on the members' images folded into one batch.
"""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks
from lowtf.nn import _xla_cpu
from lowtf.nn.base import Layer, activation_fn, member_seeds


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
        Stacked: K seeds (or None), one per member.
      name: module name.
      trainable: False freezes the layer (see :class:`lowtf.nn.Layer`);
        default True.
      members: None (default) for an ordinary layer; K for a stack of K:
        kernel ``[K, h, w, in, out]``, bias ``[K, out]``, images
        ``[K, batch, height, width, in]`` (see :class:`lowtf.nn.Dense`).
    """

    _architecture = (
        "filters",
        "kernel_size",
        "strides",
        "padding",
        "activation",
        "use_bias",
    )
    _per_member = (
        "seed",
        "kernel_regularizer",
        "bias_regularizer",
        "kernel_constraint",
    )

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
        trainable: bool = True,
        members: int | None = None,
    ):
        super().__init__(name=name, trainable=trainable, members=members)
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
        self.seed = member_seeds(seed, members)

    def build(self, input_shape):
        if input_shape.rank != len(self._lead) + 4 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: expects images {_images(self)} with known channels, "
                f"got shape {input_shape}; reshape flat inputs first (lowtf.Reshape)"
            )
        shape = [*self.kernel_size, input_shape[-1], self.filters]
        self.kernel = self.add_weight(
            "kernel",
            self._glorot(shape),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                "bias",
                tf.zeros([*self._lead, self.filters]),
                regularizer=self.bias_regularizer,
            )

    def call(self, x, training):
        # As Dense: the activation may be a user's function (converted).
        return self.activation(self._affine(x))

    @tf.autograph.experimental.do_not_convert
    def _affine(self, x):
        channels = self.kernel.shape[-2]
        if x.shape.rank != len(self._lead) + 4 or x.shape[-1] != channels:
            raise ValueError(
                f"{self.name}: expects images with {channels} channels (as built), "
                f"got shape {x.shape}"
            )
        y = _xla_cpu.conv2d(x, self.kernel, self.strides, self.padding)
        if self.use_bias:
            y = self._add_bias(y, self.bias)
        return y


class _Pool2D(Layer):
    """Shared arguments of the pooling layers.

    Args:
      pool_size: int or ``(h, w)`` window, default 2.
      strides: int or ``(h, w)``; default the pool size.
      padding: ``"VALID"`` (default) or ``"SAME"``.
      name: module name.
      members: None (default), or K for a stacked layer (``[K, B, H, W, C]``).
    """

    _op = None
    _architecture = ("pool_size", "strides", "padding")
    _per_member = ()

    def __init__(
        self,
        pool_size=2,
        *,
        strides=None,
        padding: str = "VALID",
        name=None,
        members: int | None = None,
    ):
        super().__init__(name=name, members=members)
        self.pool_size = _pair("pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair("strides", strides)
        padding = padding.upper() if isinstance(padding, str) else padding
        _checks.one_of("padding", padding, PADDINGS)
        self.padding = padding

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training):
        if x.shape.rank != len(self._lead) + 4:
            raise ValueError(
                f"{self.name}: expects images {_images(self)}, got shape {x.shape}"
            )
        # Members' images pool alike: one op over all of them.
        y = self._op(self._fold(x), self.pool_size, self.strides, self.padding)
        return self._unfold(y)


def _images(layer) -> str:
    """The image layout ``layer`` takes, for its errors."""
    lead = f"[{layer.members}, " if layer.members else "["
    return f"{lead}batch, height, width, channels]"


class MaxPool2D(_Pool2D):
    """Max pooling over ``pool_size`` windows (default 2, stride = pool size, VALID)."""

    _op = staticmethod(_xla_cpu.max_pool2d)


class AvgPool2D(_Pool2D):
    """Average pooling over ``pool_size`` windows (default 2, stride = pool size, VALID)."""

    _op = staticmethod(_xla_cpu.avg_pool2d)
