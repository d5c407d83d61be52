"""lowtf: a low-level TensorFlow 2 toolkit for training deep nets that do not overfit.

The public API is what this module exports; everything else may move.
"""

from lowtf import augment
from lowtf.constraints import MaxNorm, apply_constraints, max_norm, unit_norms
from lowtf.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Lambda,
    Layer,
    MaxPool2D,
    Reshape,
    Sequential,
)
from lowtf.models import CNN_INPUTS, PRESETS, cnn, mlp
from lowtf.regularizers import (
    Regularizer,
    l1,
    l1_l2,
    l2,
    regularization_losses,
    total_regularization_loss,
)
from lowtf.step import METRICS, Evaluator, InMemoryBatches, StepOptions, TrainStep

__version__ = "0.1.0"

__all__ = [
    "CNN_INPUTS",
    "METRICS",
    "PRESETS",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Evaluator",
    "Flatten",
    "InMemoryBatches",
    "Lambda",
    "Layer",
    "MaxNorm",
    "MaxPool2D",
    "Regularizer",
    "Reshape",
    "Sequential",
    "StepOptions",
    "TrainStep",
    "apply_constraints",
    "augment",
    "cnn",
    "l1",
    "l1_l2",
    "l2",
    "max_norm",
    "mlp",
    "regularization_losses",
    "total_regularization_loss",
    "unit_norms",
]
