"""Model builders: the tutorial's MLP presets and a small CNN.

The TensorFlow "overfit and underfit" tutorial compares four fully connected
models on Higgs, all with elu hidden units and one logit: tiny (16), small
(16, 16), medium (64, 64, 64) and large (512 x 4). :func:`mlp` builds any of
them, for any input width and any number of classes, with lowtf's
regularization switches. :func:`cnn` builds a small convolutional net for
8x8 digits or 28x28 MNIST-format images with the same switches.

:class:`ModelSpec` is one network's description as a job builds it and an
export records it (model.json): :meth:`ModelSpec.build` is the one place
that turns settings into a network, for training, export and transfer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

from lowtf import _checks, nn
from lowtf.nn import constraints, regularizers

PRESETS = {
    "tiny": (16,),
    "small": (16, 16),
    "medium": (64, 64, 64),
    "large": (512, 512, 512, 512),
}


def hidden_units(model: str | Sequence[int]) -> tuple[int, ...]:
    """The hidden widths of a preset name, or the widths given."""
    if isinstance(model, str):
        _checks.one_of("model", model, tuple(PRESETS))
        return PRESETS[model]
    units = tuple(model)
    for i, width in enumerate(units):
        _checks.positive_int(f"hidden[{i}]", width)
    return units


def num_logits(num_classes: int) -> int:
    """One logit for binary labels (sigmoid), one per class otherwise."""
    _checks.positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"`num_classes` ({num_classes}) must be at least 2")
    return 1 if num_classes == 2 else num_classes


def mlp(
    model: str | Sequence[int] = "small",
    *,
    num_classes: int = 2,
    activation: str = "elu",
    dropout: float = 0.0,
    batchnorm: bool = False,
    l1: float = 0.0,
    l2: float = 0.0,
    maxnorm: float = 0.0,
    maxnorm_output: bool = False,
    input_noise: float = 0.0,
    hidden_noise=0.0,
    seed: int = 0,
    name: str = "mlp",
) -> nn.Sequential:
    """Builds an MLP classifier.

    Each hidden layer is Dense → [BatchNorm] → activation → [Dropout]; the
    output layer is a linear Dense with :func:`num_logits` units.

    Args:
      model: a preset name (tiny, small, medium, large) or hidden widths.
      num_classes: number of classes; 2 gives a single (sigmoid) logit.
      activation: hidden activation, default elu as in the tutorial.
      dropout: dropout rate after each hidden layer; 0 (default) is off.
      batchnorm: batch norm before each hidden activation; default off.
      l1, l2: kernel regularizer scales (TensorFlow's definitions); 0 is off.
      maxnorm: max-norm cap of every hidden unit's incoming weights; 0 is off.
      maxnorm_output: also cap the output layer (default False).
      input_noise: stddev of Gaussian noise added to the inputs in training
        (:class:`lowtf.nn.GaussianNoise`); 0 (default) is off.
      hidden_noise: stddev of Gaussian noise after each hidden activation,
        one value or one per hidden layer; 0 (default) is off.
      seed: seed of the initial weights, dropout masks and noise.
      name: module name.
    """
    units = hidden_units(model)
    noises = _per_layer("hidden_noise", hidden_noise, len(units))
    _checks.rate("dropout", dropout)
    _checks.non_negative("maxnorm", maxnorm)
    regularizer = regularizers.make(l1, l2)
    constraint = constraints.max_norm(maxnorm) if maxnorm else None

    act = nn.activation_fn(activation)
    kernels = dict(kernel_regularizer=regularizer, kernel_constraint=constraint)

    stack = _input_noise(input_noise, seed)
    for i, width in enumerate(units):
        dense = functools.partial(
            nn.Dense, width, seed=seed * 1000 + i, name=f"dense_{i}", **kernels
        )
        stack += _hidden_block(
            dense, act, batchnorm, f"batchnorm_{i}", dropout, seed * 1000 + 500 + i,
            noise=(noises[i], seed * 1000 + 800 + i, f"noise_{i}"),
        )  # fmt: skip
    stack.append(
        _logits(
            num_classes,
            regularizer,
            constraint,
            maxnorm_output,
            seed * 1000 + len(units),
        )
    )
    return nn.Sequential(stack, name=name)


# Image shapes the CNN is sized for: the embedded 8x8 digits and MNIST.
CNN_INPUTS = {"digits": (8, 8, 1), "mnist": (28, 28, 1)}


def cnn(
    input_shape: str | Sequence[int] = "digits",
    *,
    num_classes: int = 10,
    filters: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    dense: Sequence[int] = (128,),
    activation: str = "relu",
    dropout: float = 0.0,
    batchnorm: bool = False,
    l1: float = 0.0,
    l2: float = 0.0,
    maxnorm: float = 0.0,
    maxnorm_output: bool = False,
    input_noise: float = 0.0,
    hidden_noise=0.0,
    seed: int = 0,
    name: str = "cnn",
) -> nn.Sequential:
    """Builds a small CNN classifier for single images.

    Layout: Reshape to ``input_shape`` (so flat pixel rows work too), then
    per entry of ``filters`` a block Conv2D 3x3 SAME → [BatchNorm] →
    activation → MaxPool 2x2 (the pool is skipped once the image is smaller
    than 2x2), then Flatten, the ``dense`` hidden layers (Dense → [BatchNorm]
    → activation → [Dropout]) and a linear output layer. With the defaults,
    8x8 digits become 4x4x32, 2x2x64, 256 features; 28x28 images 14x14x32,
    7x7x64, 3,136 features.

    Args:
      input_shape: ``"digits"`` (8, 8, 1; default), ``"mnist"`` (28, 28, 1) or
        ``(height, width, channels)``.
      num_classes: number of classes (default 10); 2 gives a single logit.
      filters: output channels of each conv block, default (32, 64).
      kernel_size: conv kernel size, default 3.
      dense: hidden widths after the conv blocks, default (128,).
      activation: hidden activation, default relu.
      dropout: dropout rate after each dense hidden layer; 0 (default) is off.
      batchnorm: batch norm before each hidden activation; default off.
      l1, l2: kernel regularizer scales (conv and dense kernels); 0 is off.
      maxnorm: max-norm cap of every unit's incoming weights (conv kernels
        over axes [0, 1, 2], dense kernels over axis 0); 0 is off.
      maxnorm_output: also cap the output layer (default False).
      input_noise: stddev of Gaussian noise added to the images in training;
        0 (default) is off.
      hidden_noise: stddev of Gaussian noise after each dense hidden
        activation, one value or one per dense hidden layer; 0 (default) is off.
      seed: seed of the initial weights, dropout masks and noise.
      name: module name.
    """
    if isinstance(input_shape, str):
        _checks.one_of("input_shape", input_shape, tuple(CNN_INPUTS))
        input_shape = CNN_INPUTS[input_shape]
    input_shape = _checks.image_shape("input_shape", input_shape)
    filters = tuple(filters)
    dense = tuple(dense)
    for i, width in enumerate(filters):
        _checks.positive_int(f"filters[{i}]", width)
    for i, width in enumerate(dense):
        _checks.positive_int(f"dense[{i}]", width)
    _checks.positive_int("kernel_size", kernel_size)
    _checks.rate("dropout", dropout)
    _checks.non_negative("maxnorm", maxnorm)
    regularizer = regularizers.make(l1, l2)
    constraint = constraints.max_norm(maxnorm) if maxnorm else None
    act = nn.activation_fn(activation)

    kernels = dict(kernel_regularizer=regularizer, kernel_constraint=constraint)

    noises = _per_layer("hidden_noise", hidden_noise, len(dense))
    stack = [nn.Reshape(input_shape, name="image"), *_input_noise(input_noise, seed)]
    height, width = input_shape[:2]
    for i, channels in enumerate(filters):
        conv = functools.partial(
            nn.Conv2D,
            channels,
            kernel_size,
            seed=seed * 1000 + i,
            name=f"conv_{i}",
            **kernels,
        )
        stack += _hidden_block(conv, act, batchnorm, f"conv_batchnorm_{i}")
        if height >= 2 and width >= 2:
            stack.append(nn.MaxPool2D(2, name=f"pool_{i}"))
            height, width = height // 2, width // 2
    stack.append(nn.Flatten())
    for i, units in enumerate(dense):
        hidden = functools.partial(
            nn.Dense,
            units,
            seed=seed * 1000 + 100 + i,
            name=f"dense_{i}",
            **kernels,
        )
        stack += _hidden_block(
            hidden, act, batchnorm, f"batchnorm_{i}", dropout, seed * 1000 + 500 + i,
            noise=(noises[i], seed * 1000 + 800 + i, f"noise_{i}"),
        )  # fmt: skip
    stack.append(
        _logits(num_classes, regularizer, constraint, maxnorm_output, seed * 1000 + 999)
    )
    return nn.Sequential(stack, name=name)


def _per_layer(name, value, layers: int) -> tuple:
    """One value per hidden layer: ``value`` repeated, or checked as given."""
    values = (value,) * layers if isinstance(value, (int, float)) else tuple(value)
    if len(values) != layers:
        raise ValueError(
            f"`{name}` ({value!r}) must be one value or {layers} values, one per "
            "hidden layer"
        )
    for i, v in enumerate(values):
        _checks.non_negative(f"{name}[{i}]", v)
    return values


def _input_noise(stddev, seed) -> list:
    """The input's GaussianNoise layer, or nothing for a stddev of 0."""
    _checks.non_negative("input_noise", stddev)
    if not stddev:
        return []
    return [nn.GaussianNoise(stddev, seed=seed * 1000 + 700, name="input_noise")]


def _hidden_block(
    make_layer,
    activation,
    batchnorm,
    batchnorm_name,
    dropout=0.0,
    dropout_seed=None,
    noise=(0.0, None, None),
):
    """A hidden layer → [BatchNorm] → activation → [noise] → [Dropout], as a list.

    With batch norm the kernel layer gets no bias (the offset beta replaces
    it) and the activation moves after the normalization.
    """
    block = [
        make_layer(activation=None if batchnorm else activation, use_bias=not batchnorm)
    ]
    if batchnorm:
        block += [nn.BatchNorm(name=batchnorm_name), nn.Lambda(activation)]
    stddev, noise_seed, noise_name = noise
    if stddev:
        block.append(nn.GaussianNoise(stddev, seed=noise_seed, name=noise_name))
    if dropout:
        block.append(nn.Dropout(dropout, seed=dropout_seed))
    return block


def _logits(num_classes, regularizer, constraint, maxnorm_output, seed):
    """The linear output layer; max-norm only if ``maxnorm_output``."""
    return nn.Dense(
        num_logits(num_classes),
        kernel_regularizer=regularizer,
        kernel_constraint=constraint if maxnorm_output else None,
        seed=seed,
        name="logits",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A network as a job trains it and model.json records it; see :meth:`build`.

    Attributes:
      model: a preset of :data:`PRESETS` or ``"cnn"`` (default None: the
        MLP of ``hidden``).
      hidden: hidden widths of an MLP instead of a preset (default None).
      activation: the hidden activation (default ``"elu"``).
      dropout, batchnorm, l1, l2, maxnorm, input_noise, hidden_noise, seed:
        as :func:`mlp` and :func:`cnn` take them (default off, seed 0).
      num_classes: the classes (default 2: one sigmoid logit).
      feature_shape: one example's shape (default ``(1,)``); an MLP of
        examples of rank > 1 flattens them first.
      image_shape: ``(h, w, c)`` of the cnn's images (default None).
    """

    model: str | None = None
    hidden: tuple | None = None
    activation: str = "elu"
    dropout: float = 0.0
    batchnorm: bool = False
    l1: float = 0.0
    l2: float = 0.0
    maxnorm: float = 0.0
    input_noise: float = 0.0
    hidden_noise: float = 0.0
    seed: int = 0
    num_classes: int = 2
    feature_shape: tuple = (1,)
    image_shape: tuple | None = None

    def __post_init__(self):
        if self.model is not None:
            _checks.one_of("model", self.model, (*PRESETS, "cnn"))
        if (self.model is None) == (self.hidden is None):
            raise ValueError(
                f"give `model` ({self.model!r}) or `hidden` ({self.hidden!r}), one of them"
            )
        if self.model == "cnn" and self.image_shape is None:
            raise ValueError("the cnn needs `image_shape`, (h, w, c)")
        # JSON gives lists: held as tuples, so that the spec stays hashable.
        for name in ("hidden", "feature_shape", "image_shape"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))

    def build(self) -> nn.Sequential:
        """The untrained network: :func:`cnn`, or :func:`mlp` (images flattened first)."""
        switches = {
            name: getattr(self, name)
            for name in (
                "num_classes", "activation", "dropout", "batchnorm", "l1", "l2",
                "maxnorm", "input_noise", "hidden_noise", "seed",
            )
        }  # fmt: skip
        if self.model == "cnn":
            return cnn(self.image_shape, **switches)
        model = mlp(self.hidden if self.hidden is not None else self.model, **switches)
        if len(self.feature_shape) > 1:
            model = nn.Sequential([nn.Flatten(), model], name="flat_mlp")
        return model

    def as_dict(self) -> dict:
        """The fields as JSON values (tuples as lists)."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, fields: dict) -> ModelSpec:
        """The spec of :meth:`as_dict`'s fields; others are ignored, missing ones default.

        A model.json of an earlier lowtf, without the newer fields, reads
        as the network it built.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in names})
