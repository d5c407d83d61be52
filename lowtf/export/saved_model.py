"""A lowtf model as a TensorFlow SavedModel, laid out for TensorFlow Serving.

The SavedModel holds the weights, the training split's normalization and one
signature, ``serving_default``::

    inputs:  features       float32 [None, *feature_shape]  raw, un-normalized
    outputs: probabilities  float32 [None, classes]
             class_ids      int64   [None]

A one-logit (sigmoid) head gives two columns, the probabilities of class 0
and of class 1, so that every export reads the same way. The network runs in
inference mode: dropout is off and batch norm uses its moving statistics (no
augmentation is part of a lowtf model). Nothing of lowtf is needed to load
it: ``tf.saved_model.load(path).signatures["serving_default"]``.

TensorFlow Serving's layout: each export is a version subdirectory named by
an integer, ``export_dir/<version>/saved_model.pb`` (plus ``variables/``);
Serving serves the highest version. A version is written under a temporary
name first and renamed when complete, so a server watching ``export_dir``
never sees half of one.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from lowtf import _checks
from lowtf.export import spec as spec_lib
from lowtf.train import early_stopping

SIGNATURE = "serving_default"
INPUT = "features"
OUTPUTS = ("probabilities", "class_ids")


class _Serving(tf.Module):
    """The model with its normalization and head, as one traced function."""

    def __init__(self, model, feature_shape, mean, std):
        super().__init__(name="lowtf_serving")
        self.model = model
        # Constants, not variables: they are part of the graph, not weights.
        self._mean = tf.constant(mean, tf.float32)
        self._std = tf.constant(std, tf.float32)
        self.serve = tf.function(
            self._serve,
            input_signature=[
                tf.TensorSpec([None, *feature_shape], tf.float32, name=INPUT)
            ],
        )

    def _serve(self, features):
        logits = self.model((features - self._mean) / self._std, training=False)
        if logits.shape[-1] == 1:
            # sigmoid(-z) rather than 1 - sigmoid(z): exact for large |z|.
            probabilities = tf.concat([tf.sigmoid(-logits), tf.sigmoid(logits)], -1)
        else:
            probabilities = tf.nn.softmax(logits, axis=-1)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_ids": class_ids}


def save(
    model,
    export_dir: str,
    *,
    feature_shape,
    mean=None,
    std=None,
    version: int | None = None,
) -> str:
    """Writes ``model`` as a SavedModel version under ``export_dir``.

    Args:
      model: a lowtf model (``model(x, training=False)`` gives logits), built
        or not.
      export_dir: the base directory; made if missing.
      feature_shape: the shape of one raw example, e.g. ``(28,)``.
      mean, std: the normalization the model was trained with, broadcast
        against ``feature_shape`` (default None: 0 and 1, none).
      version: the version number, a positive integer (default None: one more
        than the highest there, 1 in an empty directory).

    Returns:
      The path of the version written, ``export_dir/<version>``.

    Raises:
      ValueError: a bad ``version`` or ``feature_shape``, a version that
        exists, or a zero in ``std``.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    for i, size in enumerate(feature_shape):
        _checks.positive_int(f"feature_shape[{i}]", size)
    mean = (
        np.zeros(feature_shape, np.float32)
        if mean is None
        else np.asarray(mean, np.float32)
    )
    std = (
        np.ones(feature_shape, np.float32)
        if std is None
        else np.asarray(std, np.float32)
    )
    if not np.all(std != 0):
        raise ValueError(
            "`std` has a zero; the loader divides by 1 for a constant feature"
        )
    version = _version(export_dir, version)
    # Built here, so that the traced function only reads the variables.
    model(tf.zeros([1, *feature_shape]), training=False)
    serving = _Serving(model, feature_shape, mean, std)
    path = os.path.join(export_dir, str(version))
    temporary = os.path.join(export_dir, f".tmp-{version}")
    if tf.io.gfile.exists(temporary):
        tf.io.gfile.rmtree(temporary)  # left by an interrupted export
    tf.io.gfile.makedirs(export_dir)
    try:
        tf.saved_model.save(serving, temporary, signatures={SIGNATURE: serving.serve})
        tf.io.gfile.rename(temporary, path)
    except BaseException:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.rmtree(temporary)
        raise
    return path


def export(model_dir: str, export_dir: str, *, version: int | None = None) -> str:
    """Exports the best snapshot of a ``bin/train`` run as a SavedModel.

    Rebuilds the network from ``model_dir/model.json``, restores the best
    snapshot (``best/``) and calls :func:`save` with the run's normalization.

    Args:
      model_dir: the run's model directory.
      export_dir: the base directory of the versions.
      version: as in :func:`save` (default: the next free one).

    Returns:
      The path written, ``export_dir/<version>``.

    Raises:
      ValueError: no model.json or best snapshot in ``model_dir``, a snapshot
        that does not fit model.json, or a bad ``version``.
    """
    spec, mean, std = spec_lib.read(model_dir)
    pointer = early_stopping.best_checkpoint(os.path.join(model_dir, "best"))
    if pointer is None:
        raise ValueError(
            f"{model_dir}/best holds no best snapshot: the run stopped before its "
            f"first evaluation or on a non-finite loss; train it further first"
        )
    model = spec_lib.rebuild(spec)
    feature_shape = tuple(spec["feature_shape"])
    model(tf.zeros([1, *feature_shape]), training=False)  # variables to restore into
    status = tf.train.Checkpoint(model=model).read(pointer["prefix"]).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(
            f"{pointer['prefix']} does not fit {model_dir}/model.json ({error}); "
            f"was model.json edited?"
        ) from None
    return save(
        model,
        export_dir,
        feature_shape=feature_shape,
        mean=mean,
        std=std,
        version=version,
    )


def latest(export_dir: str) -> str:
    """The path of the SavedModel to serve: ``export_dir`` itself if it holds
    saved_model.pb, else its highest integer version (as TensorFlow Serving).

    Raises:
      ValueError: neither.
    """
    if tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = _versions(export_dir)
    if not versions:
        raise ValueError(
            f"--model ({export_dir}) holds no SavedModel: neither saved_model.pb nor "
            f"a version directory (1/, 2/, ...); give bin/export's --export_dir"
        )
    return os.path.join(export_dir, str(max(versions)))


def _versions(export_dir) -> list[int]:
    if not tf.io.gfile.isdir(export_dir):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(export_dir))
    return [int(name) for name in names if name.isdigit()]


def _version(export_dir, version) -> int:
    """``version`` checked, or the next free one."""
    if tf.io.gfile.exists(export_dir) and not tf.io.gfile.isdir(export_dir):
        raise ValueError(f"--export_dir ({export_dir}) is a file; pick a directory")
    taken = _versions(export_dir)
    if version is None:
        return max(taken, default=0) + 1
    _checks.positive_int("version", version)
    if version in taken:
        raise ValueError(
            f"`version` ({version}) exists in {export_dir}; leave it out for the next "
            f"free one ({max(taken) + 1})"
        )
    return version
