"""Model selection: grids or TPE over capacity and regularization, k-fold scores, a report.

:class:`SweepConfig` holds the shared settings and the swept lists;
:func:`run_sweep` trains every configuration (those of one architecture as
one :class:`lowtf.Population`), keeps the ledger in an Optuna study (so a
rerun resumes and several processes can share one storage), ranks the
configurations on validation only, writes the report and retrains the
winner as a ``bin/train`` run. Not imported by ``import lowtf`` (it needs
Optuna): ``from lowtf import sweep``.
"""

from lowtf.sweep.config import Point, Range, SweepConfig, by_architecture, parse_values
from lowtf.sweep.run import SweepResult, run_sweep
from lowtf.sweep.scoring import fold_score

__all__ = [
    "Point",
    "Range",
    "SweepConfig",
    "SweepResult",
    "by_architecture",
    "fold_score",
    "parse_values",
    "run_sweep",
]
