"""Weight regularizers and the gathering of their losses.

TF1 put every regularization loss in the ``REGULARIZATION_LOSSES`` graph
collection and left it to the user to add them to the training loss by hand
("or else they will simply be ignored"). lowtf keeps that explicit style in
TF2: a weight carries its regularizer, :func:`regularization_losses` walks a
module tree and returns the losses, and the training step adds them to the
cross-entropy itself and reports both terms apart.

The definitions are TensorFlow's own (``tf.keras.regularizers``), with no ½:

* ``l1(λ)``:        λ · Σ|w|
* ``l2(λ)``:        λ · Σw²
* ``l1_l2(λ1, λ2)``: λ1 · Σ|w| + λ2 · Σw²
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from lowtf import _checks
from lowtf.nn import _xla_cpu, base


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """A weight penalty ``l1 * sum(|w|) + l2 * sum(w**2)``.

    Build one with :func:`l1`, :func:`l2` or :func:`l1_l2`; calling it on a
    tensor returns the scalar penalty in that tensor's dtype.
    """

    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        _checks.non_negative("l1", self.l1)
        _checks.non_negative("l2", self.l2)
        if self.l1 == 0 and self.l2 == 0:
            raise ValueError(
                "a regularizer needs `l1` or `l2` above 0; pass no regularizer "
                "at all to train unregularized"
            )

    @tf.autograph.experimental.do_not_convert
    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        penalty = tf.zeros([], w.dtype)
        if self.l1:
            penalty += tf.cast(self.l1, w.dtype) * _xla_cpu.total(tf.abs(w))
        if self.l2:
            penalty += tf.cast(self.l2, w.dtype) * _xla_cpu.total(tf.square(w))
        return penalty


def l1(l1: float) -> Regularizer:
    """L1 penalty ``l1 * sum(|w|)`` (drives weights to exactly zero).

    As ``tf.keras.regularizers.l1``, but the scale has no default: a penalty
    whose size the reader cannot see is a hyper-parameter nobody chose.
    """
    return Regularizer(l1=l1)


def l2(l2: float) -> Regularizer:
    """L2 penalty ``l2 * sum(w**2)`` (weight decay, Krogh & Hertz 1992).

    As ``tf.keras.regularizers.l2``, with no default scale (see :func:`l1`).
    """
    return Regularizer(l2=l2)


def l1_l2(l1: float = 0.0, l2: float = 0.0) -> Regularizer:
    """Elastic-net penalty ``l1 * sum(|w|) + l2 * sum(w**2)``, as Keras' ``l1_l2``.

    At least one of the two must be above 0.
    """
    return Regularizer(l1=l1, l2=l2)


def make(l1: float = 0.0, l2: float = 0.0) -> Regularizer | None:
    """Returns the regularizer for these scales, or None when both are 0."""
    if not l1 and not l2:
        return None
    return Regularizer(l1=l1, l2=l2)


def regularization_losses(model) -> list[tf.Tensor]:
    """Gathers every regularization loss of a model, one scalar per weight.

    The TF2 stand-in for TF1's ``REGULARIZATION_LOSSES`` collection. Works on
    a lowtf module tree (every weight that carries a regularizer, found in the
    module and all its submodules, less those of frozen layers, which do not
    train) and on a Keras model (its ``losses``).
    Each loss is computed from the weight's current value, so call it inside
    the gradient tape of the step.

    Args:
      model: a ``tf.Module`` (lowtf layers, or any module tree containing
        them) or a Keras model.

    Returns:
      A list of scalar tensors; empty when nothing is regularized.
    """
    if _is_keras(model):
        return list(model.losses)
    losses = []
    for var, regularizer in _regularized_weights(model):
        losses.append(regularizer(var))
    return losses


def total_regularization_loss(model, dtype=tf.float32) -> tf.Tensor:
    """The sum of :func:`regularization_losses`, 0 when there are none."""
    losses = regularization_losses(model)
    if not losses:
        return tf.zeros([], dtype)
    return tf.add_n([tf.cast(loss, dtype) for loss in losses])


def regularized_weights(module: tf.Module, *, include_frozen: bool = False) -> list:
    """Every (variable, regularizer) pair in a lowtf module tree.

    Args:
      module: the module tree.
      include_frozen: also the pairs of frozen layers, whose penalty a
        training step leaves out (default False).
    """
    frozen = set() if include_frozen else base.frozen_variables(module)
    return [
        (var, regularizer)
        for m in _modules(module)
        for var, regularizer in getattr(m, "regularized_weights", ())
        if var.ref() not in frozen
    ]


def _regularized_weights(module: tf.Module):
    """Yields (variable, regularizer) for every regularized weight that trains."""
    yield from regularized_weights(module)


def _modules(module: tf.Module):
    """The module itself and its submodules, each once."""
    yield module
    yield from module.submodules


def _is_keras(model) -> bool:
    return isinstance(model, tf.keras.layers.Layer)
