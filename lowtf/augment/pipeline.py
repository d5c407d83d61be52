"""In-graph data augmentation for image batches ``[batch, h, w, c]``.

Data augmentation makes new, realistic training examples out of existing
ones (shift, rotate, rescale, change contrast), which fights overfitting
when data are few (e.g. Simard et al. 2003, "Best practices for CNNs
applied to visual document analysis"). Every op here is:

* *stateless-seeded*: its randomness comes from ``seed``, an int ``[2]``
  key tensor, so the same key gives the same output and the training step's
  key (:mod:`lowtf.random`, a new one every step) gives new draws every step;
* *XLA-compilable*: rotation and zoom use lowtf's own bilinear sampler made
  of gathers, because ``tf.raw_ops.ImageProjectiveTransformV3`` has no XLA
  kernel on CPU; translation moves images by whole pixels exactly, with
  gathers and a mask, never by resampling;
* *per example*: each image draws its own magnitude, and is augmented at
  all with probability ``prob``;
* *the same eagerly, in a graph and under XLA*: every draw comes from
  :mod:`lowtf.random`'s one generator, as dropout's masks do, so a compiled
  and an uncompiled training step augment alike.

Values live in ``value_range`` (default ``(0, 1)``): pixels uncovered by a
shift or rotation take the range's low end (the background of digits), and
brightness, contrast and noise clip back into the range.

A :class:`Pipeline` chains ops and is built from a short spec,
``parse("translate:1,rotate:10,noise:0.05")``; pass it as
``TrainStep(..., augment=pipeline)`` to augment every training batch inside
the compiled step, or map it over a ``tf.data`` pipeline with an explicit
``seed``. Inference never augments: the step applies the hook to training
batches only, and ``pipeline(x, training=False)`` is the identity.

This module is the public surface: the spec, :class:`Op`, :class:`Pipeline`
and the ops themselves. The geometric ops and their sampler live in
:mod:`lowtf.augment.geometric`, the photometric ones in
:mod:`lowtf.augment.photometric`, and what they share in
``lowtf.augment._common``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import tensorflow as tf

from lowtf import _checks, random
from lowtf.augment._common import probability
from lowtf.augment.geometric import flip, rotate, translate, zoom
from lowtf.augment.photometric import brightness, contrast, noise


class _Entry(NamedTuple):
    """How the spec names, checks and runs one op."""

    function: Callable
    kind: str | None  # "int" (whole pixels), "degrees", "fraction", "stddev"
    prob: float  # the default probability
    example: str  # a spec term, for the error of a missing magnitude


# The ops by spec name; a kind of None means the op takes no magnitude.
_OPS = {
    "translate": _Entry(translate, "int", 1.0, "translate:1"),
    "rotate": _Entry(rotate, "degrees", 1.0, "rotate:10"),
    "zoom": _Entry(zoom, "fraction", 1.0, "zoom:0.1"),
    "flip": _Entry(flip, None, 0.5, "flip"),
    "brightness": _Entry(brightness, "fraction", 1.0, "brightness:0.1"),
    "contrast": _Entry(contrast, "fraction", 1.0, "contrast:0.2"),
    "noise": _Entry(noise, "stddev", 1.0, "noise:0.05"),
}

OPS = tuple(_OPS)

# Folded into the step key so augmentation never shares draws with dropout.
DEFAULT_SEED = 0x5EED


@dataclasses.dataclass(frozen=True)
class Op:
    """One step of a :class:`Pipeline`.

    Attributes:
      name: one of :data:`OPS`.
      magnitude: the op's magnitude (pixels, degrees, fraction or stddev);
        None for ``flip``.
      prob: probability of applying it to each image; None is the op's
        default (0.5 for flip, else 1).
    """

    name: str
    magnitude: float | int | None = None
    prob: float | None = None

    def __post_init__(self):
        _checks.one_of("op", self.name, OPS)
        entry = _OPS[self.name]
        if self.prob is None:
            object.__setattr__(self, "prob", entry.prob)
        probability(f"{self.name} probability", self.prob)
        if entry.kind is None:
            if self.magnitude is not None:
                raise ValueError(
                    f"`{self.name}` takes no magnitude (got {self.magnitude!r}); "
                    f"write `{self.name}` or `{self.name}@P` for probability P"
                )
            return
        if self.magnitude is None:
            raise ValueError(f"`{self.name}` needs a magnitude, e.g. `{entry.example}`")
        _check_magnitude(self.name, entry.kind, self.magnitude)

    def __call__(self, images, seed, *, value_range):
        args = () if self.magnitude is None else (self.magnitude,)
        return _OPS[self.name].function(
            images, seed, *args, prob=self.prob, value_range=value_range
        )


class Pipeline:
    """A chain of augmentation ops applied in order to an image batch.

    Call it as ``pipeline(images, seed=key)`` (a ``tf.data`` map, any
    ``tf.function``) or with no ``seed`` inside a lowtf training step, where
    it draws from the step's key (:func:`lowtf.random.step_key`): stateless,
    reproducible from the run's seed, and new at every step.

    Args:
      ops: the :class:`Op` list, applied in order.
      image_shape: ``(h, w, c)`` of images that arrive in another shape,
        e.g. flat ``[batch, h * w * c]`` (``(8, 8, 1)`` for the digits) or
        ``[batch, h, w]``: they are reshaped to images, augmented, and
        reshaped back. Default None: images arrive as ``[batch, h, w, c]``.
      value_range: ``(low, high)`` of the raw pixel values, default ``(0, 1)``.
      mean, std: for inputs standardized as ``(raw - mean) / std`` (e.g. by
        :func:`lowtf.data.datasets.load`, per pixel): the pipeline un-standardizes,
        augments the raw pixels and standardizes again, so that a shifted
        pixel keeps its meaning. Shaped like one example (flat or image) or
        broadcastable to it; default None (inputs are raw pixels).
      seed: folded into the key, so that augmentation never shares draws
        with dropout; default :data:`DEFAULT_SEED`.
    """

    def __init__(
        self,
        ops: Sequence[Op],
        *,
        image_shape: Sequence[int] | None = None,
        value_range: Sequence[float] = (0.0, 1.0),
        mean=None,
        std=None,
        seed: int = DEFAULT_SEED,
    ):
        self.ops = tuple(ops)
        for op in self.ops:
            if not isinstance(op, Op):
                # lowtf reports every bad argument as a ValueError (STYLE.md).
                raise ValueError(f"`ops` must hold lowtf.augment.Op values; got {op!r}")  # noqa: TRY004
        if image_shape is not None:
            image_shape = _checks.image_shape("image_shape", image_shape)
        self.image_shape = image_shape
        low, high = _range(value_range)
        self.value_range = (low, high)
        if (mean is None) != (std is None):
            raise ValueError(
                "give both `mean` and `std` (standardized inputs) or neither"
            )
        self.mean = None if mean is None else tf.constant(mean, tf.float32)
        self.std = None if std is None else tf.constant(std, tf.float32)
        if self.std is not None and not bool(tf.reduce_all(self.std > 0)):
            raise ValueError(
                "`std` must be > 0 everywhere (a constant feature has std 1)"
            )
        _checks.non_negative_int("seed", seed)
        self.seed = seed

    def __call__(self, images, seed=None, *, training: bool = True):
        """Augments ``images``; the identity when ``training`` is False.

        Args:
          images: ``[batch, h, w, c]``, or flat if ``image_shape`` was given.
          seed: int ``[2]`` key; default the current training step's key.
          training: False returns ``images`` unchanged (inference).
        """
        images = tf.convert_to_tensor(images)
        if not training or not self.ops:
            return images
        if seed is None:
            seed = random.current_key()
            if seed is None:
                raise ValueError(
                    "augmentation needs a `seed` (an int [2] key) outside a lowtf "
                    "TrainStep; pass e.g. seed=[0, step]"
                )
        key = random.fold_in(seed, self.seed)
        flat_shape = None
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            flat_shape = tf.shape(images)
            images = tf.reshape(images, (-1, *self.image_shape))
        dtype = images.dtype
        x = tf.cast(images, tf.float32)
        if self.mean is not None:
            x = x * self._stats(self.std, x) + self._stats(self.mean, x)
        for i, op in enumerate(self.ops):
            x = op(x, random.fold_in(key, i), value_range=self.value_range)
        if self.mean is not None:
            x = (x - self._stats(self.mean, x)) / self._stats(self.std, x)
        x = tf.cast(x, dtype)
        return x if flat_shape is None else tf.reshape(x, flat_shape)

    def _stats(self, value, images):
        """``value`` (a scalar, or one example of any shape) shaped like an image."""
        if value.shape.num_elements() > 1:
            return tf.reshape(value, tf.shape(images)[1:])
        return value

    @property
    def spec(self) -> str:
        """The spec string that :func:`parse` maps back to this pipeline."""
        return ",".join(_op_spec(op) for op in self.ops)

    def __repr__(self):
        return f"Pipeline({self.spec!r}, image_shape={self.image_shape}, value_range={self.value_range})"


def parse(spec: str, **kwargs) -> Pipeline:
    """Builds a :class:`Pipeline` from a spec such as ``"translate:1,rotate:10,noise:0.05"``.

    Each comma-separated term is ``name[:magnitude][@probability]``:
    ``translate:K`` (whole pixels), ``rotate:DEG``, ``zoom:F``, ``flip``,
    ``brightness:F``, ``contrast:F``, ``noise:STDDEV``; e.g. ``rotate:15@0.5``
    rotates half the images. ``""`` or ``"none"`` is the empty pipeline.

    Args:
      spec: the spec string.
      **kwargs: passed to :class:`Pipeline` (``image_shape``, ``value_range``,
        ``seed``).

    Raises:
      ValueError: naming the bad term, for an unknown op or a bad value.
    """
    if not isinstance(spec, str):
        raise ValueError(f"the augmentation spec ({spec!r}) must be a string")  # noqa: TRY004
    ops = []
    if spec.strip().lower() not in ("", "none"):
        for term in spec.split(","):
            ops.append(_parse_term(term.strip(), spec))
    return Pipeline(ops, **kwargs)


def _parse_term(term: str, spec: str) -> Op:
    where = f"in augmentation spec {spec!r}"
    if not term:
        raise ValueError(f"empty term {where}; separate ops by single commas")
    body, _, prob_text = term.partition("@")
    name, colon, value_text = body.partition(":")
    name = name.strip().lower()
    if name not in _OPS:
        raise ValueError(
            f"unknown augmentation op {name!r} {where}; known ops: {', '.join(OPS)}"
        )
    try:
        magnitude = _number(value_text, name, "magnitude") if colon else None
        prob = _number(prob_text, name, "probability") if "@" in term else None
        return Op(name, magnitude, prob)
    except ValueError as error:
        raise ValueError(f"{error} (term {term!r} {where})") from None


def _number(text: str, name: str, what: str):
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"`{name}` {what} {text!r} is not a number") from None
    return (
        int(value)
        if _OPS[name].kind == "int" and value.is_integer() and "." not in text
        else value
    )


def _op_spec(op: Op) -> str:
    text = op.name if op.magnitude is None else f"{op.name}:{op.magnitude:g}"
    if op.prob != _OPS[op.name].prob:
        text += f"@{op.prob:g}"
    return text


# -- checks ----------------------------------------------------------------------


def _check_magnitude(name, kind, value):
    label = f"{name} magnitude"
    if kind == "int":
        if isinstance(value, float) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"`{label}` ({value!r}) must be a whole number of pixels >= 0; "
                "translation shifts by exact pixels"
            )
    elif kind == "degrees":
        _checks.non_negative(label, value)
        if value > 180:
            raise ValueError(f"`{label}` ({value!r}) must be in [0, 180] degrees")
    elif kind == "fraction":
        _checks.rate(label, value)
    else:
        _checks.non_negative(label, value)


def _range(value_range):
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"`value_range` ({value_range!r}) must be a pair (low, high)"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(
            f"`value_range` ({value_range!r}) must be finite with low < high"
        )
    return low, high
