"""Training: the compiled step, evaluation, early stopping by steps, and ``fit``.

Data flows one way: ``fit`` (the controller in :mod:`lowtf.train.controller`)
drives a :class:`TrainStep`, an :class:`Evaluator` and an
:class:`EarlyStopping`, and writes checkpoints, history.csv and TensorBoard
events to its model directory. :func:`run_job` runs a whole job from one
:class:`JobConfig` (what ``bin/train`` calls): data, model, ``fit``, the test
evaluation and summary.json. :func:`init_from`, :func:`freeze` and
:func:`unfreeze` start a model from another run's best snapshot and keep its
hidden layers fixed (transfer learning). :class:`JobConfig` lives in
:mod:`lowtf.job_config`, which checks a job's settings without TensorFlow.
"""

from lowtf.train.early_stopping import EarlyStopping, best_checkpoint
from lowtf.train.evaluator import Evaluator, auto_jit_compile
from lowtf.train.fit import FitResult, TrainConfig, fit
from lowtf.train.job import JobConfig, JobResult, run_job
from lowtf.train.step import StepOptions, TrainStep
from lowtf.train.summaries import read_history
from lowtf.train.transfer import InitReport, freeze, init_from, unfreeze

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
