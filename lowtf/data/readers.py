"""File readers behind :func:`lowtf.load_dataset`: CSV text, HIGGS rows, npz.

Each reader returns raw arrays or raises one :class:`DataError` that names
the file, the line or column, and what is wrong, instead of letting a
parser's exception escape. Splitting, label checks and normalization are
:mod:`lowtf.data.datasets`' job; its tests cover these readers through it.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
import re
import warnings
import zipfile
import zlib

import numpy as np
import tensorflow as tf

# The tutorial repacks CSV records in batches of this many rows.
HIGGS_PACK_BATCH = 10_000


class DataError(ValueError):
    """A data set that cannot be used: missing, unreadable, malformed or too small."""


def check_file(path) -> None:
    """Raises a DataError unless ``path`` is a readable file."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permission denied)")


def read_csv(path, *, header):
    """Reads a numeric CSV (gzip or plain); returns ``(header or None, rows float64)``.

    NumPy's C parser (``np.loadtxt``) reads the rows. When it refuses the file,
    :func:`_read_csv_exactly` reads it again by Python's rules (``csv`` and
    ``float``) to name the first bad row or cell; it also returns the values
    of a file that only NumPy refuses (``1_000``, say), so a
    file reads the same either way.

    Args:
      path: the file.
      header: True/False, or None to treat a first row with a non-numeric
        cell as the header.
    """
    check_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read or decompressed ({e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file (not UTF-8)") from None
    try:
        return _parse_csv(path, text, header)
    except csv.Error as e:  # a bare \r line end, a cell over csv's size limit
        raise DataError(f"{path}: not readable as CSV ({e})") from None


def _parse_csv(path, text, header):
    """:func:`read_csv` once the file is text; csv.Error escapes."""
    # The first record alone decides the header: a few cells, checked in Python.
    stream = io.StringIO(text)
    reader = csv.reader(stream)
    first = next((row for row in reader if row), None)
    if header is None:
        header = first is not None and not all(_is_number(cell) for cell in first)
    names = [cell.strip() for cell in first] if header and first is not None else None
    if not header:
        stream.seek(0)
    width = len(names) if names else len(first or ())
    values = None
    if first is not None:
        try:
            with warnings.catch_warnings():
                # A header and no rows: "no data rows" below says it better.
                warnings.simplefilter("ignore", UserWarning)
                values = np.loadtxt(
                    stream,
                    np.float64,
                    delimiter=",",
                    quotechar='"',
                    comments=None,
                    ndmin=2,
                )
        except ValueError:
            values = None
    if values is None or values.shape[1] != width:
        values = _read_csv_exactly(path, text, header, width)
    if not len(values):
        raise DataError(f"{path}: no data rows")
    return names, values


def _read_csv_exactly(path, text, header, width):
    """The rows of ``text`` by ``csv`` and ``float``, or a DataError naming the bad one.

    Only called when ``np.loadtxt`` refused the file, found no rows, or rows
    of another width than the header's. Lines are counted as the ``csv``
    records (blank ones included); the first problem in file order is
    reported, a wrong column count before a bad cell of the same row.
    """
    records = [
        (line, row) for line, row in enumerate(csv.reader(io.StringIO(text)), 1) if row
    ]
    records = records[1:] if header else records
    widths = np.fromiter((len(row) for _, row in records), np.int64, len(records))
    ragged = np.flatnonzero(widths != width)
    end = ragged[0] if len(ragged) else len(records)
    numbers = []
    try:
        # list.extend keeps what it converted before float raised, so the
        # count of numbers is the flat index of the first bad cell.
        numbers.extend(
            map(float, itertools.chain.from_iterable(r for _, r in records[:end]))
        )
    except ValueError:
        row, col = divmod(len(numbers), width)
        line, cells = records[row]
        raise DataError(
            f"{path}, line {line}, column {col + 1}: {cells[col]!r} is not a number"
        ) from None
    if len(ragged):
        line, cells = records[end]
        raise DataError(f"{path}, line {line}: {len(cells)} columns, expected {width}")
    return np.array(numbers, np.float64).reshape(len(records), width)


def label_index(path, header, width, label_column) -> int:
    """The column of the label: a header name, an index (negative from the end), or the last."""
    if label_column is None or label_column == "":
        return width - 1
    if isinstance(label_column, str) and header and label_column in header:
        return header.index(label_column)
    try:
        index = int(label_column)
    except (TypeError, ValueError):
        known = (
            f"; the header has {', '.join(header)}"
            if header
            else "; the file has no header"
        )
        raise DataError(f"{path}: no label column {label_column!r}{known}") from None
    if not -width <= index < width:
        raise DataError(
            f"{path}: label column {index} is out of range for {width} columns"
        )
    return index % width


def read_higgs(path, num_rows: int, *, num_features: int = 28):
    """The first ``num_rows`` rows of a HIGGS-format file as ``(x float32, labels float32)``.

    Reads with ``tf.data.experimental.CsvDataset`` (gzip detected from the
    file's first bytes) and repacks the records as the TensorFlow
    overfitting tutorial does. Fewer rows come back when the file is shorter.
    """
    check_file(path)
    with open(path, "rb") as f:
        compression = "GZIP" if f.read(2) == b"\x1f\x8b" else ""
    _check_higgs_width(path, compression, num_features)
    # The tutorial's reader: one float per field, repacked in big batches
    # (one op per 10,000 rows instead of per row), then split back into rows.
    # Dtypes rather than default values make an empty field an error, not 0.
    ds = tf.data.experimental.CsvDataset(
        path, [tf.float32] * (num_features + 1), compression_type=compression
    )
    packed = ds.batch(HIGGS_PACK_BATCH).map(_pack_row).unbatch()
    xs, ys = [], []
    try:
        for x, y in packed.take(num_rows).batch(HIGGS_PACK_BATCH):
            xs.append(x.numpy())
            ys.append(y.numpy())
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        # Keep the reader's own words, without the op and function names.
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", e.message.splitlines()[0]).strip()
        raise DataError(
            f"{path}: not readable as HIGGS data (label, then {num_features} numbers "
            f"per row): {reason}"
        ) from None
    if not xs:
        raise DataError(f"{path}: no data rows")
    return np.concatenate(xs), np.concatenate(ys)


def read_npz(path, *, required) -> dict:
    """The arrays of an .npz file, checked: ``required`` present, x/y pairs aligned."""
    check_file(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing arrays {', '.join(missing)}; this data set needs "
            f"{', '.join(required)} (found {', '.join(sorted(arrays)) or 'none'})"
        )
    for name in arrays:
        if not name.startswith("x_"):
            continue
        part = name[2:]
        x, y = arrays[name], arrays.get(f"y_{part}")
        if y is None:
            raise DataError(f"{path}: x_{part} has no y_{part}")
        if x.ndim < 2 or len(x) != len(y):
            raise DataError(
                f"{path}: x_{part} {x.shape} and y_{part} {y.shape} must have one "
                f"row per example and at least one feature"
            )
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{path}: x_{part} holds {x.dtype} values, not numbers")
    return arrays


def _check_higgs_width(path, compression, num_features):
    """Names a wrong column count from the first line, in the file's terms."""
    try:
        opener = gzip.open if compression else open
        with opener(path, "rb") as f:
            first = f.readline()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read or decompressed ({e})") from None
    width = len(first.split(b","))
    if first.strip() and width != num_features + 1:
        raise DataError(
            f"{path}, line 1: {width} columns; the HIGGS format has "
            f"{num_features + 1} (the label, then {num_features} features)"
        )


def _pack_row(*row):
    return tf.stack(row[1:], 1), row[0]


def _is_number(cell) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
