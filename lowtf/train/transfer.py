"""Transfer learning: start from another run's best snapshot, freeze hidden layers.

The remedy for too little data that the seeds name: take a model trained on
a related task, keep its hidden layers (frozen, or fine-tuned later) and
train a new output layer::

    model = lowtf.mlp("medium", num_classes=5)
    model(x_train[:1])                          # makes the variables
    lowtf.train.init_from(model, "runs/digits-0to4")
    lowtf.train.freeze(model, 3)                # the 3 hidden blocks
    lowtf.fit(model, opt, ..., config=lowtf.TrainConfig(unfreeze_at=500))

* :func:`init_from` reads a lowtf best snapshot (a model directory or its
  ``best/`` folder) and copies its variables into a built model, layer by
  layer in order. The output layer may differ in its number of units
  (another number of classes) and the first layer in its input width;
  such a layer keeps the model's own fresh initialization and is reported.
  Any other difference is one ValueError naming both shapes.
* :func:`freeze` freezes the first N hidden blocks (a Dense or Conv2D layer
  and its BatchNorm), :func:`unfreeze` everything; see
  :class:`lowtf.nn.Layer` for what a frozen layer does in a training step.
  ``TrainConfig.unfreeze_at`` unfreezes inside :func:`lowtf.fit` at a step.
"""

from __future__ import annotations

import dataclasses
import os
import re

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from lowtf import _checks
from lowtf.nn import base
from lowtf.nn.conv import Conv2D
from lowtf.nn.dense import Dense
from lowtf.nn.normalization import BatchNorm
from lowtf.train import early_stopping, rundir

# The layers a hidden block starts with, and what a block may hold besides.
KERNEL_LAYERS = (Dense, Conv2D)
# The checkpoint's object graph, and the name of a variable's value in it.
_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE = "VARIABLE_VALUE"


# -- freezing -------------------------------------------------------------------


def leaf_layers(model) -> list:
    """The model's layers in call order, nested ``Sequential`` layers flattened."""
    _check_lowtf("model", model)
    found = []
    for layer in getattr(model, "layers", None) or ():
        found.extend(leaf_layers(layer))
    return found or [model]


def hidden_blocks(model) -> list[list]:
    """The hidden blocks in order: each a Dense/Conv2D layer and its BatchNorm.

    The last Dense/Conv2D layer is the output layer and belongs to no block.
    """
    blocks = []
    for layer in leaf_layers(model):
        if isinstance(layer, KERNEL_LAYERS):
            blocks.append([layer])
        elif isinstance(layer, BatchNorm) and blocks:
            blocks[-1].append(layer)
    return blocks[:-1]


def freeze(model, n: int, *, name: str = "n", loaded=None) -> list[str]:
    """Freezes the first ``n`` hidden blocks; every other layer trains.

    A block is a Dense or Conv2D layer with the BatchNorm that follows it;
    freezing it keeps its kernel, bias, gamma, beta and moving statistics as
    they are, runs its batch norm in inference mode and leaves its
    regularization and max-norm out of the step. The output layer always
    trains. ``freeze(model, 0)`` unfreezes everything.

    Args:
      model: a lowtf model (e.g. :func:`lowtf.mlp`, :func:`lowtf.cnn`).
      n: how many hidden blocks to freeze, from the input on (>= 0).
      name: how errors name ``n`` (``bin/train`` passes ``"--freeze"``).
      loaded: the layers :func:`init_from` loaded (its report's ``loaded``);
        default None: no check. Freezing a layer with weights that was not
        loaded would keep it random for good, so it is refused.

    Returns:
      The names of the frozen layers, in order.

    Raises:
      ValueError: ``n`` is negative or exceeds the number of hidden blocks,
        or a block to freeze was not loaded by ``init_from``.
    """
    _checks.non_negative_int(name, n)
    blocks = hidden_blocks(model)
    if n > len(blocks):
        names = ", ".join(block[0].name for block in blocks) or "none"
        raise ValueError(
            f"`{name}` ({n}) exceeds the model's {len(blocks)} hidden layers "
            f"({names}); freeze at most {len(blocks)}: the output layer always trains"
        )
    frozen = [layer for block in blocks[:n] for layer in block]
    if loaded is not None:
        unloaded = [
            layer.name
            for layer in frozen
            if _own_variables(layer) and layer.name not in set(loaded)
        ]
        if unloaded:
            raise ValueError(
                f"`{name}` ({n}) would freeze {', '.join(unloaded)}, which init_from did "
                "not load (its weights are a fresh random draw, and frozen they "
                f"would stay one); freeze at most {_loaded_prefix(blocks, loaded)} "
                "blocks, or none"
            )
    model.trainable = True
    for layer in frozen:
        layer.trainable = False
    return [layer.name for layer in frozen]


def _loaded_prefix(blocks, loaded) -> int:
    """How many blocks from the input on init_from loaded whole."""
    count = 0
    for block in blocks:
        if any(_own_variables(layer) and layer.name not in set(loaded) for layer in block):
            break
        count += 1
    return count


def unfreeze(model) -> None:
    """Makes every layer of ``model`` trainable again."""
    _check_lowtf("model", model)
    model.trainable = True


def frozen_layers(model) -> list[str]:
    """The names of the model's frozen layers, in order; [] for a Keras model."""
    if isinstance(model, tf.keras.layers.Layer):
        return []
    return [layer.name for layer in leaf_layers(model) if not layer.trainable]


# -- starting from a snapshot ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InitReport:
    """What :func:`init_from` did.

    Attributes:
      prefix: the snapshot read (a checkpoint prefix).
      step: the snapshot's step (None when its pointer does not say).
      loaded: the layers whose variables were copied, in order.
      fresh: the layers left as initialized (their shapes differ).
      line: the one log line.
    """

    prefix: str
    step: int | None
    loaded: tuple[str, ...]
    fresh: tuple[str, ...]
    line: str


def init_from(model, path: str, *, log=print) -> InitReport:
    """Copies another run's best weights into ``model``, layer by layer in order.

    Layers are matched in order (the snapshot's layers that hold variables
    with the model's, nesting aside) and by their variables' names and
    shapes. Two differences are expected and leave the layer as the model
    initialized it, reported in one log line: the output layer's number of
    units (a head for another number of classes) and the first layer's input
    width (a new input). Batch-norm moving statistics are copied with their
    layer. The optimizer's state and step are not: training starts at step 0.

    Args:
      model: a built lowtf model (call it once on a batch first, e.g.
        ``model(x[:1])``, so that its variables exist).
      path: a lowtf model directory (its ``best/`` snapshot is read) or a
        ``best/`` folder; any TensorFlow file system.
      log: called with the one line (default ``print``).

    Returns:
      An :class:`InitReport`.

    Raises:
      ValueError: no best snapshot under ``path``; an unbuilt model; layers
        that cannot be mapped (another number of layers, other variables, or
        a shape that differs elsewhere than the head's units or the input's
        width), naming the layer and both shapes.
    """
    if not callable(log):
        raise ValueError(f"`log` ({log!r}) must be callable, e.g. print")  # noqa: TRY004
    prefix, step = _snapshot(os.fspath(path))
    targets = [(layer, _own_variables(layer)) for layer in leaf_layers(model)]
    targets = [(layer, variables) for layer, variables in targets if variables]
    if not targets:
        raise ValueError(
            "`model` has no variables yet: call it once on a batch (e.g. "
            "model(x[:1])) before init_from"
        )
    reader = tf.train.load_checkpoint(prefix)
    sources = _snapshot_layers(reader, prefix)
    if len(sources) != len(targets):
        raise ValueError(
            f"the snapshot {prefix} has {len(sources)} layers with variables, the "
            f"model {len(targets)} ({', '.join(layer.name for layer, _ in targets)}); "
            "init_from maps layers one to one: build the model with the snapshot's "
            "hidden layers"
        )
    last = len(targets) - 1
    plan, fresh, reasons = [], [], []
    for i, ((layer, variables), source) in enumerate(zip(targets, sources)):
        if sorted(variables) != sorted(source):
            raise ValueError(
                f"layer {i} ({layer.name}) holds {sorted(variables)} but the "
                f"snapshot's layer {i} holds {sorted(source)} (e.g. batch norm on in "
                "one and off in the other); build the model as the snapshot's run did"
            )
        differ = [
            (attr, tuple(source[attr][1]), tuple(variables[attr].shape))
            for attr in variables  # the layer's order: kernel before bias
            if tuple(source[attr][1]) != tuple(variables[attr].shape)
        ]
        if not differ:
            plan.extend((variables[attr], source[attr][0]) for attr in variables)
            continue
        for attr, theirs, ours in differ:
            if not _remappable(theirs, ours, first=i == 0, last=i == last):
                raise ValueError(
                    f"layer {i} ({layer.name}) {attr}: the snapshot has shape "
                    f"{theirs}, the model {ours}; only the output layer's units "
                    "(another number of classes) and the first layer's input width "
                    "may differ: build the hidden layers as the snapshot's run did"
                )
        fresh.append(layer.name)
        attr, theirs, ours = differ[0]
        reasons.append(f"{layer.name} ({attr} {theirs} in the snapshot, {ours} here)")
    if len(fresh) == len(targets):
        raise ValueError(
            f"init_from {prefix}: none of its layers fits the model (initialized "
            f"afresh: {', '.join(reasons)}), so nothing would be loaded; build the "
            "model as the snapshot's run did, or train from scratch without "
            "init_from"
        )
    for var, key in plan:  # only once everything was checked
        value = reader.get_tensor(key)
        if value.dtype != var.dtype.as_numpy_dtype:
            raise ValueError(
                f"{var.name}: the snapshot holds {value.dtype}, the model "
                f"{var.dtype.name}; build the model in the snapshot's dtype"
            )
        var.assign(value)
    loaded = tuple(layer.name for layer, _ in targets if layer.name not in fresh)
    where = f" (step {step})" if step is not None else ""
    afresh = "; initialized afresh: " + ", ".join(reasons) if reasons else ""
    line = f"init_from {prefix}{where}: loaded {len(loaded)} layers ({', '.join(loaded)}){afresh}"
    log(line)
    return InitReport(prefix, step, loaded, tuple(fresh), line)


def _remappable(theirs: tuple, ours: tuple, *, first: bool, last: bool) -> bool:
    """Whether a shape difference is a new head's units or a new input's width."""
    if len(theirs) != len(ours):
        return False
    head = last and theirs[:-1] == ours[:-1]  # only the units differ
    entry = first and len(ours) > 1 and theirs[-1] == ours[-1]  # only the fan-in
    return head or entry


def _snapshot(path: str) -> tuple[str, int | None]:
    """The best snapshot's prefix and step under a model directory or a best/ folder."""
    record = rundir.read_record(path) if tf.io.gfile.isdir(path) else None
    if record is not None and record["identity"].get("kind") == "population":
        raise ValueError(
            f"`init_from` ({path!r}) is a population's directory: its best/ holds "
            "the stacked best weights of all its members; start from one run's "
            "model directory (bin/train's), e.g. a sweep's retrained winner"
        )
    for folder in (path, os.path.join(path, "best")):
        if tf.io.gfile.isdir(folder):
            pointer = early_stopping.best_checkpoint(folder)
            if pointer is not None:
                return pointer["prefix"], pointer.get("step")
    raise ValueError(
        f"`init_from` ({path!r}) holds no best snapshot: give a lowtf model "
        "directory (with best/) or its best/ folder, of a run that evaluated at "
        "least once"
    )


def _own_variables(layer) -> dict:
    """A layer's own variables by attribute name (kernel, bias, gamma, ...)."""
    return {
        name: value
        for name, value in vars(layer).items()
        if isinstance(value, tf.Variable) and not name.startswith("_")
    }


def _snapshot_layers(reader, prefix) -> list[dict]:
    """The snapshot's model layers holding variables, in order: {attr: (key, shape)}.

    The checkpoint stores each variable once, under its shortest path (often
    the optimizer's), so the model's structure is read from the object graph
    saved with it: from the root's ``model`` down through ``layers`` lists.
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))
    shapes = reader.get_variable_to_shape_map()
    root = {child.local_name: child.node_id for child in graph.nodes[0].children}
    if "model" not in root:
        raise ValueError(f"the snapshot {prefix} holds no model; is it a lowtf run's?")

    def key_of(node_id):
        for attribute in graph.nodes[node_id].attributes:
            if attribute.name == _VALUE:
                return attribute.checkpoint_key
        return None

    def walk(node_id):
        children = {c.local_name: c.node_id for c in graph.nodes[node_id].children}
        if "layers" in children:  # a Sequential: its layers, in order
            listed = graph.nodes[children["layers"]].children
            ordered = sorted(listed, key=lambda c: _natural(c.local_name))
            return [layer for c in ordered for layer in walk(c.node_id)]
        own = {}
        for name, child in children.items():
            key = key_of(child)
            if key is not None and not name.startswith("_"):
                own[name] = (key, shapes[key])
        return [own] if own else []

    return walk(root["model"])


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _check_lowtf(name: str, model) -> None:
    if not isinstance(model, base.Layer):
        raise ValueError(  # noqa: TRY004 (lowtf's argument errors are ValueErrors)
            f"`{name}` ({type(model).__name__}) must be a lowtf model (lowtf.mlp, "
            "lowtf.cnn, a lowtf.nn.Sequential); freeze a Keras model with its own "
            "`trainable` flags"
        )

