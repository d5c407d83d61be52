"""Model selection: grids or TPE over every setting of a job, k-fold scores, a report.

:class:`SweepConfig` is a base :class:`lowtf.job.JobConfig` plus the
settings swept (lists, or ranges for TPE); :func:`run_sweep` trains every
configuration (those that differ only in per-member settings as one
:class:`lowtf.Population`), keeps the ledger in an Optuna study (so a rerun
resumes and several processes can share one storage), ranks the
configurations on validation only, writes the report and retrains the
winner as a ``bin/train`` run; with ``ensemble=N`` it also chooses an
ensemble of the trained configurations on their validation (or
out-of-fold) predictions (:mod:`lowtf.sweep.ensemble`). Not imported by ``import lowtf`` (it needs
Optuna): ``from lowtf import sweep``. The configuration (:mod:`lowtf.sweep.config`)
imports no TensorFlow; :func:`run_sweep` loads on first use.
"""

from lowtf import _lazy
from lowtf.sweep.config import Point, Range, SweepConfig, from_flags, parse_values

__getattr__, __dir__ = _lazy.attach(
    __name__,
    {
        "SweepResult": ".run:SweepResult",
        "run_sweep": ".run:run_sweep",
        "fold_score": ".scoring:fold_score",
    },
)

__all__ = [
    "Point",
    "Range",
    "SweepConfig",
    "SweepResult",
    "fold_score",
    "from_flags",
    "parse_values",
    "run_sweep",
]
