"""What lowtf.bench times: the configurations, their data and their models.

The constants here are shared by the lowtf side (:mod:`lowtf.bench`) and the
Keras peer (:mod:`lowtf._keras_peer`), which build the same models with the
same regularization from them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lowtf import _checks, models, nn

MODELS = (*models.PRESETS, "cnn")
REGULARIZATION = ("full", "dropout", "none")
MODES = ("xla", "graph", "auto")
DATA_SIZE = 10_000  # rows, as the Higgs tutorial's N_TRAIN
L2, DROPOUT, MAXNORM, LEARNING_RATE = 1e-4, 0.5, 3.0, 1e-3


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration.

    Attributes:
      model: an MLP preset (tiny, small, medium, large) or ``"cnn"`` (the
        default :func:`lowtf.cnn` on 8x8 images, 10 classes).
      batch_size: examples per step, default 500.
      regularization: ``"full"`` (L2 1e-4 on every kernel, dropout 0.5 after
        every hidden layer, max-norm 3 on hidden kernels; default),
        ``"dropout"`` (dropout only) or ``"none"``.
      mode: ``"xla"`` (default), ``"graph"`` (``tf.function`` without XLA)
        or ``"auto"`` (:func:`lowtf.train.step.auto_jit_compile` decides).
      steps_per_call: steps per ``TrainStep.run`` call, default 100.
    """

    model: str = "tiny"
    batch_size: int = 500
    regularization: str = "full"
    mode: str = "xla"
    steps_per_call: int = 100

    def __post_init__(self):
        _checks.one_of("model", self.model, MODELS)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.one_of("regularization", self.regularization, REGULARIZATION)
        _checks.one_of("mode", self.mode, MODES)
        _checks.positive_int("steps_per_call", self.steps_per_call)
        if self.batch_size > DATA_SIZE:
            raise ValueError(
                f"`batch_size` ({self.batch_size}) exceeds the {DATA_SIZE} rows"
            )

    @property
    def peer_key(self) -> tuple:
        """Configurations sharing this key share one Keras peer."""
        return (self.model, self.batch_size, self.regularization)


def configs(
    *,
    models=MODELS,
    batch_sizes=(500,),
    regularization=("full", "none"),
    modes=("xla", "graph"),
    steps_per_call=(100,),
) -> list[Config]:
    """Every combination of the arguments, as :class:`Config` objects."""
    out = []
    for model in models:
        for batch in batch_sizes:
            for reg in regularization:
                for mode in modes:
                    for spc in steps_per_call:
                        config = Config(model, batch, reg, mode, spc)
                        if config not in out:
                            out.append(config)
    return out


def make_data(model: str, seed: int = 0):
    """Synthetic in-memory data: Higgs-shaped for MLPs, 8x8 images for the CNN."""
    rs = np.random.RandomState(seed)
    if model == "cnn":
        x = rs.rand(DATA_SIZE, *models.CNN_INPUTS["digits"]).astype(np.float32)
        return x, rs.randint(0, 10, DATA_SIZE).astype(np.int32)
    x = rs.randn(DATA_SIZE, 28).astype(np.float32)
    return x, (x[:, 0] + rs.randn(DATA_SIZE) > 0).astype(np.float32)


def make_model(model: str, regularization: str, seed: int = 0) -> nn.Sequential:
    """The lowtf model of a configuration (see :class:`Config`)."""
    full = regularization == "full"
    switches = dict(
        l2=L2 if full else 0.0,
        dropout=DROPOUT if regularization != "none" else 0.0,
        maxnorm=MAXNORM if full else 0.0,
        seed=seed,
    )
    if model == "cnn":
        return models.cnn("digits", num_classes=10, **switches)
    return models.mlp(model, num_classes=2, **switches)


def input_shape(model: str) -> tuple:
    """The shape of one example of ``model``'s data, without the batch."""
    return models.CNN_INPUTS["digits"] if model == "cnn" else (28,)
