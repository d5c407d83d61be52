"""bin/convert and streamed data sets in the job: the split, the statistics, the checks."""

import dataclasses
import gzip
import json
import os
import pathlib
import subprocess
import sys

import _fixtures  # tests/_fixtures.py; pytest puts tests/ on sys.path
import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import job
from lowtf.job import run as job_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def higgs_csv(tmp_path_factory):
    """A HIGGS-format gzip CSV (label, 28 features off scale), 3,000 rows; its table."""
    x, y = lowtf.data.synthetic(3000, seed=4)
    x = x * np.arange(1, 29, dtype=np.float32) + 5.0
    table = np.column_stack([y, x]).astype(np.float32)
    path = str(tmp_path_factory.mktemp("csv") / "higgs.csv.gz")
    with gzip.open(path, "wt") as f:
        np.savetxt(f, table, fmt="%.9g", delimiter=",")
    return path, table


@pytest.fixture(scope="module")
def raw_shards(tmp_path_factory):
    """600 raw rows (12 features, 3 classes) as 3 shards without a spec; their glob."""
    rs = np.random.default_rng(2)
    x = (rs.standard_normal((600, 12)) * np.arange(1, 13) + 3).astype(np.float32)
    y = rs.integers(0, 3, 600)
    directory = tmp_path_factory.mktemp("raw")
    lowtf.data.write_tfrecords(x, y, str(directory), "part", shards=3)
    return str(directory / "part-*"), x, y


def _standardized(x, rows):
    mean, std = rows.astype(np.float64).mean(0), rows.astype(np.float64).std(0)
    return (x - mean.astype(np.float32)) / std.astype(np.float32)


def test_shards_without_a_spec_hold_out_their_first_records(raw_shards):
    pattern, x, y = raw_shards
    data = lowtf.data.open_stream(
        "tfrecord", pattern, batch_size=40, validation_size=50
    )
    # Validation the first 50 records, test the next 50, training the 500 after.
    assert (data.train_size, data.num_classes, data.feature_shape) == (500, 3, (12,))
    np.testing.assert_allclose(data.mean, x[100:].astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.std, x[100:].astype(np.float64).std(0), rtol=1e-6)
    np.testing.assert_allclose(
        data.validation[0], _standardized(x[:50], x[100:]), atol=1e-5
    )
    np.testing.assert_array_equal(data.validation[1], y[:50])
    np.testing.assert_array_equal(data.test[1], y[50:100])
    # Every training batch is standardized training rows, never held-out ones.
    train = {np.round(r, 4).tobytes() for r in _standardized(x[100:], x[100:])}
    held = {np.round(r, 4).tobytes() for r in _standardized(x[:100], x[100:])}
    for _ in range(15):  # more than an epoch
        batch = np.round(data.train.next()[0].numpy(), 4)
        assert all(r.tobytes() in train and r.tobytes() not in held for r in batch)
    # The statistics of the first rows only, and of a counted range.
    first = lowtf.data.tfrecord_statistics(
        pattern, feature_shape=(12,), skip=100, max_rows=70
    )
    assert first.rows == 70
    np.testing.assert_allclose(
        first.mean, x[100:170].astype(np.float64).mean(0), rtol=1e-12
    )
    np.testing.assert_allclose(
        first.std, x[100:170].astype(np.float64).std(0), rtol=1e-9
    )


def test_write_split_of_a_loaded_data_set_is_bin_trains_split(tmp_path):
    digits = lowtf.load_dataset("digits", train_size=300)
    spec = lowtf.data.write_split(
        "digits", None, str(tmp_path), shards=2, train_size=300, log=lambda line: None
    )
    assert spec["splits"]["train"]["examples"] == 300
    data = lowtf.data.open_stream("tfrecord", str(tmp_path), batch_size=30)
    assert (data.train_size, data.num_classes, data.statistics_rows) == (300, 10, None)
    for ours, theirs in (
        (data.validation, digits.validation),
        (data.test, digits.test),
    ):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
    np.testing.assert_array_equal(data.mean, digits.mean)
    np.testing.assert_array_equal(data.std, digits.std)
    # bin/sweep's path: the same shards read whole, standardized again.
    whole = lowtf.load_dataset("tfrecord", data_path=str(tmp_path))
    assert whole.num_classes == 10 and len(whole.train[1]) == 300
    np.testing.assert_allclose(whole.train[0], digits.train[0], atol=1e-4)
    np.testing.assert_allclose(whole.test[0], digits.test[0], atol=1e-4)


def test_a_csv_stream_with_a_header_and_a_named_label(tmp_path):
    rs = np.random.default_rng(0)
    x = rs.standard_normal((400, 3)) * [1.0, 10.0, 100.0]
    y = rs.integers(0, 2, 400)
    path = tmp_path / "rows.csv"
    body = "".join(
        f"{a:.6f},{label},{b:.6f},{c:.6f}\n" for (a, b, c), label in zip(x, y)
    )
    path.write_text("a,y,b,c\n" + body)
    data = lowtf.data.open_stream(
        "csv", str(path), batch_size=20, validation_size=40, label_column="y"
    )
    rows = np.round(x, 6)[80:]
    assert (data.train_size, data.num_classes, data.statistics_rows) == (320, 2, 320)
    np.testing.assert_allclose(data.mean, rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.std, rows.std(0), rtol=1e-6)
    np.testing.assert_array_equal(data.validation[1], y[:40])
    np.testing.assert_array_equal(data.test[1], y[40:80])


def _config(**kwargs):
    return job.JobConfig(**{"batch_size": 20, "xla": False, **kwargs})


def test_bad_input_is_one_line_before_training(raw_shards, higgs_csv, tmp_path):
    pattern = raw_shards[0]
    for config, message in [
        (_config(dataset="tfrecord", data_path=str(tmp_path / "none-*")), "no file matches"),
        (_config(dataset="tfrecord", data_path=str(tmp_path)),
         "a directory without spec.json or train-\\* shards"),
        (_config(dataset="higgs", data_path=pattern.replace("part-*", "x.csv"), stream=True),
         "no such file"),
        (_config(dataset="csv", data_path=higgs_csv[0], stream=True, validation_size=2000),
         "too few rows for 2,000 validation \\+ 2,000 test rows .*; lower --validation_size"),
    ]:  # fmt: skip
        with pytest.raises(lowtf.DataError, match=message):
            job_run.load_job_data(config)
    # A record without the feature key, and shards of another width than spec.json's.
    keyless = tf.train.Example(
        features=tf.train.Features(
            feature={
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))
            }
        )
    )
    with tf.io.TFRecordWriter(str(tmp_path / "keyless.tfrecord")) as writer:
        writer.write(keyless.SerializeToString())
    with pytest.raises(
        lowtf.DataError, match="record 0: no feature 'features' \\(its keys: label\\)"
    ):
        job_run.load_job_data(
            _config(dataset="tfrecord", data_path=str(tmp_path / "keyless*"))
        )
    lowtf.data.write_split(
        "digits",
        None,
        str(tmp_path / "d"),
        shards=1,
        train_size=100,
        log=lambda line: None,
    )
    spec_path = tmp_path / "d" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**spec, "feature_shape": [60]}))
    with pytest.raises(
        lowtf.DataError, match="64 feature values, but spec.json says .* \\(60,\\)"
    ):
        job_run.load_job_data(
            _config(dataset="tfrecord", data_path=str(tmp_path / "d"))
        )
    # Settings that need a stream, or cannot take one, before TensorFlow runs anything.
    with pytest.raises(
        ValueError, match="--stream reads --data_path as training goes: .* not digits"
    ):
        job.JobConfig(stream=True)
    with pytest.raises(ValueError, match="--shuffle_buffer is for streamed data"):
        job.JobConfig(dataset="csv", data_path="x.csv", shuffle_buffer=100)
    with pytest.raises(
        ValueError,
        match="--ensemble=2 trains its members from data in memory; add --nostream",
    ):
        job.run_job(_config(dataset="tfrecord", data_path=pattern, ensemble=2,
                            model_dir=str(tmp_path / "ens")))  # fmt: skip
    assert not (tmp_path / "ens").exists()


def test_a_corrupt_record_mid_stream_keeps_the_best_snapshot(raw_shards, tmp_path):
    _, x, y = raw_shards
    paths = lowtf.data.write_tfrecords(
        x, y, str(tmp_path / "shards"), "train", shards=2
    )
    shard = pathlib.Path(paths[1])
    data = bytearray(shard.read_bytes())
    data[-1500] ^= 0xFF  # a record near the end of the second shard
    shard.write_bytes(bytes(data))
    config = _config(
        dataset="tfrecord", data_path=str(tmp_path / "shards" / "train-*"),
        validation_size=50, model="tiny", max_steps=400, eval_every=5, steps_per_call=5,
        shuffle_buffer=20, model_dir=str(tmp_path / "run"),
    )  # fmt: skip
    # The statistics pass reads every training record: refused before training.
    with pytest.raises(
        lowtf.DataError, match=rf"^{paths[1]}, record 285: corrupted record"
    ):
        job.run_job(config, log=lambda line: None)
    assert not (tmp_path / "run").exists()
    # Statistics of the first rows only: the record is met mid-training.
    config = dataclasses.replace(config, stats_rows=100)
    with pytest.raises(
        lowtf.DataError,
        match=rf"a training record could not be read: {paths[1]}, record 285: corrupted",
    ):
        job.run_job(config, log=lambda line: None)
    best = lowtf.train.best_checkpoint(str(tmp_path / "run" / "best"))
    assert best is not None and best["step"] >= 0


def _run(binary, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "bin" / binary), *args],
        env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.e2e
def test_convert_then_train_on_the_shards_then_export_applies_the_statistics(
    higgs_csv, tmp_path
):
    path, table = higgs_csv
    shards, run, exports = tmp_path / "shards", tmp_path / "run", tmp_path / "exports"
    converted = _run(
        "convert", "--dataset=higgs", f"--data_path={path}", "--stream",
        "--validation_size=300", f"--tfrecord_dir={shards}", "--shards=3",
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    assert f"{shards}: train 2,400 rows in 3 shards" in converted.stdout
    spec = json.loads((shards / "spec.json").read_text())
    # One streaming pass over the training rows (after 300 + 300 held out).
    train_rows = table[600:, 1:].astype(np.float64)
    np.testing.assert_allclose(spec["mean"], train_rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(spec["std"], train_rows.std(0), rtol=1e-9)
    assert spec["statistics_rows"] == 2400
    # The shards hold the rows bin/train --stream reads from the CSV itself.
    from_csv = lowtf.data.open_stream("higgs", path, batch_size=50, validation_size=300)
    from_shards = lowtf.data.open_stream("tfrecord", str(shards), batch_size=50)
    for split in ("validation", "test"):
        np.testing.assert_array_equal(
            getattr(from_shards, split)[0], getattr(from_csv, split)[0]
        )
        np.testing.assert_array_equal(
            getattr(from_shards, split)[1], getattr(from_csv, split)[1]
        )

    _fixtures.bin_train_in_process([
        "--dataset=tfrecord", f"--data_path={shards}", "--model=small",
        "--batch_size=50", "--max_steps=150", "--eval_every=50", "--noxla",
        f"--model_dir={run}", f"--export_dir={exports}",
    ])  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["train_size"],
        summary["validation_size"],
        summary["test_size"],
    ) == (
        2400,
        300,
        300,
    )
    # The export standardizes raw rows itself: the raw test rows (300..600 of
    # the CSV) score what the run's evaluator scored on the standardized ones.
    serve = tf.saved_model.load(str(exports / "1")).signatures["serving_default"]
    raw_x, raw_y = table[300:600, 1:], table[300:600, 0].astype(np.int64)
    out = serve(features=tf.constant(raw_x))
    accuracy = float(np.mean(out["class_ids"].numpy() == raw_y))
    probabilities = out["probabilities"].numpy()[np.arange(300), raw_y]
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert float(-np.mean(np.log(probabilities))) == pytest.approx(
        summary["test_cross_entropy"], rel=1e-4
    )
    normalization = np.load(run / "normalization.npz")
    np.testing.assert_array_equal(normalization["mean"], np.float32(spec["mean"]))
