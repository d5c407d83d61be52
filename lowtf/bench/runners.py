"""The timed runners of lowtf.bench: lowtf's step and its matmul bound.

Both time blocks of calls the same way (:class:`_BlockTimer`): calibrated
so that one repeat lasts ``min_time``, then timed repeat by repeat.
"""

from __future__ import annotations

import math
import time

import numpy as np
import tensorflow as tf

from lowtf import nn
from lowtf.bench.configs import LEARNING_RATE, Config, make_model
from lowtf.data import InMemoryBatches
from lowtf.train import step

_JIT = {"xla": True, "graph": False, "auto": "auto"}


class _BlockTimer:
    """Times blocks of ``_call()``s, each of which runs ``steps`` steps."""

    steps = 1
    calls = 1

    def _call(self):
        raise NotImplementedError

    def calibrate(self, min_time: float) -> float:
        """Sets the calls per repeat so one lasts ``min_time``; returns seconds per step."""
        start = time.perf_counter()
        self._call()
        call_s = time.perf_counter() - start
        self.calls = max(1, math.ceil(min_time / call_s))
        return call_s / self.steps

    def repeat(self) -> float:
        """One timed repeat; returns seconds per step."""
        start = time.perf_counter()
        for _ in range(self.calls):
            self._call()
        return (time.perf_counter() - start) / (self.calls * self.steps)


class LowtfRunner(_BlockTimer):
    """Builds a lowtf TrainStep for a config and times blocks of steps."""

    def __init__(self, config: Config, data):
        self.config = config
        self.steps = config.steps_per_call
        self.model = make_model(config.model, config.regularization)
        self.step = step.TrainStep(
            self.model,
            tf.keras.optimizers.Adam(LEARNING_RATE),
            data=InMemoryBatches(*data, config.batch_size),
            options=step.StepOptions(jit_compile=_JIT[config.mode]),
        )
        self.xla = bool(self.step.options.jit_compile)
        start = time.perf_counter()
        self._call()
        self.first_call_s = time.perf_counter() - start

    def _call(self):
        loss = self.step.run(self.steps)["total_loss"].numpy()  # waits for the step
        if not np.isfinite(loss):
            raise FloatingPointError(f"{self.config}: the loss is not finite")


class DotsRunner(_BlockTimer):
    """The step's matrix products alone, with a plain SGD update: a bound.

    Per call, ``steps`` iterations of: the forward products ``h @ W`` of every
    Dense layer of ``model``, then the backward ones (``h.T @ g`` for every
    kernel, ``g @ W.T`` for every layer but the first), and ``W -= lr * dW``,
    which carries each product into the next iteration so that XLA can
    neither hoist nor drop it. No bias, activation, dropout, loss,
    regularization or Adam: what is left of a training step when only its
    dense-layer FLOPs (those :func:`lowtf.bench.dense_flops` counts) remain. A step can
    approach this time but not beat it.
    """

    def __init__(
        self, model: nn.Sequential, batch_size: int, *, xla: bool, steps: int
    ):
        self.xla, self.steps = xla, steps
        dense = [layer for layer in model.layers if isinstance(layer, nn.Dense)]
        self.kernels = kernels = [tf.Variable(layer.kernel) for layer in dense]
        x = tf.random.stateless_normal([batch_size, kernels[0].shape[0]], seed=[5, 6])

        def products(n):
            i = tf.constant(0, tf.int64)
            while i < n:
                activations = [x]
                for kernel in kernels:
                    activations.append(tf.matmul(activations[-1], kernel))
                grad = activations[-1]
                for index in reversed(range(len(kernels))):
                    kernel_grad = tf.matmul(activations[index], grad, transpose_a=True)
                    if index:
                        grad = tf.matmul(grad, kernels[index], transpose_b=True)
                    kernels[index].assign_sub(1e-9 * kernel_grad)
                i += 1
            return kernels[0][0, 0]

        self._fn = tf.function(products, jit_compile=xla)
        self._call()  # traces and compiles

    def _call(self):
        self._fn(tf.constant(self.steps, tf.int64)).numpy()
