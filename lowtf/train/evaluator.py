"""Evaluation in inference mode, and the rule that picks XLA or a graph.

:class:`Evaluator` gives a model's cross-entropy and accuracy on a whole
data set, split across the replicas under a ``tf.distribute`` strategy.
:func:`auto_jit_compile` is the ``jit_compile="auto"`` rule of
:class:`lowtf.StepOptions`; :func:`lowtf.fit` hands the step's resolved
choice on to its evaluator, so both compile the model the same way.
:func:`shard` is the replica's slice of a global batch, for the evaluator
and the train step alike.

:class:`Evaluator` is also ``lowtf.Evaluator``; :func:`auto_jit_compile` is the one place that decides XLA or a graph when ``jit_compile="auto"``.
"""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks, nn
from lowtf.nn import losses
from lowtf.nn.base import keras_layers


class Evaluator:
    """Cross-entropy and accuracy of a model on a data set, in inference mode.

    Made inside a ``tf.distribute`` strategy's scope, it splits every chunk
    across the replicas and sums their totals (an all-reduce), so the result
    is that of the whole data set. Under ``MultiWorkerMirroredStrategy``
    every worker must call it, with the same data. Batch-norm layers read
    each replica's own moving statistics, as in Keras.

    Args:
      model: the model (called with ``training=False``).
      loss: the head, as in :class:`StepOptions`.
      batch_size: examples per compiled call (default 4096).
      jit_compile: XLA (default True).
    """

    def __init__(self, model, *, loss="auto", batch_size=4096, jit_compile=True):
        _checks.positive_int("batch_size", batch_size)
        _checks.one_of("loss", loss, losses.HEADS)
        _checks.boolean("jit_compile", jit_compile)
        self.model = model
        self.loss = loss
        self.batch_size = batch_size
        self._strategy = tf.distribute.get_strategy()
        self._xla = jit_compile
        sums = tf.function(self._sums, jit_compile=jit_compile, reduce_retracing=True)
        if tf.distribute.has_strategy():
            # XLA compiles the per-replica sums only, as in TrainStep.
            self._replica_sums = sums
            self._fn = tf.function(self._distributed_sums, reduce_retracing=True)
        else:
            self._fn = sums

    def _distributed_sums(self, x, y):
        per_replica = self._strategy.run(self._shard_sums, args=(x, y))
        return tuple(
            self._strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for value in per_replica
        )

    def _shard_sums(self, x, y):
        context = tf.distribute.get_replica_context()
        x, y = shard(
            x, y, context.replica_id_in_sync_group, context.num_replicas_in_sync
        )
        return self._replica_sums(x, y)

    def _sums(self, x, y):
        with nn.compiled_by_xla(self._xla):
            logits = tf.cast(self.model(x, training=False), tf.float32)
        head = losses.resolve_head(self.loss, logits.shape)
        return (
            tf.reduce_sum(losses.cross_entropy(head, logits, y)),
            tf.reduce_sum(losses.correct(head, logits, y)),
        )

    def __call__(self, x, y) -> dict:
        """Returns ``{"cross_entropy", "accuracy"}`` as Python floats."""
        n = len(y)
        ce_sum = correct = 0.0
        for start in range(0, n, self.batch_size):
            ce, hits = self._fn(
                x[start : start + self.batch_size], y[start : start + self.batch_size]
            )
            ce_sum += float(ce)
            correct += float(hits)
        return {"cross_entropy": ce_sum / n, "accuracy": correct / n}


def auto_jit_compile(model) -> bool:
    """The ``jit_compile="auto"`` rule: XLA unless convolutions run on a CPU.

    With a GPU, XLA compiles every model. On a CPU it makes an MLP's step
    faster (BENCHMARKS.md). A CNN's convolutions and non-overlapping pooling
    run there as matrix products and reshapes (:mod:`lowtf.nn._xla_cpu`),
    which puts its step on par with a plain graph, not ahead, and XLA
    compiles more slowly. Measured by ``bin/bench --models=cnn
    --modes=xla,graph`` (batch 500, 100 steps per call): 13.8 ms a step
    under XLA against 14.2 ms in a graph with full regularization, 12.6
    against 10.8 ms without; 3-7 s to compile under XLA against about 2 s.
    """
    if tf.config.list_logical_devices("GPU"):
        return True
    return not _has_convolutions(model)


def _has_convolutions(model) -> bool:
    if isinstance(model, tf.keras.layers.Layer):
        return any("Conv" in type(layer).__name__ for layer in keras_layers(model))
    return any(isinstance(m, nn.Conv2D) for m in (model, *model.submodules))


def shard(x, y, replica_id, replicas):
    """The replica's slice of a global batch given as one tensor.

    Slices are ``ceil(n / replicas)`` rows, the last ones shorter (or empty)
    when ``n`` does not divide: the evaluator sums, so uneven is fine there;
    the train step checks that its batches divide.
    """
    size = tf.shape(x)[0]
    local = (size + replicas - 1) // replicas
    start = tf.minimum(tf.cast(replica_id, size.dtype) * local, size)
    end = tf.minimum(start + local, size)
    return x[start:end], y[start:end]
