"""Ensembles: average the probabilities of trained models, chosen on validation.

:class:`Ensemble` is a lowtf model (its logits are those of the averaged
probabilities); :func:`greedy_selection` chooses members and weights on
validation predictions (Caruana et al. 2004), or on the out-of-fold
predictions of k-fold models (:func:`out_of_fold`); :func:`calibration_error`
scores how well probabilities match accuracy.
"""

from lowtf.ensemble.model import Ensemble
from lowtf.ensemble.selection import (
    accuracy,
    calibration_error,
    cross_entropy,
    greedy_picks,
    greedy_selection,
    out_of_fold,
)

__all__ = [
    "Ensemble",
    "accuracy",
    "calibration_error",
    "cross_entropy",
    "greedy_picks",
    "greedy_selection",
    "out_of_fold",
]
