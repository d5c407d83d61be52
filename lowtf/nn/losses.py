"""Per-example cross-entropy and accuracy from logits.

Two heads: ``"softmax"`` (one logit per class, integer labels, the sparse
softmax cross-entropy) and ``"sigmoid"`` (one logit, 0/1 labels, the
sigmoid cross-entropy that the Higgs tutorial's ``BinaryCrossentropy(
from_logits=True)`` computes). ``"auto"`` picks sigmoid for one logit.
"""

from __future__ import annotations

import tensorflow as tf

from lowtf import _checks

HEADS = ("auto", "softmax", "sigmoid")


@tf.autograph.experimental.do_not_convert
def resolve_head(head: str, logits_shape: tf.TensorShape) -> str:
    """Resolves ``"auto"`` from the logits' static width."""
    _checks.one_of("loss", head, HEADS)
    width = logits_shape[-1]
    if head == "auto":
        if width is None:
            raise ValueError("`loss='auto'` needs the logits' width to be static")
        return "sigmoid" if width == 1 else "softmax"
    if head == "sigmoid" and width != 1:
        raise ValueError(f"`loss='sigmoid'` needs 1 logit, the model gives {width}")
    return head


@tf.autograph.experimental.do_not_convert
def cross_entropy(head: str, logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy, shape ``[batch]``, for a resolved head."""
    if head == "sigmoid":
        return tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(tf.reshape(labels, [-1]), logits.dtype),
            logits=tf.reshape(logits, [-1]),
        )
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )


@tf.autograph.experimental.do_not_convert
def correct(head: str, logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example 0/1 correctness, shape ``[batch]``, in the logits' dtype."""
    if head == "sigmoid":
        predicted = tf.cast(tf.reshape(logits, [-1]) > 0, tf.int32)
    else:
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    hits = tf.equal(predicted, tf.cast(tf.reshape(labels, [-1]), tf.int32))
    return tf.cast(hits, logits.dtype)


@tf.autograph.experimental.do_not_convert
def targets(head: str, labels, num_logits: int, label_smoothing=0.0) -> tf.Tensor:
    """Soft targets of integer labels ``[...]``: ``[..., logits]`` (softmax) or ``[...]``.

    With label smoothing ``eps`` (Szegedy et al. 2016) as Keras smooths
    one-hot labels: ``onehot * (1 - eps) + eps / classes`` for a softmax
    head (``CategoricalCrossentropy(label_smoothing=eps)``), ``y * (1 - eps) +
    eps / 2`` for a sigmoid one (``BinaryCrossentropy(label_smoothing=eps)``).
    ``label_smoothing`` may be a tensor that broadcasts against the targets
    (one value per member of a population).
    """
    eps = tf.cast(label_smoothing, tf.float32)
    if head == "sigmoid":
        y = tf.cast(labels, tf.float32)
        return y * (1.0 - eps) + 0.5 * eps
    onehot = tf.one_hot(tf.cast(labels, tf.int32), num_logits, dtype=tf.float32)
    return onehot * (1.0 - eps) + eps / num_logits


@tf.autograph.experimental.do_not_convert
def soft_cross_entropy(head: str, logits: tf.Tensor, soft: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy against soft targets (see :func:`targets`)."""
    if head == "sigmoid":
        return tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.reshape(tf.cast(soft, logits.dtype), [-1]),
            logits=tf.reshape(logits, [-1]),
        )
    return tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.cast(soft, logits.dtype), logits=logits
    )


@tf.autograph.experimental.do_not_convert
def soft_correct(head: str, logits: tf.Tensor, soft: tf.Tensor) -> tf.Tensor:
    """Per-example 0/1: the predicted class is the soft targets' most likely one.

    For mixed batches (mixup, CutMix) this is accuracy against the mixed
    labels' argmax.
    """
    if head == "sigmoid":
        predicted = tf.reshape(logits, [-1]) > 0
        hits = tf.equal(predicted, tf.reshape(soft, [-1]) > 0.5)
    else:
        hits = tf.equal(
            tf.argmax(logits, axis=-1, output_type=tf.int32),
            tf.argmax(soft, axis=-1, output_type=tf.int32),
        )
    return tf.cast(hits, logits.dtype)
