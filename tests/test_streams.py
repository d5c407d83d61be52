"""Streamed training data: lowtf.data.Stream, TFRecord shards, CSV read as it goes."""

import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys

import _fixtures  # tests/_fixtures.py; pytest puts tests/ on sys.path
import numpy as np
import pytest
import tensorflow as tf

import lowtf

GRAPH = lowtf.StepOptions(jit_compile=False)
WORKER = os.path.join(os.path.dirname(__file__), "_stream_worker.py")
FEATURES = 12


@pytest.fixture(scope="module")
def rows():
    """((x, y) to stream, (x_val, y_val)): noisy, so a net overfits soon."""
    return _fixtures.noisy_split(300, 200, FEATURES, seed=1, noise=1.5)


@pytest.fixture(scope="module")
def shards(rows, tmp_path_factory):
    """The training rows as 3 TFRecord shards; their glob."""
    directory = tmp_path_factory.mktemp("shards")
    (x, y), _ = rows
    lowtf.data.write_tfrecords(x, y, str(directory), "train", shards=3)
    return str(directory / "train-*")


def _stream(pattern, **kwargs):
    return lowtf.data.tfrecord_stream(
        pattern,
        batch_size=25,
        feature_shape=(FEATURES,),
        shuffle_buffer=64,
        seed=5,
        **kwargs,
    )


def _fit(model_dir, train, validation, max_steps, lines=None):
    model = lowtf.mlp((32, 32), dropout=0.2, seed=3)
    result = lowtf.fit(
        model,
        tf.keras.optimizers.Adam(3e-3),
        train=train,
        validation=validation,
        model_dir=str(model_dir),
        config=lowtf.TrainConfig(
            max_steps=max_steps, eval_every=20, checkpoint_every=15, steps_per_call=7
        ),
        step_options=GRAPH,
        log=(lines.append if lines is not None else lambda line: None),
    )
    return result, [v.numpy() for v in model.variables]


def test_fit_on_shards_resumes_to_the_exact_batch(rows, shards, tmp_path):
    """Stopped at step 40 and resumed by new objects = never stopped, bit for bit."""
    _, (x_val, y_val) = rows
    reference, reference_weights = _fit(
        tmp_path / "a", _stream(shards), (x_val, y_val), 100
    )
    _fit(tmp_path / "b", _stream(shards), (x_val, y_val), 40)
    # The resumed run evaluates on the same rows given as a finite dataset.
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(64)
    lines = []
    resumed, resumed_weights = _fit(
        tmp_path / "b", _stream(shards), validation, 100, lines
    )
    assert any(
        line.startswith("resuming from") and "at step 40" in line for line in lines
    )
    assert (resumed.best_step, resumed.last_step) == (
        reference.best_step,
        reference.last_step,
    )
    assert resumed.last_step == 100
    assert resumed.best_value == reference.best_value  # bit for bit
    assert resumed.history == reference.history
    for a, b in zip(resumed_weights, reference_weights):
        np.testing.assert_array_equal(a, b)
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["identity"]["train_data"].startswith(f"tfrecord {shards}: 3 files")
    assert record["identity"]["batch_size"] == 25


def test_resume_with_other_shards_is_refused(rows, shards, tmp_path):
    (x, y), validation = rows
    _fit(tmp_path, _stream(shards), validation, 15)
    other = str(tmp_path.parent / "other")
    lowtf.data.write_tfrecords(x[:100], y[:100], other, "train", shards=1)
    with pytest.raises(ValueError, match="train_data: recorded 'tfrecord"):
        _fit(
            tmp_path,
            _stream(os.path.join(other, "train-*"), cycle_length=3),
            validation,
            30,
        )
    # Another pipeline over the same shards: its position cannot be restored.
    with pytest.raises(
        ValueError,
        match=r"its data position does not fit this training pipeline \(The iterator "
        r"cycle length 1 is different from the cycle length to restore from the "
        r"checkpoint: 3",
    ):
        _fit(tmp_path, _stream(shards, cycle_length=1), validation, 30)


def _step(data, jit):
    model = lowtf.mlp((16,), seed=2)
    return lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(1e-2),
        data=data,
        options=lowtf.StepOptions(jit_compile=jit),
    )


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_run_takes_the_pipelines_batches_in_order(rows, jit):
    """run(4) then run(3) on a stream = 7 calls of the step on the pipeline's batches."""
    (x, y), _ = rows

    def dataset():
        # A new dataset object per use: iterators of one object share its
        # shuffle's seed generator, so a second one draws another order.
        shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(300, seed=1)
        return shuffled.batch(20, drop_remainder=True)

    streamed = _step(lowtf.data.Stream(dataset()), jit)
    first = streamed.run(4)
    traces = streamed.trace_count
    streamed.run(3)
    assert streamed.trace_count == traces  # another num_steps does not retrace
    reference = _step(None, jit)
    batches = iter(dataset().repeat())
    means = [reference(*next(batches)) for _ in range(7)]
    expected = np.mean([float(m["cross_entropy"]) for m in means[:4]])
    np.testing.assert_allclose(float(first["cross_entropy"]), expected, rtol=1e-6)
    assert int(streamed.step.numpy()) == 7
    for a, b in zip(streamed.model.variables, reference.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_iterator_position_round_trips_through_a_checkpoint(shards, tmp_path):
    stream = _stream(shards)
    for _ in range(5):
        stream.next()
    prefix = tf.train.Checkpoint(stream=stream).write(str(tmp_path / "ckpt"))
    after = [stream.next()[1].numpy() for _ in range(4)]
    fresh = _stream(shards)
    tf.train.Checkpoint(stream=fresh).read(prefix).assert_consumed()
    again = [fresh.next()[1].numpy() for _ in range(4)]
    for a, b in zip(after, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(after[0], a) for a in after[1:])  # it moves on


def _pairs(n=40):
    x = np.random.RandomState(0).randn(n, 3).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: (
                tf.data.Dataset.from_tensor_slices(_pairs())
                .map(lambda x, y: (tf.py_function(lambda v: v, [x], tf.float32), y))
                .map(lambda x, y: (tf.ensure_shape(x, [3]), y))
                .batch(8, drop_remainder=True)
            ),
            (
                r"cannot be checkpointed, so a resumed run could not go on from the "
                r"exact batch: EagerPyFunc is stateful"
            ),
        ),
        (
            lambda: tf.data.Dataset.from_tensor_slices(_pairs()),
            r"x has shape \(3,\); it must be \[batch",
        ),
        (
            lambda: tf.data.Dataset.from_tensor_slices(_pairs()).batch(8),
            r"no fixed size .*drop_remainder=True",
        ),
        (
            lambda: tf.data.Dataset.from_tensor_slices(_pairs()[0]),
            r"must yield \(x, y\) pairs",
        ),
        (
            lambda: tf.data.Dataset.from_tensor_slices(_pairs()).take(0).batch(4, True),
            "is empty",
        ),
        (lambda: [1, 2], "must be a tf.data.Dataset"),
    ],
    ids=["external_state", "unbatched", "ragged_batches", "not_pairs", "empty", "list"],
)
def test_stream_refuses_at_the_start(make, match):
    with pytest.raises(ValueError, match=match):
        lowtf.data.Stream(make())


def test_function_of_an_input_context_and_unbatched_examples():
    seen = []

    def make(context):
        seen.append((context.num_input_pipelines, context.num_replicas_in_sync))
        return tf.data.Dataset.from_tensor_slices(_pairs(40))

    stream = lowtf.data.Stream(make, batch_size=16)
    assert seen == [(1, 1)] and stream.batch_size == 16
    # Batched across epochs: the 40 rows give 16 + 16 + (8 + 8 of the next epoch).
    labels = [stream.next()[1].numpy() for _ in range(5)]
    y = _pairs(40)[1]
    np.testing.assert_array_equal(np.concatenate(labels), np.concatenate([y, y])[:80])


def _weights_of(step):
    return [v.numpy() for v in step.model.trainable_variables]


def test_a_per_worker_stream_resumes_at_its_batch(shards, tmp_path, monkeypatch):
    # Two workers in name: the stream takes the per-worker path (its own files,
    # per-replica batches, the batches read in the checkpoint); under the
    # default strategy TensorFlow hands the function one input pipeline.
    # tests/test_distribute.py runs two real workers.
    def step(stream):
        model = lowtf.mlp((16,), dropout=0.2, seed=3)
        optimizer = tf.keras.optimizers.Adam(3e-3)
        return lowtf.TrainStep(model, optimizer, data=stream, options=GRAPH)

    plain = step(_stream(shards))  # one pipeline, global batches, as before
    plain.run(5)
    plain.run(4)
    monkeypatch.setattr(lowtf.distribute, "num_workers", lambda strategy=None: 2)
    straight = step(_stream(shards))
    assert straight.data.per_worker and straight.data.batch_size == 25
    assert "each of 2 workers reads its own files" in straight.data.identity
    straight.run(5)
    straight.run(4)
    # One worker and one replica read the same batches as the one pipeline.
    for a, b in zip(_weights_of(plain), _weights_of(straight)):
        np.testing.assert_array_equal(a, b)
    first = step(_stream(shards))
    first.run(5)
    prefix = tf.train.Checkpoint(step=first).write(str(tmp_path / "ckpt"))
    resumed = step(_stream(shards))
    resumed.build(resumed.data.example()[0])
    tf.train.Checkpoint(step=resumed).read(prefix).assert_consumed()
    assert int(resumed.data.position.numpy()) == 5
    resumed.run(4)  # skips the 5 batches read, then reads on
    assert int(resumed.data.position.numpy()) == 9
    for a, b in zip(_weights_of(straight), _weights_of(resumed)):
        np.testing.assert_array_equal(a, b)
    # Once reading, the stream cannot go back to a restored position.
    tf.train.Checkpoint(step=resumed).read(prefix)
    with pytest.raises(ValueError, match="read 9 batches but its position was set to 5"):
        resumed.run(1)


def test_tfrecord_shard_reads_one_workers_files(rows, tmp_path):
    (x, y), _ = rows
    lowtf.data.write_tfrecords(x, y, str(tmp_path), "train", shards=3)
    pattern = str(tmp_path / "train-*")

    def labels(**kwargs):
        dataset = lowtf.data.tfrecord(
            pattern, batch_size=50, feature_shape=(FEATURES,), training=False, **kwargs
        )
        return np.concatenate([batch[1].numpy() for batch in dataset])

    parts = np.array_split(y, 3)
    np.testing.assert_array_equal(labels(shard=(2, 0)), np.concatenate(parts[::2]))
    np.testing.assert_array_equal(labels(shard=(2, 1)), parts[1])
    with pytest.raises(ValueError, match=r"`shard` \(\(4, 0\)\) .* has 3: write"):
        labels(shard=(4, 0))


def test_tfrecord_refuses_bad_files_before_training(shards, tmp_path):
    def read(pattern, **kwargs):
        return lowtf.data.tfrecord(
            pattern, batch_size=5, **{"feature_shape": (FEATURES,), **kwargs}
        )

    with pytest.raises(lowtf.DataError, match=r"nothing-\*: no file matches"):
        read(str(tmp_path / "nothing-*"))
    first = min(tf.io.gfile.glob(shards))
    with pytest.raises(
        lowtf.DataError,
        match=rf"{first}, record 0: feature 'features' has 12 values, expected 28",
    ):
        read(shards, feature_shape=(28,))
    with pytest.raises(
        lowtf.DataError,
        match=r"record 0: no feature 'pixels' \(its keys: features, label\)",
    ):
        read(shards, features_key="pixels")
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    with pytest.raises(lowtf.DataError, match="empty.tfrecord: no records"):
        read(str(tmp_path / "empty.tfrecord"))


def test_a_corrupt_record_stops_fit_naming_its_shard(rows, tmp_path):
    (x, y), validation = rows
    directory = tmp_path / "shards"
    paths = lowtf.data.write_tfrecords(x, y, str(directory), "train", shards=2)
    shard = pathlib.Path(paths[1])
    data = bytearray(shard.read_bytes())
    data[-600] ^= 0xFF  # inside record ~140 of the second shard's 150
    shard.write_bytes(bytes(data))
    lines = []
    with pytest.raises(
        lowtf.DataError,
        match=rf"a training record could not be read: {paths[1]}, record 1\d\d: corrupted record",
    ):
        _fit(
            tmp_path / "run",
            _stream(str(directory / "train-*")),
            validation,
            200,
            lines,
        )
    # What was saved before stays: the best snapshot and the latest checkpoint.
    best = lowtf.train.best_checkpoint(str(tmp_path / "run" / "best"))
    assert best is not None and best["step"] >= 0
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")) is not None


def test_a_bad_label_or_feature_mid_stream_is_one_line(rows):
    (x, y), _ = rows
    y_bad = y.copy()
    y_bad[250] = 3  # a sigmoid head takes 0 or 1
    step = _step(
        lowtf.data.Stream(
            tf.data.Dataset.from_tensor_slices((x, y_bad)), batch_size=50
        ),
        False,
    )
    step.run(3)  # rows 0-149 are fine
    with pytest.raises(
        lowtf.DataError,
        match=r"^bad streamed batch: labels must be class indices 0\.\.1; found 3$",
    ):
        step.run(3)
    x_bad = x.copy()
    x_bad[10, 4] = np.inf
    step = _step(
        lowtf.data.Stream(
            tf.data.Dataset.from_tensor_slices((x_bad, y)), batch_size=50
        ),
        True,
    )
    with pytest.raises(lowtf.DataError, match="a feature is NaN or Inf"):
        step.run(2)


def test_convert_and_read_back_a_loaded_dataset(tmp_path):
    dataset = lowtf.load_dataset("digits", train_size=500)
    spec = lowtf.data.convert(dataset, str(tmp_path), shards=3)
    assert spec["feature_shape"] == [64] and spec["num_classes"] == 10
    assert spec["splits"]["train"]["examples"] == 500
    assert sorted(os.listdir(tmp_path))[:3] == [
        "spec.json",
        "test-00000-of-00003.tfrecord",
        "test-00001-of-00003.tfrecord",
    ]
    np.testing.assert_array_equal(spec["mean"], dataset.mean.astype(np.float64))
    data = lowtf.data.read_tfrecords(str(tmp_path), batch_size=50)
    assert data.feature_shape == (64,) and data.num_classes == 10
    for ours, theirs in (
        (data.validation, dataset.validation),
        (data.test, dataset.test),
    ):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
    x, y = data.train.next()
    assert x.shape == (50, 64) and y.dtype == tf.int32
    # Every training batch is 50 rows of the training split.
    train_rows = {row.tobytes() for row in dataset.train[0]}
    assert all(row.tobytes() in train_rows for row in x.numpy())


@pytest.fixture(scope="module")
def higgs_csv(tmp_path_factory):
    """A Higgs-shaped gzip CSV (label first, 28 features), 3,000 rows, and its values."""
    x, y = lowtf.data.synthetic(3000, seed=4)
    x = x * np.arange(1, 29, dtype=np.float32) + 5.0
    table = np.column_stack([y, x]).astype(np.float32)
    path = str(tmp_path_factory.mktemp("csv") / "higgs.csv.gz")
    with gzip.open(path, "wt") as f:
        np.savetxt(f, table, fmt="%.9g", delimiter=",")
    return path, table


def test_csv_statistics_in_one_streaming_pass(higgs_csv, tmp_path):
    path, table = higgs_csv
    stats = lowtf.data.csv_statistics(path, skip=500)
    rows = table[500:, 1:].astype(np.float64)
    assert stats.rows == 2500
    np.testing.assert_allclose(stats.mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, rows.std(axis=0), rtol=1e-9)
    first = lowtf.data.csv_statistics(path, skip=500, max_rows=300)
    assert first.rows == 300
    np.testing.assert_allclose(first.mean, rows[:300].mean(axis=0), rtol=1e-12)
    stats.save(str(tmp_path / "stats.json"))
    loaded = lowtf.data.FeatureStatistics.load(str(tmp_path / "stats.json"))
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    assert loaded.rows == 2500


def test_csv_dataset_reads_standardized_rows_in_order(higgs_csv):
    path, table = higgs_csv
    stats = lowtf.data.csv_statistics(path, skip=500)
    held_out = lowtf.data.csv_dataset(
        path, batch_size=128, statistics=stats, take=500, training=False
    )
    x, y = lowtf.data.streams.materialize("validation", held_out)
    expected = (table[:500, 1:] - stats.mean.astype(np.float32)) / stats.std.astype(
        np.float32
    )
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, table[:500, 0])
    stream = lowtf.data.csv_stream(path, batch_size=100, skip=500, statistics=stats)
    assert stream.identity.startswith(f"csv {path}: ")
    x, _ = stream.next()
    assert x.shape == (100, 28) and abs(float(tf.reduce_mean(x))) < 0.5
    with pytest.raises(
        lowtf.DataError, match="label column 29 is out of range for 29 columns"
    ):
        lowtf.data.csv_dataset(path, batch_size=10, label_column=29)


@pytest.mark.e2e
def test_sigkill_and_resume_reads_the_same_batches(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    shards = str(tmp_path / "shards")
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    def worker(*args):
        return subprocess.Popen(
            [sys.executable, WORKER, shards, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    run = worker("--pause_after", "40", f"{killed}={tmp_path / 'killed'}")
    seen = []
    for line in run.stdout:
        seen.append(line)
        if line.startswith("step 40/"):
            break
    else:
        pytest.fail("the worker ended before step 40:\n" + "".join(seen))
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    run.stdout.close()
    assert run.returncode == -signal.SIGKILL
    # Killed after the evaluation at 40; the latest checkpoint is at 30.
    assert tf.train.latest_checkpoint(str(killed / "ckpt")).endswith("ckpt-30")

    run = worker(
        f"{killed}={tmp_path / 'killed'}", f"{reference}={tmp_path / 'reference'}"
    )
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert "at step 30" in out
    results = [
        json.loads((tmp_path / f"{n}.json").read_text())
        for n in ("reference", "killed")
    ]
    assert results[1] == results[0]  # best step and value, last step, every history row
    assert results[0]["last_step"] == 80
    weights = [np.load(tmp_path / f"{n}.npz") for n in ("reference", "killed")]
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[1][name], weights[0][name])


def test_a_bad_csv_cell_is_named_by_its_line(higgs_csv, tmp_path):
    _, table = higgs_csv
    lines = [",".join(f"{v:.6g}" for v in row) for row in table[:400]]
    cells = lines[321].split(",")
    lines[321] = ",".join([cells[0], "n/a", *cells[2:]])
    path = str(tmp_path / "bad.csv")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    expected = rf"{path}, line 322, column 2: 'n/a' is not a number"
    with pytest.raises(lowtf.DataError, match=expected):
        lowtf.data.csv_statistics(path)
    stream = lowtf.data.csv_stream(path, batch_size=50, shuffle_buffer=50)
    step = _step(stream, False)
    with pytest.raises(
        lowtf.DataError, match="a training record could not be read: " + expected
    ):
        step.run(10)
