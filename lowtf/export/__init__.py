"""Deployment: a trained model as a TensorFlow SavedModel, and batch inference.

- :func:`export` writes the best snapshot of a ``bin/train`` run (its
  model.json, normalization and ``best/``) as a SavedModel version,
  ``export_dir/<version>/``, in TensorFlow Serving's layout; :func:`save`
  does the same for any lowtf model in memory, and :func:`save_ensemble`
  for a weighted ensemble of models, each with its own normalization (a
  sweep's ensemble: :func:`lowtf.sweep.ensemble.export`).
- :func:`predict_file` streams a csv, csv.gz or npz file through an export
  and writes ``class_id,p0,p1,...`` rows, one per data row (what
  ``bin/predict`` runs); it never writes over its input, nor over an
  existing file unless asked.

The SavedModel's ``serving_default`` signature takes raw float32 features
``[None, *feature_shape]`` and returns ``probabilities`` and ``class_ids``
(an ensemble's also ``disagreement``); loading it needs TensorFlow only.
"""

from lowtf.export.predict import predict_file
from lowtf.export.saved_model import (
    SIGNATURE,
    Part,
    export,
    latest,
    save,
    save_ensemble,
)
from lowtf.export.spec import MODEL_FILE, NORMALIZATION_FILE

__all__ = [
    "MODEL_FILE",
    "NORMALIZATION_FILE",
    "SIGNATURE",
    "Part",
    "export",
    "latest",
    "predict_file",
    "save",
    "save_ensemble",
]
