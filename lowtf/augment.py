"""In-graph data augmentation for image batches ``[batch, h, w, c]``.

Data augmentation makes new, realistic training examples out of existing
ones (shift, rotate, rescale, change contrast), which fights overfitting
when data are few (e.g. Simard et al. 2003, "Best practices for CNNs
applied to visual document analysis"). Every op here is:

* *stateless-seeded*: its randomness comes from ``seed``, an int ``[2]``
  key tensor, so the same key gives the same output and the training step's
  key (:mod:`lowtf.rng`, a new one every step) gives new draws every step;
* *XLA-compilable*: rotation and zoom use lowtf's own bilinear sampler made
  of gathers, because ``tf.raw_ops.ImageProjectiveTransformV3`` has no XLA
  kernel on CPU; translation moves images by whole pixels exactly, with
  gathers and a mask, never by resampling;
* *per example*: each image draws its own magnitude, and is augmented at
  all with probability ``prob``;
* *the same with and without XLA* for the same RNG algorithm: floats are
  made from raw uint32 draws and keys folded with philox, because TF 2.21
  gives other float32 philox values and other ``auto_select`` fold-ins under
  XLA. (Inside a :class:`lowtf.TrainStep` the algorithm itself differs,
  threefry under XLA and philox otherwise, as for dropout.)

Values live in ``value_range`` (default ``(0, 1)``): pixels uncovered by a
shift or rotation take the range's low end (the background of digits), and
brightness, contrast and noise clip back into the range.

A :class:`Pipeline` chains ops and is built from a short spec,
``parse("translate:1,rotate:10,noise:0.05")``; pass it as
``TrainStep(..., augment=pipeline)`` to augment every training batch inside
the compiled step, or map it over a ``tf.data`` pipeline with an explicit
``seed``. Inference never augments: the step applies the hook to training
batches only, and ``pipeline(x, training=False)`` is the identity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

from lowtf import _checks, rng

# Ops by spec name: (magnitude kind, default probability). "int" magnitudes
# are whole pixels; None means the op takes no magnitude.
_OPS = {
    "translate": ("int", 1.0),
    "rotate": ("degrees", 1.0),
    "zoom": ("fraction", 1.0),
    "flip": (None, 0.5),
    "brightness": ("fraction", 1.0),
    "contrast": ("fraction", 1.0),
    "noise": ("stddev", 1.0),
}

OPS = tuple(_OPS)

# Folded into the step key so augmentation never shares draws with dropout.
DEFAULT_SEED = 0x5EED


# -- the ops ------------------------------------------------------------------


def translate(
    images,
    seed,
    max_shift: int = 1,
    *,
    prob=1.0,
    value_range=(0.0, 1.0),
    alg=rng.GRAPH_ALG,
):
    """Shifts each image by whole pixels, up to ``max_shift`` in each direction.

    Each image draws a vertical and a horizontal shift, uniform over the
    integers ``-max_shift..max_shift``. The shift is exact: pixel ``(i, j)``
    of the output is pixel ``(i - dy, j - dx)`` of the input, or the
    background (``value_range[0]``) where that falls outside the image.

    Args:
      images: ``[batch, h, w, c]`` float images.
      seed: int ``[2]`` key.
      max_shift: largest shift in pixels (an integer >= 0), default 1.
      prob: probability of shifting each image, default 1.
      value_range: ``(low, high)`` of the pixel values, default ``(0, 1)``.
      alg: stateless RNG algorithm (``"philox"`` or ``"threefry"``).
    """
    _checks.non_negative_int("max_shift", max_shift)
    images = _as_images(images)
    if max_shift == 0:
        return images
    batch = tf.shape(images)[0]
    # floor(u * (2k + 1)) - k is uniform over -k..k (u < 1 keeps it <= k).
    u = _uniform([2, batch], seed, alg)
    shifts = tf.cast(tf.floor(u * (2 * max_shift + 1)), tf.int32) - max_shift
    shifted = shift(images, shifts[0], shifts[1], fill=value_range[0])
    return _with_prob(images, shifted, prob, seed, alg)


def shift(images, dy, dx, fill=0.0):
    """Moves image ``b`` down by ``dy[b]`` and right by ``dx[b]`` whole pixels.

    The exact, deterministic core of :func:`translate`: two gathers along
    the rows and columns, and a mask that fills what was uncovered.
    """
    images = _as_images(images)
    fill = tf.cast(fill, images.dtype)
    shape = tf.shape(images)
    rows = tf.range(shape[1])[None, :] - tf.cast(dy, tf.int32)[:, None]  # [b, h]
    cols = tf.range(shape[2])[None, :] - tf.cast(dx, tf.int32)[:, None]  # [b, w]
    row_ok = (rows >= 0) & (rows < shape[1])
    col_ok = (cols >= 0) & (cols < shape[2])
    out = tf.gather(
        images, tf.clip_by_value(rows, 0, shape[1] - 1), axis=1, batch_dims=1
    )
    out = tf.gather(out, tf.clip_by_value(cols, 0, shape[2] - 1), axis=2, batch_dims=1)
    inside = row_ok[:, :, None, None] & col_ok[:, None, :, None]
    return tf.where(inside, out, fill)


def rotate(
    images,
    seed,
    max_degrees: float = 10.0,
    *,
    prob=1.0,
    value_range=(0.0, 1.0),
    alg=rng.GRAPH_ALG,
):
    """Rotates each image about its centre by up to ``±max_degrees``.

    Bilinear sampling (:func:`affine`); the corners uncovered by the
    rotation take the background value.

    Args:
      images: ``[batch, h, w, c]`` float images.
      seed: int ``[2]`` key.
      max_degrees: largest rotation in degrees, in [0, 180]; default 10.
      prob, value_range, alg: as in :func:`translate`.
    """
    _checks.non_negative("max_degrees", max_degrees)
    if max_degrees > 180:
        raise ValueError(f"`max_degrees` ({max_degrees!r}) must be <= 180")
    images = _as_images(images)
    batch = tf.shape(images)[0]
    limit = math.radians(max_degrees)
    angle = _uniform([batch], seed, alg, -limit, limit)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The inverse map (output -> source) of a rotation by `angle`.
    matrix = tf.stack([tf.stack([cos, sin], -1), tf.stack([-sin, cos], -1)], -2)
    rotated = affine(images, matrix, fill=value_range[0])
    return _with_prob(images, rotated, prob, seed, alg)


def zoom(
    images,
    seed,
    max_zoom: float = 0.1,
    *,
    prob=1.0,
    value_range=(0.0, 1.0),
    alg=rng.GRAPH_ALG,
):
    """Rescales each image about its centre by a factor in ``1 ± max_zoom``.

    A factor above 1 zooms in (a centre crop rescaled to full size), below 1
    zooms out (a smaller image framed by background); the output keeps the
    input's size. Height and width share the factor, so shapes keep their
    aspect. Combine with ``translate`` for a random crop position.

    Args:
      images: ``[batch, h, w, c]`` float images.
      seed: int ``[2]`` key.
      max_zoom: largest relative change of scale, in [0, 1); default 0.1.
      prob, value_range, alg: as in :func:`translate`.
    """
    _checks.rate("max_zoom", max_zoom)
    images = _as_images(images)
    batch = tf.shape(images)[0]
    scale = _uniform([batch], seed, alg, 1.0 - max_zoom, 1.0 + max_zoom)
    inverse = 1.0 / scale
    zeros = tf.zeros_like(inverse)
    matrix = tf.stack(
        [tf.stack([inverse, zeros], -1), tf.stack([zeros, inverse], -1)], -2
    )
    zoomed = affine(images, matrix, fill=value_range[0])
    return _with_prob(images, zoomed, prob, seed, alg)


def flip(images, seed, *, prob=0.5, value_range=(0.0, 1.0), alg=rng.GRAPH_ALG):
    """Mirrors each image left-right with probability ``prob`` (default 0.5).

    Not for digits or text, whose mirror images are not realistic examples;
    no pipeline flips unless its spec names ``flip``.
    """
    del value_range  # A mirror image stays in range.
    images = _as_images(images)
    return _with_prob(images, tf.reverse(images, axis=[2]), prob, seed, alg)


def brightness(
    images,
    seed,
    max_delta: float = 0.1,
    *,
    prob=1.0,
    value_range=(0.0, 1.0),
    alg=rng.GRAPH_ALG,
):
    """Adds a per-image offset up to ``±max_delta`` of the value range, then clips.

    Args:
      max_delta: largest offset as a fraction of ``high - low``, in [0, 1);
        default 0.1.
      images, seed, prob, value_range, alg: as in :func:`translate`.
    """
    _checks.rate("max_delta", max_delta)
    images = _as_images(images)
    low, high = value_range
    batch = tf.shape(images)[0]
    delta = _uniform([batch, 1, 1, 1], seed, alg, -max_delta, max_delta) * (high - low)
    brighter = tf.clip_by_value(images + tf.cast(delta, images.dtype), low, high)
    return _with_prob(images, brighter, prob, seed, alg)


def contrast(
    images,
    seed,
    max_change: float = 0.2,
    *,
    prob=1.0,
    value_range=(0.0, 1.0),
    alg=rng.GRAPH_ALG,
):
    """Scales each image's deviation from its mean by ``1 ± max_change``, then clips.

    Args:
      max_change: largest relative change of contrast, in [0, 1); default 0.2.
      images, seed, prob, value_range, alg: as in :func:`translate`.
    """
    _checks.rate("max_change", max_change)
    images = _as_images(images)
    low, high = value_range
    batch = tf.shape(images)[0]
    factor = _uniform([batch, 1, 1, 1], seed, alg, 1.0 - max_change, 1.0 + max_change)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    changed = tf.clip_by_value(
        (images - mean) * tf.cast(factor, images.dtype) + mean, low, high
    )
    return _with_prob(images, changed, prob, seed, alg)


def noise(
    images,
    seed,
    stddev: float = 0.05,
    *,
    prob=1.0,
    value_range=(0.0, 1.0),
    alg=rng.GRAPH_ALG,
):
    """Adds gaussian noise of ``stddev`` (a fraction of the value range), then clips.

    Args:
      stddev: noise standard deviation as a fraction of ``high - low``, >= 0;
        default 0.05.
      images, seed, prob, value_range, alg: as in :func:`translate`.
    """
    _checks.non_negative("stddev", stddev)
    images = _as_images(images)
    low, high = value_range
    draws = tf.cast(_normal(tf.shape(images), seed, alg), images.dtype)
    noisy = tf.clip_by_value(
        images + draws * tf.cast(stddev * (high - low), images.dtype), low, high
    )
    return _with_prob(images, noisy, prob, seed, alg)


_FUNCTIONS = {
    "translate": translate,
    "rotate": rotate,
    "zoom": zoom,
    "flip": flip,
    "brightness": brightness,
    "contrast": contrast,
    "noise": noise,
}


# -- the bilinear sampler -----------------------------------------------------


def affine(images, matrix, offset=None, fill=0.0):
    """Resamples images under per-image affine maps, bilinearly, with gathers.

    Output pixel ``p`` (``(row, col)``, measured from the image centre) reads
    the input at ``matrix[b] @ p + offset[b]``; the four pixels around that
    point are blended bilinearly, and points outside the image read
    ``fill``. Gathers and arithmetic only, so XLA compiles it on any device.

    Args:
      images: ``[batch, h, w, c]`` float images.
      matrix: ``[batch, 2, 2]`` inverse (output-to-source) linear maps.
      offset: ``[batch, 2]`` source offsets in pixels; default none.
      fill: value of the pixels outside the input.
    """
    images = _as_images(images)
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    dtype = images.dtype
    centre = tf.cast(tf.stack([height - 1, width - 1]), dtype) / 2.0
    rows, cols = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    grid = (
        tf.cast(tf.reshape(tf.stack([rows, cols], -1), [-1, 2]), dtype) - centre
    )  # [hw, 2]
    source = (
        tf.einsum("bij,pj->bpi", tf.cast(matrix, dtype), grid) + centre
    )  # [b, hw, 2]
    if offset is not None:
        source += tf.cast(offset, dtype)[:, None, :]
    top_left = tf.floor(source)
    frac = source - top_left  # [b, hw, 2]
    top_left = tf.cast(top_left, tf.int32)
    flat = tf.reshape(images, [batch, -1, channels])
    fill = tf.cast(fill, dtype)
    out = tf.zeros([batch, height * width, channels], dtype)
    for drow in (0, 1):
        for dcol in (0, 1):
            r = top_left[..., 0] + drow
            c = top_left[..., 1] + dcol
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            index = tf.clip_by_value(r, 0, height - 1) * width + tf.clip_by_value(
                c, 0, width - 1
            )
            values = tf.where(
                inside[..., None], tf.gather(flat, index, batch_dims=1), fill
            )
            weight = (frac[..., 0] if drow else 1 - frac[..., 0]) * (
                frac[..., 1] if dcol else 1 - frac[..., 1]
            )
            out += values * weight[..., None]
    return tf.reshape(out, shape)


# -- the pipeline -------------------------------------------------------------


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
        kind, default_prob = _OPS[self.name]
        if self.prob is None:
            object.__setattr__(self, "prob", default_prob)
        _probability(f"{self.name} probability", self.prob)
        if kind is None:
            if self.magnitude is not None:
                raise ValueError(
                    f"`{self.name}` takes no magnitude (got {self.magnitude!r}); "
                    f"write `{self.name}` or `{self.name}@P` for probability P"
                )
            return
        if self.magnitude is None:
            raise ValueError(
                f"`{self.name}` needs a magnitude, e.g. `{_EXAMPLES[self.name]}`"
            )
        _check_magnitude(self.name, kind, self.magnitude)

    def __call__(self, images, seed, *, value_range, alg):
        args = () if self.magnitude is None else (self.magnitude,)
        return _FUNCTIONS[self.name](
            images, seed, *args, prob=self.prob, value_range=value_range, alg=alg
        )


_EXAMPLES = {
    "translate": "translate:1",
    "rotate": "rotate:10",
    "zoom": "zoom:0.1",
    "flip": "flip",
    "brightness": "brightness:0.1",
    "contrast": "contrast:0.2",
    "noise": "noise:0.05",
}


class Pipeline:
    """A chain of augmentation ops applied in order to an image batch.

    Call it as ``pipeline(images, seed=key)`` (a ``tf.data`` map, any
    ``tf.function``) or with no ``seed`` inside a lowtf training step, where
    it draws from the step's key (:func:`lowtf.rng.step_key`): stateless,
    reproducible from the run's seed, and new at every step.

    Args:
      ops: the :class:`Op` list, applied in order.
      image_shape: ``(h, w, c)`` of images that arrive in another shape,
        e.g. flat ``[batch, h * w * c]`` (``(8, 8, 1)`` for the digits) or
        ``[batch, h, w]``: they are reshaped to images, augmented, and
        reshaped back. Default None: images arrive as ``[batch, h, w, c]``.
      value_range: ``(low, high)`` of the raw pixel values, default ``(0, 1)``.
      mean, std: for inputs standardized as ``(raw - mean) / std`` (e.g. by
        :func:`lowtf.datasets.load`, per pixel): the pipeline un-standardizes,
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
                raise ValueError(f"`ops` must hold lowtf.augment.Op values; got {op!r}")
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

    def __call__(
        self, images, seed=None, *, training: bool = True, alg: str | None = None
    ):
        """Augments ``images``; the identity when ``training`` is False.

        Args:
          images: ``[batch, h, w, c]``, or flat if ``image_shape`` was given.
          seed: int ``[2]`` key; default the current training step's key.
          training: False returns ``images`` unchanged (inference).
          alg: the RNG algorithm; default the step's, or ``"philox"`` with an
            explicit ``seed``.
        """
        images = tf.convert_to_tensor(images)
        if not training or not self.ops:
            return images
        if seed is None:
            current = rng.current_key()
            if current is None:
                raise ValueError(
                    "augmentation needs a `seed` (an int [2] key) outside a lowtf "
                    "TrainStep; pass e.g. seed=[0, step]"
                )
            seed, step_alg = current
            alg = alg or step_alg
        alg = alg or rng.GRAPH_ALG
        key = _fold_in(tf.cast(seed, tf.int64), self.seed)
        flat_shape = None
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            flat_shape = tf.shape(images)
            images = tf.reshape(images, (-1, *self.image_shape))
        dtype = images.dtype
        x = tf.cast(images, tf.float32)
        if self.mean is not None:
            x = x * self._stats(self.std, x) + self._stats(self.mean, x)
        for i, op in enumerate(self.ops):
            x = op(x, _fold_in(key, i), value_range=self.value_range, alg=alg)
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
        raise ValueError(f"the augmentation spec ({spec!r}) must be a string")
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
        if _OPS[name][0] == "int" and value.is_integer() and "." not in text
        else value
    )


def _op_spec(op: Op) -> str:
    text = op.name if op.magnitude is None else f"{op.name}:{op.magnitude:g}"
    if op.prob != _OPS[op.name][1]:
        text += f"@{op.prob:g}"
    return text


# -- checks and helpers ---------------------------------------------------------


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


def _probability(name, value):
    _checks.finite(name, value)
    if not 0 <= value <= 1:
        raise ValueError(f"`{name}` ({value!r}) must be in [0, 1]")


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


def _as_images(images):
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(
            f"images must be a batch [batch, height, width, channels]; got shape {images.shape}"
        )
    return images


def _with_prob(images, augmented, prob, seed, alg):
    """Keeps ``augmented`` for each image with probability ``prob``."""
    _probability("prob", prob)
    if prob >= 1:
        return augmented
    if prob <= 0:
        return images
    # A key of its own, so the choice is independent of the op's magnitude.
    u = _uniform(tf.shape(images)[:1], _fold_in(seed, 0x9E3779B1), alg)
    return tf.where((u < prob)[:, None, None, None], augmented, images)


def _uniform(shape, seed, alg, minval=0.0, maxval=1.0):
    """Stateless U[minval, maxval) float32 draws, equal with and without XLA.

    Built from raw uint32 draws, because TensorFlow's kernels and XLA turn
    the same philox bits into *different* float32 values (measured with TF
    2.21: ``stateless_uniform(alg="philox")`` differs under
    ``jit_compile=True``, while its uint32, int32 and float64 draws agree).
    """
    bits = tf.random.stateless_uniform(
        shape, seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg=alg
    )
    # The top 24 bits fill a float32 mantissa exactly: u in [0, 1 - 2^-24].
    u = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
    return minval + (maxval - minval) * u


def _normal(shape, seed, alg):
    """Standard normal draws by Box-Muller from :func:`_uniform` pairs."""
    u = _uniform(tf.concat([[2], shape], 0), seed, alg)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0]))  # 1 - u is in (0, 1].
    return radius * tf.cos(2.0 * math.pi * u[1])


def _fold_in(key, data):
    """A new key from ``key`` and ``data``, equal with and without XLA.

    ``tf.random.experimental.stateless_fold_in`` (and :func:`lowtf.rng.fold_in`)
    default to ``alg="auto_select"``, which under XLA gives other keys than
    TensorFlow's kernels once the key's first word is large; philox int64
    draws agree in both modes.
    """
    return tf.random.experimental.stateless_fold_in(
        tf.cast(key, tf.int64), tf.cast(data, tf.int64), alg=rng.GRAPH_ALG
    )
