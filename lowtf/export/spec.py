"""What a model directory keeps so that its network can be rebuilt: model.json.

A job (:func:`lowtf.job.run_job`) writes two files next to summary.json:

- ``model.json``: the network's :class:`lowtf.models.ModelSpec` (the
  settings that shape it, the activation as resolved, the data's
  ``num_classes``, ``feature_shape`` and, for the cnn, ``image_shape``),
  the data set's name and, for an ensemble, its members' seeds;
- ``normalization.npz``: ``mean`` and ``std``, the training split's
  statistics the features were standardized with.

:func:`rebuild` turns model.json back into an untrained network with
:meth:`ModelSpec.build`, the builder the job trained it with, so the
architecture is decided in one place; this module knows the spec, never the
job. Every file goes through ``tf.io.gfile`` (any TensorFlow file system).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import tensorflow as tf

from lowtf import _files
from lowtf.models import ModelSpec

MODEL_FILE, NORMALIZATION_FILE = "model.json", "normalization.npz"
FORMAT = "lowtf.model/1"


def write(model_dir: str, spec: ModelSpec, data, *, ensemble_seeds=None) -> None:
    """Writes model.json and normalization.npz for ``spec`` and ``data``.

    Args:
      model_dir: the run's directory.
      spec: its network's :class:`lowtf.models.ModelSpec`.
      data: its :class:`lowtf.Dataset` (name, mean, std).
      ensemble_seeds: an ensemble run's members' seeds (their best weights
        are in ``model_dir/ensemble/``); default None: one model.
    """
    record = {"format": FORMAT, **spec.as_dict()}
    record.update(dataset=data.name, normalization=NORMALIZATION_FILE)
    if ensemble_seeds is not None:
        record["ensemble"] = {"seeds": [int(s) for s in ensemble_seeds]}
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=np.asarray(data.mean, np.float32),
        std=np.asarray(data.std, np.float32),
    )
    _files.write_atomically(os.path.join(model_dir, NORMALIZATION_FILE), buffer.getvalue())
    _files.write_atomically(
        os.path.join(model_dir, MODEL_FILE), json.dumps(record, indent=2) + "\n"
    )


def read(model_dir: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """model.json and the normalization of ``model_dir``: ``(spec, mean, std)``.

    Raises:
      ValueError: a file is missing (a run of an older lowtf, or not a
        model directory) or is not what :func:`write` writes.
    """
    path = os.path.join(model_dir, MODEL_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(
            f"{path} not found: --model_dir must be a bin/train model directory; a run "
            f"of an older lowtf gets it by running bin/train on it again (it resumes)"
        )
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            spec = json.loads(f.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON ({error}); it was damaged") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lowtf model.json (format {FORMAT})")
    norm_path = os.path.join(model_dir, spec["normalization"])
    try:
        with tf.io.gfile.GFile(norm_path, "rb") as f:
            arrays = np.load(io.BytesIO(f.read()))
            mean, std = arrays["mean"], arrays["std"]
    except (tf.errors.OpError, OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"{norm_path} cannot be read ({type(error).__name__}); it holds the "
            f"training split's mean and std that the exported model needs"
        ) from None
    return spec, mean, std


def rebuild(spec: dict):
    """The untrained network of a model.json ``spec`` (:meth:`ModelSpec.build`)."""
    return ModelSpec.from_dict(spec).build()
