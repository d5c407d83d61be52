"""A lowtf model as a TensorFlow SavedModel, laid out for TensorFlow Serving.

The SavedModel holds the weights, the training split's normalization (one
per part of an ensemble) and one signature, ``serving_default``::

    inputs:  features       float32 [None, *feature_shape]  raw, un-normalized
    outputs: probabilities  float32 [None, classes]
             class_ids      int64   [None]
             disagreement   float32 [None, classes]  (ensembles only)

An :class:`lowtf.Ensemble` exports its averaged probabilities and, as an
uncertainty, the variance of its members' probabilities (``disagreement``);
``bin/predict`` writes it as columns ``var0, var1, ...``. :func:`save_ensemble`
exports a weighted ensemble whose parts may differ in architecture and in
normalization (a sweep's fold models): each part standardizes the raw
features with its own mean and std, and the outputs are the same, the
members' weighted mean and weighted variance.

A one-logit (sigmoid) head gives two columns, the probabilities of class 0
and of class 1, so that every export reads the same way. The network runs in
inference mode: dropout is off and batch norm uses its moving statistics (no
augmentation is part of a lowtf model). Nothing of lowtf is needed to load
it: ``tf.saved_model.load(path).signatures["serving_default"]``.

TensorFlow Serving's layout: each export is a version subdirectory named by
an integer, ``export_dir/<version>/saved_model.pb`` (plus ``variables/``);
Serving serves the highest version. A version is written under a temporary
name of its own first (``.tmp-<pid>-<random>-<host>``) and renamed when
complete, so a server watching ``export_dir`` never sees half of one. The
rename is what claims the version number: it never replaces a directory, so
exports running at once into one ``export_dir`` take distinct versions (the
one that loses a race takes the next number).
"""

from __future__ import annotations

import errno
import os
import socket
import uuid
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from lowtf import _checks, _files
from lowtf.export import spec as spec_lib
from lowtf.train import early_stopping, rundir

SIGNATURE = "serving_default"
INPUT = "features"
OUTPUTS = ("probabilities", "class_ids")
# Prefix of the directory a version is written to before its rename.
_TMP_PREFIX = ".tmp-"


class _Serving(tf.Module):
    """Weighted parts, each a model with its own normalization, as one traced function.

    A plain export is one part of weight 1: its probabilities are the
    model's own. Several parts, or a part that is a :class:`lowtf.Ensemble`,
    make an ensemble: every member's probabilities (a part's inputs
    standardized with its own mean and std) weighted by its part's weight
    times its weight within the part, and their weighted variance, the
    ``disagreement``.
    """

    def __init__(self, parts, feature_shape):
        super().__init__(name="lowtf_serving")
        self.models = [part.model for part in parts]
        if len(parts) == 1:
            self.model = parts[0].model  # a plain export's layout: loaded.model
        # Constants, not variables: they are part of the graph, not weights.
        self._means = [tf.constant(part.mean, tf.float32) for part in parts]
        self._stds = [tf.constant(part.std, tf.float32) for part in parts]
        self._weights = [float(part.weight) for part in parts]
        self._ensemble = len(parts) > 1 or any(_members(p.model) for p in parts)
        self.serve = tf.function(
            self._serve,
            input_signature=[
                tf.TensorSpec([None, *feature_shape], tf.float32, name=INPUT)
            ],
        )

    def _serve(self, features):
        probabilities, weights = [], []
        for model, mean, std, weight in zip(
            self.models, self._means, self._stds, self._weights
        ):
            p, w = _member_probabilities(model, (features - mean) / std)
            probabilities.append(p)
            weights.append(weight * w)
        members = tf.concat(probabilities, 0)  # [members, batch, classes]
        weights = tf.constant(np.concatenate(weights), tf.float32)
        # One member of weight 1 (a plain export): 1 * p, exactly p.
        mean = tf.tensordot(weights, members, axes=1)
        class_ids = tf.argmax(mean, axis=-1, output_type=tf.int64)
        out = {"probabilities": mean, "class_ids": class_ids}
        if self._ensemble:
            # The members' weighted variance of each probability (the same
            # for both columns of a sigmoid head).
            out["disagreement"] = tf.tensordot(
                weights, tf.square(members - mean[None]), axes=1
            )
        return out


def _members(model) -> bool:
    """Whether ``model`` is an ensemble (it gives its members' probabilities)."""
    return callable(getattr(model, "member_probabilities", None))


def _member_probabilities(model, x):
    """``[members, batch, classes]`` probabilities of ``model``, and its members' weights.

    A model is one member of weight 1; a :class:`lowtf.Ensemble` gives each
    member's probabilities and weights (one stacked pass per architecture).
    A one-logit (sigmoid) head gives two columns, p(class 0) and p(class 1).
    """
    if not _members(model):
        logits = tf.cast(model(x, training=False), tf.float32)
        if logits.shape[-1] == 1:
            # sigmoid(-z) rather than 1 - sigmoid(z): exact for large |z|.
            p = tf.concat([tf.sigmoid(-logits), tf.sigmoid(logits)], -1)
        else:
            p = tf.nn.softmax(logits, axis=-1)
        return p[None], np.ones(1)
    p = tf.cast(model.member_probabilities(x), tf.float32)
    if p.shape[-1] == 1:
        p = tf.concat([1.0 - p, p], -1)
    return p, np.asarray(model.weights, np.float64)


class Part(NamedTuple):
    """One weighted part of an exported ensemble (:func:`save_ensemble`).

    Attributes:
      model: a lowtf model (logits from ``model(x, training=False)``), built
        or not; a :class:`lowtf.Ensemble` is several members sharing this
        normalization, run stacked.
      mean, std: the standardization of its inputs, broadcast against the
        feature shape (default None: 0 and 1, none).
      weight: its share of the ensemble, >= 0 (default 1; the parts'
        weights are normalized to sum 1).
    """

    model: Any
    mean: Any = None
    std: Any = None
    weight: float = 1.0


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
        or not; a :class:`lowtf.Ensemble` also serves ``disagreement``.
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
    return save_ensemble(
        [Part(model, mean, std)],
        export_dir,
        feature_shape=feature_shape,
        version=version,
    )


def save_ensemble(
    parts, export_dir: str, *, feature_shape, version: int | None = None
) -> str:
    """Writes a weighted ensemble of models, each with its own normalization.

    ``serving_default`` standardizes the raw features once per part, with
    that part's mean and std, and returns the weighted mean of all members'
    probabilities, its ``class_ids`` and ``disagreement``, the members'
    weighted variance of each probability. A member's weight is its part's
    (normalized to sum 1) times its weight within a :class:`lowtf.Ensemble`
    part. Members may differ in architecture and normalization (a sweep's
    fold models, :func:`lowtf.sweep.ensemble.export`); members of one
    architecture and normalization run faster as one Ensemble part.

    Args:
      parts: :class:`Part` ``(model, mean, std, weight)`` tuples, at least one.
      export_dir, feature_shape, version: as in :func:`save`.

    Returns:
      The path of the version written, ``export_dir/<version>``.

    Raises:
      ValueError: no parts, bad weights, a normalization that does not
        broadcast to ``feature_shape`` or has a zero ``std``, a bad
        ``version`` or ``feature_shape``, or a version that exists.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    for i, size in enumerate(feature_shape):
        _checks.positive_int(f"feature_shape[{i}]", size)
    parts = [Part(*part) for part in parts]
    if not parts:
        raise ValueError("`parts` is empty: an export needs at least one model")
    weights = np.asarray([part.weight for part in parts], np.float64)
    if not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"the parts' weights ({weights.tolist()}) must be finite and >= 0 with a "
            "positive sum"
        )
    parts = [
        part._replace(
            mean=_statistic(f"{i}", "mean", part.mean, 0.0, feature_shape),
            std=_statistic(f"{i}", "std", part.std, 1.0, feature_shape),
            weight=w,
        )
        for i, (part, w) in enumerate(zip(parts, weights / weights.sum()))
    ]
    requested = version
    version = _version(export_dir, version)
    for part in parts:
        # Built here, so that the traced function only reads the variables.
        part.model(tf.zeros([1, *feature_shape]), training=False)
    serving = _Serving(parts, feature_shape)
    tf.io.gfile.makedirs(export_dir)
    _remove_stale_temporaries(export_dir)
    # A name no other export (of this process or another) can have.
    temporary = os.path.join(
        export_dir,
        f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-{socket.gethostname()}",
    )
    try:
        tf.saved_model.save(serving, temporary, signatures={SIGNATURE: serving.serve})
        return _claim(temporary, export_dir, version, requested)
    except BaseException:
        _files.remove_if_present(temporary)
        raise


def _statistic(
    part: str, name: str, value, default: float, feature_shape
) -> np.ndarray:
    """``mean`` or ``std`` as float32 broadcast to ``feature_shape`` (checked)."""
    if value is None:
        return np.full(feature_shape, default, np.float32)
    value = np.asarray(value, np.float32)
    try:
        value = np.broadcast_to(value, feature_shape)
    except ValueError:
        raise ValueError(
            f"`{name}` of shape {value.shape} (part {part}) does not broadcast to the "
            f"feature shape {feature_shape}"
        ) from None
    if name == "std" and not np.all(value != 0):
        raise ValueError(
            "`std` has a zero; the loader divides by 1 for a constant feature"
        )
    return value


def _claim(temporary, export_dir, version, requested) -> str:
    """Renames ``temporary`` to the version directory; the next one if taken meanwhile."""
    while True:
        path = os.path.join(export_dir, str(version))
        try:
            # No overwrite: a version another export renamed first stays its own.
            tf.io.gfile.rename(temporary, path, overwrite=False)
            return path
        except tf.errors.OpError:
            # rename(2) onto a non-empty directory fails with ENOTEMPTY rather
            # than AlreadyExists: whichever, a path that exists now was taken.
            if not tf.io.gfile.exists(path):
                raise
            if requested is not None:
                raise ValueError(
                    f"`version` ({requested}) was written to {export_dir} by another "
                    f"export meanwhile; leave it out for the next free one"
                ) from None
        version = max(_versions(export_dir), default=version) + 1


def _remove_stale_temporaries(export_dir) -> None:
    """Deletes the temporaries of exports killed on this host (their pid is gone)."""
    for name in tf.io.gfile.listdir(export_dir):
        parts = name.rstrip("/").split("-", 3)  # .tmp, pid, random, host
        if (
            len(parts) != 4
            or not name.startswith(_TMP_PREFIX)
            or not parts[1].isdigit()
        ):
            continue  # not one of ours (an older lowtf's .tmp-<version> included)
        if _running({"pid": int(parts[1]), "host": parts[3].rstrip("/")}):
            continue
        try:
            _files.remove_if_present(os.path.join(export_dir, name.rstrip("/")))
        except tf.errors.OpError:
            pass  # another export is deleting it too


def _running(owner: dict) -> bool:
    """Whether ``{"host", "pid"}`` may be a live process: not known dead on this host."""
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(owner["pid"], 0)
    except OSError as error:
        return error.errno != errno.ESRCH
    return True


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
      ValueError: no model.json or best snapshot in ``model_dir`` (a run in
        progress or interrupted before its end is said to be one), a
        snapshot that does not fit model.json, or a bad ``version``.
    """
    if not tf.io.gfile.exists(os.path.join(model_dir, spec_lib.MODEL_FILE)):
        pointer = early_stopping.best_checkpoint(os.path.join(model_dir, "best"))
        if pointer is not None:
            raise ValueError(_unfinished(model_dir, pointer))
    spec, mean, std = spec_lib.read(model_dir)
    if "ensemble" in spec:
        return _export_ensemble(model_dir, spec, mean, std, export_dir, version)
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


def _export_ensemble(model_dir, spec, mean, std, export_dir, version) -> str:
    """An ``--ensemble=K`` run: its members' best weights, averaged as one model."""
    from lowtf.ensemble import Ensemble
    from lowtf.ensemble import job as ensemble_job

    feature_shape = tuple(spec["feature_shape"])
    members = []
    for seed in spec["ensemble"]["seeds"]:
        member = spec_lib.rebuild({**spec, "seed": seed})
        member(tf.zeros([1, *feature_shape]), training=False)
        members.append(member)
    ensemble_job.load_members(model_dir, members)
    return save(
        Ensemble(members),
        export_dir,
        feature_shape=feature_shape,
        mean=mean,
        std=std,
        version=version,
    )


def _unfinished(model_dir, pointer) -> str:
    """Why a run with a best snapshot but no model.json cannot be exported yet.

    run_job writes model.json (and the training split's normalization, which
    the export builds in) when the run ends; a run in progress or one that
    was killed has neither, and they cannot be made up from the snapshot.
    """
    lock = os.path.join(model_dir, rundir.LOCK)
    owner = rundir.RunLock(model_dir).holder() if tf.io.gfile.exists(lock) else None
    best = f"its best snapshot so far is step {pointer['step']}"
    if owner is not None and _running(owner):
        return (
            f"{model_dir} is a run in progress (pid {owner['pid']} on {owner.get('host')} "
            f"holds {lock}); {best}, and model.json, which the export rebuilds the "
            f"network from, is written when the run ends: export once it has ended, or "
            f"stop it with Ctrl-C (it then ends at its next step and writes model.json)"
        )
    flagfile = os.path.join(model_dir, "flags.txt")
    again = (
        f"bin/train --flagfile={flagfile}"
        if tf.io.gfile.exists(flagfile)
        else "bin/train with its flags"
    )
    return (
        f"{model_dir} is a run that was interrupted before its end ({best}): "
        f"model.json, which the export rebuilds the network from, is written when a "
        f"run ends; resume it with {again} and let it finish, or stop it with Ctrl-C "
        f"once it has started (it then writes model.json), and export after"
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
