"""What the training loop leaves in the model directory: history and TensorBoard.

* ``history.csv``: one row per evaluation, the columns of
  :data:`COLUMNS`. Floats are written with ``repr``, so reading the
  file back gives the very numbers the loop saw; a value that does not exist
  (the training means at step 0, before any step) is an empty cell. A
  population's file has one row per member per evaluation, with a
  ``member`` column first (:data:`MEMBER_COLUMNS`).
* ``tensorboard/train`` and ``tensorboard/validation``: event files with the
  same tags in both (``cross_entropy``, ``accuracy``, ``regularization_loss``,
  ``total_loss``), so TensorBoard draws training and validation on one chart,
  plus ``learning_rate``, ``maxnorm_clipped_fraction`` (the fraction of
  capped units max-norm clipped since the previous evaluation) and
  ``max_unit_norm/<layer>`` (the largest incoming weight norm of any unit of
  the layer, where max-norm can be seen at work) under train. A population's
  tags carry the member: ``member_3/cross_entropy``.
  Read them with TensorBoard or ``tf.compat.v1.train.summary_iterator``.

``tf.summary.scalar`` needs the ``tensorboard`` package, which lowtf does not
depend on; :func:`scalar` writes the same record (a float32 scalar tensor
tagged for TensorBoard's "scalars" plugin) with ``tf.summary.write`` alone.
"""

from __future__ import annotations

import csv
import io
import os

import tensorflow as tf
from lowtf import _files
from lowtf.nn import constraints
from lowtf.nn.base import keras_layers
from lowtf.train.metrics import COLUMNS, Evaluation

# history.csv of a population: the member first, then an evaluation's columns.
MEMBER_COLUMNS = ("member", *COLUMNS)
# Columns read as integers; every other one is a float or empty.
_INTEGERS = ("member", "step")
# Columns added to Evaluation after history files were first written: an
# older file lacks them (a resume keeps its rows, these cells empty).
_ADDED = ("maxnorm_clipped_fraction",)


class History:
    """``history.csv``, appended one row per evaluation and flushed at once.

    The file is read and written through ``tf.io.gfile``, so it may be on any
    TensorFlow file system (``gs://``, ``ram://``).

    Args:
      path: the CSV file.
      members: a population's history: rows carry a ``member`` column
        (default False).
    """

    def __init__(self, path: str, *, members: bool = False):
        self.path = path
        self.columns = MEMBER_COLUMNS if members else COLUMNS
        self.rows: list[dict] = []

    def start(self, keep_upto: int | None) -> list[dict]:
        """Keeps the rows with ``step <= keep_upto`` (None: none); rewrites the file.

        A run resumed from the checkpoint of step S drops the rows a killed
        run wrote after S: the resumed run writes them again. The rewrite goes
        to ``history.csv.tmp``, renamed over the old file, so a crash leaves
        either the old file or the new one.
        """
        rows = []
        if keep_upto is not None:
            text = _files.read_text(self.path) or ""  # a missing file: no rows
            rows = [r for r in _parse(text) if r["step"] <= keep_upto]
        _files.write_atomically(
            self.path, _csv([self.columns, *(self._cells(r) for r in rows)])
        )
        self.rows = rows
        return rows

    def append(self, row: dict) -> None:
        """Appends one row; the file is closed (so flushed) before this returns."""
        self.extend([row])

    def extend(self, rows: list[dict]) -> None:
        """Appends rows (a population's members at one step) in one write."""
        _files.append(self.path, _csv([self._cells(r) for r in rows]))
        self.rows.extend(dict(r) for r in rows)

    def _cells(self, row: dict) -> list[str]:
        return [
            "" if row.get(name) is None else repr(row[name]) for name in self.columns
        ]


def read_history(path: str) -> list[dict]:
    """Reads a ``history.csv``: dicts with ``step`` an int, the rest floats or None.

    A population's rows also hold ``member``, an int.

    Rows that do not parse (a line cut short by a crash) are skipped.
    ``path`` may be on any TensorFlow file system.

    Raises:
      FileNotFoundError: there is no file at ``path``.
    """
    text = _files.read_text(path)
    if text is None:
        raise FileNotFoundError(f"no history file at {path}")
    return _parse(text)


def check_history(path: str, columns: tuple = COLUMNS) -> None:
    """Refuses a ``history.csv`` that lowtf could not have written, before a resume.

    A last line cut short by a crash is fine (it is skipped); bytes that do
    not decode, or a header other than ``columns`` (a single run's by
    default, :data:`MEMBER_COLUMNS` for a population), are a ValueError
    naming the file.
    """
    try:
        text = _files.read_text(path)
    except (UnicodeDecodeError, tf.errors.OpError) as error:
        raise ValueError(
            f"{path} cannot be read ({type(error).__name__}); restore it from a copy "
            "or delete it (the run's history before this resume would be lost)"
        ) from None
    if text is None or not text.strip():
        return
    header = history_header(text)
    older = tuple(c for c in columns if c not in _ADDED)
    if header not in (tuple(columns), older):
        raise ValueError(
            f"{path} is not a lowtf history of this kind of run (its header is "
            f"{','.join(header)[:80]!r}, not {','.join(columns)!r}); restore it from "
            "a copy or delete it"
        )


def history_header(text: str) -> tuple:
    """The column names of a history.csv's text (its first line)."""
    return tuple(text.splitlines()[0].split(",")) if text.strip() else ()


def _parse(text: str) -> list[dict]:
    header = history_header(text)
    columns = MEMBER_COLUMNS if header[:1] == ("member",) else COLUMNS
    absent = [name for name in _ADDED if name not in header]  # an older file
    rows = []
    for record in csv.DictReader(io.StringIO(text, newline="")):
        try:
            row = {}
            for name in columns:
                if name in absent:
                    row[name] = None
                    continue
                cell = record[name]
                if name in _INTEGERS:
                    row[name] = int(cell)
                else:
                    row[name] = None if cell == "" else float(cell)
        except (KeyError, TypeError, ValueError):
            continue
        rows.append(row)
    return rows


def _csv(records) -> str:
    """The CSV lines of ``records`` in ``csv``'s default dialect (``\\r\\n`` ends)."""
    out = io.StringIO(newline="")
    csv.writer(out).writerows(records)
    return out.getvalue()


# What tensorboard.summary.v2.scalar attaches: the scalars plugin, whose
# (version 0) plugin content is empty.
# The public proto (tf.compat.v1), not tensorflow.core's module; 1 is the
# proto's DATA_CLASS_SCALAR, which the enum does not export under tf.compat.
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=1,
)


def scalar(tag: str, value: float, step: int) -> None:
    """Writes one TensorBoard scalar to the default writer (no tensorboard import)."""
    tf.summary.write(
        tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA
    )


class Summaries:
    """TensorBoard writers for ``<logdir>/train`` and ``<logdir>/validation``."""

    def __init__(self, logdir: str):
        self._train = tf.summary.create_file_writer(os.path.join(logdir, "train"))
        self._validation = tf.summary.create_file_writer(
            os.path.join(logdir, "validation")
        )

    def write(self, evaluations: dict, unit_norms: dict | None = None) -> None:
        """Writes the evaluations at one step and the layers' max unit norms.

        Args:
          evaluations: ``{member: Evaluation}``; member k's tags are
            ``member_<k>/<tag>`` (its training and validation curves share a
            chart, as a single run's do), a single run's (member None) carry
            no prefix.
          unit_norms: ``{layer: norm}`` of a single run, or None.
        """
        for member, evaluation in evaluations.items():
            prefix = "" if member is None else f"member_{int(member)}/"
            self._scalars(evaluation, unit_norms if member is None else None, prefix)
        self._flush()

    def _scalars(self, evaluation: Evaluation, unit_norms, prefix: str) -> None:
        step = int(evaluation.step)
        runs = evaluation.board()
        for run, writer in (("train", self._train), ("validation", self._validation)):
            with writer.as_default():
                for tag, value in runs[run].items():
                    scalar(prefix + tag, value, step)
                if run == "train":
                    for layer, norm in (unit_norms or {}).items():
                        scalar(f"{prefix}max_unit_norm/{layer}", norm, step)

    def _flush(self) -> None:
        # Flushed per evaluation, so a killed run loses no written point.
        self._train.flush()
        self._validation.flush()

    def close(self) -> None:
        self._train.close()
        self._validation.close()


def max_unit_norms(model) -> dict[str, float]:
    """The largest incoming-weight norm of any unit, per layer with a kernel.

    Covers every layer (lowtf or Keras) with a ``kernel`` of rank >= 2
    (Dense, Conv2D) and every weight that carries a lowtf constraint. Keys
    are layer names, made unique with a ``_<i>`` suffix if needed.
    """
    norms = {}
    for layer in _layers(model):
        kernels = [var for var, _ in getattr(layer, "constrained_weights", ())]
        kernel = getattr(layer, "kernel", None)
        if not kernels and kernel is not None and hasattr(kernel, "shape"):
            kernels = [kernel]  # a tf.Variable, or a Keras 3 variable
        for i, var in enumerate(kernels):
            if len(var.shape) < 2:
                continue
            name = layer.name if i == 0 else f"{layer.name}_{i}"
            while name in norms:
                name += "_"
            norms[name] = float(tf.reduce_max(constraints.unit_norms(tf.identity(var))))
    return norms


def _layers(model):
    if isinstance(model, tf.keras.layers.Layer):
        return keras_layers(model)
    if isinstance(model, tf.Module):
        return [model, *model.submodules]
    return []
