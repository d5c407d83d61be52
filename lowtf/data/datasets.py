"""Data sets for lowtf: loaded, checked, split and normalized in one call.

:func:`load` returns a :class:`Dataset` of numpy arrays (float32 features,
int32 class labels) split into train, validation and test, whatever the
source:

- ``digits`` (default): the embedded UCI optical digits, 1,797 8x8 images
  in ten classes (``lowtf/data/digits.csv.gz``, CC BY 4.0, see its README).
  The split is fixed, whatever the seed: the rows are permuted once with
  ``numpy.random.default_rng(0)``; the last 300 rows of that order are the
  test set, the first ``validation_size`` (default 300) the validation set
  and the next ``train_size`` (default: all the other 1,197) the training set.
- ``higgs``: the HIGGS.csv.gz format (label, then 28 features; gzip or plain
  text) read with ``tf.data.experimental.CsvDataset`` and the batched
  repacking of the TensorFlow overfitting tutorial. The first
  ``validation_size`` rows (default 1,000) are validation, the next
  ``train_size`` (default 10,000) training, and the next up to
  ``validation_size`` rows the test set; at least one test row is required.
- ``npz``: ``x_train, y_train, x_test, y_test`` (the Keras MNIST file);
  ``x_val, y_val`` are used when present, else the validation rows are
  carved from a seeded permutation of the training rows (default 10%).
- ``csv``: any CSV file (optional header row) with a label column, the last
  by default. 15% of the rows (at least one) go to test and, by default,
  15% to validation, picked by a seeded permutation.
- ``synthetic``: a seeded, Higgs-shaped binary problem (28 features) drawn
  from a random two-layer teacher with label noise, for tests and benchmarks.
- ``tfrecord``: TFRecord shards of ``tf.train.Example`` (a directory written
  by ``bin/convert``, with its spec.json, or a glob), read whole here with
  the split :func:`lowtf.data.streamed.open_stream` streams them with.

Features are standardized with the mean and standard deviation of the
training split only (a feature constant in training is only centred), so
nothing of validation or test leaks into training. Any bad input raises a
single :class:`DataError` naming the file, the row or column, and the fix
(the file formats are read by :mod:`lowtf.data.readers`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources

import numpy as np
import tensorflow as tf

from lowtf import _checks
from lowtf.data import readers
from lowtf.data.readers import DataError

DATASETS = ("digits", "higgs", "npz", "csv", "synthetic", "tfrecord")

# The fixed digits split: permutation seed and test rows (see module doc).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 300
DIGITS_VALIDATION_SIZE = 300

HIGGS_FEATURES = 28
HIGGS_VALIDATION_SIZE = 1_000
HIGGS_TRAIN_SIZE = 10_000

SYNTHETIC_SIZES = (2_000, 500, 500)  # train, validation, test
CARVE_FRACTION = 0.15  # csv: the test and default validation share
NPZ_VALIDATION_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set split three ways, features normalized with training statistics.

    Attributes:
      name: the source (``"digits"``, ``"higgs"``, ...).
      train, validation, test: ``(x, y)`` pairs; ``x`` float32 ``[n, *feature_shape]``,
        ``y`` int32 class indices ``[n]``.
      num_classes: the number of classes (labels are ``0 .. num_classes - 1``).
      feature_shape: the shape of one example.
      mean, std: the training-split statistics the features were normalized with.
    """

    name: str
    train: tuple
    validation: tuple
    test: tuple
    num_classes: int
    feature_shape: tuple
    mean: np.ndarray
    std: np.ndarray

    def describe(self) -> str:
        """One line: sizes of the splits, features and classes."""
        sizes = " / ".join(
            f"{len(split[1]):,} {part}"
            for part, split in zip(
                ("train", "validation", "test"), (self.train, self.validation, self.test)
            )
        )
        shape = "x".join(str(d) for d in self.feature_shape)
        return f"{self.name}: {sizes}; features {shape}; {self.num_classes} classes"


def load(
    name: str = "digits",
    *,
    data_path: str | None = None,
    train_size: int | None = None,
    validation_size: int | None = None,
    label_column: str | int | None = None,
    seed: int = 0,
) -> Dataset:
    """Loads, checks, splits and normalizes a data set.

    Args:
      name: one of :data:`DATASETS`, default ``"digits"``.
      data_path: the file to read; required by higgs, npz and csv, refused by
        digits and synthetic.
      train_size: training rows; default all that the split leaves
        (higgs: 10,000; synthetic: 2,000).
      validation_size: validation rows; default per data set (see the
        module doc).
      label_column: csv only: a header name or a column index (negative
        counts from the end); default the last column.
      seed: seed of the carved splits (npz, csv) and of the synthetic
        generator, default 0. The digits and higgs splits do not depend on it.

    Raises:
      DataError: on any problem with the data or the requested split.
      ValueError: a size that is not a positive integer.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; use one of {', '.join(DATASETS)}")
    for arg, value in (("train_size", train_size), ("validation_size", validation_size)):
        if value is not None:
            _checks.positive_int(arg, value)
    needs_path = name in ("higgs", "npz", "csv", "tfrecord")
    if needs_path and not data_path:
        raise DataError(f"the {name} data set needs a file: pass `data_path`")
    if not needs_path and data_path:
        raise DataError(f"the {name} data set reads no file; drop `data_path` ({data_path!r})")
    if label_column is not None and name != "csv":
        raise DataError(f"`label_column` is for the csv data set only, not {name}")

    if name == "digits":
        splits, num_classes = _digits(train_size, validation_size), 10
    elif name == "higgs":
        splits, num_classes = _higgs(data_path, train_size, validation_size), 2
    elif name == "npz":
        splits, num_classes = _npz(data_path, train_size, validation_size, seed), None
    elif name == "csv":
        splits, num_classes = _csv(data_path, train_size, validation_size, label_column, seed), None
    elif name == "tfrecord":
        # Read whole here; bin/train streams them (lowtf.data.streamed).
        from lowtf.data import streamed

        splits, num_classes = streamed.read_in_memory(
            data_path, train_size=train_size, validation_size=validation_size
        )
    else:
        splits, num_classes = _synthetic(train_size, validation_size, seed), 2
    return _finish(name, splits, num_classes, data_path)


def pipeline(x, y, batch_size: int, *, seed: int = 0, training: bool = True) -> tf.data.Dataset:
    """A tf.data pipeline over in-memory arrays.

    Training pipelines reshuffle the whole split every epoch (seeded), repeat
    forever and drop the incomplete last batch, so every batch has
    ``batch_size`` examples; evaluation pipelines keep the order and every
    example once. Both prefetch.

    Args:
      x, y: features and labels.
      batch_size: examples per batch (<= the number of examples when training).
      seed: shuffle seed, default 0.
      training: shuffle, repeat and drop the remainder (default True).
    """
    n = len(y)
    _checks.positive_int("batch_size", batch_size)
    if training and batch_size > n:
        raise DataError(f"`batch_size` ({batch_size}) exceeds the {n} training examples")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


def synthetic(num_examples: int, *, num_features: int = HIGGS_FEATURES, seed: int = 0):
    """A seeded binary problem: ``(x float32 [n, f], y int32 [n])``.

    The label is a Bernoulli draw from the sigmoid of a random two-layer tanh
    teacher, so even the best model errs sometimes and a large one overfits.
    """
    rs = np.random.default_rng(seed)
    x = rs.standard_normal((num_examples, num_features)).astype(np.float32)
    w1 = rs.standard_normal((num_features, 32)) / np.sqrt(num_features)
    w2 = rs.standard_normal(32) * 1.5
    logits = np.tanh(x @ w1 * 2.0) @ w2
    y = rs.random(num_examples) < 1.0 / (1.0 + np.exp(-logits))
    return x, y.astype(np.int32)


# -- the sources -------------------------------------------------------------


def _digits(train_size, validation_size):
    path = importlib.resources.files("lowtf") / "data" / "digits.csv.gz"
    with importlib.resources.as_file(path) as local:
        rows = readers.read_csv(str(local), header=False)[1]
    if rows.shape[1] != 65:
        raise DataError(f"{path}: {rows.shape[1]} columns; digits rows have 64 pixels and a label")
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(rows))
    rows = rows[order]
    test, rest = rows[-DIGITS_TEST_SIZE:], rows[:-DIGITS_TEST_SIZE]
    val = validation_size or DIGITS_VALIDATION_SIZE
    train = _fit_sizes("digits", len(rest), val, train_size, extra=f" (+{DIGITS_TEST_SIZE} test)")
    split = lambda part: (part[:, :64].reshape(-1, 64), part[:, 64])  # noqa: E731
    return split(rest[val : val + train]), split(rest[:val]), split(test)


def _higgs(path, train_size, validation_size):
    val = validation_size or HIGGS_VALIDATION_SIZE
    train = train_size or HIGGS_TRAIN_SIZE
    # Only the rows needed: validation, training, then up to `val` test rows.
    x, y = readers.read_higgs(path, val + train + val, num_features=HIGGS_FEATURES)
    if len(y) <= val + train:
        raise DataError(
            f"{path}: {len(y):,} rows, too few for {val:,} validation + {train:,} "
            f"training rows + at least 1 test row; lower `train_size`/`validation_size`"
        )
    return (x[val : val + train], y[val : val + train]), (x[:val], y[:val]), (
        x[val + train :],
        y[val + train :],
    )


def _npz(path, train_size, validation_size, seed):
    arrays = readers.read_npz(path, required=("x_train", "y_train", "x_test", "y_test"))
    test = (arrays["x_test"], arrays["y_test"])
    x, y = arrays["x_train"], arrays["y_train"]
    if "x_val" in arrays:
        val_x, val_y = arrays["x_val"], arrays["y_val"]
        if validation_size:
            val_x, val_y = val_x[:validation_size], val_y[:validation_size]
        train = _fit_sizes(path, len(y), 0, train_size)
        return (x[:train], y[:train]), (val_x, val_y), test
    val = validation_size or max(1, round(NPZ_VALIDATION_FRACTION * len(y)))
    train = _fit_sizes(path, len(y), val, train_size)
    order = np.random.default_rng(seed).permutation(len(y))
    val_rows, train_rows = order[:val], order[val : val + train]
    return (x[train_rows], y[train_rows]), (x[val_rows], y[val_rows]), test


def _csv(path, train_size, validation_size, label_column, seed):
    header, rows = readers.read_csv(path, header=None)
    column = readers.label_index(path, header, rows.shape[1], label_column)
    if rows.shape[1] < 2:
        raise DataError(f"{path}: one column only; a csv data set needs features and a label")
    y = rows[:, column]
    x = np.delete(rows, column, axis=1)
    n = len(y)
    test = max(1, round(CARVE_FRACTION * n))
    val = validation_size or max(1, round(CARVE_FRACTION * n))
    train = _fit_sizes(path, n - test, val, train_size, extra=f" (+{test} test)")
    order = np.random.default_rng(seed).permutation(n)
    parts = order[:test], order[test : test + val], order[test + val : test + val + train]
    test_rows, val_rows, train_rows = parts
    return (x[train_rows], y[train_rows]), (x[val_rows], y[val_rows]), (x[test_rows], y[test_rows])


def _synthetic(train_size, validation_size, seed):
    train = train_size or SYNTHETIC_SIZES[0]
    val = validation_size or SYNTHETIC_SIZES[1]
    test = SYNTHETIC_SIZES[2]
    x, y = synthetic(train + val + test, seed=seed)
    return (x[:train], y[:train]), (x[train : train + val], y[train : train + val]), (
        x[train + val :],
        y[train + val :],
    )


# -- labels, sizes and normalization ---------------------------------------------


def _finish(name, splits, num_classes, path) -> Dataset:
    """Checks labels and values, then normalizes with training statistics."""
    where = path or name
    parts = ("train", "validation", "test")
    labels = [_labels(where, part, y) for part, (_, y) in zip(parts, splits)]
    found = max(int(y.max()) for y in labels if len(y)) + 1
    if num_classes is None:
        num_classes = found
        if num_classes < 2:
            raise DataError(f"{where}: every label is 0; a classifier needs at least 2 classes")
        _check_label_convention(where, labels[0], num_classes)
    elif found > num_classes:
        raise DataError(
            f"{where}: label {found - 1} is out of range; {name} labels are 0..{num_classes - 1}"
        )
    features = []
    for part, (x, _) in zip(parts, splits):
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{where}: {part} features are {x.dtype}, not numbers")
        if np.iscomplexobj(x):
            # A cast to float would silently drop the imaginary part.
            raise DataError(
                f"{where}: {part} features are complex ({x.dtype}); give real features, "
                "e.g. the real and imaginary parts as two features"
            )
        x = x.astype(np.float64)
        bad = np.argwhere(~np.isfinite(x.reshape(len(x), -1)))
        if len(bad):
            row, col = bad[0]
            raise DataError(
                f"{where}: {part} row {row}, feature {col} is {x.reshape(len(x), -1)[row, col]}; "
                f"features must be finite numbers (no NaN or Inf)"
            )
        features.append(x)
    train_x = features[0]
    if len(train_x) == 0:
        raise DataError(f"{where}: the training split is empty")
    for part, x in zip(parts, features):
        # Checked here, not left to NumPy: broadcasting would silently give a
        # [n, 28, 28, 1] test set the shape [n, 28, 28, 28] at normalization.
        if len(x) and x.shape[1:] != train_x.shape[1:]:
            raise DataError(
                f"{where}: {part} examples have shape {x.shape[1:]}, the training ones "
                f"{train_x.shape[1:]}; every split needs the same example shape"
            )
    mean, std = statistics(train_x)
    normalized = [((x - mean) / std).astype(np.float32) for x in features]
    return Dataset(
        name=name,
        train=(normalized[0], labels[0]),
        validation=(normalized[1], labels[1]),
        test=(normalized[2], labels[2]),
        num_classes=num_classes,
        feature_shape=tuple(train_x.shape[1:]),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
    )


def statistics(train_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, std)`` of training rows, as every loader standardizes.

    A feature constant in training (a border pixel) carries no information:
    it is centred but not divided by ~0 (its std is 1), which would blow up
    held-out values.
    """
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    return mean, np.where(std > 1e-6, std, 1.0)


def _labels(where, part, y) -> np.ndarray:
    """Class indices as int32, or a DataError saying what is wrong with them."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{where}: {part} labels have shape {y.shape}; they must be class indices, "
            f"one per example (one-hot labels: take their argmax)"
        )
    if len(y) == 0:
        raise DataError(f"{where}: the {part} split is empty")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise DataError(f"{where}: {part} labels are {y.dtype}; they must be integer class indices")
    values = y.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    if len(bad):
        raise DataError(
            f"{where}: {part} label {y[bad[0]]!r} (row {bad[0]}) is not a whole number; "
            f"labels must be integer class indices 0, 1, ..."
        )
    if values.min() < 0:
        row = int(np.argmin(values))
        raise DataError(
            f"{where}: {part} label {y[row]!r} (row {row}) is out of range; "
            f"labels must be class indices 0, 1, ..."
        )
    if values.max() > 1e6:
        raise DataError(f"{where}: {part} label {values.max():.0f} is out of range (> 1e6 classes)")
    return values.astype(np.int32)


def _check_label_convention(where, train_labels, num_classes) -> None:
    """Refuses labels whose classes are not 0..K-1 as seen in the training split.

    Labels are class indices 0, 1, ..., K-1, where K is one more than the
    largest label: labels 1..10 would make a class 0 that never occurs, and a
    class seen only in validation or test cannot be learned from training.
    """
    counts = np.bincount(train_labels, minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if not len(missing):
        return
    if missing[0] == 0 and len(missing) == 1:
        hint = (
            f"no training label is 0: labels must be class indices 0..{num_classes - 1}; "
            "labels 1..K are off by one (subtract 1)"
        )
    else:
        shown = ", ".join(str(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        hint = (
            f"class {shown} never occurs in the training split (labels go up to "
            f"{num_classes - 1}); it could not be learned: renumber the classes 0..K-1 "
            "or give the training split examples of every class"
        )
    raise DataError(f"{where}: {hint}")


def _fit_sizes(where, available, val, train_size, extra="") -> int:
    """The training rows left after ``val`` validation rows, or a DataError."""
    train = train_size or available - val
    if train < 1 or val + train > available:
        raise DataError(
            f"{where}: {available:,} rows{extra}, too few for {val:,} validation + "
            f"{max(train, 1):,} training rows; lower `train_size`/`validation_size`"
        )
    return train


