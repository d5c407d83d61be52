"""Ops written in forms that XLA's CPU backend compiles well.

XLA's CPU backend is slow at some ops of a training step (BENCHMARKS.md,
2-core CPU, batch 500): in ``lowtf.cnn("digits")`` the filter gradient of a
convolution with one input channel took 97 ms of a 130 ms step and the
max-pool gradient (select-and-scatter) another 10 ms; in the large MLP the
L2 penalties took about 0.5 ms of a 13 ms step. Written differently:

* a convolution is one matrix product over image patches (im2col): the
  ``kh * kw`` shifted views of the padded input, concatenated along the
  channels, times the kernel reshaped to ``[kh * kw * in, out]``. Its
  gradients are matrix products and slices, which XLA compiles well. With
  the pooling below, the CNN step takes 12.5 ms.
* pooling over windows that do not overlap (stride = window, the default)
  is a reshape and a reduction over the window axes, whose gradient is an
  element-wise select instead of a scatter.
* a sum over a whole weight (the L1 and L2 penalties) runs in blocks of 32
  rows and a product with ones: XLA fuses a reduction of at most 32 rows
  with the square that feeds it, while a longer one becomes a tree of
  reduce-windows that first writes every square out. A stacked weight's
  per-member sums (:func:`member_totals`) take the same blocks per member.

A stacked convolution (a kernel ``[K, kh, kw, in, out]``, one per member)
always takes the patches' form, as one batched product: ``tf.nn.conv2d`` has
no per-example kernels, and K separate convolutions would grow the graph
with K.

Outside XLA, or when a GPU is visible (where XLA calls cuDNN), the usual
``tf.nn`` ops and ``tf.reduce_sum`` run: TensorFlow's own CPU kernels are
faster than the patches there. The two forms give the same values up to
float rounding; the max-pool gradients differ only on ties
(``tf.nn.max_pool2d`` gives the gradient to one maximum of a window,
``tf.reduce_max`` splits it).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import tensorflow as tf

# The most rows XLA's CPU backend sums in a loop fused with their producer.
_FUSED_ROWS = 32


def conv2d(x, kernel, strides, padding: str):
    """``tf.nn.conv2d(x, kernel, strides, padding)`` on NHWC images.

    A stacked kernel ``[K, kh, kw, in, out]`` convolves member ``k``'s
    images ``x[k]`` (``x``: ``[K, B, H, W, in]``) with ``kernel[k]``: always
    the patches' form, as one batched product (``tf.nn.conv2d`` has no
    per-example kernels), and it needs static image sizes.
    """
    stacked = kernel.shape.rank == 5
    if not stacked and (not _xla_on_cpu() or None in (x.shape[1], x.shape[2])):
        return tf.nn.conv2d(x, kernel, strides=strides, padding=padding)
    *lead, kh, kw, channels, filters = kernel.shape
    if stacked:
        if not x.shape[-3:].is_fully_defined():
            raise ValueError(
                f"a stacked convolution needs static image sizes, got shape {x.shape}"
            )
        x = tf.reshape(x, [-1, *x.shape[-3:]])  # the members' images as one batch
    (sh, sw), (oh, ow), x = _padded(x, (kh, kw), strides, padding)
    views = [
        x[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    # Channel order (i, j, c) is the kernel's own [kh, kw, in] order; stacked,
    # member k's patches [B * oh * ow, ...] meet its own kernel.
    size = kh * kw * channels
    patches = tf.reshape(tf.concat(views, axis=-1), [*lead, -1, size])
    y = tf.matmul(patches, tf.reshape(kernel, [*lead, size, filters]))
    return tf.reshape(y, [*lead, -1, oh, ow, filters])


def max_pool2d(x, pool_size, strides, padding: str):
    """``tf.nn.max_pool2d`` with the same arguments."""
    if _windows_tile(x, pool_size, strides, padding):
        return tf.reduce_max(_windows(x, pool_size), axis=[2, 4])
    return tf.nn.max_pool2d(x, pool_size, strides, padding)


def avg_pool2d(x, pool_size, strides, padding: str):
    """``tf.nn.avg_pool2d`` with the same arguments."""
    if _windows_tile(x, pool_size, strides, padding):
        return tf.reduce_mean(_windows(x, pool_size), axis=[2, 4])
    return tf.nn.avg_pool2d(x, pool_size, strides, padding)


def total(t):
    """``tf.reduce_sum(t)`` over every axis, in one fused pass under XLA on CPU."""
    return _sum(t, lead=0)


def member_totals(t):
    """``[K]``: the sum of each member's ``t[k]``, fused as :func:`total`'s."""
    return _sum(t, lead=1)


def _sum(t, lead: int):
    """The sum over every axis of ``t`` but its first ``lead`` (0 or 1)."""
    axes = None if lead == 0 else list(range(lead, t.shape.rank))
    units = t.shape[-1] if t.shape.rank > lead else 1
    size = t.shape[lead:].num_elements()
    if not _xla_on_cpu() or not size or not units:
        return tf.reduce_sum(t, axes)
    rows = size // units
    if rows <= _FUSED_ROWS or rows % _FUSED_ROWS:
        return tf.reduce_sum(t, axes)  # fused as it is, or no even blocks
    members = list(t.shape[:lead])
    blocks = tf.reduce_sum(
        tf.reshape(t, [*members, -1, _FUSED_ROWS, units]), axis=lead + 1
    )
    # A product, not a second reduce_sum: XLA would merge two reductions
    # back into the long one.
    return tf.tensordot(
        tf.reshape(blocks, [*members, -1]),
        tf.ones([size // _FUSED_ROWS], t.dtype),
        1,
    )


_state = threading.local()


@contextlib.contextmanager
def compiled_by_xla(enabled: bool = True):
    """Declares that the function being traced is compiled by XLA (or not).

    :class:`lowtf.TrainStep` and :class:`lowtf.Evaluator` enter it while
    they trace their compiled functions, so that convolutions, pooling and
    penalty sums take their XLA-on-CPU forms there. TensorFlow has no public
    way to ask whether a trace is XLA-compiled; enter it yourself around a
    model called inside your own ``tf.function(jit_compile=True)`` on a CPU
    (without it the ``tf.nn`` forms run: correct, slower under XLA on CPU).
    """
    previous = getattr(_state, "xla", False)
    _state.xla = bool(enabled)
    try:
        yield
    finally:
        _state.xla = previous


def _xla_on_cpu() -> bool:
    return getattr(_state, "xla", False) and not _gpu_visible()


@functools.cache
def _gpu_visible() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def _padded(x, kernel_size, strides, padding):
    """Strides, output size and ``x`` padded as ``tf.nn.conv2d`` pads it."""
    (kh, kw), (sh, sw) = kernel_size, strides
    height, width = x.shape[1], x.shape[2]
    if padding == "VALID":
        return (sh, sw), ((height - kh) // sh + 1, (width - kw) // sw + 1), x
    oh, ow = -(-height // sh), -(-width // sw)
    # SAME puts the odd pixel of padding after the image, as TensorFlow does.
    ph = max((oh - 1) * sh + kh - height, 0)
    pw = max((ow - 1) * sw + kw - width, 0)
    paddings = [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]]
    return (sh, sw), (oh, ow), tf.pad(x, paddings)


def _windows_tile(x, pool_size, strides, padding) -> bool:
    """Whether the windows tile the image (no overlap, no padding) under XLA on CPU."""
    if tuple(strides) != tuple(pool_size) or not _xla_on_cpu():
        return False
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return False
    if padding == "SAME":  # without padding only when the windows fit exactly
        return height % pool_size[0] == 0 and width % pool_size[1] == 0
    return True


def _windows(x, pool_size):
    """``[batch, oh, ph, ow, pw, channels]``: the VALID windows as axes 2 and 4."""
    (ph, pw), (height, width) = pool_size, (x.shape[1], x.shape[2])
    oh, ow = height // ph, width // pw
    x = x[:, : oh * ph, : ow * pw, :]  # VALID drops the rows that fit no window
    return tf.reshape(x, [-1, oh, ph, ow, pw, x.shape[3]])
