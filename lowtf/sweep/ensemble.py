"""``bin/sweep --ensemble=N``: an ensemble of the sweep's trained members.

Ensemble selection from a library of models (Caruana et al. 2004), the
library being the sweep's configurations:

* After each population, every configuration that trained without
  diverging keeps, under ``<sweep_dir>/ensemble/members/<id>/``, its
  members' best weights (one model per fold) and their probabilities on the
  rows it was scored on: the validation split (``--folds=1``) or, with
  ``--folds=k``, each fold model's on its fold's held-out rows, which put
  together predict every training row once, by the model that did not
  train on it (out-of-fold predictions, :func:`lowtf.ensemble.out_of_fold`).
* Once the sweep is ranked, :func:`select` runs
  :func:`lowtf.ensemble.greedy_picks` over those predictions and the labels
  of the same rows: at most N picks, with replacement, each configuration's
  weight its share of the picks. It reads no test row: it is given none.
* After the winner's retraining, :func:`score_test` scores the test split
  once, for the winner (its retrained model directory) and the ensemble,
  side by side: accuracy, cross-entropy and calibration error. With folds,
  a chosen configuration's fold models share its weight equally, each fed
  the test rows standardized as its fold's training rows were.
  Scoring also keeps what rebuilds the ensemble from the sweep directory
  alone (:func:`describe`): each member's network spec in ``ensemble.json``
  and each fold's input statistics in ``ensemble/normalization.npz``.
* :func:`export` (``bin/export --sweep_dir``) writes the scored ensemble as
  one SavedModel (:func:`lowtf.export.save_ensemble`): members of several
  architectures, each fold's models with their fold's standardization,
  serving the weighted mean ``probabilities``, ``class_ids`` and the
  members' weighted variance, ``disagreement``, for raw features, as
  ``bin/train --ensemble`` exports do. ``bin/sweep --export_dir`` exports
  the winner. :func:`load` gives the ensemble as an :class:`lowtf.Ensemble`
  per fold, for use in Python.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import tensorflow as tf

from lowtf import _files
from lowtf.ensemble import selection
from lowtf.ensemble.model import Ensemble
from lowtf.export import saved_model
from lowtf.export import spec as spec_lib
from lowtf.job import run as job_lib
from lowtf.train import early_stopping

MEMBERS_DIR = os.path.join("ensemble", "members")
SELECTION_FILE = "ensemble.json"
PREDICTIONS = "predictions.npz"
# Per fold, the mean and std that standardize raw features into its models' inputs.
NORMALIZATION = os.path.join("ensemble", "normalization.npz")
WEIGHTS = "weights"
# What the ensemble and the winner are scored on, in results.md's order.
METRICS = ("cross_entropy", "accuracy", "calibration_error")
# Rows per forward pass when predicting (bounds the memory of large splits).
_BATCH = 4096


def member_dir(sweep_dir: str, key: str) -> str:
    """Where configuration ``key`` (a :attr:`Point.key`) keeps its weights and predictions."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(sweep_dir, MEMBERS_DIR, digest)


def save_members(sweep_dir: str, key: str, models: list, shared) -> None:
    """Keeps one configuration's fold models and their held-out predictions.

    Args:
      sweep_dir: the sweep's directory.
      key: the configuration's :attr:`Point.key`.
      models: its models with their best weights, one per fold, in fold order.
      shared: the sweep's rows (:class:`lowtf.sweep.run._Shared`): ``x``,
        ``y`` and per fold ``(train_rows, val_rows)``.
    """
    where = member_dir(sweep_dir, key)
    tf.io.gfile.makedirs(where)
    fold_probabilities = [
        probabilities(model, shared.x[val])
        for model, (_, val) in zip(models, shared.folds)
    ]
    rows, n = scored_rows(shared)
    # Each fold's inputs are standardized on its own training rows (none
    # kept: the data's own, as loaded); the test rows must be too.
    scales = [(m, s) for _, m, s in shared.scales if m is not None]
    buffer = io.BytesIO()
    np.savez(
        buffer,
        probabilities=selection.out_of_fold(fold_probabilities, rows, n),
        key=np.asarray(key),
        mean=np.asarray([m for m, _ in scales], np.float32),
        std=np.asarray([s for _, s in scales], np.float32),
    )
    prefix = os.path.join(where, WEIGHTS)
    _files.write_checkpoint(
        lambda: tf.train.Checkpoint(members=models).write(prefix), prefix
    )
    # Last: a configuration with predictions has its weights too.
    _files.write_atomically(os.path.join(where, PREDICTIONS), buffer.getvalue())


def scored_rows(shared) -> tuple[list, int]:
    """Per fold, its held-out rows as indices of the rows scored; and how many.

    ``--folds=1``: the validation split (after the training rows in the
    shared ``x``); ``--folds=k``: the training split (fold ``f``'s copy of it
    starts at ``f * n``).
    """
    if len(shared.folds) == 1:
        train, val = shared.folds[0]
        return [val - len(train)], len(val)
    n = len(shared.y) // len(shared.folds)
    return [val - f * n for f, (_, val) in enumerate(shared.folds)], n


def scored_labels(shared) -> np.ndarray:
    """The labels of the rows scored, in :func:`scored_rows`' order."""
    if len(shared.folds) == 1:
        return shared.y[shared.folds[0][1]]
    return shared.y[: len(shared.y) // len(shared.folds)]


def probabilities(model, x) -> np.ndarray:
    """A model's softmax (or, for one logit, sigmoid) probabilities on ``x``, in inference."""
    out = []
    for start in range(0, len(x), _BATCH):
        logits = tf.cast(
            model(tf.constant(x[start : start + _BATCH]), training=False), tf.float32
        )
        out.append(
            (
                tf.sigmoid(logits) if logits.shape[-1] == 1 else tf.nn.softmax(logits)
            ).numpy()
        )
    return np.concatenate(out)


def scores(p, y) -> dict:
    """:data:`METRICS` of probabilities ``p``: cross-entropy, accuracy, calibration error."""
    return {name: getattr(selection, name)(p, y) for name in METRICS}


def _read(sweep_dir: str, key: str) -> dict | None:
    """What :func:`save_members` kept for ``key`` (``probabilities``, ``mean``,
    ``std``), or None if nothing was."""
    path = os.path.join(member_dir(sweep_dir, key), PREDICTIONS)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        stored = dict(np.load(io.BytesIO(f.read())))
    # The directory is a 64-bit prefix of the key's hash: check it is this key's.
    return stored if str(stored.pop("key")) == key else None


def select(config, rows: list, shared, sweep_dir: str, log) -> dict | None:
    """Chooses the ensemble on the scored rows' predictions; validation only.

    Args:
      config: the :class:`SweepConfig` (``ensemble``: the most picks).
      rows: the ranked rows (:func:`lowtf.sweep.run.run_sweep`'s), the
        winner marked.
      shared: the sweep's rows (their labels; no test row is among them).
      sweep_dir: where the members were kept.
      log: called with one line.

    Returns:
      The record written to ``ensemble.json`` (:func:`write`): ``members``
      (``key``, ``point``, ``rank``, ``picks``, ``weight``, ``score_mean`` and its own
      ``validation`` scores), ``picks``, ``candidates``, ``scored_on``, and
      ``validation`` scores of the ``ensemble``, the ``winner`` and the
      ``best_member`` (the lowest cross-entropy alone); or None when no
      configuration has kept predictions.
    """
    y = scored_labels(shared)
    candidates, missing = [], 0
    for rank, row in enumerate(rows, 1):
        if row["status"] != "ok":
            continue
        stored = _read(sweep_dir, row["key"])
        if stored is None:
            missing += 1
        else:
            candidates.append((rank, row, stored["probabilities"]))
    if missing:
        log(
            f"ensemble: {missing} configurations have no kept predictions (trained "
            "without --ensemble, or by another process into its own --sweep_dir); "
            f"choosing among the other {len(candidates)}"
        )
    if not candidates:
        log("ensemble: no configuration kept its predictions: no ensemble to choose")
        return None
    library = np.stack([p for _, _, p in candidates])
    picks = selection.greedy_picks(library, y, config.ensemble)
    weights = picks / picks.sum()
    alone = [scores(p, y) for p in library]
    members = [
        {
            "key": row["key"],
            "point": row["point"].params(),
            "rank": rank,
            "picks": int(picks[i]),
            "weight": float(weights[i]),
            "score_mean": row["score_mean"],
            "validation": alone[i],
        }
        for i, (rank, row, _) in enumerate(candidates)
        if picks[i]
    ]
    members.sort(key=lambda m: (-m["picks"], m["rank"]))
    best = min(range(len(alone)), key=lambda i: (alone[i]["cross_entropy"], i))
    winner = next(
        (i for i, (_, r, _) in enumerate(candidates) if r.get("winner")), None
    )
    record = {
        "picks": int(picks.sum()),
        "max_picks": config.ensemble,
        "candidates": len(candidates),
        "folds": config.folds,
        "scored_on": "validation split"
        if config.folds == 1
        else f"out-of-fold predictions of {config.folds} folds",
        "members": members,
        "validation": {
            "ensemble": scores(np.tensordot(weights, library, axes=1), y),
            "winner": None if winner is None else alone[winner],
            "best_member": {"key": candidates[best][1]["key"], **alone[best]},
        },
        "test": None,
    }
    v = record["validation"]
    log(
        f"ensemble: {len(members)} of {len(candidates)} configurations in {record['picks']} "
        f"picks (at most {config.ensemble}), chosen on the {record['scored_on']}: "
        f"cross-entropy {v['ensemble']['cross_entropy']:.4f} against the best "
        f"configuration's {v['best_member']['cross_entropy']:.4f}"
    )
    return record


def load(config, record: dict, data, sweep_dir: str) -> list[tuple]:
    """The chosen members as one :class:`lowtf.Ensemble` per fold.

    Also completes ``record`` and the sweep directory with what rebuilds
    them without the sweep's configuration or data (:func:`describe`).

    Returns:
      ``[(ensemble, mean, std)]`` per fold: the fold models of the chosen
      configurations weighted by their picks, and the statistics that
      standardize raw features (``[n, *feature_shape]``, as the data set
      was before the loader standardized it) into their inputs.
    """
    describe(config, record, data, sweep_dir)
    return _load(record, sweep_dir)


def describe(config, record: dict, data, sweep_dir: str) -> None:
    """Keeps what rebuilds the ensemble from the sweep directory alone.

    Each member of ``record`` gains its network's ``spec``
    (:meth:`lowtf.models.ModelSpec.as_dict`, as a ``bin/train`` model.json
    holds it), and ``<sweep_dir>/ensemble/normalization.npz`` gets per fold
    the ``mean`` and ``std`` of its inputs (``[folds, *feature_shape]``):
    the fold's own training rows' with ``--folds=k``, the training split's
    with ``--folds=1``. :func:`score_test` calls it, so an ``ensemble.json``
    with test scores is one :func:`export` can read.
    """
    from lowtf.sweep.config import Point

    for member in record["members"]:
        job = config.job_config(Point.of(member["point"]))
        member["spec"] = job_lib.model_spec(job, data).as_dict()
    shape = tuple(data.feature_shape)
    # Every configuration's fold f was standardized alike: the first one's file says how.
    stored = _read(sweep_dir, record["members"][0]["key"])
    scales = [_scale(stored, f) for f in range(config.folds)]
    scales = [(data.mean, data.std) if m is None else (m, s) for m, s in scales]
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=np.stack([np.reshape(m, shape) for m, _ in scales]).astype(np.float32),
        std=np.stack([np.reshape(s, shape) for _, s in scales]).astype(np.float32),
    )
    _files.write_atomically(os.path.join(sweep_dir, NORMALIZATION), buffer.getvalue())


def _load(record: dict, sweep_dir: str) -> list[tuple]:
    """:func:`load` from what :func:`describe` kept: the specs and the normalization."""
    with tf.io.gfile.GFile(os.path.join(sweep_dir, NORMALIZATION), "rb") as f:
        stats = np.load(io.BytesIO(f.read()))
        means, stds = stats["mean"], stats["std"]
    weights = np.array([m["weight"] for m in record["members"]])
    per_fold = [[] for _ in means]
    for member in record["members"]:
        key = member["key"]
        models = []
        for _ in means:
            model = spec_lib.rebuild(member["spec"])
            model(tf.zeros([1, *means.shape[1:]]), training=False)
            models.append(model)
        prefix = os.path.join(member_dir(sweep_dir, key), WEIGHTS)
        _restore(tf.train.Checkpoint(members=models), prefix, f"configuration {key}")
        for f, model in enumerate(models):
            per_fold[f].append(model)
    return [
        (Ensemble(models, weights=weights), means[f], stds[f])
        for f, models in enumerate(per_fold)
    ]


def _scale(stored, f: int) -> tuple:
    """Fold ``f``'s ``(mean, std)`` as kept by :func:`save_members`, or ``(None, None)``."""
    if stored is None or not len(stored["mean"]):
        return None, None
    return stored["mean"][f], stored["std"][f]


def export(sweep_dir: str, export_dir: str, *, version: int | None = None) -> str:
    """Exports a sweep's chosen ensemble as one SavedModel (``bin/export --sweep_dir``).

    Every chosen configuration's fold models are members, each weighted by
    its configuration's weight over the number of folds and fed the raw
    features standardized with its fold's statistics
    (:func:`lowtf.export.save_ensemble`; one stacked
    :class:`lowtf.Ensemble` per fold). ``serving_default`` returns the
    weighted mean ``probabilities``, its ``class_ids`` and the members'
    weighted variance, ``disagreement``: what :func:`score_test` scored on
    test, for raw rows. Nothing but ``sweep_dir`` is read: neither the data
    nor the sweep's flags.

    Args:
      sweep_dir: a sweep directory whose ``--ensemble=N`` run scored its
        ensemble on test (its ``ensemble.json`` has test scores).
      export_dir: the base directory of the versions, TensorFlow Serving's
        layout (:func:`lowtf.export.save`).
      version: as in :func:`lowtf.export.save` (default: the next free one).

    Returns:
      The path written, ``export_dir/<version>``.

    Raises:
      ValueError: no ensemble in ``sweep_dir`` or one not scored yet (the
        sweep stopped before its end), weights that do not fit, or a bad
        ``version``.
    """
    path = os.path.join(sweep_dir, SELECTION_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(
            f"{path} not found: --sweep_dir must be a bin/sweep directory run with "
            "--ensemble=N (the winner alone: bin/export --model_dir=<sweep_dir>/winner)"
        )
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            record = json.loads(f.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON ({error}); it was damaged") from None
    described = tf.io.gfile.exists(os.path.join(sweep_dir, NORMALIZATION))
    if not (
        record.get("test") and described and all("spec" in m for m in record["members"])
    ):
        raise ValueError(
            f"the ensemble in {path} was chosen but not scored on test yet (the sweep "
            "stopped before its end, or ran with an older lowtf): rerun the same "
            "bin/sweep command (--noretrain skips the winner's retraining), then export"
        )
    folds = _load(record, sweep_dir)
    return saved_model.save_ensemble(
        [saved_model.Part(ensemble, mean, std) for ensemble, mean, std in folds],
        export_dir,
        feature_shape=folds[0][1].shape,
        version=version,
    )


def score_test(
    config, record: dict, data, sweep_dir: str, winner_dir: str | None
) -> dict:
    """The test split, scored once: the ensemble's and the winner's side by side.

    Each fold's ensemble is fed the raw test rows standardized as its fold
    was (as the export, :func:`export`, does); :func:`describe` keeps what
    the export needs.

    Args:
      winner_dir: the winner's retrained model directory, or None (not
        retrained: the winner's side is None).

    Returns:
      ``{"ensemble": scores, "winner": scores or None}``; also stored in
      ``record["test"]``.
    """
    x_test, y_test = data.test
    raw = np.asarray(x_test, np.float32) * data.std + data.mean
    total = 0.0
    folds = load(config, record, data, sweep_dir)
    for ensemble, mean, std in folds:
        x = ((raw - mean) / std).astype(np.float32)
        total += ensemble.probabilities(tf.constant(x)).numpy() / len(folds)
    test = {"ensemble": scores(total, y_test), "winner": None}
    if winner_dir is not None:
        model = _retrained(winner_dir)
        test["winner"] = scores(
            probabilities(model, np.asarray(x_test, np.float32)), y_test
        )
    record["test"] = test
    return test


def write(sweep_dir: str, record: dict) -> None:
    """``ensemble.json`` in the sweep's directory, whole or not at all."""
    _files.write_atomically(
        os.path.join(sweep_dir, SELECTION_FILE), json.dumps(record, indent=2) + "\n"
    )


def _retrained(model_dir: str):
    """The best snapshot of a ``bin/train`` model directory, rebuilt from its model.json."""
    spec, _, _ = spec_lib.read(model_dir)
    model = spec_lib.rebuild(spec)
    model(tf.zeros([1, *spec["feature_shape"]]), training=False)
    pointer = early_stopping.best_checkpoint(os.path.join(model_dir, "best"))
    if pointer is None:
        raise ValueError(f"{model_dir}/best holds no best snapshot of the winner")
    _restore(tf.train.Checkpoint(model=model), pointer["prefix"], "the winner")
    return model


def _restore(checkpoint, prefix: str, what: str) -> None:
    """Reads ``prefix`` into ``checkpoint``; every model variable must be found there."""
    status = checkpoint.read(prefix).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(
            f"{prefix} does not hold the weights of {what} ({error}); was the sweep "
            "directory changed by hand? Rerun in a new --sweep_dir"
        ) from None
