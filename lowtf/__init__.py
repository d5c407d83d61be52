"""lowtf: a low-level TensorFlow 2 toolkit for training deep nets that do not overfit.

The public API is what this module exports; everything else may move. Names
are imported on first use (:mod:`lowtf._lazy`): ``import lowtf`` itself
imports no TensorFlow.
"""

from lowtf import _lazy

__version__ = "0.1.0"

_EXPORTS = {
    # Subpackages and modules.
    "augment": ".augment",
    "data": ".data",
    "distribute": ".distribute",
    "ensemble": ".ensemble",
    "Ensemble": ".ensemble:Ensemble",
    "export": ".export",
    "job": ".job",
    "nn": ".nn",
    "population": ".population",
    "random": ".random",
    "train": ".train",
    # Data.
    "DataError": ".data:DataError",
    "Dataset": ".data:Dataset",
    "InMemoryBatches": ".data:InMemoryBatches",
    "load_dataset": ".data:load",
    "make_strategy": ".distribute:make_strategy",
    "cnn": ".models:cnn",
    "mlp": ".models:mlp",
    # Layers, regularizers, constraints.
    **{
        name: f".nn:{name}"
        for name in (
            "AvgPool2D", "BatchNorm", "Conv2D", "Dense", "Dropout", "Flatten",
            "Lambda", "Layer", "MaxNorm", "MaxPool2D", "Regularizer", "Reshape",
            "Sequential", "l1", "l1_l2", "l2", "max_norm", "regularization_losses",
        )
    },
    "Population": ".population:Population",
    "fit_population": ".population:fit_population",
    "k_fold": ".population:k_fold",
    # Training.
    **{
        name: f".train:{name}"
        for name in (
            "EarlyStopping", "Evaluator", "FitResult", "StepOptions", "TrainConfig",
            "TrainStep", "fit", "read_history",
        )
    },
    "plot_learning_curves": ".train.plot:write_png",
}  # fmt: skip

__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)

__all__ = [
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "DataError",
    "Dataset",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "Ensemble",
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
    "ensemble",
    "export",
    "fit",
    "fit_population",
    "job",
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
