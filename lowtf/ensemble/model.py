"""An ensemble: the weighted mean of its members' predicted probabilities.

Averaging the probabilities of several trained networks is one of the most
reliable defences against variance (deep ensembles, Lakshminarayanan et al.
2017; ensemble selection, Caruana et al. 2004). :class:`Ensemble` is a
lowtf model like any other: called as ``ensemble(x, training=False)`` it
returns *logits of the averaged probabilities* (``log p`` for a softmax
head, ``log p - log(1 - p)`` for one sigmoid logit), so the softmax or
sigmoid of its output is the ensemble's probability and everything that
takes a lowtf model's logits (:class:`lowtf.Evaluator`, the export,
``bin/predict``) scores the ensemble itself: its cross-entropy is that of
the mean probability, not the mean of the members' cross-entropies.

Members of one architecture run stacked (:func:`lowtf.nn.stack`): one
forward pass over a member axis, then the mean. Members of several
architectures form one stacked group per architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from lowtf import nn
from lowtf.nn.base import Layer


class Ensemble(Layer):
    """K trained models whose probabilities are averaged, with weights.

    >>> ensemble = lowtf.Ensemble([pop.member(k) for k in range(pop.size)])
    >>> lowtf.Evaluator(ensemble)(x_test, y_test)   # the ensemble's scores
    >>> ensemble.probabilities(x_test)              # [n, classes]

    Args:
      members: built lowtf models (each called once on an example batch),
        all giving the same number of logits. Members of one architecture
        are stacked and run as one.
      weights: one non-negative weight per member, normalized to sum 1
        (default: equal weights). Greedy selection
        (:func:`lowtf.ensemble.greedy_selection`) gives each pick's count.
      name: module name.

    Raises:
      ValueError: no members, a member that is not built, members with
        different numbers of logits, or bad weights.
    """

    def __init__(self, members: Sequence, *, weights=None, name: str = "ensemble"):
        super().__init__(name=name)
        members = list(members)
        if not members:
            raise ValueError("`members` is empty: an ensemble needs at least one model")
        for k, member in enumerate(members):
            if not getattr(member, "built", True) or not member.variables:
                raise ValueError(
                    f"`members[{k}]` is not built: call each model once on an "
                    "example batch (model(x[:1])) before making the ensemble"
                )
        if weights is None:
            weights = np.ones(len(members))
        weights = np.asarray(weights, np.float64).reshape(-1)
        if len(weights) != len(members) or not np.all(np.isfinite(weights)):
            raise ValueError(
                f"`weights` must be {len(members)} finite numbers, one per member; "
                f"got {weights.tolist()}"
            )
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"`weights` ({weights.tolist()}) must be >= 0 with a positive sum"
            )
        self.size = len(members)
        self.weights = weights / weights.sum()
        # Groups of one architecture, each stacked; `order` maps the groups'
        # members back to the order given.
        self.groups, self.order, group_weights = [], [], []
        for indices in _architectures(members):
            stacked = nn.stack([members[k] for k in indices], name=f"group_{len(self.groups)}")
            self.groups.append(stacked)
            self.order.append(list(indices))
            group_weights.append(self.weights[indices])
        self._group_weights = [tf.constant(w, tf.float32) for w in group_weights]
        # The logits' width, from one example of the members' input shape.
        example = tf.zeros([1, *members[0].input_shape[1:]], members[0].variables[0].dtype)
        widths = {int(members[g[0]](example).shape[-1]) for g in self.order}
        if len(widths) != 1:
            raise ValueError(
                f"the members give different numbers of logits ({sorted(widths)}): "
                "an ensemble averages one kind of prediction"
            )
        self._logit_width = widths.pop()
        self._built = True

    def build(self, input_shape):
        """The members were built before they were stacked: nothing to make."""

    def call(self, x, training):
        probabilities = self._mean(self._group_probabilities(x, training))
        return _logits(probabilities, self.head)

    @property
    def num_logits(self) -> int:
        return int(self._logit_width)

    @property
    def head(self) -> str:
        return "sigmoid" if self._logit_width == 1 else "softmax"

    def member_probabilities(self, x) -> tf.Tensor:
        """Each member's probabilities, ``[K, batch, logits]``, in the members' order."""
        per_group = self._group_probabilities(tf.convert_to_tensor(x), False)
        stacked = tf.concat(per_group, axis=0)
        where = np.argsort(np.concatenate(self.order))  # back to the given order
        return tf.gather(stacked, where)

    def probabilities(self, x) -> tf.Tensor:
        """The ensemble's probabilities, ``[batch, logits]`` (softmax or sigmoid)."""
        return self._mean(self._group_probabilities(tf.convert_to_tensor(x), False))

    def disagreement(self, x) -> tf.Tensor:
        """The members' weighted variance of each probability, ``[batch, logits]``.

        Zero where every member predicts alike; an uncertainty to serve
        beside the mean.
        """
        per_group = self._group_probabilities(tf.convert_to_tensor(x), False)
        mean = self._mean(per_group)
        return self._mean([tf.square(p - mean[None]) for p in per_group])

    # -- internals ---------------------------------------------------------

    def _group_probabilities(self, x, training):
        out = []
        for group in self.groups:
            members = group.members
            tiled = tf.broadcast_to(x[None], tf.concat([[members], tf.shape(x)], 0))
            logits = tf.cast(group(tiled, training=training), tf.float32)
            if logits.shape[-1] == 1:
                out.append(tf.sigmoid(logits))
            else:
                out.append(tf.nn.softmax(logits, axis=-1))
        return out

    def _mean(self, per_group):
        total = 0.0
        for probabilities, weights in zip(per_group, self._group_weights):
            total += tf.tensordot(weights, probabilities, axes=1)
        return total


def _logits(probabilities, head: str) -> tf.Tensor:
    """Logits whose softmax (or sigmoid) is ``probabilities`` (floored at float32's tiny)."""
    tiny = np.finfo(np.float32).tiny
    p = tf.maximum(probabilities, tiny)
    if head == "sigmoid":
        return tf.math.log(p) - tf.math.log(tf.maximum(1.0 - probabilities, tiny))
    return tf.math.log(p)


def _architectures(members) -> list[list[int]]:
    """Member indices grouped by architecture (layer classes and variable shapes)."""
    groups: dict = {}
    for k, member in enumerate(members):
        key = (
            tuple(member.input_shape[1:]),
            tuple(type(m).__name__ for m in member.submodules if isinstance(m, Layer)),
            tuple(tuple(v.shape) for v in member.variables),
        )
        groups.setdefault(key, []).append(k)
    if len({key[0] for key in groups}) != 1:
        raise ValueError(
            f"the members take inputs of different shapes "
            f"({sorted({key[0] for key in groups})}): an ensemble's members read "
            "the same examples"
        )
    return list(groups.values())
