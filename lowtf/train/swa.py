"""Stochastic weight averaging: an equal-weight mean of the weights, and batch norm for it.

SWA (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
Better Generalization") evaluates the running mean of the weights taken at
points along the trajectory: here at each evaluation from a chosen step on
(:class:`lowtf.StepOptions` ``swa_from``). After the n-th point

    average = average + (weight - average) / n      (the first copies)

as ``torch.optim.swa_utils.AveragedModel``'s default. A network with batch
norm needs statistics of the *averaged* weights' activations, which no
training step ever saw: :class:`BatchNormPass` recomputes them in one pass
over the training rows, as ``torch.optim.swa_utils.update_bn`` does (moving
statistics reset, then the cumulative average of the per-batch statistics):
every trainable :class:`lowtf.nn.BatchNorm` gets

    moving_mean = mean over batches of the batch mean
    moving_variance = mean over batches of the batch variance

with the batch moments of its own input in training mode (``tf.nn.moments``
over every axis but the channels, and the member axis of a stacked layer:
the (biased) variance lowtf's BatchNorm normalizes with and moves its
averages by). Every other layer runs in inference mode, so the pass draws no
dropout mask and adds no noise. The batches are the training rows in their
order, ``batch_size`` at a time, the incomplete tail left out as a training
epoch leaves it; each full batch counts once.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from lowtf import nn


class WeightAverage(tf.Module):
    """The running mean of some variables, and the batch-norm statistics that go with it.

    Tracked (so in a checkpoint with its owner): ``count`` (how many points
    the mean holds), ``averages`` (one per variable) and ``statistics`` (the
    moving mean and variance of every BatchNorm layer of the averaged
    weights). Stacked variables (``[K, ...]``) take a per-member ``count``
    ``[K]``: member k's points are its own.

    Args:
      variables: the weights to average.
      statistics: the BatchNorm moving statistics of the same model.
      members: None (default) for one model; K for stacked variables.
      name: module name.
    """

    def __init__(self, variables, statistics=(), *, members=None, name="swa"):
        super().__init__(name=name)
        shape = [] if members is None else [members]
        self.count = tf.Variable(
            tf.zeros(shape, tf.int64), trainable=False, name="count"
        )
        self.averages = [
            tf.Variable(v.read_value(), trainable=False, name="average")
            for v in variables
        ]
        self.statistics = [
            tf.Variable(s.read_value(), trainable=False, name="statistic")
            for s in statistics
        ]
        # Not tracked: the model's own variables stay at their own paths.
        self._links = _Links(
            list(zip(variables, self.averages)), list(zip(statistics, self.statistics))
        )

    def pairs(self) -> list:
        """(model variable, its copy here) for every weight and statistic."""
        return [*self._links.weights, *self._links.statistics]

    def add(self, members=None) -> None:
        """Adds the current weights to the mean (of ``members``, a ``[K]`` mask).

        The statistics are copied from the model's own: those of a layer
        the next :class:`BatchNormPass` leaves out (a frozen one) are then
        the model's.
        """
        mask = None if members is None else tf.constant(members, tf.bool)
        if mask is None:
            self.count.assign_add(1)
        else:
            self.count.assign_add(tf.cast(mask, tf.int64))
        count = self.count.read_value()
        for var, average in self._links.weights:
            n = _along(count, var)
            step = average + (var - average) / tf.cast(tf.maximum(n, 1), var.dtype)
            value = tf.where(n == 1, var, step)  # the first point is copied
            if mask is not None:
                value = tf.where(_along(mask, var), value, average)
            average.assign(value)
        for stat, copy in self._links.statistics:
            value = stat.read_value()
            if mask is not None:
                value = tf.where(_along(mask, stat), value, copy)
            copy.assign(value)

    @contextlib.contextmanager
    def swapped(self, members=None):
        """Within it the model holds the averages and their statistics.

        Only where the mean holds a point (and, stacked, for ``members``, a
        ``[K]`` mask): elsewhere the weights stay. Swapped out on exit, so
        a checkpoint written inside holds the averaged weights.
        """
        started = self.count.numpy() > 0
        if members is not None:
            started = started & np.asarray(members, bool)
        if not np.any(started):
            yield
            return
        mask = None if started.ndim == 0 else tf.constant(started)
        self._swap(mask)
        try:
            yield
        finally:
            self._swap(mask)

    def _swap(self, mask):
        for var, copy in self.pairs():
            mine, theirs = var.read_value(), copy.read_value()
            if mask is None:
                var.assign(theirs)
                copy.assign(mine)
            else:
                where = _along(mask, var)
                var.assign(tf.where(where, theirs, mine))
                copy.assign(tf.where(where, mine, theirs))


def swap(pairs) -> None:
    """Swaps each ``(weight, average)`` pair's values: in, and out again.

    What evaluating the exponential moving average of the weights
    (``StepOptions.ema``, ``Population(ema=)``) does around an evaluation,
    as Keras' ``SwapEMAWeights``.
    """
    for var, average in pairs:
        weight = var.read_value()
        var.assign(average.read_value())
        average.assign(weight)


def ema_update(pairs, step, momentum) -> None:
    """Keras' EMA update of each ``(weight, average)`` pair after a step.

    ``average = m * average + (1 - m) * weight`` with ``m = momentum``,
    except at the first step (``step`` 1 once it advanced: Keras' iterations,
    read before they advance, are 0), where the average copies the weight.
    ``momentum`` may be ``[K]``, one per member of stacked weights.
    """
    momentum = tf.convert_to_tensor(momentum, tf.float32)
    m = tf.where(tf.equal(step, 1), tf.zeros_like(momentum), momentum)
    for var, average in pairs:
        m_var = tf.cast(_along(m, var), var.dtype)
        average.assign(m_var * average + (1 - m_var) * var)


class _Links:
    """(variable, its average) pairs; a plain object, so not tracked."""

    def __init__(self, weights, statistics):
        self.weights = weights
        self.statistics = statistics


def batch_norm_layers(model) -> list:
    """Every lowtf :class:`~lowtf.nn.BatchNorm` in a module tree (none for Keras)."""
    if not isinstance(model, tf.Module) or isinstance(model, tf.keras.layers.Layer):
        return []
    return [m for m in (model, *model.submodules) if isinstance(m, nn.BatchNorm)]


def batch_norm_statistics(model) -> list:
    """The moving mean and variance of every BatchNorm layer, in that order."""
    return [
        var
        for layer in batch_norm_layers(model)
        for var in (layer.moving_mean, layer.moving_variance)
    ]


class BatchNormPass:
    """Recomputes a model's batch-norm statistics in one pass (``update_bn``).

    See the module docstring for the arithmetic. The model is walked
    through :class:`lowtf.nn.Sequential` (what :func:`lowtf.mlp`,
    :func:`lowtf.cnn` and :func:`lowtf.nn.stack` build); a BatchNorm nested
    in another kind of layer cannot be reached and is refused.

    Args:
      model: a lowtf model, ordinary or stacked.

    Raises:
      ValueError: a trainable BatchNorm inside a layer the pass cannot walk.
    """

    def __init__(self, model):
        self.model = model
        _check_walkable(model)
        self._moments = tf.function(self._batch_moments, reduce_retracing=True)

    def __call__(self, batches, *, weights=None, members=None) -> None:
        """Sets every trainable BatchNorm's moving statistics from ``batches``.

        Args:
          batches: the training batches, each a features tensor (stacked:
            ``[K, B, ...]``).
          weights: per batch, a ``[K]`` 0/1 vector of the members it counts
            for (stacked, whose members have different numbers of batches);
            None: every batch counts for all.
          members: stacked, a ``[K]`` mask of the members whose statistics
            are set (the others' stay); None: all.
        """
        # Those the pass sets, in the order its moments come: the layers that
        # train now (a frozen one keeps its statistics, and runs in inference).
        stats = [
            v
            for layer in _trained_batch_norms(self.model)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        # The forward pass moves every member's statistics: put back after.
        before = [v.read_value() for v in stats]
        sums, counts = None, 0.0
        for i, x in enumerate(batches):
            moments = [np.asarray(m, np.float64) for m in self._moments(x)]
            w = 1.0 if weights is None else np.asarray(weights[i], np.float64)
            if sums is None:
                sums = [np.zeros_like(m) for m in moments]
            for total, m in zip(sums, moments):
                total += _expand(w, m) * m
            counts = counts + w
        if sums is None:
            raise ValueError("the batch-norm pass got no batch of training rows")
        for var, old, total in zip(stats, before, sums):
            # Sums of float32 moments in float64, divided once: their mean.
            mean = total / np.maximum(_expand(counts, total), 1.0)
            value = tf.constant(mean.astype(var.dtype.as_numpy_dtype))
            if members is not None:
                value = tf.where(_along(tf.constant(members, tf.bool), var), value, old)
            var.assign(value)

    def _batch_moments(self, x):
        found = []
        _run(self.model, x, found)
        return [m for _, mean, variance in found for m in (mean, variance)]


def _trained_batch_norms(module) -> list:
    """The trainable BatchNorm layers :func:`_run` meets, in its order."""
    if isinstance(module, nn.BatchNorm):
        return [module] if module.trainable else []
    if isinstance(module, nn.Sequential):
        return [bn for layer in module.layers for bn in _trained_batch_norms(layer)]
    return []


def _run(module, x, found):
    """``module(x)`` in inference mode but its trainable BatchNorm layers in training.

    Appends ``(layer, batch mean, batch variance)`` for each of those layers.
    """
    if isinstance(module, nn.BatchNorm) and module.trainable:
        lead = 0 if module.members is None else 1  # a member's own statistics
        mean, variance = tf.nn.moments(x, axes=list(range(lead, x.shape.rank - 1)))
        found.append((module, mean, variance))
        # The same moments normalize its output (training mode); what it
        # does to its moving statistics is overwritten after the pass.
        return module(x, training=True)
    if isinstance(module, nn.Sequential):
        for layer in module.layers:
            x = _run(layer, x, found)
        return x
    return module(x, training=False)


def _check_walkable(module) -> None:
    if isinstance(module, nn.Sequential):
        for layer in module.layers:
            _check_walkable(layer)
        return
    if isinstance(module, nn.BatchNorm):
        return
    hidden = [
        m.name for m in getattr(module, "submodules", ()) if isinstance(m, nn.BatchNorm)
    ]
    if hidden:
        raise ValueError(
            f"SWA recomputes batch-norm statistics through lowtf.nn.Sequential "
            f"models, but {', '.join(hidden)} sits inside {module.name} "
            f"({type(module).__name__}); build the model as a Sequential, or drop "
            "`swa_from`"
        )


def _along(value, like):
    """A scalar, or a ``[K]`` vector shaped to broadcast over a ``[K, ...]`` tensor."""
    if len(value.shape) == 0:
        return value
    return tf.reshape(value, [-1] + [1] * (len(like.shape) - 1))


def _expand(w, like):
    """A host scalar, or ``[K]`` weights shaped to broadcast over ``[K, ...]``."""
    w = np.asarray(w, np.float64)
    return w if w.ndim == 0 else w.reshape([-1] + [1] * (like.ndim - 1))
