"""lowtf: a low-level TensorFlow 2 toolkit for training deep nets that do not overfit.

The public API is what this module exports; everything else may move.
"""

from lowtf import augment, distribute
from lowtf.constraints import MaxNorm, apply_constraints, max_norm, unit_norms
from lowtf.datasets import DATASETS, DataError, Dataset
from lowtf.datasets import load as load_dataset
from lowtf.datasets import pipeline as input_pipeline
from lowtf.distribute import make_strategy
from lowtf.early_stopping import EarlyStopping, best_checkpoint
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
from lowtf.plot import write_png as plot_learning_curves
from lowtf.regularizers import (
    Regularizer,
    l1,
    l1_l2,
    l2,
    regularization_losses,
    total_regularization_loss,
)
from lowtf.step import (
    METRICS,
    Evaluator,
    InMemoryBatches,
    StepOptions,
    TrainStep,
    auto_jit_compile,
)
from lowtf.summaries import HISTORY_COLUMNS, read_history
from lowtf.trainer import MONITORS, STOP_REASONS, FitResult, TrainConfig, fit

__version__ = "0.1.0"

__all__ = [
    "CNN_INPUTS",
    "DATASETS",
    "HISTORY_COLUMNS",
    "METRICS",
    "MONITORS",
    "PRESETS",
    "STOP_REASONS",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "DataError",
    "Dataset",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "Evaluator",
    "FitResult",
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
    "TrainConfig",
    "TrainStep",
    "auto_jit_compile",
    "apply_constraints",
    "augment",
    "best_checkpoint",
    "cnn",
    "distribute",
    "fit",
    "input_pipeline",
    "l1",
    "l1_l2",
    "l2",
    "load_dataset",
    "make_strategy",
    "max_norm",
    "mlp",
    "plot_learning_curves",
    "read_history",
    "regularization_losses",
    "total_regularization_loss",
    "unit_norms",
]
