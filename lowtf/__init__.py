"""lowtf: a low-level TensorFlow 2 toolkit for training deep nets that do not overfit.

The public API is what this module exports; everything else may move.
"""

from lowtf.constraints import MaxNorm, apply_constraints, max_norm, unit_norms
from lowtf.layers import BatchNorm, Dense, Dropout, Flatten, Lambda, Layer, Sequential
from lowtf.models import PRESETS, mlp
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
    "METRICS",
    "PRESETS",
    "BatchNorm",
    "Dense",
    "Dropout",
    "Evaluator",
    "Flatten",
    "InMemoryBatches",
    "Lambda",
    "Layer",
    "MaxNorm",
    "Regularizer",
    "Sequential",
    "StepOptions",
    "TrainStep",
    "apply_constraints",
    "l1",
    "l1_l2",
    "l2",
    "max_norm",
    "mlp",
    "regularization_losses",
    "total_regularization_loss",
    "unit_norms",
]
