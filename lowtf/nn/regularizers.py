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

A stacked model's regularizers hold one scale per member
(``Regularizer(l2=(1e-4, 0.0, 3e-4))``) and return each member's penalty
(``[K]``) from a weight stacked along its first axis; so do
:func:`regularization_losses` and :func:`total_regularization_loss` on a
stacked model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from lowtf import _checks
from lowtf.nn import _xla_cpu, base


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """A weight penalty ``l1 * sum(|w|) + l2 * sum(w**2)``.

    Build one with :func:`l1`, :func:`l2` or :func:`l1_l2`; calling it on a
    tensor returns the scalar penalty in that tensor's dtype.

    Per member: ``l1`` and/or ``l2`` may be K-sequences (stored as K-tuples,
    a single value repeated), member ``k`` scaled by ``l1[k]`` and ``l2[k]``
    (0 leaves it unpenalized). Called on a stacked weight ``[K, ...]`` it
    returns the ``[K]`` penalties, member ``k``'s summed over ``w[k]``.

    Attributes:
      l1: the L1 scale (>= 0), default 0; or K of them.
      l2: the L2 scale (>= 0), default 0; or K of them. At least one scale
        must be above 0.
    """

    l1: float | tuple = 0.0
    l2: float | tuple = 0.0

    def __post_init__(self):
        sizes = {len(v) for v in (self.l1, self.l2) if _is_sequence(v)}
        if len(sizes) > 1:
            raise ValueError(
                f"`l1` ({self.l1!r}) and `l2` ({self.l2!r}) must give as many "
                "scales, one per member"
            )
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if sizes:  # per member: K scales each, a single value repeated
                values = value if _is_sequence(value) else [value] * min(sizes)
                for k, v in enumerate(values):
                    _checks.non_negative(f"{name}[{k}]", v)
                object.__setattr__(self, name, tuple(float(v) for v in values))
            else:
                _checks.non_negative(name, value)
        if not _any(self.l1) and not _any(self.l2):
            raise ValueError(
                "a regularizer needs `l1` or `l2` above 0; pass no regularizer "
                "at all to train unregularized"
            )

    @property
    def members(self) -> int | None:
        """None for an ordinary regularizer; K when its scales are per member."""
        return len(self.l1) if isinstance(self.l1, tuple) else None

    @classmethod
    def of_members(cls, regularizers) -> Regularizer | None:
        """The per-member regularizer of K members' ordinary ones.

        Args:
          regularizers: K ordinary regularizers or None (a member without
            one: scales 0).

        Returns:
          The stacked regularizer, or None when no member has one.
        """
        regularizers = list(regularizers)
        for k, r in enumerate(regularizers):
            if r is not None and (not isinstance(r, cls) or r.members is not None):
                raise ValueError(
                    f"regularizer {k} ({r!r}) must be an ordinary lowtf.Regularizer "
                    "(or None) to be stacked"
                )
        if all(r is None for r in regularizers):
            return None
        return cls(
            l1=tuple(0.0 if r is None else r.l1 for r in regularizers),
            l2=tuple(0.0 if r is None else r.l2 for r in regularizers),
        )

    @tf.autograph.experimental.do_not_convert
    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        w = tf.convert_to_tensor(w)
        if self.members is None:
            penalty, total = tf.zeros([], w.dtype), _xla_cpu.total
        else:
            if w.shape.rank is None or w.shape.rank < 1 or w.shape[0] != self.members:
                raise ValueError(
                    f"a regularizer of {self.members} members takes weights "
                    f"[{self.members}, ...], got shape {w.shape}"
                )
            penalty, total = tf.zeros(w.shape[:1], w.dtype), _xla_cpu.member_totals
        # A scale is cast as one tensor (K of them when per member), so that
        # member k's equals an ordinary regularizer's.
        if _any(self.l1):
            penalty += tf.cast(self.l1, w.dtype) * total(tf.abs(w))
        if _any(self.l2):
            penalty += tf.cast(self.l2, w.dtype) * total(tf.square(w))
        return penalty


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _any(scale) -> bool:
    """Whether a scale, or any of K, is above 0."""
    return any(scale) if isinstance(scale, tuple) else bool(scale)


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
      A list of scalar tensors (``[K]`` tensors, one penalty per member, on
      a stacked model); empty when nothing is regularized.
    """
    if _is_keras(model):
        return list(model.losses)
    losses = []
    for var, regularizer in _regularized_weights(model):
        losses.append(regularizer(var))
    return losses


def total_regularization_loss(model, dtype=tf.float32) -> tf.Tensor:
    """The sum of :func:`regularization_losses`, 0 when there are none.

    A scalar, or ``[K]`` (each member's total) on a stacked model.
    """
    losses = regularization_losses(model)
    if not losses:
        members = getattr(model, "members", None)
        return tf.zeros([] if members is None else [members], dtype)
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
