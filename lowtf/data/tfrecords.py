"""TFRecord shards of ``tf.train.Example``: writing them, and reading them as a stream.

The layout lowtf writes (:func:`write_tfrecords`, :func:`convert`) and reads
(:func:`tfrecord`, :func:`tfrecord_stream`, :func:`read_tfrecords`)::

    DIR/train-00000-of-00004.tfrecord ...    one Example per row
    DIR/validation-00000-of-00001.tfrecord
    DIR/test-00000-of-00001.tfrecord
    DIR/spec.json                            feature shape, classes, mean/std, counts

Each Example holds ``features`` (a float list: the example flattened in
row-major order) and ``label`` (one int64); other key names can be given.
Every path goes through ``tf.io.gfile``, so ``DIR`` may be ``gs://...``.

Reading interleaves the shards in parallel (``num_parallel_calls=AUTOTUNE``,
deterministic, the shard order shuffled each epoch by a seed), shuffles the
records in a seeded buffer, batches them, parses whole batches at once
(``tf.io.parse_example``) and prefetches. The problems that can be seen
before training are refused then, in one line: a pattern that matches no
file, a first record without the feature or label key, or with another
number of values than the feature shape. A corrupt or unparsable record met
later stops training with a :class:`DataError` naming the shard and the
record (:func:`locate_bad_record` scans the shards to find it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np
import tensorflow as tf

from lowtf import _checks, distribute
from lowtf.data import streams
from lowtf.data.readers import DataError
from lowtf.data.statistics import FeatureStatistics, Moments

FEATURES_KEY = "features"
LABEL_KEY = "label"
SPEC_FILE = "spec.json"
SPLITS = ("train", "validation", "test")
FORMAT = "lowtf-tfrecord-1"
DEFAULT_SHUFFLE_BUFFER = 10_000
# How long a failed read may spend scanning the shards for the bad record.
LOCATE_SECONDS = 120.0
# Records per block of a statistics pass, and of a count.
STATISTICS_BLOCK = 10_000
COUNT_BLOCK = 65_536


def shard_paths(directory: str, split: str, shards: int) -> list[str]:
    """The file names of ``split``'s shards: ``split-00000-of-0000N.tfrecord``."""
    return [
        os.path.join(directory, f"{split}-{i:05d}-of-{shards:05d}.tfrecord")
        for i in range(shards)
    ]


def write_tfrecords(
    x,
    y,
    directory: str,
    split: str,
    shards: int = 1,
    *,
    compression: str | None = None,
    features_key: str = FEATURES_KEY,
    label_key: str = LABEL_KEY,
) -> list[str]:
    """Writes ``(x, y)`` as TFRecord shards of ``tf.train.Example``; returns their paths.

    The rows are cut into ``shards`` contiguous parts of (almost) equal
    size, in order; each file is written under a temporary name and renamed
    when complete, so a shard on disk is never half written.

    Args:
      x: features ``[n, ...]`` (stored flattened as float32).
      y: integer class labels ``[n]``.
      directory: where the shards go (made if missing; any TensorFlow file
        system).
      split: the file names' prefix, e.g. ``"train"``.
      shards: number of files (default 1; at most ``n``).
      compression: None (default) or ``"GZIP"``.
      features_key, label_key: the Example's keys (default ``features``, ``label``).
    """
    x, y = np.asarray(x), np.asarray(y)
    _checks.positive_int("shards", shards)
    _checks.one_of("compression", compression, (None, "GZIP"))
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or not len(y):
        raise ValueError(
            f"`x` {x.shape} and `y` {y.shape} must be [n, features...] and [n], n > 0"
        )
    if shards > len(y):
        raise ValueError(f"`shards` ({shards}) exceeds the {len(y)} rows of {split!r}")
    if not np.array_equal(y, np.round(y)):
        raise ValueError(f"`y` of {split!r} must hold integer class labels")
    flat = x.reshape(len(x), -1).astype(np.float32)
    labels = y.astype(np.int64)
    tf.io.gfile.makedirs(directory)
    paths = shard_paths(directory, split, shards)
    for path, rows in zip(paths, np.array_split(np.arange(len(y)), shards)):
        scratch = path + ".tmp"
        with tf.io.TFRecordWriter(scratch, options=compression) as writer:
            for row in rows:
                writer.write(_example(flat[row], labels[row], features_key, label_key))
        tf.io.gfile.rename(scratch, path, overwrite=True)
    return paths


def write_blocks(
    blocks, directory: str, split: str, shards: int, *, compression: str | None = None
) -> tuple[list[str], int]:
    """Writes ``(x, y)`` blocks as ``shards`` files, block ``i`` to shard ``i % shards``.

    For rows read as they go (their number is not known beforehand): each
    file is written under a temporary name and renamed once every block is
    written. Returns the paths and the rows written; a shard that got no
    block is not written (nor returned).
    """
    _checks.positive_int("shards", shards)
    _checks.one_of("compression", compression, (None, "GZIP"))
    tf.io.gfile.makedirs(directory)
    paths = shard_paths(directory, split, shards)
    writers = [
        tf.io.TFRecordWriter(path + ".tmp", options=compression) for path in paths
    ]
    used, rows = set(), 0
    try:
        for i, (x, y) in enumerate(blocks):
            x = np.asarray(x, np.float32).reshape(len(x), -1)
            labels = np.asarray(y)
            if not np.array_equal(labels, np.round(labels)):
                raise DataError(
                    f"{split} block {i}: labels must be whole class indices"
                )
            labels = labels.astype(np.int64)
            writer = writers[i % shards]
            used.add(i % shards)
            for row, label in zip(x, labels):
                writer.write(_example(row, label, FEATURES_KEY, LABEL_KEY))
            rows += len(labels)
    finally:
        for writer in writers:
            writer.close()
    written = []
    for i, path in enumerate(paths):
        if i in used:
            tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
            written.append(path)
        else:
            tf.io.gfile.remove(path + ".tmp")
    # Named as what they hold: N shards written of the N asked for.
    if len(written) < shards:
        final = shard_paths(directory, split, len(written))
        for old, new in zip(written, final):
            tf.io.gfile.rename(old, new, overwrite=True)
        written = final
    return written, rows


def _example(flat_row, label, features_key, label_key) -> bytes:
    """One serialized Example: the flattened features and the label."""
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                features_key: tf.train.Feature(
                    float_list=tf.train.FloatList(value=flat_row)
                ),
                label_key: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[label])
                ),
            }
        )
    )
    return example.SerializeToString()


def convert(
    dataset, directory: str, *, shards: int = 4, compression: str | None = None
) -> dict:
    """Writes a loaded :class:`lowtf.Dataset` as TFRecord shards and ``spec.json``.

    The three splits are those of the :class:`lowtf.Dataset` (:func:`lowtf.load_dataset`
    makes the same split as ``bin/train`` for the same flags), already
    standardized with the training split's statistics; ``spec.json`` keeps
    those (``mean``, ``std``) so that raw inputs can be standardized alike
    (an export does), with the feature shape, the number of classes and each
    split's rows and files.

    Args:
      dataset: a :class:`lowtf.Dataset`.
      directory: where ``train-*``, ``validation-*``, ``test-*`` and ``spec.json`` go.
      shards: files per split (default 4; fewer for a split with fewer rows).
      compression: None (default) or ``"GZIP"``.

    Returns:
      The spec written to ``spec.json``.
    """
    _checks.positive_int("shards", shards)
    splits = {}
    for split in SPLITS:
        x, y = getattr(dataset, split)
        paths = write_tfrecords(
            x, y, directory, split, min(shards, len(y)), compression=compression
        )
        splits[split] = {
            "examples": len(y),
            "files": [os.path.basename(p) for p in paths],
        }
    return write_spec(directory, dataset, splits, compression=compression)


def write_spec(
    directory: str, data, splits: dict, *, compression=None, **extra
) -> dict:
    """Writes ``directory/spec.json`` for shards of ``data``'s standardized rows.

    Args:
      directory: where the shards are.
      data: what they hold: ``name``, ``feature_shape``, ``num_classes``, and
        the ``mean`` and ``std`` the rows were standardized with.
      splits: ``{split: {"examples": n, "files": [names]}}``.
      compression: of the shards.
      extra: more fields (e.g. how the statistics were computed).
    """
    spec = {
        "format": FORMAT,
        "name": data.name,
        "feature_shape": [int(d) for d in data.feature_shape],
        "num_classes": int(data.num_classes),
        "mean": np.asarray(data.mean, np.float64).ravel().tolist(),
        "std": np.asarray(data.std, np.float64).ravel().tolist(),
        "standardized": True,
        "features_key": FEATURES_KEY,
        "label_key": LABEL_KEY,
        "compression": compression,
        "splits": splits,
        **extra,
    }
    # Last: a directory with a spec.json holds every shard it names.
    path = os.path.join(directory, SPEC_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(spec, indent=2) + "\n")
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return spec


def read_spec(directory: str) -> dict:
    """``directory/spec.json`` as written by :func:`convert`, checked."""
    path = os.path.join(directory, SPEC_FILE)
    if not tf.io.gfile.exists(path):
        raise DataError(
            f"{path}: no such file; write the shards with lowtf.data.convert (or "
            "give the pattern and feature shape to lowtf.data.tfrecord)"
        )
    try:
        with tf.io.gfile.GFile(path) as f:
            spec = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise DataError(f"{path}: not a lowtf TFRecord spec (format {FORMAT!r})")
    return spec


def tfrecord(
    pattern,
    *,
    batch_size: int,
    feature_shape,
    training: bool = True,
    features_key: str = FEATURES_KEY,
    label_key: str = LABEL_KEY,
    feature_dtype=tf.float32,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    seed: int = 0,
    compression: str | None = "auto",
    cycle_length: int | None = None,
    skip: int = 0,
    take: int | None = None,
    statistics: FeatureStatistics | None = None,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of ``(x, y)`` batches from TFRecord shards of Examples.

    Training pipelines shuffle the order of the shards every epoch, read
    ``cycle_length`` shards at a time in parallel (interleaved record by
    record, deterministically), shuffle the records in a buffer of
    ``shuffle_buffer``, repeat forever and give full batches only; the
    others read every record once, in file order, the last batch short.
    The first record is parsed now, so a wrong key or width is refused
    before any training.

    Args:
      pattern: a glob (``tf.io.gfile.glob``, so ``gs://`` works) or a list of
        globs or paths.
      batch_size: examples per batch.
      feature_shape: the shape of one example (its values are stored
        flattened); e.g. ``(28,)`` or ``(28, 28, 1)``.
      training: shuffle and repeat (default True).
      features_key, label_key: the Example's keys (default ``features``, a
        float list, and ``label``, one int64).
      feature_dtype: ``tf.float32`` (default) or ``tf.int64`` (cast to
        float32).
      shuffle_buffer: records in the shuffle buffer (default 10,000; a
        stream saves it with every checkpoint, 4 bytes per value).
      seed: seed of the shard order and the record shuffle (default 0).
      compression: ``"auto"`` (default: GZIP if the first file starts with
        gzip's magic bytes), None or ``"GZIP"``.
      cycle_length: shards read at once when training (default: all, at
        most 16); held-out data is read one shard after the other.
      skip, take: read only the records from ``skip`` on (default 0), at
        most ``take`` of them (default None: all), counted in file order
        (the files sorted, as given): the first records held out for
        validation, as the TensorFlow overfit tutorial takes HIGGS' first
        rows. Each shard's range is fixed before reading (the shards before
        ``skip + take`` are counted once), so a training pipeline still
        interleaves its shards and reads every chosen record once an epoch.
      statistics: a :class:`lowtf.data.FeatureStatistics` of the flattened
        features to standardize every batch with (default None: as stored).
      shard: ``(count, index)``: read only the shards ``index``,
        ``index + count``, ... of the files (after ``skip``/``take``), as
        ``files.shard(count, index)``: one worker's part, e.g.
        ``(context.num_input_pipelines, context.input_pipeline_id)``; there
        must be at least ``count`` shards. Default None: all of them.

    Raises:
      DataError: no file matches, or the first record lacks a key or has
        another number of values than ``feature_shape``.
      ValueError: fewer shards than ``shard``'s count.
    """
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("shuffle_buffer", shuffle_buffer)
    _checks.non_negative_int("seed", seed)
    _checks.boolean("training", training)
    if cycle_length is not None:
        _checks.positive_int("cycle_length", cycle_length)
    _checks.non_negative_int("skip", skip)
    if take is not None:
        _checks.positive_int("take", take)
    files, reader = _prepare(
        pattern, feature_shape, features_key, label_key, feature_dtype, compression
    )
    if statistics is not None and len(statistics.mean) != reader.width:
        raise ValueError(
            f"`statistics` are for {len(statistics.mean)} features, the records "
            f"hold {reader.width}"
        )
    # (file, first record, records) of each shard read; -1 is "to the end".
    ranges = _ranges(files, reader, skip, take)
    if not ranges:
        raise DataError(
            f"{_describe_pattern(pattern)}: no records left after skipping {skip:,}"
        )
    if shard is not None:
        count, index = shard
        _checks.positive_int("shard[0]", count)
        _checks.non_negative_int("shard[1]", index)
        if index >= count or len(ranges) < count:
            raise ValueError(
                f"`shard` ({shard}) must be (count, index < count) with at least "
                f"count shards; {_describe_pattern(pattern)} has {len(ranges)}: write "
                "at least as many files as workers"
            )
        # Each reader its own files, as files.shard(count, index).
        ranges = ranges[index::count]
        files = [path for path, _, _ in ranges]

    def read(name, start=None, count=None):
        records = tf.data.TFRecordDataset(name, compression_type=reader.compression)
        return records if start is None else records.skip(start).take(count)

    if skip or take is not None:
        paths, starts, counts = zip(*ranges)
        names = tf.data.Dataset.from_tensor_slices(
            (list(paths), np.array(starts, np.int64), np.array(counts, np.int64))
        )
    else:
        # Whole files: the pipeline (and so a checkpoint's position) as before
        # skip/take existed.
        names = tf.data.Dataset.from_tensor_slices(files)
    if training:
        names = names.shuffle(len(ranges), seed=seed, reshuffle_each_iteration=True)
        names = names.repeat()
    records = names.interleave(
        read,
        # Held-out data is read in file order, one shard after the other.
        cycle_length=(cycle_length or min(len(ranges), 16)) if training else 1,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if training:
        records = records.shuffle(
            shuffle_buffer, seed=seed, reshuffle_each_iteration=True
        )
    batches = records.batch(batch_size, drop_remainder=training)
    # A whole batch parsed at once: one op instead of batch_size.
    parse = reader.parse
    if statistics is not None:
        shape = reader.feature_shape

        def parse(serialized):
            x, y = reader.parse(serialized)
            flat = statistics.standardize(tf.reshape(x, [-1, reader.width]))
            return tf.reshape(flat, [-1, *shape]), y

    batches = batches.map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def tfrecord_statistics(
    pattern,
    *,
    feature_shape,
    skip: int = 0,
    take: int | None = None,
    max_rows: int | None = None,
    features_key: str = FEATURES_KEY,
    label_key: str = LABEL_KEY,
    feature_dtype=tf.float32,
    compression: str | None = "auto",
) -> FeatureStatistics:
    """Per-feature mean and std of the records' flattened features, in one streaming pass.

    Reads the records ``skip .. skip + take`` (the training ones: nothing of
    held-out records leaks in) in file order, or only the first
    ``max_rows`` of them (faster; right only for shards in no particular
    order), merging blocks in float64 (:class:`lowtf.data.statistics.Moments`).

    Raises:
      DataError: no record in that range, or one that cannot be read or
        parsed (named by shard and record).
    """
    if max_rows is not None:
        _checks.positive_int("max_rows", max_rows)
        take = max_rows if take is None else min(take, max_rows)
    dataset = tfrecord(
        pattern,
        batch_size=STATISTICS_BLOCK,
        feature_shape=feature_shape,
        training=False,
        features_key=features_key,
        label_key=label_key,
        feature_dtype=feature_dtype,
        compression=compression,
        skip=skip,
        take=take,
    )
    moments = Moments(math.prod(tuple(feature_shape)))
    try:
        for x, _ in dataset:
            moments.add(x.numpy())
    except tf.errors.OpError as e:
        files, reader = _prepare(
            pattern, feature_shape, features_key, label_key, feature_dtype,
            compression, check=False,
        )  # fmt: skip
        where = locate_bad_record(files, reader)
        raise DataError(
            where or f"{_describe_pattern(pattern)}: {streams.clean_message(e.message)}"
        ) from None
    if not moments.count:
        raise DataError(
            f"{_describe_pattern(pattern)}: no records to compute statistics on"
        )
    return moments.statistics()


def first_record(
    pattern, *, features_key: str = FEATURES_KEY, label_key: str = LABEL_KEY
):
    """The first file of ``pattern`` and its first record's feature width and dtype.

    For shards that come without a spec: the example shape is then
    ``(width,)``. Returns ``(path, width, dtype)``.

    Raises:
      DataError: no file matches, or the first record is no Example with
        ``features_key`` and ``label_key``.
    """
    path = _glob(pattern)[0]
    first = _first_record(path, _sniff_compression(path) or "")
    try:
        feature = tf.train.Example.FromString(first).features.feature
    except Exception:  # noqa: BLE001 (protobuf's DecodeError moves between versions)
        raise DataError(f"{path}, record 0: not a tf.train.Example") from None
    for key in (features_key, label_key):
        if key not in feature:
            keys = ", ".join(sorted(feature)) or "none"
            raise DataError(f"{path}, record 0: no feature {key!r} (its keys: {keys})")
    kind = feature[features_key].WhichOneof("kind")
    if kind not in ("float_list", "int64_list"):
        raise DataError(
            f"{path}, record 0: feature {features_key!r} is a {kind}, not numbers"
        )
    width = len(getattr(feature[features_key], kind).value)
    if not width:
        raise DataError(f"{path}, record 0: feature {features_key!r} is empty")
    return path, width, tf.float32 if kind == "float_list" else tf.int64


def count_records(path, compression: str | None = "auto") -> int:
    """The records of one file (a pass over it)."""
    if compression == "auto":
        compression = _sniff_compression(path)
    records = tf.data.TFRecordDataset(path, compression_type=compression or "")
    sizes = records.batch(COUNT_BLOCK).map(lambda block: tf.size(block, tf.int64))
    try:
        return int(sizes.reduce(tf.constant(0, tf.int64), lambda n, size: n + size))
    except tf.errors.OpError as e:
        raise DataError(
            f"{path}: not readable as TFRecord ({streams.clean_message(e.message)})"
        ) from None


def _ranges(files, reader, skip, take) -> list[tuple[str, int, int]]:
    """``(file, start, count)`` of the records ``skip .. skip + take`` in file order.

    Only the files before the range's end are counted (with no ``take``,
    those before ``skip``); ``count`` -1 reads to the end of its file.
    """
    if not skip and take is None:
        return [(f, 0, -1) for f in files]
    ranges, position = [], 0
    end = None if take is None else skip + take
    for path in files:
        if end is not None and position >= end:
            break
        if end is None and position >= skip:
            ranges.append((path, 0, -1))
            continue
        size = count_records(path, reader.compression)
        start = max(0, skip - position)
        stop = size if end is None else min(size, end - position)
        if stop > start:
            ranges.append((path, start, stop - start if end is not None else -1))
        position += size
    return ranges


def tfrecord_stream(
    pattern, *, batch_size: int, feature_shape, **kwargs
) -> streams.Stream:
    """A :class:`lowtf.data.Stream` of training batches from TFRecord shards.

    Takes the arguments of :func:`tfrecord` but ``training`` and ``shard``,
    with ``batch_size`` the global batch. The stream's identity (recorded by
    :func:`lowtf.fit` in ``run.json``) names the files, their total size and
    the shuffle; a record that cannot be read or parsed during training
    stops it with a :class:`DataError` naming its shard and index
    (:func:`locate_bad_record`).

    Under ``MultiWorkerMirroredStrategy`` with at least as many shards as
    workers, each worker reads its own files (``shard=(workers, worker
    index)``, ``distribute_datasets_from_function``) and each replica its own
    batch of ``batch_size / replicas`` examples; with fewer files every
    worker reads all of them and each replica takes its slice of the global
    batch, as in one process. (The located bad record is searched in all the
    files.)
    """
    if "training" in kwargs or "shard" in kwargs:
        raise ValueError(
            "`training` (always True) and `shard` (per worker) are set by the stream; "
            "drop them"
        )
    dataset = tfrecord(
        pattern, batch_size=batch_size, feature_shape=feature_shape, **kwargs
    )
    files, reader = _prepare(
        pattern,
        feature_shape,
        kwargs.get("features_key", FEATURES_KEY),
        kwargs.get("label_key", LABEL_KEY),
        kwargs.get("feature_dtype", tf.float32),
        kwargs.get("compression", "auto"),
        check=False,  # tfrecord() just did
    )
    size = sum(tf.io.gfile.stat(f).length for f in files)
    stats = kwargs.get("statistics")
    rows = ""
    if kwargs.get("skip") or kwargs.get("take") is not None:
        rows = f"; records from {kwargs.get('skip', 0)}, {kwargs.get('take') or 'all'}"
    source = (
        f"tfrecord {_describe_pattern(pattern)}: {len(files)} files, {size:,} bytes"
        f"{rows}; shuffle {kwargs.get('shuffle_buffer', DEFAULT_SHUFFLE_BUFFER)} "
        f"seed {kwargs.get('seed', 0)}"
        + (f"; standardized ({stats.rows} rows, {stats.digest})" if stats else "")
    )
    workers = distribute.num_workers()
    if workers > 1 and _num_shards(files, reader, kwargs) >= workers:
        # Under MultiWorkerMirroredStrategy each worker reads its own files,
        # in per-replica batches (the Stream calls this on each worker).
        def dataset(context):
            return tfrecord(
                pattern,
                batch_size=context.get_per_replica_batch_size(batch_size),
                feature_shape=feature_shape,
                shard=(context.num_input_pipelines, context.input_pipeline_id),
                **kwargs,
            )

        source += f"; each of {workers} workers reads its own files"
    return streams.Stream(
        dataset, source=source, locate=lambda: locate_bad_record(files, reader)
    )


def _num_shards(files, reader, kwargs) -> int:
    """The shards :func:`tfrecord` reads: the files, or those holding ``skip``/``take``'s records."""
    skip, take = kwargs.get("skip", 0), kwargs.get("take")
    if not skip and take is None:
        return len(files)
    return len(_ranges(files, reader, skip, take))  # counts the records once more


@dataclasses.dataclass(frozen=True)
class TFRecordData:
    """The splits of a directory written by :func:`convert`.

    Attributes:
      train: a :class:`lowtf.data.Stream` of training batches.
      validation, test: ``(x, y)`` arrays, read whole (they are held in memory
        for evaluation).
      spec: ``spec.json``.
    """

    train: streams.Stream
    validation: tuple
    test: tuple
    spec: dict

    @property
    def feature_shape(self) -> tuple:
        return tuple(self.spec["feature_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.spec["num_classes"])


def read_tfrecords(
    directory: str,
    *,
    batch_size: int,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    seed: int = 0,
) -> TFRecordData:
    """Reads a directory written by :func:`convert`: a training stream, held-out arrays."""
    spec = read_spec(directory)
    common = {
        "feature_shape": spec["feature_shape"],
        "features_key": spec.get("features_key", FEATURES_KEY),
        "label_key": spec.get("label_key", LABEL_KEY),
        "compression": spec.get("compression"),
    }

    def files(split):
        return [
            os.path.join(directory, name) for name in spec["splits"][split]["files"]
        ]

    train = tfrecord_stream(
        files("train"),
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        **common,
    )
    held_out = [
        streams.materialize(
            split, tfrecord(files(split), batch_size=4096, training=False, **common)
        )
        for split in ("validation", "test")
    ]
    for split, (_, y) in zip(("validation", "test"), held_out):
        expected = spec["splits"][split]["examples"]
        if len(y) != expected:
            raise DataError(
                f"{directory}: the {split} shards hold {len(y):,} examples but "
                f"spec.json says {expected:,}; write the directory again"
            )
    return TFRecordData(
        train=train, validation=held_out[0], test=held_out[1], spec=spec
    )


def locate_bad_record(files, reader, *, seconds: float = LOCATE_SECONDS) -> str | None:
    """Scans ``files`` in order for the first record that cannot be read or parsed.

    Returns ``"<file>, record <i>: <reason>"``, or None if none was found
    within ``seconds`` (the scan reads the shards again: gigabytes take a
    while).
    """
    deadline = time.monotonic() + seconds
    for path in files:
        records = tf.data.TFRecordDataset(path, compression_type=reader.compression)
        index = 0
        blocks = iter(records.batch(1024))  # read in blocks, checked in Python
        while time.monotonic() < deadline:
            try:
                raw = next(blocks)
            except StopIteration:
                break
            except tf.errors.OpError:
                return _unreadable_record(path, records, index)
            problem = reader.first_problem(raw.numpy())
            if problem is not None:
                row, why = problem
                return f"{path}, record {index + row}: {why}"
            index += len(raw)
        else:
            return None
    return None


def _unreadable_record(path, records, start) -> str:
    """Names the record of the block from ``start`` that cannot be read."""
    index = start
    try:
        for _ in records.skip(start):
            index += 1
    except tf.errors.OpError as e:
        return f"{path}, record {index}: {streams.clean_message(e.message)}"
    return f"{path}: a read failed after record {start}, not on a second read"


class _Reader:
    """How one layout of Examples is parsed and checked."""

    def __init__(self, features_key, label_key, feature_shape, dtype, compression):
        self.features_key, self.label_key = features_key, label_key
        self.feature_shape = tuple(feature_shape)
        self.width = math.prod(self.feature_shape)
        self.dtype = dtype
        self.compression = compression
        self.spec = {
            features_key: tf.io.FixedLenFeature([self.width], dtype),
            label_key: tf.io.FixedLenFeature([], tf.int64),
        }

    def parse(self, serialized):
        parsed = tf.io.parse_example(serialized, self.spec)
        x = tf.cast(parsed[self.features_key], tf.float32)
        x = tf.reshape(x, [-1, *self.feature_shape])
        return x, tf.cast(parsed[self.label_key], tf.int32)

    def first_problem(self, records) -> tuple[int, str] | None:
        """The first of ``records`` (serialized) that does not fit, as (index, why)."""
        for i, raw in enumerate(records):
            why = self._problem(raw)
            if why is not None:
                return i, why
        return None

    def _problem(self, raw: bytes) -> str | None:
        try:
            example = tf.train.Example.FromString(raw)
        except Exception:  # noqa: BLE001 (protobuf's DecodeError moves between versions)
            return "not a tf.train.Example"
        feature = example.features.feature
        kind = "float_list" if self.dtype == tf.float32 else "int64_list"
        for key, want, count in (
            (self.features_key, kind, self.width),
            (self.label_key, "int64_list", 1),
        ):
            if key not in feature:
                keys = ", ".join(sorted(feature)) or "none"
                return f"no feature {key!r} (its keys: {keys})"
            have = feature[key].WhichOneof("kind")
            if have != want:
                return f"feature {key!r} is a {have}, not a {want}"
            values = len(getattr(feature[key], want).value)
            if values != count:
                shape = (
                    f"feature_shape {self.feature_shape}" if count > 1 else "one label"
                )
                return (
                    f"feature {key!r} has {values} values, expected {count} ({shape})"
                )
        return None

    def check_first(self, path) -> None:
        """Refuses a first shard whose first record does not fit, or that holds none."""
        why = self._problem(_first_record(path, self.compression))
        if why is not None:
            raise DataError(f"{path}, record 0: {why}")


def _prepare(
    pattern, feature_shape, features_key, label_key, dtype, compression, *, check=True
):
    """The files of ``pattern`` and their :class:`_Reader`; checks the first record."""
    _checks.one_of("compression", compression, ("auto", None, "GZIP"))
    dtype = tf.as_dtype(dtype)
    _checks.one_of("feature_dtype", dtype, (tf.float32, tf.int64))
    feature_shape = tuple(feature_shape)
    for i, size in enumerate(feature_shape):
        _checks.positive_int(f"feature_shape[{i}]", size)
    files = _glob(pattern)
    if compression == "auto":
        compression = _sniff_compression(files[0])
    reader = _Reader(features_key, label_key, feature_shape, dtype, compression or "")
    if check:
        reader.check_first(files[0])
    return files, reader


def _glob(pattern) -> list[str]:
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    if not patterns:
        raise DataError("no TFRecord files given")
    files = []
    for p in patterns:
        found = sorted(tf.io.gfile.glob(os.fspath(p)))
        if not found:
            raise DataError(f"{p}: no file matches")
        files.extend(found)
    return files


def _describe_pattern(pattern) -> str:
    if isinstance(pattern, (str, os.PathLike)):
        return os.fspath(pattern)
    names = [os.fspath(p) for p in pattern]
    return names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}"


def _sniff_compression(path) -> str | None:
    with tf.io.gfile.GFile(path, "rb") as f:
        return "GZIP" if f.read(2) == b"\x1f\x8b" else None


def _first_record(path: str, compression: str) -> bytes:
    """The first serialized record of shard ``path``; DataError if unreadable or empty."""
    records = tf.data.TFRecordDataset(path, compression_type=compression)
    try:
        first = [r.numpy() for r in records.take(1)]
    except tf.errors.OpError as e:
        raise DataError(
            f"{path}: not readable as TFRecord ({streams.clean_message(e.message)})"
        ) from None
    if not first:
        raise DataError(f"{path}: no records")
    return first[0]
