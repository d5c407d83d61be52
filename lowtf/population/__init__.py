"""Populations: many configurations of one MLP trained in one compiled step.

:class:`Population` holds K members with stacked weights and trains them
together (the embeddable API: ``run``, ``evaluate``, ``member``);
:func:`fit_population` is its reference loop with checkpoints, best
snapshots and resume, as :func:`lowtf.fit` is for one model; :func:`k_fold`
makes stratified cross-validation folds as members' row indices.
"""

from lowtf.population.fit import (
    MemberResult,
    PopulationResult,
    fit_population,
    read_best_weights,
)
from lowtf.population.members import k_fold
from lowtf.population.population import Population

__all__ = [
    "MemberResult",
    "Population",
    "PopulationResult",
    "fit_population",
    "k_fold",
    "read_best_weights",
]
