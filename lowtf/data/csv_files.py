"""CSV files streamed with ``tf.data``, and their standardization statistics.

A CSV (or gzip'd CSV) file of numbers, one example per row, is read as it
goes, in the layout the TensorFlow overfit/underfit tutorial reads HIGGS in
(the label in column 0, then 28 features; any label column here): lines
are read by ``tf.data.TextLineDataset`` and parsed 10,000 at a time by one
``tf.io.decode_csv`` op, blocks in parallel (the tutorial's
``tf.data.experimental.CsvDataset``, repacked in blocks, read half as many
rows per second: BUILD_NOTES.md). Nothing but the shuffle buffer and a few
blocks is ever held in memory.

:func:`csv_statistics` computes the per-feature mean and standard deviation
in one streaming pass (float64, blocks merged by Chan et al.'s pairwise
update), over all the rows it is given or the first ``max_rows``; the
result, a :class:`FeatureStatistics`, is saved as JSON next to a model
(:meth:`FeatureStatistics.save`) so that an export applies the same
standardization, and :func:`csv_dataset` applies it to every batch. A
feature constant over those rows is centred, not divided (its std is 1), as
:func:`lowtf.data.datasets.statistics` does for in-memory data.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import time

import tensorflow as tf

from lowtf import _checks
from lowtf.data import streams
from lowtf.data.readers import DataError
from lowtf.data.statistics import FeatureStatistics, Moments

# Rows per block: the tutorial's repacking (one op per block, not per row).
BLOCK_ROWS = 10_000
DEFAULT_SHUFFLE_BUFFER = 10_000
# How long a failed read may spend scanning the file for the bad line.
LOCATE_SECONDS = 120.0


def csv_statistics(
    path: str,
    *,
    label_column: int = 0,
    header: bool = False,
    skip: int = 0,
    take: int | None = None,
    max_rows: int | None = None,
) -> FeatureStatistics:
    """Per-feature mean and std of a CSV file's rows, in one streaming pass.

    Args:
      path: the file (plain or gzip; any TensorFlow file system).
      label_column: the label's column, left out (default 0, as HIGGS).
      header: skip a header line (default False).
      skip, take: the rows to read, as in :func:`csv_dataset`: give the
        training rows only, so nothing of the held-out rows leaks in.
      max_rows: stop after this many rows (default None: all). The first
        rows of a file stand for the whole only if it is not sorted.
    """
    if max_rows is not None:
        _checks.positive_int("max_rows", max_rows)
        take = max_rows if take is None else min(take, max_rows)
    layout = _layout(path, label_column, header)
    blocks = _blocks(layout, skip, take)
    moments = Moments(layout.num_features)
    try:
        for x, _ in blocks:
            moments.add(x.numpy())
    except tf.errors.OpError as e:
        where = locate_bad_line(layout)
        raise DataError(
            where or f"{path}: {streams.clean_message(e.message)}"
        ) from None
    if not moments.count:
        raise DataError(f"{path}: no data rows (after skipping {skip})")
    return moments.statistics()


def csv_dataset(
    path: str,
    *,
    batch_size: int,
    statistics: FeatureStatistics | None = None,
    label_column: int = 0,
    header: bool = False,
    skip: int = 0,
    take: int | None = None,
    training: bool = True,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    seed: int = 0,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of ``(x, y)`` float32 batches from a CSV file.

    Training pipelines repeat the rows forever, shuffle them in a seeded
    buffer and give full batches; the others read the rows once, in order.
    The first line is checked now (columns, label column); a bad cell met
    later stops training with a :class:`DataError`.

    Args:
      path: the file (plain or gzip, detected; any TensorFlow file system).
      batch_size: examples per batch.
      statistics: standardize every batch with these (default None: raw).
      label_column: the label's column (default 0, as HIGGS); negative
        counts from the end. Labels are class indices (0/1 for HIGGS).
      header: the first line is a header (default False).
      skip: rows to skip first (default 0), e.g. validation rows kept apart.
      take: rows to read after those (default None: to the end).
      training: shuffle, repeat, full batches (default True).
      shuffle_buffer: rows in the shuffle buffer (default 10,000).
      seed: the shuffle's seed (default 0).
    """
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("shuffle_buffer", shuffle_buffer)
    _checks.non_negative_int("seed", seed)
    _checks.boolean("training", training)
    layout = _layout(path, label_column, header)
    if statistics is not None and len(statistics.mean) != layout.num_features:
        raise ValueError(
            f"`statistics` are for {len(statistics.mean)} features but {path} has "
            f"{layout.num_features}"
        )
    rows = _rows(layout, skip, take, repeat=training)
    if training:
        rows = rows.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    batches = rows.batch(batch_size, drop_remainder=training)
    if statistics is not None:
        batches = batches.map(
            lambda x, y: (statistics.standardize(x), y),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return batches.prefetch(tf.data.AUTOTUNE)


def csv_stream(path: str, *, batch_size: int, **kwargs) -> streams.Stream:
    """A :class:`lowtf.data.Stream` of training batches from a CSV file.

    Takes the arguments of :func:`csv_dataset` but ``training``; its
    identity (``run.json``) names the file, its size, the rows, the shuffle
    and the statistics. A line that cannot be read during training stops it
    with a :class:`DataError` naming the line (:func:`locate_bad_line`).
    """
    if "training" in kwargs:
        raise ValueError("`training` is always True for a stream; drop it")
    dataset = csv_dataset(path, batch_size=batch_size, **kwargs)
    stats = kwargs.get("statistics")
    source = (
        f"csv {path}: {tf.io.gfile.stat(path).length:,} bytes; rows from "
        f"{kwargs.get('skip', 0)}, {kwargs.get('take') or 'all'}; shuffle "
        f"{kwargs.get('shuffle_buffer', DEFAULT_SHUFFLE_BUFFER)} seed "
        f"{kwargs.get('seed', 0)}; "
        + (f"standardized ({stats.rows} rows, {stats.digest})" if stats else "raw")
    )
    layout = _layout(path, kwargs.get("label_column", 0), kwargs.get("header", False))
    return streams.Stream(
        dataset, source=source, locate=lambda: locate_bad_line(layout)
    )


def locate_bad_line(layout, *, seconds: float = LOCATE_SECONDS) -> str | None:
    """The first line of the file that is not ``width`` numbers, as ``"path, line n: why"``.

    Python reads the file again (CsvDataset's errors name no line); None if
    every line reads, or after ``seconds``.
    """
    deadline = time.monotonic() + seconds
    with tf.io.gfile.GFile(layout.path, "rb") as raw:
        lines = gzip.GzipFile(fileobj=raw) if layout.compression else raw
        for number, line in enumerate(lines, 1):
            if number == 1 and layout.header:
                continue
            if number % 10_000 == 0 and time.monotonic() > deadline:
                return None
            cells = line.rstrip(b"\r\n").split(b",")
            if len(cells) != layout.width:
                return f"{layout.path}, line {number}: {len(cells)} columns, expected {layout.width}"
            for column, cell in enumerate(cells, 1):
                try:
                    float(cell)
                except ValueError:
                    return (
                        f"{layout.path}, line {number}, column {column}: "
                        f"{cell.decode(errors='replace')!r} is not a number"
                    )
    return None


def header_of(path: str) -> list[str] | None:
    """The first line's cells if one of them is not a number (a header), else None.

    The rule of :func:`lowtf.load_dataset`'s csv reader, for a file read as
    it goes.
    """
    layout = _layout(path, 0, False)
    with tf.io.gfile.GFile(path, "rb") as raw:
        lines = gzip.GzipFile(fileobj=raw) if layout.compression else raw
        cells = lines.readline().decode(errors="replace").rstrip("\r\n").split(",")
    if all(_is_number(cell) for cell in cells):
        return None
    return [cell.strip() for cell in cells]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _Layout:
    path: str
    compression: str
    header: bool
    width: int
    label: int

    @property
    def num_features(self) -> int:
        return self.width - 1


def _layout(path, label_column, header) -> _Layout:
    """The file's compression and columns, from its first line; refuses a bad one."""
    if not isinstance(path, str) or not path:
        raise DataError(f"`path` ({path!r}) must name a CSV file")
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: no such file")
    if tf.io.gfile.isdir(path):
        raise DataError(f"{path}: is a directory, not a CSV file")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            start = f.read(1 << 16)
        compression = "GZIP" if start[:2] == b"\x1f\x8b" else ""
        if compression:
            with tf.io.gfile.GFile(path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
                first = g.readline()
        else:
            first = io.BytesIO(start).readline()
    except (tf.errors.OpError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read or decompressed ({e})") from None
    if not first.strip():
        raise DataError(f"{path}: no data rows")
    width = len(first.split(b","))
    if width < 2:
        raise DataError(f"{path}, line 1: one column; rows need a label and features")
    if not isinstance(label_column, int) or not -width <= label_column < width:
        raise DataError(
            f"{path}: label column {label_column!r} is out of range for {width} columns"
        )
    return _Layout(path, compression, header, width, label_column % width)


def _rows(layout: _Layout, skip: int, take: int | None, *, repeat: bool = False):
    """``(x [features], y)`` float32 rows."""
    return _blocks(layout, skip, take, repeat=repeat).unbatch()


def _blocks(layout: _Layout, skip: int, take: int | None, *, repeat: bool = False):
    """``(x [n, features], y [n])`` float32 blocks of up to :data:`BLOCK_ROWS` rows."""
    _checks.non_negative_int("skip", skip)
    if take is not None:
        _checks.positive_int("take", take)
    lines = tf.data.TextLineDataset(layout.path, compression_type=layout.compression)
    lines = lines.skip(skip + int(layout.header))
    if take is not None:
        lines = lines.take(take)
    if repeat:
        lines = lines.repeat()
    label = layout.label
    # Empty defaults make every field required: an empty cell is an error, not 0.
    required = [tf.constant([], tf.float32)] * layout.width

    def parse(block):
        columns = tf.io.decode_csv(block, required)
        features = [c for i, c in enumerate(columns) if i != label]
        # Labels stay float32, as read: the step checks each batch's labels
        # are whole class indices, which a cast to int would hide.
        return tf.stack(features, axis=1), columns[label]

    # One DecodeCSV op per block of lines, blocks in parallel: twice the rows
    # per second of CsvDataset with the tutorial's repacking (BUILD_NOTES.md).
    return lines.batch(BLOCK_ROWS).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
