"""Data sets: splits, training-only normalization, tf.data pipelines, DataError."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

from lowtf.data import datasets, readers
from lowtf.data.datasets import DataError

# Per-class counts of the embedded digits (lowtf/data/README.md).
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def denormalize(ds, x):
    return (x * ds.std + ds.mean).reshape(len(x), -1)


def write_higgs(path, rows, compress=True):
    text = "".join(",".join(f"{v:.6e}" for v in row) + "\n" for row in rows)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def higgs_rows(n, seed=0):
    rs = np.random.RandomState(seed)
    rows = np.round(rs.randn(n, 29), 3)
    rows[:, 0] = rs.randint(0, 2, n)
    return rows


# -- digits ----------------------------------------------------------------------


def test_digits_default_split_is_fixed_and_complete():
    a = datasets.load("digits")
    b = datasets.load("digits", seed=7)  # the seed does not move the digits split
    assert (len(a.train[1]), len(a.validation[1]), len(a.test[1])) == (1197, 300, 300)
    assert a.num_classes == 10 and a.feature_shape == (64,)
    for split_a, split_b in zip((a.train, a.validation, a.test), (b.train, b.validation, b.test)):
        np.testing.assert_array_equal(split_a[0], split_b[0])
        np.testing.assert_array_equal(split_a[1], split_b[1])
    # Every row lands in exactly one split: the class counts add up to the file's.
    labels = np.concatenate([a.train[1], a.validation[1], a.test[1]])
    assert np.bincount(labels).tolist() == DIGITS_CLASS_COUNTS
    assert a.train[0].dtype == np.float32 and a.train[1].dtype == np.int32


def test_digits_normalized_with_training_statistics_only():
    ds = datasets.load("digits")
    x = ds.train[0]
    varying = x.std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0)[varying], 1, atol=1e-4)
    # Held-out splits use the same statistics: undone, they are pixel counts again.
    for part in (ds.validation[0], ds.test[0]):
        raw = denormalize(ds, part)
        np.testing.assert_allclose(raw, np.round(raw), atol=1e-3)
        assert raw.min() > -1e-3 and raw.max() < 16 + 1e-3
    # ... and are not themselves standardized (their means differ from 0).
    assert np.abs(ds.test[0].mean(axis=0)).max() > 0.05


def test_digits_sizes_and_too_many_rows():
    ds = datasets.load("digits", train_size=100, validation_size=50)
    assert (len(ds.train[1]), len(ds.validation[1]), len(ds.test[1])) == (100, 50, 300)
    np.testing.assert_array_equal(ds.test[0] * ds.std + ds.mean, denormalize(ds, ds.test[0]))
    with pytest.raises(DataError, match="too few for 300 validation \\+ 1,300 training"):
        datasets.load("digits", train_size=1300)


# -- higgs -----------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_higgs_reads_rows_in_file_order(tmp_path, compress):
    rows = higgs_rows(60)
    path = write_higgs(tmp_path / "HIGGS.csv.gz", rows, compress)
    ds = datasets.load("higgs", data_path=path, validation_size=10, train_size=30)
    assert ds.num_classes == 2 and ds.feature_shape == (28,)
    # The first 10 rows validate, the next 30 train, the next (up to) 10 test.
    for (x, y), part in zip((ds.validation, ds.train, ds.test), (rows[:10], rows[10:40], rows[40:50])):
        np.testing.assert_array_equal(y, part[:, 0])
        np.testing.assert_allclose(denormalize(ds, x), part[:, 1:], atol=1e-4)
    np.testing.assert_allclose(ds.mean, rows[10:40, 1:].mean(axis=0), atol=1e-5)


def test_higgs_test_split_takes_what_is_left(tmp_path):
    path = write_higgs(tmp_path / "h.csv.gz", higgs_rows(44))
    ds = datasets.load("higgs", data_path=path, validation_size=10, train_size=30)
    assert len(ds.test[1]) == 4


# Each bad input, and a fragment of the one message it must give.
HIGGS_BAD = {
    "extra column": (lambda r: np.hstack([r, r[:, :1]]), "line 1: 30 columns; the HIGGS format has 29"),
    "short row": (lambda r: r, "Expect 29 fields but have 28 in record"),
    "label 2": (lambda r: np.vstack([r[:3], [2] + [0] * 28, r[3:]]), "label 2 is out of range; higgs labels are 0..1"),
    "label 0.5": (lambda r: np.vstack([r[:5], [0.5] + [0] * 28, r[5:]]), "not a whole number"),
    "nan": (lambda r: np.vstack([r[:3], [1] + [np.nan] * 28, r[3:]]), "finite numbers"),
    "too few": (lambda r: r[:40], "40 rows, too few for 10 validation \\+ 30 training"),
}


@pytest.mark.parametrize("case", sorted(HIGGS_BAD))
def test_higgs_bad_data(tmp_path, case):
    change, message = HIGGS_BAD[case]
    path = write_higgs(tmp_path / "h.csv.gz", change(higgs_rows(50)))
    if case == "short row":  # a later row is one column short
        with gzip.open(path, "at") as f:
            f.write("1" + ",0" * 27 + "\n")
    with pytest.raises(DataError, match=message):
        datasets.load("higgs", data_path=path, validation_size=10, train_size=30)


def test_higgs_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        datasets.load("higgs", data_path=str(tmp_path / "missing.csv.gz"))
    good = open(write_higgs(tmp_path / "good.csv.gz", higgs_rows(1000)), "rb").read()
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(good[: len(good) // 2])  # the first lines still decompress
    with pytest.raises(DataError, match="not readable as HIGGS data"):
        datasets.load("higgs", data_path=str(truncated), validation_size=10, train_size=30)
    text = tmp_path / "words.csv"
    text.write_text("label" + ",x" * 28 + "\n")  # a header row
    with pytest.raises(DataError, match="not readable as HIGGS data.*not a valid float"):
        datasets.load("higgs", data_path=str(text))


# -- npz -------------------------------------------------------------------------


def mnist_like(path, n_train=100, n_test=20, **extra):
    rs = np.random.RandomState(0)
    arrays = dict(
        x_train=rs.randint(0, 256, (n_train, 4, 4)).astype(np.uint8),
        y_train=rs.randint(0, 10, n_train).astype(np.uint8),
        x_test=rs.randint(0, 256, (n_test, 4, 4)).astype(np.uint8),
        y_test=rs.randint(0, 10, n_test).astype(np.uint8),
    )
    arrays.update(extra)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path), arrays


def test_npz_carves_validation_from_train(tmp_path):
    path, arrays = mnist_like(tmp_path / "mnist.npz")
    ds = datasets.load("npz", data_path=path)
    assert ds.feature_shape == (4, 4) and ds.num_classes == 10
    assert (len(ds.train[1]), len(ds.validation[1]), len(ds.test[1])) == (90, 10, 20)
    np.testing.assert_allclose(
        denormalize(ds, ds.test[0]), arrays["x_test"].reshape(20, -1), atol=1e-3
    )
    # Train and validation together are the file's training rows, each once.
    both = np.concatenate([denormalize(ds, ds.train[0]), denormalize(ds, ds.validation[0])])
    key = lambda a: sorted(map(tuple, np.rint(a).astype(int)))  # noqa: E731
    assert key(both) == key(arrays["x_train"].reshape(100, -1))
    other = datasets.load("npz", data_path=path, seed=1)
    assert not np.array_equal(other.validation[1], ds.validation[1])


def test_npz_uses_given_validation(tmp_path):
    rs = np.random.RandomState(1)
    path, _ = mnist_like(
        tmp_path / "m.npz", x_val=rs.randint(0, 9, (7, 4, 4)), y_val=np.arange(7)
    )
    ds = datasets.load("npz", data_path=path, train_size=50)
    assert (len(ds.train[1]), len(ds.validation[1])) == (50, 7)
    np.testing.assert_array_equal(ds.validation[1], np.arange(7))


NPZ_BAD = {
    "missing key": (dict(y_test=None), "missing arrays y_test"),
    "one-hot": (dict(y_train=np.eye(10)[np.arange(100) % 10]), "one-hot"),
    "strings": (dict(y_test=np.array(["a"] * 20)), "labels are <U1"),
    "fractions": (dict(y_train=np.full(100, 0.5)), "not a whole number"),
    "negative": (dict(y_test=-np.ones(20, np.int64)), "out of range"),
    "rows": (dict(y_train=np.zeros(99)), "one row per example"),
    "test shape": (
        dict(x_test=np.zeros((20, 4, 4, 1), np.uint8)),
        r"test examples have shape \(4, 4, 1\), the training ones \(4, 4\)",
    ),
}


@pytest.mark.parametrize("case", sorted(NPZ_BAD))
def test_npz_bad_data(tmp_path, case):
    extra, message = NPZ_BAD[case]
    path, _ = mnist_like(tmp_path / "m.npz", **extra)
    with pytest.raises(DataError, match=message):
        datasets.load("npz", data_path=path)


def test_npz_corrupt_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match="not a readable .npz file"):
        datasets.load("npz", data_path=str(path))


# -- csv -------------------------------------------------------------------------


def write_csv(path, rows, header=None):
    lines = [",".join(header)] if header else []
    lines += [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def csv_rows(n=40):
    rs = np.random.RandomState(2)
    return [[round(a, 3), round(b, 3), int(c)] for a, b, c in zip(rs.randn(n), rs.randn(n), rs.randint(0, 3, n))]


def test_csv_label_column_by_default_name_and_index(tmp_path):
    rows = csv_rows()
    last = datasets.load("csv", data_path=write_csv(tmp_path / "a.csv", rows))
    assert last.num_classes == 3 and last.feature_shape == (2,)
    assert (len(last.train[1]), len(last.validation[1]), len(last.test[1])) == (28, 6, 6)
    moved = [[r[2], r[0], r[1]] for r in rows]  # label first, under a header
    named = datasets.load(
        "csv", data_path=write_csv(tmp_path / "b.csv", moved, ["kind", "u", "v"]), label_column="kind"
    )
    indexed = datasets.load("csv", data_path=write_csv(tmp_path / "c.csv", moved), label_column="0")
    for ds in (named, indexed):
        for part in ("train", "validation", "test"):
            np.testing.assert_array_equal(getattr(ds, part)[1], getattr(last, part)[1])
            np.testing.assert_allclose(getattr(ds, part)[0], getattr(last, part)[0], atol=1e-6)


CSV_BAD = {
    "ragged": (lambda r: r[:5] + [r[5][:2]] + r[6:], "line 6: 2 columns, expected 3"),
    "word": (lambda r: r[:3] + [[1.0, "abc", 1]] + r[4:], "line 4, column 2: 'abc' is not a number"),
    "inf": (lambda r: r[:3] + [[1.0, "inf", 1]] + r[4:], "finite numbers"),
    "negative label": (lambda r: r + [[0.0, 0.0, -1]], "out of range"),
    "one class": (lambda r: [[a, b, 0] for a, b, _ in r], "at least 2 classes"),
    "too few": (lambda r: r[:3], "too few"),
}


@pytest.mark.parametrize("case", sorted(CSV_BAD))
def test_csv_bad_data(tmp_path, case):
    change, message = CSV_BAD[case]
    path = write_csv(tmp_path / "bad.csv", change(csv_rows()))
    with pytest.raises(DataError, match=message):
        datasets.load("csv", data_path=path, **({"train_size": 30} if case == "too few" else {}))


def test_csv_unknown_label_column_and_not_text(tmp_path):
    path = write_csv(tmp_path / "a.csv", csv_rows(), ["u", "v", "kind"])
    with pytest.raises(DataError, match="no label column 'label'; the header has u, v, kind"):
        datasets.load("csv", data_path=path, label_column="label")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 10)
    with pytest.raises(DataError, match="not a text CSV"):
        datasets.load("csv", data_path=str(binary))


def test_csv_reads_as_python_reads_it(tmp_path):
    # NumPy's parser refuses "1_000"; float takes it, and read_csv reads such
    # a file as it did before NumPy (a quoted line break in a cell too).
    odd = tmp_path / "odd.csv"
    odd.write_bytes(b'u,v\r\n1_000,"2\n"\r\n\r\n3, 4.5\r\n')
    header, rows = readers.read_csv(str(odd), header=None)
    assert header == ["u", "v"] and rows.tolist() == [[1000.0, 2.0], [3.0, 4.5]]
    odd.write_bytes(b"u,v\r1,2\r")  # csv refuses bare \r line ends
    with pytest.raises(DataError, match="odd.csv: not readable as CSV"):
        readers.read_csv(str(odd), header=None)
    # Lines are counted with the blank ones, in a gzip file too.
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2\n\n3,4\n\n5,x y\n6\n"))
    with pytest.raises(DataError, match="line 5, column 2: 'x y' is not a number"):
        readers.read_csv(str(bad), header=None)
    bad.write_bytes(gzip.compress(b"a,b\n1,2\n3\n5,x\n"))
    with pytest.raises(DataError, match="line 3: 1 columns, expected 2"):
        readers.read_csv(str(bad), header=None)
    good = tmp_path / "good.csv"
    good.write_text("a,b\n\n1, 2.5\n-3e2,inf\n")
    header, rows = readers.read_csv(str(good), header=None)
    assert header == ["a", "b"] and rows.tolist() == [[1.0, 2.5], [-300.0, np.inf]]


# -- synthetic, arguments, pipelines ----------------------------------------------


def test_synthetic_is_seeded():
    a, b = datasets.load("synthetic", seed=3), datasets.load("synthetic", seed=3)
    c = datasets.load("synthetic", seed=4)
    np.testing.assert_array_equal(a.train[0], b.train[0])
    assert not np.array_equal(a.train[0], c.train[0])
    assert 0.3 < a.train[1].mean() < 0.7  # both classes well represented


def test_argument_errors_are_data_errors():
    assert issubclass(DataError, ValueError)
    for kwargs, message in [
        (dict(name="mnist"), "unknown data set 'mnist'"),
        (dict(name="csv"), "needs a file"),
        (dict(name="digits", data_path="x.csv"), "reads no file"),
        (dict(name="synthetic", label_column="y"), "csv data set only"),
    ]:
        with pytest.raises(DataError, match=message):
            datasets.load(**kwargs)
    with pytest.raises(ValueError, match="`train_size` \\(0\\) must be a positive integer"):
        datasets.load("digits", train_size=0)


def test_pipeline_reshuffles_every_epoch():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10, dtype=np.int32)
    batches = list(datasets.pipeline(x, y, 5, seed=1).take(6))
    assert all(bx.shape == (5, 1) for bx, _ in batches)
    epochs = [np.concatenate([by.numpy() for _, by in batches[i : i + 2]]) for i in (0, 2, 4)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))  # each epoch sees every example once
    assert len({tuple(e) for e in epochs}) == 3  # in a new order each time
    evaluation = datasets.pipeline(x, y, 4, training=False)
    assert np.concatenate([by.numpy() for _, by in evaluation]).tolist() == list(range(10))
    with pytest.raises(DataError, match="exceeds the 10 training examples"):
        datasets.pipeline(x, y, 11)
    assert isinstance(evaluation, tf.data.Dataset)


def _npz(tmp_path, y_train, y_test, x_train=None):
    rs = np.random.RandomState(0)
    x_train = rs.randn(len(y_train), 3) if x_train is None else x_train
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=np.asarray(y_train),
             x_test=rs.randn(len(y_test), 3), y_test=np.asarray(y_test))
    return str(path)


def test_labels_one_to_k_are_refused_as_off_by_one(tmp_path):
    y = np.arange(40) % 3 + 1  # 1..3, no 0
    with pytest.raises(DataError, match=r"no training label is 0: labels must be class indices 0..3; labels 1..K are off by one"):
        datasets.load("npz", data_path=_npz(tmp_path, y, y[:6]), validation_size=6)


def test_a_class_seen_only_outside_training_is_refused(tmp_path):
    y_train = np.arange(40) % 2
    with pytest.raises(DataError, match="class 2 never occurs in the training split"):
        datasets.load("npz", data_path=_npz(tmp_path, y_train, [0, 1, 2, 2]), validation_size=6)


def test_complex_features_are_refused_not_truncated(tmp_path):
    y = np.arange(40) % 2
    x = np.random.RandomState(1).randn(40, 3) + 1j
    with pytest.raises(DataError, match=r"train features are complex \(complex128\)"):
        datasets.load("npz", data_path=_npz(tmp_path, y, y[:6], x_train=x), validation_size=6)
