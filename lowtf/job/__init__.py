"""The job: what ``bin/train`` runs, and what ``bin/sweep`` runs many of.

- :class:`JobConfig` (:mod:`lowtf.job.config`): every setting of one
  training run, checked when made, without TensorFlow.
- :mod:`lowtf.job.flags`: the flags of ``bin/train`` and ``bin/sweep``,
  defined once (:data:`~lowtf.job.flags.SETTINGS`: name, type, default,
  help, bounds, and what a sweep may do with each), without TensorFlow.
- :func:`run_job` (:mod:`lowtf.job.run`): data, model, ``fit``, the test
  evaluation, summary.json and the model's spec; the builders a population
  of jobs shares with it (:func:`model_spec`, :func:`build_model`,
  :func:`build_augment`, :func:`build_optimizer`).

The job sits above training (:mod:`lowtf.train`, :mod:`lowtf.population`)
and export (:mod:`lowtf.export` knows a :class:`lowtf.models.ModelSpec`,
never the job); nothing below it imports it. ``import lowtf.job`` imports
no TensorFlow: :func:`run_job` and the builders load on first use.
"""

from lowtf import _lazy
from lowtf.job.config import JobConfig

_EXPORTS = {
    name: f".run:{name}"
    for name in (
        "JobResult", "build_augment", "build_model", "build_optimizer", "load_data",
        "model_spec", "run_job",
    )
}  # fmt: skip
__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)

__all__ = [
    "JobConfig",
    "JobResult",
    "build_augment",
    "build_model",
    "build_optimizer",
    "load_data",
    "model_spec",
    "run_job",
]
