"""Tests of lowtf.export, bin/export and bin/predict: SavedModel export and inference."""

import gzip
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from _fixtures import bin_train_in_process, tree_digest

import lowtf
from lowtf import export
from lowtf.export import spec as spec_lib
from lowtf import job
from lowtf.train import early_stopping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
# Raw features far from standardized: the export must normalize them itself.
RAW_SCALE, RAW_SHIFT = 3.0, 5.0


def _raw_binary(n, seed):
    """Raw (un-normalized) features [n, 28] and labels of a learnable problem."""
    x, y = lowtf.data.datasets.synthetic(n, seed=seed)
    return x * RAW_SCALE + RAW_SHIFT, y


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny MLP with dropout and batch norm, fit on normalized synthetic data."""
    root = tmp_path_factory.mktemp("fitted")
    x, y = _raw_binary(400, seed=1)
    mean, std = x[:300].mean(0), x[:300].std(0)
    norm = (x - mean) / std
    model = lowtf.mlp((16, 16), dropout=0.5, batchnorm=True, seed=3)
    lowtf.fit(
        model,
        tf.keras.optimizers.Adam(1e-2),
        train=(norm[:300], y[:300]),
        validation=(norm[300:], y[300:]),
        model_dir=str(root / "run"),
        config=lowtf.TrainConfig(
            batch_size=50, max_steps=40, eval_every=20, steps_per_call=20
        ),
        step_options=lowtf.StepOptions(jit_compile=False),
        log=lambda line: None,
    )
    path = export.save(
        model, str(root / "export"), feature_shape=(28,), mean=mean, std=std
    )
    rows = _raw_binary(37, seed=9)[0]
    p1 = tf.sigmoid(model((rows - mean) / std, training=False)).numpy()[:, 0]
    expected = np.stack([1 - p1, p1], axis=1)
    return model, path, rows, expected


# Run in a fresh interpreter: TensorFlow and NumPy only.
_LOAD_WITHOUT_LOWTF = """
import sys, json
import numpy as np
import tensorflow as tf
path, rows_file, out_file = sys.argv[1:]
serve = tf.saved_model.load(path).signatures["serving_default"]
rows = np.load(rows_file)
whole = serve(features=tf.constant(rows))
again = serve(features=tf.constant(rows))
one_by_one = [serve(features=tf.constant(rows[i : i + 1]))["probabilities"].numpy() for i in range(len(rows))]
spec = serve.structured_input_signature[1]["features"]
np.savez(
    out_file,
    probabilities=whole["probabilities"].numpy(),
    class_ids=whole["class_ids"].numpy(),
    again=again["probabilities"].numpy(),
    one_by_one=np.concatenate(one_by_one),
)
print(json.dumps({
    "lowtf_imported": any(name.split(".")[0] == "lowtf" for name in sys.modules),
    "input": [spec.dtype.name, spec.shape.as_list()],
    "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in serve.structured_outputs.items()},
    "class_ids_dtype": whole["class_ids"].dtype.name,
}))
"""


def _load_in_fresh_process(path, rows, tmp_path):
    rows_file, out_file = str(tmp_path / "rows.npy"), str(tmp_path / "out.npz")
    np.save(rows_file, rows)
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_LOWTF, path, rows_file, out_file],
        env={**ENV, "PYTHONPATH": ""},  # not even findable
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), dict(np.load(out_file))


@pytest.mark.e2e
def test_export_matches_the_model_in_a_process_without_lowtf(fitted, tmp_path):
    _model, path, rows, expected = fitted
    info, out = _load_in_fresh_process(path, rows, tmp_path)
    assert info["lowtf_imported"] is False
    assert info["input"] == ["float32", [None, 28]]
    assert info["outputs"] == {
        "probabilities": ["float32", [None, 2]],
        "class_ids": ["int64", [None]],
    }
    assert info["class_ids_dtype"] == "int64"
    np.testing.assert_allclose(out["probabilities"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"], np.argmax(expected, axis=1))
    # Both classes occur, so the comparison covers both columns' winners.
    assert set(out["class_ids"]) == {0, 1}
    # Dropout off: two calls agree bit for bit.
    np.testing.assert_array_equal(out["again"], out["probabilities"])
    # Batch norm on moving statistics: a row alone gets what it gets in a batch
    # (batch statistics of one row would normalize every unit to beta).
    np.testing.assert_allclose(
        out["one_by_one"], out["probabilities"], rtol=0, atol=1e-6
    )


@pytest.mark.e2e
def test_batch_norm_exports_its_moving_statistics(fitted):
    model, path, rows, expected = fitted
    norms = [
        i for i, layer in enumerate(model.layers) if isinstance(layer, lowtf.BatchNorm)
    ]
    assert len(norms) == 2
    loaded = tf.saved_model.load(path)
    for i in norms:
        moving = model.layers[i].moving_mean.numpy()
        assert np.abs(moving).max() > 1e-3  # trained away from the initial zeros
        np.testing.assert_array_equal(
            loaded.model.layers[i].moving_mean.numpy(), moving
        )
    # Batch statistics would give another answer on this batch.
    p1 = tf.sigmoid(model((rows - rows.mean(0)) / rows.std(0), training=False))
    serve = loaded.signatures["serving_default"]
    got = serve(features=tf.constant(rows))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.abs(got[:, 1] - p1.numpy()[:, 0]).max() > 1e-3


@pytest.mark.e2e
def test_versions_follow_serving_layout(fitted, tmp_path):
    model = fitted[0]
    base = str(tmp_path / "exports")
    first = export.save(model, base, feature_shape=(28,))
    second = export.save(model, base, feature_shape=(28,))
    assert (first, second) == (os.path.join(base, "1"), os.path.join(base, "2"))
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary left
    assert os.path.exists(os.path.join(second, "saved_model.pb"))
    assert export.latest(base) == second and export.latest(second) == second
    with pytest.raises(
        ValueError, match=r"`version` \(2\) exists .* next free one \(3\)"
    ):
        export.save(model, base, feature_shape=(28,), version=2)
    assert export.save(model, base, feature_shape=(28,), version=7).endswith("7")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A digits CNN run by run_job with --export_dir, batch norm and dropout."""
    root = tmp_path_factory.mktemp("cnn")
    config = job.JobConfig(
        dataset="digits",
        model="cnn",
        batchnorm=True,
        dropout=0.3,
        train_size=200,
        xla=False,
        batch_size=50,
        max_steps=20,
        eval_every=10,
        steps_per_call=10,
        model_dir=str(root / "run"),
        export_dir=str(root / "export"),
    )
    lines = []
    result = job.run_job(config, log=lines.append)
    return config, result, lines


@pytest.mark.e2e
def test_run_job_writes_model_json_and_exports_a_cnn(cnn_run):
    config, result, lines = cnn_run
    spec, mean, std = spec_lib.read(config.model_dir)
    assert spec["model"] == "cnn" and spec["activation"] == "relu"
    assert (spec["num_classes"], spec["feature_shape"], spec["image_shape"]) == (
        10,
        [64],
        [8, 8, 1],
    )
    data = lowtf.load_dataset("digits", train_size=200)
    np.testing.assert_array_equal(mean, data.mean)
    np.testing.assert_array_equal(std, data.std)
    path = os.path.join(config.export_dir, "1")
    assert (
        lines[-1] == f"exported the best snapshot (step {result.best_step}) to {path}"
    )
    # The in-process model: rebuilt, best snapshot restored, normalized rows.
    model = spec_lib.rebuild(spec)
    model(tf.zeros([1, 64]))
    prefix = early_stopping.best_checkpoint(os.path.join(config.model_dir, "best"))[
        "prefix"
    ]
    tf.train.Checkpoint(model=model).read(prefix).expect_partial()
    rows = np.random.default_rng(0).integers(0, 17, (25, 64)).astype(np.float32)
    expected = tf.nn.softmax(model((rows - mean) / std, training=False)).numpy()
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(features=tf.constant(rows))
    np.testing.assert_allclose(
        out["probabilities"].numpy(), expected, rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(out["class_ids"].numpy(), expected.argmax(1))
    # The model's test accuracy, through the export.
    raw = data.test[0] * data.std + data.mean
    ids = serve(features=tf.constant(raw))["class_ids"].numpy()
    assert abs(np.mean(ids == data.test[1]) - result.test_accuracy) < 0.01


def test_export_refuses_a_directory_without_model_json(tmp_path):
    with pytest.raises(ValueError, match="model.json not found"):
        export.export(str(tmp_path), str(tmp_path / "export"))


# -- bin/export and bin/predict ------------------------------------------------------


def _errors(stderr):
    """The `error:` lines of a binary's stderr (TensorFlow's C++ start-up lines aside)."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:]  # the last line, and nothing like it before
    return errors


def _run(binary, *args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", binary), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _start(binary, *args):
    """A binary started in the background (``communicate()`` waits for it)."""
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bin", binary), *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny synthetic run of run_job (no export yet)."""
    root = tmp_path_factory.mktemp("tiny")
    config = job.JobConfig(
        dataset="synthetic",
        train_size=200,
        validation_size=100,
        model="tiny",
        xla=False,
        batch_size=50,
        max_steps=40,
        eval_every=20,
        steps_per_call=20,
        model_dir=str(root / "run"),
    )
    job.run_job(config, log=lambda line: None)
    return root, config.model_dir


@pytest.mark.e2e
def test_bin_export_and_bin_predict_on_csv_gz_and_npz(tiny_run):
    root, model_dir = tiny_run
    exports = str(root / "exports")
    done = _run("export", f"--model_dir={model_dir}", f"--export_dir={exports}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"exported {model_dir} to {exports}/1"
    refused = _run(
        "export", f"--model_dir={model_dir}", f"--export_dir={exports}", "--version=1"
    )
    assert refused.returncode == 2
    assert _errors(refused.stderr) == [
        f"error: --version (1) exists in {exports}; leave it out for the next free one (2)"
    ]

    rows = _raw_binary(23, seed=5)[0]
    serve = tf.saved_model.load(f"{exports}/1").signatures["serving_default"]
    expected = serve(features=tf.constant(rows))
    probabilities = expected["probabilities"].numpy()
    ids = expected["class_ids"].numpy()

    header = ",".join(f"f{i}" for i in range(28))
    body = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)
    (root / "rows.csv").write_text(header + "\n" + body)
    with gzip.open(root / "rows.csv.gz", "wt") as f:
        f.write(body)  # no header
    np.savez(root / "rows.npz", x=rows)
    for name in ("rows.csv", "rows.csv.gz", "rows.npz"):
        output = str(root / f"{name}.predictions.csv")
        if name != "rows.csv":
            # bin/predict runs predict_file and prints its lines: these formats
            # in process spare a TensorFlow start-up (seconds) each.
            lines = []
            rows_read = export.predict_file(
                exports, str(root / name), output, batch_size=10, log_every=10,
                log=lines.append,
            )  # fmt: skip
            assert rows_read == 23
        else:
            done = _run(
                "predict",
                f"--model={exports}",
                f"--data_path={root / name}",
                f"--output={output}",
                "--batch_size=10",  # three batches, the last one short
                "--log_every=10",
            )
            assert done.returncode == 0, done.stderr[-2000:]
            lines = done.stdout.splitlines()
        assert lines == [
            "predict: 10 rows",
            "predict: 20 rows",
            f"predict: 23 rows written to {output}",
        ]
        with open(output) as f:
            assert f.readline() == "class_id,p0,p1\n"
        table = np.loadtxt(output, delimiter=",", skiprows=1)
        assert table.shape == (23, 3)
        np.testing.assert_array_equal(table[:, 0], ids)
        # Batches of 10 round apart from one of 23 in the last float32 bits.
        np.testing.assert_allclose(table[:, 1:], probabilities, rtol=0, atol=1e-6)

    (root / "wide.csv").write_text(body.replace("\n", ",1.0\n"))
    done = _run(
        "predict", f"--model={exports}", f"--data_path={root / 'wide.csv'}",
        f"--output={root / 'wide.predictions.csv'}",
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert _errors(done.stderr) == [
        (
            f"error: {root / 'wide.csv'}: 29 columns; the model takes 28 features "
            f"per row (shape (28,)), and a row holds nothing else (no label)"
        )
    ]
    assert not os.path.exists(root / "wide.predictions.csv")


@pytest.mark.e2e
def test_predict_file_refuses_bad_rows_dtypes_and_shapes(tiny_run, tmp_path):
    _root, model_dir = tiny_run
    path = export.export(model_dir, str(tmp_path / "exports"))
    output = str(tmp_path / "out.csv")
    good = ",".join(["0.5"] * 28)
    cases = {
        "short.csv": (
            f"{good}\n{good}\n{','.join(['1'] * 27)}\n",
            "data row 2 has 27 columns; the model takes 28",
        ),
        "text.csv": (
            f"{good}\n{good.replace('0.5', 'abc', 1)}\n",
            "data row 1, column 0 is abc",
        ),
        "empty.csv": (
            f"{good}\n{good.replace('0.5', '', 1)}\n",
            "data row 1, column 0 is empty",
        ),
        "nan.csv": (f"{good}\n{good.replace('0.5', 'nan', 1)}\n", "row 1 holds nan"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(lowtf.DataError, match=message):
            export.predict_file(
                path, str(tmp_path / name), output, log=lambda line: None
            )
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 27), np.float32))
    np.savez(tmp_path / "dtype.npz", x=np.array([["a"] * 28]))
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 28)), b=np.zeros((4, 28)))
    for name, message in (
        (
            "shape.npz",
            r"x has examples of shape \(27,\) \(array \(4, 27\)\); the model takes \(28,\)",
        ),
        ("dtype.npz", "x is <U1; the model takes numbers"),
        ("two.npz", "holds a, b; name the features with --npz_key"),
    ):
        with pytest.raises(lowtf.DataError, match=message):
            export.predict_file(
                path, str(tmp_path / name), output, log=lambda line: None
            )
    assert not os.path.exists(output) and not os.path.exists(output + ".tmp")
    # Integer pixels are numbers: converted, as the loader converts them.
    np.savez(tmp_path / "ints.npz", x=np.arange(3 * 28).reshape(3, 28))
    assert (
        export.predict_file(
            path, str(tmp_path / "ints.npz"), output, log=lambda line: None
        )
        == 3
    )


@pytest.mark.e2e
def test_bin_train_export_dir_exports_at_the_end(tmp_path):
    # bin/train's flags through run_job, in process (bin/train prints these
    # lines; its flags.txt is test_bin_train's).
    exports, lines = str(tmp_path / "exports"), []
    bin_train_in_process([
        "--dataset=synthetic", "--train_size=200", "--validation_size=100",
        "--model=tiny", "--noxla", "--batch_size=50", "--max_steps=20",
        "--eval_every=10", "--steps_per_call=10", f"--model_dir={tmp_path / 'run'}",
        f"--export_dir={exports}",
    ], log=lines.append)  # fmt: skip
    assert lines[-1] == f"exported the best snapshot (step 20) to {exports}/1"
    assert os.path.exists(os.path.join(exports, "1", "saved_model.pb"))


# -- nothing lost, nothing silently wrong ---------------------------------------------


def _csv(rows, header=None, *, quote=False, bom=False, newline="\n"):
    """csv text of ``rows`` (repr of each float, optionally quoted) under ``header``."""
    q = '"' if quote else ""
    lines = [] if header is None else [header]
    lines += [",".join(f"{q}{float(v)!r}{q}" for v in row) for row in rows]
    return ("\ufeff" if bom else "") + newline.join(lines) + newline


def _predictions(path):
    """An output's rows as numbers: (class ids, probabilities)."""
    with open(path) as f:
        assert f.readline() == "class_id,p0,p1\n"
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return table[:, 0], table[:, 1:]


@pytest.fixture(scope="module")
def clean(fitted, tmp_path_factory):
    """300 raw rows, and what predict_file writes for them from a header-less csv."""
    _model, path, _rows, _expected = fitted
    root = tmp_path_factory.mktemp("clean")
    rows = _raw_binary(300, seed=11)[0]
    (root / "rows.csv").write_text(_csv(rows))
    export.predict_file(
        path, str(root / "rows.csv"), str(root / "out.csv"), log=lambda line: None
    )
    serve = tf.saved_model.load(path).signatures["serving_default"]
    probabilities = serve(features=tf.constant(rows))["probabilities"].numpy()
    ids, got = _predictions(root / "out.csv")
    np.testing.assert_allclose(got, probabilities, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ids, probabilities.argmax(1))
    return path, rows, (root / "out.csv").read_bytes()


@pytest.mark.e2e
def test_predict_never_writes_over_the_input_or_a_file_it_did_not_make(
    clean, tmp_path, monkeypatch
):
    path, rows, expected = clean
    data = tmp_path / "data" / "rows.csv"
    data.parent.mkdir()
    data.write_text(_csv(rows))
    os.symlink(data, tmp_path / "link.csv")
    os.link(data, tmp_path / "hard.csv")
    (tmp_path / "out.csv").write_text("an older output\n")
    (tmp_path / "out.csv.tmp").write_text("a file of the user's\n")
    (tmp_path / "folder").mkdir()
    before = tree_digest(tmp_path)

    # The input through a symlink and "..", and the other spellings, with or
    # without overwrite: refused before anything is written. (In process:
    # bin/predict runs predict_file and prints a refusal as one line `error: `,
    # test_bin_export_and_bin_predict_on_csv_gz_and_npz.)
    spelled = f"{tmp_path}/data/../link.csv"
    with pytest.raises(ValueError) as refused:
        export.predict_file(path, str(data), spelled)
    assert str(refused.value) == (
        f"--output ({spelled}) is --data_path ({data}); predictions never "
        f"replace their input: name another file"
    )
    monkeypatch.chdir(tmp_path / "data")
    for output in (
        "rows.csv",
        "./rows.csv",
        "../hard.csv",
        f"{tmp_path}//data/rows.csv",
    ):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=r"is --data_path .* never replace"):
                export.predict_file(path, str(data), output, overwrite=overwrite)
    for output, message in (
        (tmp_path / "out.csv", r"exists; pass --overwrite to replace it"),
        (tmp_path / "folder", rf"--output \({tmp_path}/folder\) is a directory; name a file"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            export.predict_file(path, str(data), str(output))
    assert tree_digest(tmp_path) == before

    # --overwrite replaces the output, and only it: the user's out.csv.tmp stays.
    lines = []
    export.predict_file(
        path, str(data), str(tmp_path / "out.csv"), overwrite=True, log=lines.append
    )
    assert lines == [f"predict: 300 rows written to {tmp_path / 'out.csv'}"]
    assert (tmp_path / "out.csv").read_bytes() == expected
    after = tree_digest(tmp_path)
    del after["out.csv"], before["out.csv"]
    assert after == before  # no temporary left, nothing else touched


@pytest.mark.e2e
def test_bin_predict_takes_no_data_row_for_a_header(clean, tmp_path):
    path, rows, expected = clean
    columns = ",".join(str(i) for i in range(28))  # pandas' header of an array
    (tmp_path / "pandas.csv").write_text(_csv(rows, columns))
    whole = np.round(rows)  # whole-number rows: column numbers are ambiguous
    (tmp_path / "whole.csv").write_text(
        columns
        + "\n"
        + "".join(",".join(str(int(v)) for v in row) + "\n" for row in whole)
    )
    # The binary with --header=yes (the other choices run in process below).
    binary = _start(
        "predict",
        f"--model={path}",
        f"--data_path={tmp_path / 'whole.csv'}",
        f"--output={tmp_path / 'whole.csv'}.out",
        "--header=yes",
    )
    inputs = tree_digest(tmp_path)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    whole_expected = serve(features=tf.constant(whole))["probabilities"].numpy()
    first = serve(features=tf.constant([np.arange(28.0)], tf.float32))["probabilities"]

    # In process meanwhile: every spelling of the 300 rows gives the same bytes.
    header = ",".join(f"f{i}" for i in range(28))
    same = {
        "bom.csv": _csv(rows, bom=True),
        "bom_header_crlf.csv": _csv(rows, header, bom=True, newline="\r\n"),
        "quoted.csv": _csv(rows, quote=True),
        "quoted_header.csv": _csv(
            rows, ",".join(f'"{c}"' for c in header.split(",")), quote=True
        ),
        "quoted_columns.csv": _csv(rows, ",".join(f'"{i}"' for i in range(28))),
        "one_based.csv": _csv(rows, ",".join(str(i + 1) for i in range(28))),
    }
    for name, text in same.items():
        (tmp_path / name).write_text(text, newline="")
        assert (
            export.predict_file(
                path, str(tmp_path / name), str(tmp_path / f"{name}.out")
            )
            == 300
        )
        assert (tmp_path / f"{name}.out").read_bytes() == expected, name
    with gzip.open(tmp_path / "pandas.csv.gz", "wt") as f:
        f.write(_csv(rows, columns))
    export.predict_file(path, str(tmp_path / "pandas.csv.gz"), str(tmp_path / "gz.out"))
    assert (tmp_path / "gz.out").read_bytes() == expected

    # A first row that is not all text nor column numbers is data, checked as any.
    typo = _csv(rows).splitlines(True)
    bad0 = typo[0].split(",")
    bad0[5] = "1.2.3"
    bad30 = typo[30].split(",")
    bad30[5] = "1.2.3"
    empty = typo[0].split(",")
    empty[2] = ""
    failing = {
        "typo_row_0.csv": (
            ",".join(bad0) + "".join(typo[1:]), "auto",
            "data row 0, column 5 is 1.2.3, not a number; if row 0 is a header, pass --header=yes",
        ),
        "typo_row_30.csv": (
            "".join(typo[:30]) + ",".join(bad30) + "".join(typo[31:]), "auto",
            "data row 30, column 5 is 1.2.3, not a number",
        ),
        "empty_row_0.csv": (
            ",".join(empty) + "".join(typo[1:]), "auto",
            "data row 0, column 2 is empty; if row 0 is a header, pass --header=yes",
        ),
        "header_with_a_number.csv": (
            _csv(rows, header.replace("f27", "27")), "auto",
            "data row 0, column 0 is f0, not a number; if row 0 is a header, pass --header=yes",
        ),
        "whole.csv": (
            None, "auto",
            (
                "row 0 is 0,1,...,27, the column numbers (what pandas writes as a header), "
                "and the file has other rows with whole numbers too: it may be a header or "
                "an example; pass --header=yes or --header=no"
            ),
        ),
        "text_header.csv": (_csv(rows, header), "no", "data row 0, column 0 is f0, not a number"),
    }  # fmt: skip
    for name, (text, choice, message) in failing.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        output = str(tmp_path / f"{name}.failed")
        with pytest.raises(lowtf.DataError) as error:
            export.predict_file(path, str(tmp_path / name), output, header=choice)
        assert str(error.value) == f"{tmp_path / name}: {message}"
        assert not os.path.exists(output)
    export.predict_file(
        path, str(tmp_path / "header_with_a_number.csv"),
        str(tmp_path / "number.out"), header="yes",
    )  # fmt: skip
    assert (tmp_path / "number.out").read_bytes() == expected
    # --header=no keeps the column numbers as an example: 301 rows, said so.
    export.predict_file(
        path, str(tmp_path / "whole.csv"), str(tmp_path / "no.out"), header="no"
    )
    ids, got = _predictions(tmp_path / "no.out")
    assert got.shape == (301, 2)
    np.testing.assert_allclose(got[0], first.numpy()[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[1:], whole_expected, rtol=0, atol=1e-6)

    # The binary: 300 rows out for 300 data rows in; pandas' header in process.
    stdout, stderr = binary.communicate(timeout=300)
    assert binary.returncode == 0, stderr[-2000:]
    assert stdout == f"predict: 300 rows written to {tmp_path / 'whole.csv'}.out\n"
    export.predict_file(path, str(tmp_path / "pandas.csv"), str(tmp_path / "pandas.csv.out"))
    assert (tmp_path / "pandas.csv.out").read_bytes() == expected
    ids, got = _predictions(tmp_path / "whole.csv.out")
    assert got.shape == (300, 2)
    np.testing.assert_allclose(got, whole_expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ids, whole_expected.argmax(1))
    for name in ("pandas.csv", "whole.csv"):
        assert tree_digest(tmp_path)[name] == inputs[name]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


@pytest.mark.e2e
def test_bin_predict_stops_on_sigint_and_sigterm_without_a_trace(clean, tmp_path):
    path, rows, _expected = clean
    np.savetxt(tmp_path / "big.csv", np.tile(rows, (70, 1)), fmt="%.7g", delimiter=",")
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        folder = tmp_path / sig.name
        folder.mkdir()
        (folder / "out.csv").write_text("an older output\n")
        (folder / "out.csv.tmp").write_text("a file of the user's\n")
        before = tree_digest(tmp_path)
        runs[sig] = before, _start(
            "predict", f"--model={path}", f"--data_path={tmp_path / 'big.csv'}",
            f"--output={folder / 'out.csv'}", "--overwrite", "--batch_size=1",
            "--log_every=100",
        )  # fmt: skip
    for sig, (before, done) in runs.items():
        # Mid-way: a progress line printed, the temporary file there.
        assert done.stdout.readline() == "predict: 100 rows\n"
        made = set(os.listdir(tmp_path / sig.name)) - {"out.csv", "out.csv.tmp"}
        assert len(made) == 1 and made.pop().startswith(".out.csv.")
        done.send_signal(sig)
    for sig, (before, done) in runs.items():
        _stdout, stderr = done.communicate(timeout=120)
        assert done.returncode == 128 + sig
        assert "Traceback" not in stderr
        assert _errors(stderr) == [
            f"error: stopped by {sig.name}; no partial output or temporary file is left"
        ]
    # Input, older output and the user's .tmp as they were; nothing else left.
    assert tree_digest(tmp_path) == before


@pytest.mark.e2e
def test_bin_export_says_a_run_in_progress_or_interrupted(tiny_run, tmp_path):
    _root, model_dir = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    # What a run has before its end: best/ and flags.txt, no model.json yet.
    subprocess.run(["cp", "-r", os.path.join(model_dir, "best"), str(run)], check=True)
    (run / "flags.txt").write_text("--model=tiny\n")
    exports = tmp_path / "exports"
    done = _run("export", f"--model_dir={run}", f"--export_dir={exports}")
    assert done.returncode == 2 and done.stdout == ""
    assert _errors(done.stderr) == [
        (
            f"error: {run} is a run that was interrupted before its end (its best snapshot "
            f"so far is step 40): model.json, which the export rebuilds the network from, is "
            f"written when a run ends; resume it with bin/train --flagfile={run}/flags.txt "
            f"and let it finish, or stop it with Ctrl-C once it has started (it then writes "
            f"model.json), and export after"
        )
    ]
    # A live process holds the lock: in progress.
    host = socket.gethostname()
    (run / "lock").write_text(json.dumps({"host": host, "pid": os.getpid()}))
    with pytest.raises(ValueError) as error:
        export.export(str(run), str(exports))
    assert str(error.value).startswith(
        f"{run} is a run in progress (pid {os.getpid()} on {host} holds {run}/lock); "
        f"its best snapshot so far is step 40, and model.json"
    )
    assert not exports.exists()


@pytest.mark.e2e
def test_concurrent_exports_take_distinct_versions(
    tiny_run, fitted, tmp_path, monkeypatch
):
    _root, model_dir = tiny_run
    exports = tmp_path / "exports"
    runs = [
        _start("export", f"--model_dir={model_dir}", f"--export_dir={exports}")
        for _ in range(2)
    ]
    # In process meanwhile, a race made certain: another export renames version 1
    # while this one is saving; this one must take 2 and leave 1 as it is.
    model = fitted[0]
    base = tmp_path / "raced"
    real_save = tf.saved_model.save

    other = {}

    def racing_save(obj, path, signatures=None):
        real_save(obj, path, signatures=signatures)
        if not other:
            real_save(obj, str(base / "1"), signatures=signatures)
            other.update(tree_digest(base / "1"))

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    stale, live = f".tmp-{dead.pid}-0-{host}", f".tmp-{os.getpid()}-0-{host}"
    for name in (stale, live):
        os.makedirs(base / name)
    monkeypatch.setattr(tf.saved_model, "save", racing_save)
    assert export.save(model, str(base), feature_shape=(28,)) == f"{base}/2"
    monkeypatch.undo()
    assert other and tree_digest(base / "1") == other
    # A killed export's temporary goes; a live one's stays.
    assert sorted(os.listdir(base)) == sorted(["1", "2", live])

    written = []
    for done in runs:
        stdout, stderr = done.communicate(timeout=300)
        assert done.returncode == 0, stderr[-2000:]
        written.append(stdout.strip())
    assert sorted(written) == [f"exported {model_dir} to {exports}/{v}" for v in (1, 2)]
    assert sorted(os.listdir(exports)) == ["1", "2"]
    rows = _raw_binary(20, seed=4)[0]
    one, two = (
        tf.saved_model.load(f"{exports}/{v}")
        .signatures["serving_default"](features=tf.constant(rows))["probabilities"]
        .numpy()
        for v in (1, 2)
    )
    np.testing.assert_array_equal(one, two)
    assert one.std() > 0
