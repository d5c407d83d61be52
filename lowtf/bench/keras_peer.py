"""The Keras peer of lowtf.bench: the same model trained with ``Model.fit``.

:func:`keras_peer` rebuilds a lowtf model as a ``tf.keras`` model with the
same layers, initial weights, ``kernel_regularizer``, ``Dropout`` and
``MaxNorm`` constraints; :class:`KerasRunner` compiles it with the same
optimizer and times ``Model.fit`` epochs on the same in-memory arrays.
"""

from __future__ import annotations

import math
import time

import numpy as np
import tensorflow as tf

from lowtf import nn
from lowtf.bench.configs import (
    LEARNING_RATE,
    Config,
    input_shape,
    make_model,
)


def keras_peer(model: nn.Sequential, input_shape) -> tf.keras.Model:
    """A ``tf.keras`` model with the same layers and initial weights."""
    keras = tf.keras
    names = {nn.activation_fn(name): name for name in nn.ACTIVATIONS}
    model(tf.zeros([1, *input_shape]), training=False)  # builds the variables
    stack = [keras.Input(input_shape)]
    weights = []
    for layer in model.layers:
        if isinstance(layer, (nn.Dense, nn.Conv2D)):
            args = dict(
                activation=names.get(layer.activation, "linear"),
                use_bias=layer.use_bias,
                kernel_regularizer=_keras_regularizer(
                    _attached(layer.regularized_weights, layer.kernel)
                ),
                kernel_constraint=_keras_constraint(
                    _attached(layer.constrained_weights, layer.kernel), layer.kernel
                ),
            )
            if isinstance(layer, nn.Dense):
                stack.append(keras.layers.Dense(layer.units, **args))
            else:
                stack.append(
                    keras.layers.Conv2D(
                        layer.filters,
                        layer.kernel_size,
                        strides=layer.strides,
                        padding=layer.padding.lower(),
                        **args,
                    )
                )
            values = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
            weights.append((stack[-1], [v.numpy() for v in values]))
        elif isinstance(layer, nn.Dropout):
            stack.append(keras.layers.Dropout(layer.rate))
        elif isinstance(layer, nn.MaxPool2D):
            stack.append(
                keras.layers.MaxPooling2D(
                    layer.pool_size,
                    strides=layer.strides,
                    padding=layer.padding.lower(),
                )
            )
        elif isinstance(layer, nn.Flatten):
            stack.append(keras.layers.Flatten())
        elif isinstance(layer, nn.Reshape):
            stack.append(keras.layers.Reshape(layer.shape))
        else:
            raise ValueError(
                f"no Keras peer for layer {layer.name} ({type(layer).__name__})"
            )
    peer = keras.Sequential(stack)
    for keras_layer, values in weights:
        keras_layer.set_weights(values)
    return peer


def _attached(pairs, var):
    """The regularizer or constraint recorded for ``var``, or None."""
    return next((value for v, value in pairs if v is var), None)


def _keras_regularizer(regularizer):
    if regularizer is None:
        return None
    return tf.keras.regularizers.L1L2(l1=regularizer.l1, l2=regularizer.l2)


def _keras_constraint(constraint, kernel):
    if constraint is None:
        return None
    axes = constraint.norm_axes(kernel.shape.rank)
    return tf.keras.constraints.MaxNorm(constraint.max_value, axis=axes)


def _loss_and_accuracy(num_logits: int):
    keras = tf.keras
    if num_logits == 1:
        return keras.losses.BinaryCrossentropy(
            from_logits=True
        ), keras.metrics.BinaryAccuracy(threshold=0.0)
    return (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        keras.metrics.SparseCategoricalAccuracy(),
    )


class KerasRunner:
    """The Keras peer in one (jit_compile, steps_per_execution) variant.

    Args:
      config: the model, batch size and regularization to peer.
      data: the ``(x, y)`` arrays ``fit`` trains on (its whole batches).
      jit_compile: Keras' ``jit_compile``.
      steps_per_execution: Keras' ``steps_per_execution``.
      seed: the seed of the lowtf model whose initial weights the peer
        copies (default 0).
    """

    def __init__(
        self,
        config: Config,
        data,
        *,
        jit_compile: bool,
        steps_per_execution: int,
        seed: int = 0,
    ):
        self.jit_compile = jit_compile
        self.steps_per_execution = steps_per_execution
        self.batch_size = config.batch_size
        self.steps_per_epoch = len(data[0]) // config.batch_size
        # Whole batches only, as lowtf's epochs: a partial last batch would
        # add a step's time to each epoch that the division does not count.
        rows = self.steps_per_epoch * self.batch_size
        self.data = tuple(array[:rows] for array in data)
        lowtf_model = make_model(config.model, config.regularization, seed=seed)
        self.model = keras_peer(lowtf_model, input_shape(config.model))
        loss, accuracy = _loss_and_accuracy(self.model.output_shape[-1])
        self.model.compile(
            optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
            loss=loss,
            metrics=[accuracy],
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        self.epochs = 1
        start = time.perf_counter()
        self._fit()
        self.first_call_s = time.perf_counter() - start

    def _fit(self) -> list[float]:
        timer = _EpochTimer()
        self.model.fit(
            *self.data,
            batch_size=self.batch_size,
            epochs=self.epochs,
            shuffle=True,
            verbose=0,
            callbacks=[timer],
        )
        return timer.seconds

    def calibrate(self, min_time: float) -> float:
        """Sets the epochs per timed fit; returns seconds per step, roughly."""
        self.epochs = 1
        epoch_s = self._fit()[0]
        self.epochs = 1 + max(1, math.ceil(min_time / epoch_s))
        return epoch_s / self.steps_per_epoch

    def repeat(self) -> float:
        """One timed ``fit``; the median epoch after its first, per step."""
        seconds = self._fit()[1:]
        return float(np.median(seconds)) / self.steps_per_epoch

    @property
    def name(self) -> str:
        return f"jit={self.jit_compile},spe={self.steps_per_execution}"


class _EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
