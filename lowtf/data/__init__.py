"""Data sets, readers, in-memory and streamed batches; data is checked once, where it enters.

In memory: :func:`load` (a split, standardized :class:`Dataset`) and
:class:`InMemoryBatches`. Streamed, for data that does not fit in memory:
:class:`Stream` over any ``tf.data`` pipeline, TFRecord shards
(:func:`tfrecord`, :func:`tfrecord_stream`, :func:`write_tfrecords`,
:func:`convert`, :func:`read_tfrecords`) and CSV files read as they go
(:func:`csv_dataset`, :func:`csv_stream`, :func:`csv_statistics`); a data
set's files opened as a training stream and held-out arrays, as ``bin/train``
streams them (:func:`open_stream`), and written as shards after that split
(:func:`write_split`, ``bin/convert``).

The embedded digits data (``digits.csv.gz``, CC BY 4.0, see README.md) lives
in this folder too.
"""

from lowtf.data.batches import InMemoryBatches
from lowtf.data.csv_files import (
    FeatureStatistics,
    csv_dataset,
    csv_statistics,
    csv_stream,
)
from lowtf.data.datasets import DATASETS, Dataset, load, pipeline, synthetic
from lowtf.data.readers import DataError
from lowtf.data.statistics import Moments
from lowtf.data.streamed import StreamedData, open_stream, write_split
from lowtf.data.streams import Stream
from lowtf.data.tfrecords import (
    TFRecordData,
    convert,
    read_spec,
    read_tfrecords,
    tfrecord,
    tfrecord_statistics,
    tfrecord_stream,
    write_tfrecords,
)

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "FeatureStatistics",
    "InMemoryBatches",
    "Moments",
    "Stream",
    "StreamedData",
    "TFRecordData",
    "convert",
    "csv_dataset",
    "csv_statistics",
    "csv_stream",
    "load",
    "open_stream",
    "pipeline",
    "read_spec",
    "read_tfrecords",
    "synthetic",
    "tfrecord",
    "tfrecord_statistics",
    "tfrecord_stream",
    "write_split",
    "write_tfrecords",
]
