"""Step-level benchmarks: lowtf's step beside Keras ``Model.fit`` (``bin/bench``).

Not loaded by ``import lowtf``: the Keras peer and the timers are tools for
measuring lowtf, not part of training with it.
"""

from lowtf.bench.configs import (
    DATA_SIZE,
    DROPOUT,
    L2,
    LEARNING_RATE,
    MAXNORM,
    MODELS,
    MODES,
    REGULARIZATION,
    Config,
    configs,
    make_data,
    make_model,
)
from lowtf.bench.keras_peer import KerasRunner, keras_peer
from lowtf.bench.report import machine, regularization_cost, summarize, table
from lowtf.bench.runners import DotsRunner, LowtfRunner
from lowtf.bench.suite import dense_flops, matmul_ceiling, run

__all__ = [
    "DATA_SIZE",
    "DROPOUT",
    "L2",
    "LEARNING_RATE",
    "MAXNORM",
    "MODELS",
    "MODES",
    "REGULARIZATION",
    "Config",
    "DotsRunner",
    "KerasRunner",
    "LowtfRunner",
    "configs",
    "dense_flops",
    "keras_peer",
    "machine",
    "make_data",
    "make_model",
    "matmul_ceiling",
    "regularization_cost",
    "run",
    "summarize",
    "table",
]
