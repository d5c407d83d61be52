"""Batch inference with an exported SavedModel: what ``bin/predict`` runs.

The file is streamed, never loaded whole: csv and csv.gz through
``tf.data.TextLineDataset`` and ``tf.io.decode_csv``, npz by reading one
array's ``.npy`` member of the zip in batches of rows. The predictions go to
a csv, one row per example: ``class_id,p0,p1,...``. Only TensorFlow and
NumPy are used: the SavedModel is loaded with ``tf.saved_model.load``.

Nothing but the output is written, and it never replaces the input, nor an
existing file unless asked (``overwrite``). It is written to a temporary
file of a random name beside it, ``.<output>.<random>.tmp`` (created with
``O_EXCL`` on a local disk, so it can never be a user's file), then renamed
over ``output``: a reader sees no file, the old one or the whole new one.

Whether a csv's first row is a header (``header="auto"``), decided so that
no data row is ever dropped:

* it is a header when every cell is text (not a number, not empty), or when
  it is the column numbers ``0,1,...,n-1`` (or ``1,...,n``), as pandas
  writes them for an unnamed array, written as whole numbers while none of
  the next :data:`SAMPLE_ROWS` rows holds a whole number written without a
  decimal point or exponent (so it was not written like the data);
* the column numbers followed by rows that hold such whole numbers too
  could be either: that is an error asking for ``header="yes"`` or ``"no"``;
* any other first row is data, checked like every other row: a cell that
  is not a number or is empty stops the run with its row and column.

Cells may be quoted (``"1.5"``) and padded with spaces; a UTF-8 byte order
mark before the first row is skipped.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import uuid
import zipfile

import numpy as np
import tensorflow as tf

from lowtf import _files
from lowtf.data.readers import DataError
from lowtf.export import saved_model

# npz: the array read when `key` is not given, the first one found.
NPZ_KEYS = ("x", "x_test", "features")
HEADER_CHOICES = ("auto", "yes", "no")
# Rows after the first that header="auto" compares it with.
SAMPLE_ROWS = 100
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
_BOM = "\ufeff"
# What tf.io.decode_csv reads as a float32 (hexadecimal aside), and a whole
# number written as one (no point, no exponent).
_NUMBER = re.compile(
    r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE
)
_WHOLE = re.compile(r"[+-]?\d+")


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
    header: str = "auto",
    overwrite: bool = False,
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
        Never ``data_path`` itself (by whatever path or link).
      batch_size: examples per call of the model (default 1024).
      npz_key: the npz array to read (default: the first of
        :data:`NPZ_KEYS` present, or the only array).
      header: csv only: whether the first row is a header, ``"yes"``,
        ``"no"`` or ``"auto"`` (default; the rule in this module's
        docstring, which never takes a data row for a header).
      overwrite: replace an existing ``output`` (default False: refused).
      log_every: a progress line every this many rows (default 100,000).
      log: called with each progress line.

    Returns:
      The number of examples, which is the number of rows written.

    Raises:
      DataError: a file whose width, dtype or shape does not match the
        signature, a value that is not a finite number, or a first row that
        ``header="auto"`` cannot place.
      ValueError: no SavedModel at ``model``; an ``output`` that is the
        input, a directory, or exists (without ``overwrite``).
      OSError: ``output`` cannot be written (nothing is left of it then).
    """
    if header not in HEADER_CHOICES:
        raise ValueError(
            f"`header` ({header!r}) must be one of {', '.join(HEADER_CHOICES)}"
        )
    npz = data_path.endswith(".npz")
    if npz and header != "auto":
        raise ValueError(f"--header={header} is for csv files; {data_path} is an npz")
    _check_output(data_path, output, overwrite)
    path = saved_model.latest(model)
    serve = tf.saved_model.load(path).signatures[saved_model.SIGNATURE]
    spec = input_spec(serve)
    shape = tuple(spec.shape[1:])
    if npz:
        batches = _npz_batches(data_path, shape, batch_size, npz_key)
    else:
        batches = _csv_batches(data_path, shape, batch_size, header)
    temporary, rows = None, 0
    try:
        temporary = _temporary(output)
        with tf.io.gfile.GFile(temporary, "w") as f:
            width = None
            for x in batches:
                flat = x.reshape(len(x), -1)
                bad = np.argwhere(~np.isfinite(flat))
                if len(bad):
                    raise DataError(
                        f"{data_path}: row {rows + bad[0][0]} holds {flat[tuple(bad[0])]}; "
                        f"features must be finite numbers"
                    )
                out = serve(**{_name(serve): tf.constant(x, spec.dtype)})
                probabilities = out["probabilities"].numpy()
                # An ensemble's export also serves its members' disagreement.
                columns = [out["class_ids"].numpy(), probabilities]
                if "disagreement" in out:
                    columns.append(out["disagreement"].numpy())
                if width is None:
                    width = probabilities.shape[1]
                    names = ["class_id"] + [f"p{i}" for i in range(width)]
                    if "disagreement" in out:
                        names += [f"var{i}" for i in range(width)]
                    f.write(",".join(names) + "\n")
                table = io.StringIO()
                # %.9g: a float32 read back is the value written.
                values = np.column_stack(columns)
                np.savetxt(
                    table,
                    values,
                    fmt=["%d"] + ["%.9g"] * (values.shape[1] - 1),
                    delimiter=",",
                )
                f.write(table.getvalue())
                before, rows = rows, rows + len(x)
                if rows // log_every > before // log_every:
                    log(f"predict: {rows:,} rows")
            if width is None:
                raise DataError(f"{data_path} holds no examples")
        try:
            tf.io.gfile.rename(temporary, output, overwrite=overwrite)
        except tf.errors.AlreadyExistsError:
            raise ValueError(
                f"--output ({output}) was made by something else while predicting; "
                f"it is left as it is (pass --overwrite to replace it)"
            ) from None
    except BaseException as error:
        # An error, Ctrl-C or SIGTERM: no partial output, no temporary left.
        if temporary is None:
            raise
        _files.remove_if_present(temporary)
        if isinstance(error, tf.errors.OpError) and temporary in str(error):
            # A write that failed (disk full, permissions): named as the output.
            gist = _files.gist(error).replace(temporary, output)
            raise OSError(f"cannot write --output ({output}): {gist}") from None
        raise
    log(f"predict: {rows:,} rows written to {output}")
    return rows


def _name(signature) -> str:
    return next(iter(signature.structured_input_signature[1]))


# -- the output ----------------------------------------------------------------


def _check_output(data_path, output, overwrite) -> None:
    """Refuses an ``output`` that is the input, a directory, or exists unasked."""
    if _same_file(data_path, output):
        raise ValueError(
            f"--output ({output}) is --data_path ({data_path}); predictions never "
            f"replace their input: name another file"
        )
    if tf.io.gfile.isdir(output):
        raise ValueError(
            f"--output ({output}) is a directory; name a file, e.g. "
            f"{os.path.join(output, 'predictions.csv')}"
        )
    if not overwrite and tf.io.gfile.exists(output):
        raise ValueError(
            f"--output ({output}) exists; pass --overwrite to replace it, or name "
            f"another file"
        )
    folder = os.path.dirname(output) or "."
    if "://" not in output and not os.path.isdir(folder):
        raise ValueError(f"--output ({output}): its directory {folder} does not exist")


def _same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file: any spelling, symlink or hard link."""
    if "://" in a or "://" in b:
        return _normal(a) == _normal(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links; case-insensitive disks
    except OSError:
        return False  # one of them does not exist


def _normal(path) -> str:
    scheme, _, rest = path.rpartition("://")
    return f"{scheme}://{os.path.normpath(rest)}" if scheme else os.path.normpath(rest)


def _temporary(output) -> str:
    """A new file beside ``output`` whose name no user file has (random, made exclusively)."""
    folder, name = os.path.split(output)
    while True:
        path = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        if "://" in output:
            if not tf.io.gfile.exists(path):
                return path
            continue
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        except OSError as error:
            raise OSError(
                f"cannot write --output ({output}): {error.strerror}"
            ) from None
        return path


# -- csv ---------------------------------------------------------------------


def _csv_batches(path, shape, batch_size, header):
    """Batches ``[n, *shape]`` float32 of a csv or csv.gz file, streamed."""
    width = math.prod(shape)
    lines = tf.data.TextLineDataset(
        path, compression_type="GZIP" if _is_gzip(path) else ""
    )
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    sample = _sample(lines)
    if not sample:
        raise DataError(f"{path} is empty")
    if len(sample[0]) != width:
        raise DataError(
            f"{path}: {len(sample[0])} columns; the model takes {width} features "
            f"per row (shape {shape}), and a row holds nothing else (no label)"
        )
    skip = _first_row_is_header(path, sample, header)
    if skip:
        lines = lines.skip(1)
    # No defaults: an empty cell is an error, not a value made up.
    required = [tf.constant([], tf.float32)] * width

    def decode(batch):
        # A byte order mark can only start the first line.
        batch = tf.strings.regex_replace(batch, "^" + _BOM, "")
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
            row, message = _csv_error(path, error, start, width)
            if row == 0 and header == "auto" and not skip:
                message += "; if row 0 is a header, pass --header=yes"
            raise DataError(message) from None
        start += len(x)
        yield x.reshape(-1, *shape)


def _sample(lines) -> list[list[str]]:
    """The cells of the first 1 + SAMPLE_ROWS lines, unquoted and stripped."""
    texts = [
        line.decode("utf-8", errors="replace")
        for line in lines.take(1 + SAMPLE_ROWS).as_numpy_iterator()
    ]
    if texts:
        texts[0] = texts[0].removeprefix(_BOM)
    return [[cell.strip() for cell in row] for row in csv.reader(texts)]


def _first_row_is_header(path, sample, header) -> bool:
    """Whether to skip the first row: ``header``, or the rule of ``"auto"``."""
    if header != "auto":
        return header == "yes"
    first, rest = sample[0], sample[1:]
    if not any(_NUMBER.fullmatch(cell) or not cell for cell in first):
        return True  # every cell is text
    columns = [str(i) for i in range(len(first))]
    ones = [str(i + 1) for i in range(len(first))]
    if first not in (columns, ones):
        return False  # data: a non-number in it is reported as in any row
    if rest and not any(_WHOLE.fullmatch(cell) for row in rest for cell in row):
        return True  # whole numbers over rows written with points: not like the data
    shown = (
        ",".join(first) if len(first) <= 4 else f"{first[0]},{first[1]},...,{first[-1]}"
    )
    found = "no other rows" if not rest else "other rows with whole numbers too"
    raise DataError(
        f"{path}: row 0 is {shown}, the column numbers (what pandas writes as a "
        f"header), and the file has {found}: it may be a header or an example; "
        f"pass --header=yes or --header=no"
    )


def _csv_error(path, error, start, width) -> tuple[int | None, str]:
    """The data row that decode_csv refused (None if unknown) and one line for it."""
    message = error.message.splitlines()[0]
    found = re.search(r"Expect (\d+) fields but have (\d+) in record (\d+)", message)
    if found:
        row = start + int(found.group(3))
        return (
            row,
            f"{path}: data row {row} has {found.group(2)} columns; the model takes {width}",
        )
    found = re.search(
        r"Field (\d+) in record (\d+) is not a valid float: (.*)", message
    )
    if found:
        row = start + int(found.group(2))
        return (
            row,
            f"{path}: data row {row}, column {found.group(1)} is {found.group(3)}, not a number",
        )
    found = re.search(r"Field (\d+) is required but missing in record (\d+)", message)
    if found:
        row = start + int(found.group(2))
        return row, f"{path}: data row {row}, column {found.group(1)} is empty"
    return None, f"{path}: a row from data row {start} on cannot be read: {message}"


def _is_gzip(path) -> bool:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


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
