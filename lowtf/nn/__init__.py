"""Layers, regularizers, constraints and losses: what a lowtf network is made of.

Layers are ``tf.Module`` objects with lazy variables; a weight may carry a
regularizer (its penalty gathered by the training step and added to the
cross-entropy by hand) and a constraint (applied by an assign op after every
update).

Every layer also runs stacked: ``members=K`` layers hold K models' weights
with a leading member axis and take ``[K, batch, ...]`` inputs, one batched
product for all members; :func:`stack` makes such a model from K built ones
and :func:`unstack` copies a member back.
"""

from lowtf.nn.base import (
    ACTIVATIONS,
    Flatten,
    Lambda,
    Layer,
    Reshape,
    Sequential,
    activation_fn,
    glorot_uniform,
    trainable_variables,
)
from lowtf.nn._xla_cpu import compiled_by_xla
from lowtf.nn.constraints import MaxNorm, apply_constraints, max_norm, unit_norms
from lowtf.nn.conv import AvgPool2D, Conv2D, MaxPool2D
from lowtf.nn.dense import Dense
from lowtf.nn.dropout import Dropout
from lowtf.nn.noise import GaussianNoise
from lowtf.nn.normalization import BatchNorm
from lowtf.nn.stacking import stack, unstack
from lowtf.nn.regularizers import (
    Regularizer,
    l1,
    l1_l2,
    l2,
    regularization_losses,
    total_regularization_loss,
)

__all__ = [
    "ACTIVATIONS",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GaussianNoise",
    "Lambda",
    "Layer",
    "MaxNorm",
    "MaxPool2D",
    "Regularizer",
    "Reshape",
    "Sequential",
    "activation_fn",
    "apply_constraints",
    "compiled_by_xla",
    "glorot_uniform",
    "trainable_variables",
    "l1",
    "l1_l2",
    "l2",
    "max_norm",
    "regularization_losses",
    "stack",
    "total_regularization_loss",
    "unit_norms",
    "unstack",
]
