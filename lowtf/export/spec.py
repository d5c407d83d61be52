"""What a model directory keeps so that its network can be rebuilt: model.json.

:func:`lowtf.train.run_job` writes two files next to summary.json:

- ``model.json``: the model's settings (the :class:`lowtf.train.JobConfig`
  fields that shape the network, the activation as resolved) and the data's
  ``num_classes``, ``feature_shape`` and, for the cnn, ``image_shape``;
- ``normalization.npz``: ``mean`` and ``std``, the training split's
  statistics the features were standardized with.

:func:`rebuild` turns model.json back into an untrained network through
``run_job``'s own builder, so the architecture is decided in one place.
Every file goes through ``tf.io.gfile`` (any TensorFlow file system).
"""

from __future__ import annotations

import io
import json
import os
import types

import numpy as np
import tensorflow as tf

from lowtf import _files

MODEL_FILE, NORMALIZATION_FILE = "model.json", "normalization.npz"
FORMAT = "lowtf.model/1"
# The JobConfig fields that shape the network (and its initial weights).
MODEL_FIELDS = (
    "model",
    "hidden",
    "activation",
    "dropout",
    "batchnorm",
    "l1",
    "l2",
    "maxnorm",
    "seed",
)


def write(model_dir: str, config, data, *, ensemble_seeds=None) -> None:
    """Writes model.json and normalization.npz for ``config`` and ``data``.

    Args:
      model_dir: the run's directory.
      config: its :class:`lowtf.train.JobConfig`.
      data: its :class:`lowtf.Dataset` (num_classes, feature_shape, mean, std).
      ensemble_seeds: an ensemble run's members' seeds (their best weights
        are in ``model_dir/ensemble/``); default None: one model.
    """
    from lowtf.train import job  # lowtf.train.job calls this module

    spec = {"format": FORMAT}
    spec.update({name: getattr(config, name) for name in MODEL_FIELDS})
    if spec["hidden"] is not None:
        spec["hidden"] = list(spec["hidden"])
    if spec["activation"] is None:  # resolved as build_model resolves it
        spec["activation"] = "relu" if config.model == "cnn" else "elu"
    image = job.image_shape(config, data) if config.model == "cnn" else None
    spec.update(
        dataset=data.name,
        num_classes=int(data.num_classes),
        feature_shape=[int(d) for d in data.feature_shape],
        image_shape=None if image is None else [int(d) for d in image],
        normalization=NORMALIZATION_FILE,
    )
    if ensemble_seeds is not None:
        spec["ensemble"] = {"seeds": [int(s) for s in ensemble_seeds]}
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=np.asarray(data.mean, np.float32),
        std=np.asarray(data.std, np.float32),
    )
    _files.write_atomically(os.path.join(model_dir, NORMALIZATION_FILE), buffer.getvalue())
    _files.write_atomically(os.path.join(model_dir, MODEL_FILE), json.dumps(spec, indent=2) + "\n")


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
    """The untrained network of a model.json ``spec``, built by run_job's builder."""
    from lowtf.train import job  # lowtf.train.job imports this package

    settings = {name: spec[name] for name in MODEL_FIELDS}
    if settings["hidden"] is not None:
        settings["hidden"] = tuple(settings["hidden"])
    config = job.JobConfig(**settings)
    # build_model reads only these of the data.
    data = types.SimpleNamespace(
        name=spec["dataset"],
        num_classes=spec["num_classes"],
        feature_shape=tuple(spec["feature_shape"]),
    )
    return job.build_model(config, data)
