"""Populations: many configurations of one MLP trained in one compiled step.

:class:`Population` holds K members with stacked weights and trains them
together (the embeddable API: ``run``, ``evaluate``, ``member``);
:func:`lowtf.fit` trains it with the controller that trains one model
(:class:`~lowtf.population.fit.PopulationTrainer` is its trainer;
:func:`fit_population` is that call with the cadence as arguments), with
checkpoints, best snapshots and resume; :func:`k_fold`
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
