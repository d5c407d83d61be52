"""Training: the compiled step, evaluation, early stopping by steps, and ``fit``.

Data flows one way: ``fit`` runs the one controller
(:mod:`lowtf.train.controller`), which drives a trainer, one model's
(:mod:`lowtf.train.trainer`: a :class:`TrainStep`, an :class:`Evaluator`
and an :class:`EarlyStopping`) or a population's, and writes run.json,
history.csv and TensorBoard events to its model directory. :func:`init_from`, :func:`freeze` and
:func:`unfreeze` start a model from another run's best snapshot and keep its
hidden layers fixed (transfer learning).

A whole job (what ``bin/train`` runs) is :mod:`lowtf.job`, above this
package; ``lowtf.train.run_job``, ``JobConfig`` and ``JobResult`` still
name it, loaded on first use (nothing here imports the job).
"""

from lowtf import _lazy

from lowtf.train.early_stopping import EarlyStopping, best_checkpoint
from lowtf.train.evaluator import Evaluator, auto_jit_compile
from lowtf.train.fit import FitResult, TrainConfig, fit
from lowtf.train.step import StepOptions, TrainStep
from lowtf.train.summaries import read_history
from lowtf.train.transfer import InitReport, freeze, init_from, unfreeze

# Earlier homes of the job's names: lowtf.job's, loaded when first used.
__getattr__, __dir__ = _lazy.attach(
    __name__,
    {name: f"lowtf.job:{name}" for name in ("JobConfig", "JobResult", "run_job")},
)

__all__ = [
    "EarlyStopping",
    "Evaluator",
    "FitResult",
    "InitReport",
    "JobConfig",
    "JobResult",
    "StepOptions",
    "TrainConfig",
    "TrainStep",
    "auto_jit_compile",
    "best_checkpoint",
    "fit",
    "freeze",
    "init_from",
    "read_history",
    "run_job",
    "unfreeze",
]
