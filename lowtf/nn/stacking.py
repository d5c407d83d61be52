"""K built models of one architecture as one stacked model, and back.

:func:`stack` makes the stacked twin of K models (Flax lifts a module over an
ensemble axis with ``nn.vmap``; here the layers themselves take the member
axis, see :mod:`lowtf.nn.base`): the same layer classes and names, every
variable the ``tf.stack`` of the members' variables, every per-member
hyper-parameter (dropout rate and seed, regularizer scales, max-norm caps,
init seeds) a K-tuple. :func:`unstack` copies one member's slice back into a
single model. The two walk the members' layer trees in parallel; lowtf.mlp
omits a Dropout whose rate is 0 (and a GaussianNoise whose stddev is 0), so
such a layer present in some members only is a rate-0 (stddev-0) one in the
others, and no other layer may be missing.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import tensorflow as tf

from lowtf import _checks
from lowtf.nn.base import Layer, Sequential
from lowtf.nn.constraints import MaxNorm
from lowtf.nn.regularizers import Regularizer

_ONE_ARCHITECTURE = "a population stacks models of one architecture"
_INTO_ITS_ARCHITECTURE = "unstack into a model of the stacked one's architecture"


def stack(models: Sequence[Layer], *, name: str | None = None) -> Layer:
    """The stacked model of K built models of one architecture.

    Member ``k`` of the result computes what ``models[k]`` computes: its
    inputs and outputs are ``[K, batch, ...]``, row ``k`` being
    ``models[k]``'s; its variables are bit-for-bit copies of ``models[k]``'s
    (the result's own variables, not shared with the members). Per member:
    Dropout rates and seeds, regularizer scales (0 for a member without one),
    max-norm caps (0: no cap) and init seeds. Everything that shapes the
    computation must be equal (units, filters, kernel and pool sizes,
    strides, padding, activations, use_bias, batch norm's presence, momentum
    and epsilon, Reshape shapes, trainable flags, variable shapes).

    Args:
      models: K >= 1 built lowtf models (e.g. ``lowtf.mlp(...)`` or
        ``lowtf.cnn(...)``, each called once on an example batch).
      name: the stacked model's name; default ``models[0]``'s.

    Returns:
      The stacked model (``members == K``), built.

    Raises:
      ValueError: no models, an unbuilt or stacked one, or two members of
        different architectures (naming the layer, the setting and both
        values).
    """
    models = list(models)
    if not models:
        raise ValueError("`models` is empty: stack needs at least one built model")
    for k, model in enumerate(models):
        _check_single(model, f"`models[{k}]`")
    rows = []  # (stacked layer, its members' layers), parents before children
    stacked = _stacked(models, name, rows)
    shape = models[0].input_shape[1:]
    if not shape.is_fully_defined():
        raise ValueError(
            f"`models[0]` was built on inputs of shape {models[0].input_shape}: "
            "stack needs models built on a batch of known example shape"
        )
    # One call at inference builds every variable ([K, ...], from the members'
    # input shape); the members' values then replace the initial ones.
    stacked(tf.zeros([len(models), 1, *shape]), training=False)
    for layer, members in rows:
        per_member = zip(*(_own_variables(m) for m in members))
        for var, values in zip(_own_variables(layer), per_member):
            var.assign(tf.stack(values))
        # Sequential's setter reaches its layers: set parents first (rows are
        # in that order), so that each layer ends with its members' flag.
        if layer.trainable != members[0].trainable:
            layer.trainable = members[0].trainable
    return stacked


def unstack(stacked: Layer, k: int, model: Layer) -> Layer:
    """Copies member ``k`` of a stacked model into a single model.

    Args:
      stacked: a stacked model (from :func:`stack`).
      k: the member, ``0 <= k < stacked.members``.
      model: a built single model of the same architecture, e.g. the one
        member ``k`` was stacked from (it may lack the rate-0 Dropouts).

    Returns:
      ``model``, each variable assigned member ``k``'s slice of the
      stacked one, bit for bit.
    """
    if getattr(stacked, "members", None) is None:
        raise ValueError(
            f"`stacked` ({getattr(stacked, 'name', stacked)!r}) is not a stacked "
            "model; make one with lowtf.nn.stack"
        )
    _checks.non_negative_int("k", k)
    if k >= stacked.members:
        raise ValueError(
            f"`k` ({k}) must be below the stack's {stacked.members} members"
        )
    _check_single(model, "`model`")
    labels = ("the stacked model", "`model`", _INTO_ITS_ARCHITECTURE)
    copies = []  # every (stacked, single) variable pair, checked before any copy
    for pair in _pairs([stacked, model], labels):
        if None in pair:
            continue  # a rate-0 Dropout one of them lacks: no variables
        source, target = (_own_variables(layer) for layer in pair)
        if len(source) != len(target):
            what = f"{pair[0].name}'s number of variables"
            _differ(labels, what, len(source), len(target))
        for s, t in zip(source, target):
            if s.shape[1:] != t.shape:
                what = f"{_var_name(pair[0], s)}'s shape"
                _differ(labels, what, tuple(s.shape[1:]), tuple(t.shape))
        copies += zip(source, target)
    for s, t in copies:
        t.assign(s[k])
    return model


# -- walking K layer trees in parallel ------------------------------------------


def _stacked(layers, name, rows):
    """The stacked twin of K aligned layers (recursively), recording ``rows``."""
    first = layers[0]
    cls = type(first)
    if cls._architecture is None:
        raise ValueError(
            f"{first.name} ({cls.__name__}) cannot be stacked: only lowtf's own "
            "layer classes declare which of their settings stack"
        )
    for setting in ("trainable", *cls._architecture):
        _equal(layers, setting)
    _equal_variables(layers)
    name = first.name if name is None else name
    at = len(rows)  # this layer's row goes before its children's
    if cls is Sequential:
        children = [
            _stacked(_with_identities(row), None, rows)
            for row in _rows([layer.layers for layer in layers], first, None)
        ]
        stacked = Sequential(children, name=name)
    else:
        settings = {s: getattr(first, s) for s in cls._architecture}
        for setting in cls._per_member:
            settings[setting] = _per_member(layers, setting)
        stacked = cls(**settings, name=name, members=len(layers))
    rows.insert(at, (stacked, layers))
    return stacked


def _with_identities(row):
    """A row of aligned layers, each member's missing optional layer an identity."""
    if None not in row:
        return row
    present = next(layer for layer in row if layer is not None)
    missing = type(present).identity(present.name)
    if not present.trainable:  # as the others', so that it stacks
        missing.trainable = False
    return [missing if layer is None else layer for layer in row]


def _pairs(layers, labels):
    """Yields each aligned pair of two layer trees, parents first."""
    if type(layers[0]) is not type(layers[1]):
        what = f"{layers[0].name}'s class"
        _differ(labels, what, type(layers[0]).__name__, type(layers[1]).__name__)
    yield tuple(layers)
    if isinstance(layers[0], Sequential):
        for row in _rows([layer.layers for layer in layers], layers[0], labels):
            if None in row:
                yield tuple(row)
            else:
                yield from _pairs(row, labels)


def _rows(lists, parent, labels):
    """The layers of K Sequentials aligned: a row per position, None where a
    member lacks a Dropout the others have."""
    rows, at = [], [0] * len(lists)
    while True:
        current = [xs[i] if i < len(xs) else None for xs, i in zip(lists, at)]
        if all(layer is None for layer in current):
            return rows
        # An optional layer (Dropout, GaussianNoise: absent means rate or
        # stddev 0): the members without one of its kind here lack it, or
        # hold it further on.
        kind = next((type(x) for x in current if getattr(x, "_optional", False)), None)
        if kind is not None:
            current = [layer if type(layer) is kind else None for layer in current]
        elif None in current:
            j = current.index(None)
            _differ(
                labels,
                f"{parent.name}'s number of layers",
                len(lists[0]),
                len(lists[j]),
                pair=(0, j),
            )
        kinds = [type(layer) for layer in current if layer is not None]
        if len(set(kinds)) > 1:
            present = [i for i, layer in enumerate(current) if layer is not None]
            i = present[0]
            j = next(j for j in present if type(current[j]) is not kinds[0])
            _differ(
                labels,
                f"{parent.name}'s layer {len(rows)}",
                f"{kinds[0].__name__} {current[i].name!r}",
                f"{type(current[j]).__name__} {current[j].name!r}",
                pair=(i, j),
            )
        for i, layer in enumerate(current):
            at[i] += layer is not None
        rows.append(current)


# -- the settings --------------------------------------------------------------


def _equal(layers, setting):
    """Raises unless every member's ``setting`` equals the first's."""
    values = [getattr(layer, setting) for layer in layers]
    for j, value in enumerate(values):
        if not _same(values[0], value):
            what = f"{layers[0].name}.{setting}"
            _differ(None, what, _shown(values[0]), _shown(value), pair=(0, j))


def _equal_variables(layers):
    """Raises unless every member's own variables have the first's shapes."""
    first = _own_variables(layers[0])
    for j, layer in enumerate(layers):
        own = _own_variables(layer)
        if [v.shape for v in own] != [v.shape for v in first]:
            pairs = [(a, b) for a, b in zip(first, own) if a.shape != b.shape]
            a, b = pairs[0] if pairs else (first, own)
            what = (
                f"{_var_name(layers[0], a)}'s shape"
                if pairs
                else f"{layers[0].name}'s number of variables"
            )
            shown = (tuple(a.shape), tuple(b.shape)) if pairs else (len(a), len(b))
            _differ(None, what, *shown, pair=(0, j))


def _per_member(layers, setting):
    """The K-tuple, or stacked regularizer or constraint, of a per-member setting."""
    values = [getattr(layer, setting) for layer in layers]
    given = [v for v in values if v is not None]
    if not given:
        return None
    if any(isinstance(v, Regularizer) for v in given):
        return _or_refuse(Regularizer.of_members, values, layers[0], setting)
    if any(isinstance(v, MaxNorm) for v in given):
        return _or_refuse(MaxNorm.of_members, values, layers[0], setting)
    if all(isinstance(v, numbers.Real) for v in given) and len(given) == len(values):
        return tuple(values)
    raise ValueError(
        f"{layers[0].name}.{setting} ({_shown(given[0])}) cannot be stacked: "
        "per member lowtf stacks numbers, lowtf.Regularizer and lowtf.MaxNorm"
    )


def _or_refuse(of_members, values, layer, setting):
    try:
        return of_members(values)
    except ValueError as error:
        raise ValueError(f"{layer.name}.{setting}: {error}") from None


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. arrays, whose == is element-wise
        return a is b


def _shown(value):
    return getattr(value, "__name__", value)


# -- small helpers ---------------------------------------------------------------


def _check_single(model, label):
    if not isinstance(model, Layer):
        raise ValueError(
            f"{label} ({type(model).__name__}) must be a lowtf layer or model"
        )
    if model.members is not None:
        raise ValueError(f"{label} ({model.name!r}) is stacked already")
    layers = [m for m in (model, *model.submodules) if isinstance(m, Layer)]
    if not all(layer.built for layer in layers):
        raise ValueError(_unbuilt(label))


def _unbuilt(label):
    return (
        f"{label} is not built: call each model once on an example batch first, "
        "e.g. model(x[:1])"
    )


def _own_variables(layer):
    """A layer's own variables, in a fixed order (a Sequential has none)."""
    if isinstance(layer, Sequential):
        return []
    return list(layer.variables)


def _var_name(layer, var):
    return f"{layer.name}.{var.name.split('/')[-1].split(':')[0]}"


def _differ(labels, what, a, b, pair=(0, 1)):
    """Raises the ValueError of two members (``labels`` None) or of the
    stacked model and a single one (``labels``: their names and the fix)."""
    if labels is None:
        who, why = f"members {pair[0]} and {pair[1]}", _ONE_ARCHITECTURE
    else:
        who, why = f"{labels[0]} and {labels[1]}", labels[2]
    raise ValueError(f"{who} differ in {what} ({a} vs {b}): {why}")
