"""Max-norm and the assign ops that apply constraints after each step.

Max-norm regularization (Srebro & Shraibman 2005; Srivastava et al. 2014,
"Dropout", section 5.1) caps the L2 norm of each unit's *incoming* weight
vector at ``r``. It is not a loss term: after every optimizer update the
step runs ``var.assign(tf.clip_by_norm(var, r, axes=...))``.

Which axes: a Dense kernel has shape ``[in, out]``, one column per unit, so
the norm is taken over axis 0; a Conv2D kernel ``[h, w, in, out]`` takes it
over axes ``[0, 1, 2]``. Code in the TF1 style often clips with ``axes=1``:
on a ``[in, out]`` kernel that caps the *outgoing* weights of each input
feature instead, a different (and much weaker) constraint. lowtf's default
is "every axis but the last", which is right for both kernels.

Units whose norm is already at most ``r`` are left bit-for-bit unchanged:
``tf.clip_by_norm`` computes ``w * r / max(|w|, r)``, which can move such a
unit by one rounding step, so only the units over the cap take its value.

:meth:`MaxNorm.bound` tells which units a clip would change (the same norms
and test), per unit: what the training step counts for the fraction of units
max-norm clipped between two evaluations.

A stacked model's constraints hold one cap per member
(``MaxNorm((3.0, 0.0, 2.0))``, 0 leaving that member uncapped) and take the
norms of each member's units in a kernel stacked along its first axis.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from lowtf import _checks
from lowtf.nn import base


@dataclasses.dataclass(frozen=True)
class MaxNorm:
    """Caps the L2 norm of each unit's incoming weights at ``max_value``.

    The arguments are those of ``tf.keras.constraints.MaxNorm`` with one
    difference, on purpose: Keras' default ``axis=0`` is right for a Dense
    kernel only (a Conv2D kernel needs ``axis=[0, 1, 2]``), so lowtf's default
    ``axis=None`` means every axis but the last, right for both.

    Per member: ``max_value`` may be a K-sequence (stored as a K-tuple) of
    caps >= 0, 0 leaving that member's units as they are. Such a constraint
    takes kernels stacked along a leading member axis ``[K, ...]``; ``axis``
    still names the axes of one member's kernel.

    Attributes:
      max_value: the cap ``r`` (> 0), checked at construction; or K caps
        (>= 0, at least one > 0).
      axis: an axis or a list of axes the norm is taken over; None (default)
        means every axis but the last, i.e. the incoming weights of each
        output unit.
    """

    max_value: float | tuple
    axis: int | Sequence[int] | None = None

    def __post_init__(self):
        if isinstance(self.max_value, (list, tuple, np.ndarray)):
            for k, cap in enumerate(self.max_value):
                _checks.non_negative(f"max_value[{k}]", cap)
            caps = tuple(float(cap) for cap in self.max_value)
            if not any(caps):
                raise ValueError(
                    f"`max_value` ({caps!r}) needs a cap above 0 for some member; "
                    "pass no constraint at all to leave every member uncapped"
                )
            object.__setattr__(self, "max_value", caps)
        else:
            _checks.positive("max_value", self.max_value)
        axes = [self.axis] if isinstance(self.axis, int) else self.axis
        if axes is not None and (
            not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
        ):
            raise ValueError(
                f"`axis` ({self.axis!r}) must be an int, a non-empty list of ints or "
                "None (every axis but the last)"
            )

    @property
    def members(self) -> int | None:
        """None for an ordinary constraint; K when its caps are per member."""
        return len(self.max_value) if isinstance(self.max_value, tuple) else None

    @classmethod
    def of_members(cls, constraints) -> MaxNorm | None:
        """The per-member constraint of K members' ordinary ones.

        Args:
          constraints: K ordinary :class:`MaxNorm` or None (a member without
            one: cap 0); those given must share one ``axis``.

        Returns:
          The stacked constraint, or None when no member has one.
        """
        constraints = list(constraints)
        given = [c for c in constraints if c is not None]
        for k, c in enumerate(constraints):
            if c is not None and (not isinstance(c, cls) or c.members is not None):
                raise ValueError(
                    f"constraint {k} ({c!r}) must be an ordinary lowtf.MaxNorm (or "
                    "None) to be stacked"
                )
        if not given:
            return None
        axes = {repr(c.axis) for c in given}
        if len(axes) > 1:
            raise ValueError(
                f"the constraints' axes differ ({', '.join(sorted(axes))}): stacked "
                "members take their norms over the same axes"
            )
        caps = tuple(0.0 if c is None else c.max_value for c in constraints)
        return cls(caps, given[0].axis)

    def norm_axes(self, rank: int) -> list[int]:
        """The axes the norm is taken over, for a weight of rank ``rank``.

        Per member, ``rank`` counts the member axis, which is never one of them.
        """
        lead = 0 if self.members is None else 1
        if self.axis is None:
            return list(range(lead, max(rank - 1, lead + 1)))
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        return [a + lead if a >= 0 else a for a in axes]

    @tf.autograph.experimental.do_not_convert
    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        """Returns ``w`` with every over-long unit clipped to norm ``max_value``."""
        w = tf.convert_to_tensor(w)
        norms, r, over = self._over(w)
        # tf.clip_by_norm's arithmetic, w * r / max(|w|, r), taken only by the
        # units over the cap: for the others w * r / r can move a bit.
        return tf.where(over, w * r / tf.maximum(norms, r), w)

    @tf.autograph.experimental.do_not_convert
    def bound(self, w: tf.Tensor) -> tf.Tensor:
        """Per unit, whether the cap binds on ``w``: the units ``__call__`` clips.

        The same norms and test as the clip (norm over the cap, and a cap
        above 0), so a unit is flagged exactly when the clip changes it.

        Returns:
          bools of ``w``'s shape less the norm axes: ``[units]`` for a
          kernel ``[..., units]``; ``[K, units]`` per member (a member with
          cap 0 has no unit flagged).
        """
        w = tf.convert_to_tensor(w)
        _, _, over = self._over(w)
        return tf.squeeze(over, axis=self.norm_axes(w.shape.rank))

    def capped(self, w) -> tf.Tensor:
        """Per unit, whether it has a cap at all (False only under a member's cap 0).

        Of :meth:`bound`'s shape: what a fraction of bound units counts over.
        """
        w = tf.convert_to_tensor(w)
        _, r, over = self._over(w)
        every = tf.broadcast_to(r > 0, tf.shape(over))
        return tf.squeeze(every, axis=self.norm_axes(w.shape.rank))

    def _over(self, w):
        """The norms (kept dims), the cap(s) broadcast to them, and who is over."""
        axes = self.norm_axes(w.shape.rank)
        r = tf.cast(self.max_value, w.dtype)
        if self.members is not None:  # member k's cap against its own units
            r = tf.reshape(r, [self.members] + [1] * (w.shape.rank - 1))
        norms = _norms(w, axes, keepdims=True)
        # A cap of 0 (a member left free) binds on none.
        return norms, r, tf.logical_and(norms > r, r > 0)


def max_norm(max_value: float, axis: int | Sequence[int] | None = None) -> MaxNorm:
    """The max-norm constraint with cap ``max_value`` (see :class:`MaxNorm`)."""
    return MaxNorm(max_value, axis)


def constrained_weights(
    model, *, include_frozen: bool = False
) -> list[tuple[tf.Variable, MaxNorm]]:
    """Every (variable, constraint) pair in a lowtf module tree.

    Args:
      model: the module tree.
      include_frozen: also the pairs of frozen layers (default False): a
        frozen weight does not train, so clipping it would be the only
        thing that changes it.
    """
    frozen = set() if include_frozen else base.frozen_variables(model)
    pairs = []
    for m in (model, *model.submodules):
        pairs.extend(
            (var, constraint)
            for var, constraint in getattr(m, "constrained_weights", ())
            if var.ref() not in frozen
        )
    return pairs


def apply_constraints(pairs) -> list:
    """Runs ``var.assign(constraint(var))`` for each pair; returns the ops."""
    return [var.assign(constraint(var)) for var, constraint in pairs]


def unit_norms(w, axes: Sequence[int] | None = None) -> tf.Tensor:
    """The incoming-weight norm of each unit (default axes as :class:`MaxNorm`)."""
    w = tf.convert_to_tensor(w)
    if axes is None:
        axes = list(range(max(w.shape.rank - 1, 1)))
    return _norms(w, list(axes))


def _norms(w, axes, keepdims=False):
    # tf.norm takes at most two axes; a Conv2D kernel needs three.
    return tf.sqrt(tf.reduce_sum(tf.square(w), axis=axes, keepdims=keepdims))
