"""A data set read from its files as training goes: what ``bin/train`` streams.

:func:`open_stream` is the streamed counterpart of :func:`lowtf.load_dataset`:
the training split is a :class:`lowtf.data.Stream` (never held in memory),
validation and test are ``(x, y)`` arrays (the evaluator holds them), and
the features are standardized with statistics of the training rows only,
kept as ``mean``/``std`` so that a job writes them beside the model for
``bin/export`` (normalization.npz, as for data loaded in memory).

The splits, in file order (the TensorFlow overfit tutorial's take/skip for
HIGGS; nothing is permuted, so no pass is needed before training):

- ``higgs`` and ``csv`` (a CSV or gzip CSV file read by
  :mod:`lowtf.data.csv_files`): rows ``[0, v)`` validation, ``[v, 2v)``
  test, the training rows after them (all, or ``train_size``); ``v`` is
  ``validation_size``, default :data:`HELD_OUT` (1,000). HIGGS' label is
  column 0, a csv's the last unless ``label_column`` (a header, if the first
  line has a cell that is not a number, is skipped and names the columns).
- ``tfrecord``: a directory written by :func:`write_split` or
  :func:`lowtf.data.convert` (its ``spec.json`` names each split's shards,
  the rows already standardized with the mean and std it holds); a
  directory of ``train-*`` shards (and ``validation-*``, ``test-*`` if
  present); or a glob of shards (a ``spec.json`` beside them is read). A
  split without shards of its own is taken from the first training
  records, as above. Records are ``tf.train.Example`` with ``features`` (a
  float or int64 list) and ``label`` (one int64).

Statistics of raw rows come from one streaming pass over the training rows
(float64, :class:`lowtf.data.statistics.Moments`) before training, or from
the first ``stats_rows`` of them (faster; right only for a file in no
particular order). Classes: HIGGS has 2, a spec says; otherwise one more
than the largest held-out label (a training label beyond stops training
with one line: every streamed batch is checked).

:func:`write_split` (``bin/convert``) writes the same splits as TFRecord
shards with their ``spec.json``, read back by ``--dataset=tfrecord``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import numpy as np
import tensorflow as tf

from lowtf import _checks
from lowtf.data import csv_files, datasets, readers, streams, tfrecords
from lowtf.data.readers import DataError

# Validation rows (and test rows) taken from the start of a file by default.
HELD_OUT = 1000
# The data sets that can be streamed.
STREAMED = ("higgs", "csv", "tfrecord")
# Rows per block read for the held-out splits; per block written to one
# training shard in turn (small enough that a few thousand rows fill every
# shard).
_BLOCK = 10_000
_WRITE_BLOCK = 1024


@dataclasses.dataclass(frozen=True)
class StreamedData:
    """A data set whose training split is streamed (:func:`open_stream`).

    The attributes a job reads of a :class:`lowtf.Dataset`, ``train`` a
    :class:`lowtf.data.Stream` instead of arrays.

    Attributes:
      name: the data set (``higgs``, ``csv``, ``tfrecord``).
      train: the training :class:`lowtf.data.Stream` (standardized batches).
      validation, test: standardized ``(x float32, y int32)`` arrays.
      num_classes, feature_shape: of the examples.
      mean, std: float32 arrays of ``feature_shape``: what the raw features
        are standardized with (for an export).
      train_size: training rows, or None when not counted (a glob of shards
        read whole, statistics from the first rows only).
      statistics_rows: the rows the statistics were computed from (None:
        they came with the shards' spec.json).
      source: the files, for the log line.
    """

    name: str
    train: streams.Stream
    validation: tuple
    test: tuple
    num_classes: int
    feature_shape: tuple
    mean: np.ndarray
    std: np.ndarray
    train_size: int | None
    statistics_rows: int | None
    source: str

    def describe(self) -> str:
        """One line: the splits, features, classes and statistics."""
        train = f"{self.train_size:,}" if self.train_size is not None else "all"
        shape = "x".join(str(d) for d in self.feature_shape)
        stats = (
            f"standardized with the statistics of {self.statistics_rows:,} training rows"
            if self.statistics_rows is not None
            else "standardized as spec.json says"
        )
        return (
            f"{self.name} (streamed from {self.source}): {train} train / "
            f"{len(self.validation[1]):,} validation / {len(self.test[1]):,} test; "
            f"features {shape}; {self.num_classes} classes; {stats}"
        )


def open_stream(
    name: str,
    data_path: str,
    *,
    batch_size: int,
    train_size: int | None = None,
    validation_size: int | None = None,
    label_column: str | int | None = None,
    shuffle_buffer: int = tfrecords.DEFAULT_SHUFFLE_BUFFER,
    seed: int = 0,
    stats_rows: int | None = None,
) -> StreamedData:
    """Opens a data set's files as a training stream and held-out arrays.

    Args:
      name: ``higgs``, ``csv`` or ``tfrecord`` (:data:`STREAMED`).
      data_path: the CSV file, or the shards (a directory or a glob; any
        TensorFlow file system).
      batch_size: examples per training batch.
      train_size: training rows (default None: every row after the held-out ones).
      validation_size: held-out rows taken from the start of the file (or
        of the validation shards), for validation and again for test
        (default :data:`HELD_OUT`).
      label_column: csv only: a header name or a column index (default the last).
      shuffle_buffer: rows in the training shuffle buffer (default 10,000).
      seed: the shuffle's (and the shard order's) seed (default 0).
      stats_rows: compute the standardization statistics from the first
        this many training rows (default None: all of them).

    Raises:
      DataError: a file that is missing, empty, unreadable, or too short
        for the held-out rows; a record without the feature key or of
        another width (one line, before anything trains).
    """
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("shuffle_buffer", shuffle_buffer)
    _checks.non_negative_int("seed", seed)
    plan = _plan(name, data_path, train_size, validation_size, label_column, stats_rows)
    return StreamedData(
        name=name,
        train=plan.stream(batch_size, shuffle_buffer, seed),
        validation=plan.validation,
        test=plan.test,
        num_classes=plan.num_classes,
        feature_shape=plan.feature_shape,
        mean=plan.mean,
        std=plan.std,
        train_size=plan.train_size,
        statistics_rows=plan.statistics.rows if plan.statistics is not None else None,
        source=data_path,
    )


def write_split(
    name: str,
    data_path: str | None,
    directory: str,
    *,
    shards: int = 4,
    stream: bool | None = None,
    train_size: int | None = None,
    validation_size: int | None = None,
    label_column: str | int | None = None,
    seed: int = 0,
    stats_rows: int | None = None,
    compression: str | None = None,
    log=print,
) -> dict:
    """Writes a data set as TFRecord shards after the split ``bin/train`` makes.

    ``directory`` gets ``train-*``, ``validation-*``, ``test-*`` and
    ``spec.json`` (the rows standardized with the training statistics,
    which spec.json keeps); ``bin/train --dataset=tfrecord --data_path=DIR``
    reads them back. A data set loaded in memory by ``bin/train`` (digits,
    npz, csv and higgs without ``stream``, synthetic) is loaded and split by
    :func:`lowtf.load_dataset`; one ``bin/train`` streams (csv and higgs
    with ``stream``, tfrecord unless ``stream`` is False) is read as it goes
    (:func:`open_stream`'s split), the training rows written block by block
    to the shards in turn.

    Args:
      name: a data set of :data:`lowtf.data.DATASETS`.
      data_path, train_size, validation_size, label_column, seed,
        stats_rows: as ``bin/train``'s flags of those names (``seed`` is
        ``--data_seed``).
      directory: the output directory (made if missing).
      shards: files per split (default 4; fewer for a short split).
      stream: as ``--stream`` (default None: only tfrecord streams).
      compression: None (default) or ``"GZIP"``.
      log: called with one line per split written.

    Returns:
      The spec written to spec.json.
    """
    _checks.positive_int("shards", shards)
    if not is_streamed(name, stream):
        data = datasets.load(
            name,
            data_path=data_path,
            train_size=train_size,
            validation_size=validation_size,
            label_column=label_column,
            seed=seed,
        )
        log(data.describe())
        spec = tfrecords.convert(
            data, directory, shards=shards, compression=compression
        )
        _log_splits(spec, directory, log)
        return spec
    plan = _plan(name, data_path, train_size, validation_size, label_column, stats_rows)
    splits = {}
    for split in ("validation", "test"):
        x, y = getattr(plan, split)
        paths = tfrecords.write_tfrecords(
            x, y, directory, split, min(shards, len(y)), compression=compression
        )
        splits[split] = {
            "examples": len(y),
            "files": [os.path.basename(p) for p in paths],
        }
    paths, rows = tfrecords.write_blocks(
        plan.blocks(_WRITE_BLOCK), directory, "train", shards, compression=compression
    )
    splits["train"] = {"examples": rows, "files": [os.path.basename(p) for p in paths]}
    extra, described = {"source": data_path}, plan
    if plan.statistics is not None:
        extra["statistics_rows"] = plan.statistics.rows
        # spec.json keeps the statistics in float64, as computed.
        described = dataclasses.replace(
            plan, mean=plan.statistics.mean, std=plan.statistics.std
        )
    spec = tfrecords.write_spec(
        directory, described, {s: splits[s] for s in tfrecords.SPLITS},
        compression=compression, **extra,
    )  # fmt: skip
    _log_splits(spec, directory, log)
    return spec


def read_in_memory(path: str, *, train_size=None, validation_size=None):
    """TFRecord shards read whole, for :func:`lowtf.load_dataset` (``bin/sweep``).

    The split of :func:`open_stream`; returns ``(splits, num_classes)`` with
    the raw features (shards of standardized rows are mapped back with the
    spec's mean and std), for the loader to check and standardize as it
    does every data set; ``num_classes`` is None without a spec.
    """
    plan = _plan("tfrecord", path, train_size, validation_size, None, None)
    train = _arrays(path, "train", plan.blocks(_BLOCK))
    mean, std = plan.mean.astype(np.float64), plan.std.astype(np.float64)
    splits = tuple(
        (x.astype(np.float64) * std + mean, y)
        for x, y in (train, plan.validation, plan.test)
    )
    return splits, plan.num_classes if plan.statistics is None else None


def is_streamed(name: str, stream: bool | None) -> bool:
    """Whether ``bin/train`` streams data set ``name`` given ``--stream`` (None: unset)."""
    if name == "tfrecord":
        return stream is not False
    return bool(stream) and name in STREAMED


def _log_splits(spec, directory, log) -> None:
    for split in tfrecords.SPLITS:
        part = spec["splits"][split]
        log(
            f"{directory}: {split} {part['examples']:,} rows in {len(part['files'])} shards"
        )


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What training and conversion read: the held-out arrays, statistics, the training rows."""

    name: str
    feature_shape: tuple
    num_classes: int
    validation: tuple
    test: tuple
    mean: np.ndarray
    std: np.ndarray
    statistics: object  # FeatureStatistics to apply, or None (stored standardized)
    train_size: int | None
    stream: object  # (batch_size, shuffle_buffer, seed) -> Stream
    blocks: (
        object  # (rows) -> finite dataset of standardized (x, y) blocks, in file order
    )


def _plan(name, path, train_size, validation_size, label_column, stats_rows) -> _Plan:
    if name not in STREAMED:
        raise DataError(
            f"the {name} data set is not streamed; use one of {', '.join(STREAMED)}"
        )
    if not path:
        raise DataError(f"the {name} data set needs a file: pass `data_path`")
    for arg, value in (
        ("train_size", train_size), ("validation_size", validation_size),
        ("stats_rows", stats_rows),
    ):  # fmt: skip
        if value is not None:
            _checks.positive_int(arg, value)
    if label_column is not None and name != "csv":
        raise DataError(f"`label_column` is for the csv data set only, not {name}")
    if name == "tfrecord":
        return _tfrecord_plan(path, train_size, validation_size, stats_rows)
    return _csv_plan(name, path, train_size, validation_size, label_column, stats_rows)


def _csv_plan(
    name, path, train_size, validation_size, label_column, stats_rows
) -> _Plan:
    held = validation_size or HELD_OUT
    if name == "higgs":
        header, label = None, 0
    else:
        header = csv_files.header_of(path)
    layout = csv_files._layout(path, 0, header is not None)
    if name == "higgs" and layout.num_features != datasets.HIGGS_FEATURES:
        raise DataError(
            f"{path}: {layout.width} columns; HIGGS rows are a label and "
            f"{datasets.HIGGS_FEATURES} features (use --dataset=csv for other files)"
        )
    if name == "csv":
        label = readers.label_index(path, header, layout.width, label_column)
    common = {"label_column": label, "header": header is not None}
    skip = 2 * held
    with _held_out_rows(path, held):
        stats = csv_files.csv_statistics(
            path, skip=skip, take=train_size, max_rows=stats_rows, **common
        )
    if train_size is not None and stats_rows is None and stats.rows < train_size:
        raise DataError(
            f"{path}: {stats.rows:,} rows after the {skip:,} held-out ones, fewer than "
            f"`train_size` ({train_size:,}); lower it"
        )
    counted = stats.rows if stats_rows is None else train_size

    def held_out(split, start):
        dataset = csv_files.csv_dataset(
            path, batch_size=_BLOCK, statistics=stats, skip=start, take=held,
            training=False, **common,
        )  # fmt: skip
        return _arrays(path, split, dataset)

    validation, test = held_out("validation", 0), held_out("test", held)
    _check_held_out(path, held, validation, test)
    num_classes = 2 if name == "higgs" else _classes(path, validation, test)
    if name == "higgs":
        _check_labels(path, 1, validation, test)
    return _Plan(
        name=name,
        feature_shape=(layout.num_features,),
        num_classes=num_classes,
        validation=validation,
        test=test,
        mean=stats.mean.astype(np.float32),
        std=stats.std.astype(np.float32),
        statistics=stats,
        train_size=counted,
        stream=lambda batch_size, shuffle_buffer, seed: csv_files.csv_stream(
            path,
            batch_size=batch_size,
            statistics=stats,
            skip=skip,
            take=train_size,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            **common,
        ),
        blocks=lambda rows: csv_files.csv_dataset(
            path,
            batch_size=rows,
            statistics=stats,
            skip=skip,
            take=train_size,
            training=False,
            **common,
        ),
    )


def _tfrecord_plan(path, train_size, validation_size, stats_rows) -> _Plan:
    train, held_files, spec = _tfrecord_layout(path)
    keys = {
        "features_key": (spec or {}).get("features_key", tfrecords.FEATURES_KEY),
        "label_key": (spec or {}).get("label_key", tfrecords.LABEL_KEY),
    }
    first, width, dtype = tfrecords.first_record(train, **keys)
    if spec is not None:
        feature_shape = tuple(int(d) for d in spec["feature_shape"])
        if int(np.prod(feature_shape)) != width:
            raise DataError(
                f"{first}, record 0: {width} feature values, but spec.json says the "
                f"feature shape is {feature_shape}"
            )
    else:
        feature_shape = (width,)
    common = {
        "feature_shape": feature_shape, "feature_dtype": dtype,
        "compression": spec.get("compression") if spec is not None else "auto", **keys,
    }  # fmt: skip
    held = validation_size or HELD_OUT
    # Held-out splits without shards of their own: the first training records.
    skip = held * sum(files is None for files in held_files.values())
    standardized = spec is not None and spec.get("standardized") is True
    if standardized:
        stats = None
        mean = np.asarray(spec["mean"], np.float32).reshape(feature_shape)
        std = np.asarray(spec["std"], np.float32).reshape(feature_shape)
    else:
        with _held_out_rows(path, held):
            stats = tfrecords.tfrecord_statistics(
                train, skip=skip, take=train_size, max_rows=stats_rows, **common
            )
        mean = stats.mean.astype(np.float32).reshape(feature_shape)
        std = stats.std.astype(np.float32).reshape(feature_shape)

    def held_out(split, start):
        files = held_files[split]
        take = held if files is None or validation_size is not None else None
        dataset = tfrecords.tfrecord(
            train if files is None else files, batch_size=_BLOCK, training=False,
            statistics=stats, skip=start if files is None else 0, take=take, **common,
        )  # fmt: skip
        return _arrays(path, split, dataset)

    validation = held_out("validation", 0)
    test = held_out("test", held if held_files["validation"] is None else 0)
    if skip:
        _check_held_out(path, held, validation, test)
    if spec is not None:
        num_classes = int(spec["num_classes"])
        _check_labels(path, num_classes - 1, validation, test)
    else:
        num_classes = _classes(path, validation, test)
    if train_size is not None:
        counted = train_size
    elif spec is not None and not skip:
        counted = int(spec["splits"]["train"]["examples"])
    else:
        counted = stats.rows if stats is not None and stats_rows is None else None
    stream_args = {"skip": skip, "take": train_size, "statistics": stats, **common}
    return _Plan(
        name="tfrecord",
        feature_shape=feature_shape,
        num_classes=num_classes,
        validation=validation,
        test=test,
        mean=mean,
        std=std,
        statistics=stats,
        train_size=counted,
        stream=lambda batch_size, shuffle_buffer, seed: tfrecords.tfrecord_stream(
            train,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            **stream_args,
        ),
        blocks=lambda rows: tfrecords.tfrecord(
            train, batch_size=rows, training=False, **stream_args
        ),
    )


def _tfrecord_layout(path) -> tuple[list, dict, dict | None]:
    """The training shards, ``{split: shards or None}`` held out, and the spec (or None)."""
    held = {"validation": None, "test": None}
    if tf.io.gfile.isdir(path):
        directory, pattern = path, os.path.join(path, "train-*")
    else:
        directory, pattern = os.path.dirname(path) or ".", path
    spec = None
    if tf.io.gfile.exists(os.path.join(directory, tfrecords.SPEC_FILE)):
        spec = tfrecords.read_spec(directory)
        if pattern == os.path.join(path, "train-*"):
            pattern = [
                os.path.join(directory, f) for f in spec["splits"]["train"]["files"]
            ]
        for split in held:
            held[split] = [
                os.path.join(directory, f) for f in spec["splits"][split]["files"]
            ]
    elif tf.io.gfile.isdir(path):
        for split in held:
            held[split] = (
                sorted(tf.io.gfile.glob(os.path.join(path, f"{split}-*"))) or None
            )
    if isinstance(pattern, str) and not tf.io.gfile.glob(pattern):
        if tf.io.gfile.isdir(path):
            raise DataError(
                f"{path}: a directory without spec.json or train-* shards; give a glob "
                "of the shards (e.g. --data_path='DIR/*.tfrecord') or write them with "
                "bin/convert"
            )
        raise DataError(f"{path}: no file matches")
    return pattern, held, spec


def _arrays(path, split, dataset) -> tuple:
    """A held-out split read whole, labels as checked int32 class indices."""
    x, y = streams.materialize(split, dataset)
    y = np.asarray(y)
    bad = np.flatnonzero((y != np.round(y)) | (y < 0))
    if len(bad):
        raise DataError(
            f"{path}: {split} label {y[bad[0]]!r} (row {bad[0]}) is not a class index "
            "0, 1, ..."
        )
    return x.astype(np.float32), y.astype(np.int32)


@contextlib.contextmanager
def _held_out_rows(path, held):
    """A file with no training row after the held-out ones: the fix in one line."""
    try:
        yield
    except DataError as error:
        if "no data rows" not in str(error) and "no records" not in str(error):
            raise
        raise DataError(
            f"{path}: too few rows for {held:,} validation + {held:,} test rows taken "
            "from the start and training rows after them; lower `validation_size`"
        ) from None


def _check_held_out(path, held, validation, test) -> None:
    """Refuses a file too short for the held-out rows and at least one training row."""
    if len(validation[1]) < held or len(test[1]) < held:
        rows = len(validation[1]) + len(test[1])
        raise DataError(
            f"{path}: {rows:,} rows, too few for {held:,} validation + {held:,} test rows "
            "taken from the start and training rows after them; lower `validation_size`"
        )


def _classes(path, validation, test) -> int:
    """One more than the largest held-out label, at least 2."""
    return max(2, int(max(validation[1].max(), test[1].max())) + 1)


def _check_labels(path, high, validation, test) -> None:
    for split, (_, y) in (("validation", validation), ("test", test)):
        if y.max() > high:
            raise DataError(
                f"{path}: {split} label {int(y.max())} is out of range; labels are 0..{high}"
            )
