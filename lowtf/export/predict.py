"""Batch inference with an exported SavedModel: what ``bin/predict`` runs.

The file is streamed, never loaded whole: csv and csv.gz through
``tf.data.TextLineDataset`` and ``tf.io.decode_csv`` (a first row with a
cell that is not a number is a header and skipped), npz by reading one
array's ``.npy`` member of the zip in batches of rows. The predictions go to
a csv, one row per example: ``class_id,p0,p1,...``. Only TensorFlow and
NumPy are used: the SavedModel is loaded with ``tf.saved_model.load``.
"""

from __future__ import annotations

import io
import math
import re
import zipfile

import numpy as np
import tensorflow as tf

from lowtf.data.readers import DataError
from lowtf.export import saved_model

# npz: the array read when `key` is not given, the first one found.
NPZ_KEYS = ("x", "x_test", "features")
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def input_spec(signature) -> tf.TensorSpec:
    """The one input of a serving signature, e.g. float32 [None, 28]."""
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ValueError(
            f"the signature takes {len(specs)} inputs; bin/predict feeds one"
        )
    return specs[0]


def predict_file(
    model: str,
    data_path: str,
    output: str,
    *,
    batch_size: int = 1024,
    npz_key: str | None = None,
    log_every: int = 100_000,
    log=print,
) -> int:
    """Writes the predictions of ``model`` for every example of ``data_path``.

    Args:
      model: an export directory (its highest version) or a SavedModel.
      data_path: csv, csv.gz or npz of raw features; a csv row holds one
        example's features (images flattened row-major), nothing else.
      output: the csv written (whole or not at all): a header
        ``class_id,p0,...`` then one row per example, in the file's order.
      batch_size: examples per call of the model (default 1024).
      npz_key: the npz array to read (default: the first of
        :data:`NPZ_KEYS` present, or the only array).
      log_every: a progress line every this many rows (default 100,000).
      log: called with each progress line.

    Returns:
      The number of examples.

    Raises:
      DataError: a file whose width, dtype or shape does not match the
        signature, or a value that is not a finite number.
      ValueError: no SavedModel at ``model``.
    """
    path = saved_model.latest(model)
    serve = tf.saved_model.load(path).signatures[saved_model.SIGNATURE]
    spec = input_spec(serve)
    shape = tuple(spec.shape[1:])
    if data_path.endswith(".npz"):
        batches = _npz_batches(data_path, shape, batch_size, npz_key)
    else:
        batches = _csv_batches(data_path, shape, batch_size)
    temporary = output + ".tmp"
    rows = 0
    try:
        with tf.io.gfile.GFile(temporary, "w") as f:
            header = None
            for x in batches:
                bad = np.argwhere(~np.isfinite(x.reshape(len(x), -1)))
                if len(bad):
                    raise DataError(
                        f"{data_path}: row {rows + bad[0][0]} holds {x.reshape(len(x), -1)[tuple(bad[0])]}; "
                        f"features must be finite numbers"
                    )
                out = serve(**{_name(serve): tf.constant(x, spec.dtype)})
                probabilities = out["probabilities"].numpy()
                if header is None:
                    width = probabilities.shape[1]
                    header = ",".join(["class_id"] + [f"p{i}" for i in range(width)])
                    f.write(header + "\n")
                table = io.StringIO()
                ids = out["class_ids"].numpy()
                # %.9g: a float32 read back is the value written.
                np.savetxt(
                    table,
                    np.column_stack([ids, probabilities]),
                    fmt=["%d"] + ["%.9g"] * width,
                    delimiter=",",
                )
                f.write(table.getvalue())
                before, rows = rows, rows + len(x)
                if rows // log_every > before // log_every:
                    log(f"predict: {rows:,} rows")
            if header is None:
                raise DataError(f"{data_path} holds no examples")
        tf.io.gfile.rename(temporary, output, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        raise
    log(f"predict: {rows:,} rows written to {output}")
    return rows


def _name(signature) -> str:
    return next(iter(signature.structured_input_signature[1]))


# -- csv ---------------------------------------------------------------------


def _csv_batches(path, shape, batch_size):
    """Batches ``[n, *shape]`` float32 of a csv or csv.gz file, streamed."""
    width = math.prod(shape)
    lines = tf.data.TextLineDataset(
        path, compression_type="GZIP" if _is_gzip(path) else ""
    )
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    first = _first_line(lines)
    if first is None:
        raise DataError(f"{path} is empty")
    cells = first.split(",")
    header = not all(_is_number(cell) for cell in cells)
    if len(cells) != width:
        raise DataError(
            f"{path}: {len(cells)} columns; the model takes {width} features "
            f"per row (shape {shape}), and a row holds nothing else (no label)"
        )
    if header:
        lines = lines.skip(1)
    # No defaults: an empty cell is an error, not a value made up.
    required = [tf.constant([], tf.float32)] * width

    def decode(batch):
        return tf.stack(tf.io.decode_csv(batch, record_defaults=required), axis=1)

    batches = lines.batch(batch_size).map(decode).prefetch(2)
    start = 0
    iterator = iter(batches)
    while True:
        try:
            x = next(iterator).numpy()
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as error:
            raise DataError(_csv_error(path, error, start, width)) from None
        start += len(x)
        yield x.reshape(-1, *shape)


def _csv_error(path, error, start, width) -> str:
    """One line for a row that decode_csv refused, with its row number."""
    message = error.message.splitlines()[0]
    found = re.search(r"Expect (\d+) fields but have (\d+) in record (\d+)", message)
    if found:
        row = start + int(found.group(3))
        return f"{path}: data row {row} has {found.group(2)} columns; the model takes {width}"
    found = re.search(
        r"Field (\d+) in record (\d+) is not a valid float: (.*)", message
    )
    if found:
        row = start + int(found.group(2))
        return f"{path}: data row {row}, column {found.group(1)} is {found.group(3)}, not a number"
    found = re.search(r"Field (\d+) is required but missing in record (\d+)", message)
    if found:
        row = start + int(found.group(2))
        return f"{path}: data row {row}, column {found.group(1)} is empty"
    return f"{path}: a row from data row {start} on cannot be read: {message}"


def _is_gzip(path) -> bool:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _first_line(lines):
    """The first line of a TextLineDataset, or None for an empty file."""
    for line in lines.take(1):
        return line.numpy().decode("utf-8", errors="replace").strip()
    return None


def _is_number(cell) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# -- npz ---------------------------------------------------------------------


def _npz_batches(path, shape, batch_size, key):
    """Batches ``[n, *shape]`` float32 of one array of an npz, read row by row."""
    with tf.io.gfile.GFile(path, "rb") as raw:
        try:
            archive = zipfile.ZipFile(raw)
        except zipfile.BadZipFile:
            raise DataError(f"{path} is not an npz file (not a zip archive)") from None
        names = [
            name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")
        ]
        key = _npz_key(path, names, key)
        with archive.open(key + ".npy") as member:
            version = np.lib.format.read_magic(member)
            if version not in _NPY_HEADERS:
                raise DataError(
                    f"{path}: {key} is .npy format {version}, not 1.0 or 2.0"
                )
            array_shape, fortran, dtype = _NPY_HEADERS[version](member)
            if not (
                np.issubdtype(dtype, np.integer)
                or np.issubdtype(dtype, np.floating)
                or dtype == bool
            ):
                raise DataError(
                    f"{path}: {key} is {dtype}; the model takes numbers (float32, or "
                    f"integers and booleans, which are converted)"
                )
            if tuple(array_shape[1:]) != shape:
                raise DataError(
                    f"{path}: {key} has examples of shape {tuple(array_shape[1:])} "
                    f"(array {tuple(array_shape)}); the model takes {shape}"
                )
            rows = array_shape[0] if array_shape else 0
            if fortran:
                # Column-major rows are not contiguous: read whole (rare in practice).
                data = np.frombuffer(member.read(), dtype).reshape(
                    array_shape, order="F"
                )
                for start in range(0, rows, batch_size):
                    yield np.asarray(data[start : start + batch_size], np.float32)
                return
            row_bytes = math.prod(shape) * dtype.itemsize
            for start in range(0, rows, batch_size):
                count = min(batch_size, rows - start)
                chunk = member.read(count * row_bytes)
                x = np.frombuffer(chunk, dtype).reshape(count, *shape)
                yield x.astype(np.float32)


def _npz_key(path, names, key):
    if key is not None:
        if key not in names:
            raise DataError(f"{path} has no array {key!r}; it has {', '.join(names)}")
        return key
    for candidate in NPZ_KEYS:
        if candidate in names:
            return candidate
    if len(names) == 1:
        return names[0]
    raise DataError(
        f"{path} holds {', '.join(names)}; name the features with --npz_key"
    )
