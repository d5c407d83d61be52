"""MLP presets of the TensorFlow "overfit and underfit" tutorial.

The tutorial compares four fully connected models on Higgs, all with elu
hidden units and one logit: tiny (16), small (16, 16), medium (64, 64, 64)
and large (512 x 4). :func:`mlp` builds any of them, for any input width
and any number of classes, with lowtf's regularization switches.
"""

from __future__ import annotations

from typing import Sequence

from lowtf import _checks, constraints, layers, regularizers

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
    seed: int = 0,
    name: str = "mlp",
) -> layers.Sequential:
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
      seed: seed of the initial weights and dropout masks.
      name: module name.
    """
    units = hidden_units(model)
    _checks.rate("dropout", dropout)
    _checks.non_negative("maxnorm", maxnorm)
    regularizer = regularizers.make(l1, l2)
    constraint = constraints.max_norm(maxnorm) if maxnorm else None

    stack = []
    for i, width in enumerate(units):
        stack.append(
            layers.Dense(
                width,
                activation=None if batchnorm else activation,
                use_bias=not batchnorm,
                kernel_regularizer=regularizer,
                kernel_constraint=constraint,
                seed=seed * 1000 + i,
                name=f"dense_{i}",
            )
        )
        if batchnorm:
            stack.append(layers.BatchNorm(name=f"batchnorm_{i}"))
            stack.append(layers.Lambda(layers.activation_fn(activation)))
        if dropout:
            stack.append(layers.Dropout(dropout, seed=seed * 1000 + 500 + i))
    stack.append(
        layers.Dense(
            num_logits(num_classes),
            kernel_regularizer=regularizer,
            kernel_constraint=constraint if maxnorm_output else None,
            seed=seed * 1000 + len(units),
            name="logits",
        )
    )
    return layers.Sequential(stack, name=name)
