"""lowtf: a low-level TensorFlow 2 toolkit for training deep nets that do not overfit.

The public API is what this module exports; everything else may move.
"""

from lowtf import augment, data, distribute, export, nn, population, random, train
from lowtf.data import DataError, Dataset, InMemoryBatches
from lowtf.data import load as load_dataset
from lowtf.distribute import make_strategy
from lowtf.models import cnn, mlp
from lowtf.nn import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Lambda,
    Layer,
    MaxNorm,
    MaxPool2D,
    Regularizer,
    Reshape,
    Sequential,
    l1,
    l1_l2,
    l2,
    max_norm,
    regularization_losses,
)
from lowtf.population import Population, fit_population, k_fold
from lowtf.train import (
    EarlyStopping,
    Evaluator,
    FitResult,
    StepOptions,
    TrainConfig,
    TrainStep,
    fit,
    read_history,
)
from lowtf.train.plot import write_png as plot_learning_curves

__version__ = "0.1.0"

__all__ = [
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
    "Population",
    "Regularizer",
    "Reshape",
    "Sequential",
    "StepOptions",
    "TrainConfig",
    "TrainStep",
    "augment",
    "cnn",
    "data",
    "distribute",
    "export",
    "fit",
    "fit_population",
    "l1",
    "l1_l2",
    "k_fold",
    "l2",
    "load_dataset",
    "make_strategy",
    "max_norm",
    "mlp",
    "nn",
    "plot_learning_curves",
    "population",
    "random",
    "read_history",
    "regularization_losses",
    "train",
]
