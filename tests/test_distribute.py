"""lowtf under tf.distribute: strategies by name, MirroredStrategy, multi-worker.

Multi-device runs happen in subprocesses: logical devices must be configured
before TensorFlow initializes its devices (tests/_mirrored_worker.py), and
MultiWorkerMirroredStrategy needs one process per worker
(tests/_mw_worker.py, two of them on localhost ports).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import types

import _fixtures  # tests/_fixtures.py; pytest puts tests/ on sys.path
import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import distribute

# Tests that start subprocesses (bin/ runs, multi-device workers) carry the
# e2e marker (the slow tier); the in-process ones stay in the fast tier.

HERE = os.path.dirname(__file__)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, "the worker printed no RESULT line:\n" + output[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


# -- strategies by name, TF_CONFIG, chief-only writing (in process) -----------


def _worker(index, *, chief_job=False):
    """A stand-in strategy whose cluster resolver says this is worker ``index``."""
    cluster = {"worker": ["a:1", "b:1"]}
    if chief_job:
        cluster["chief"] = ["c:1"]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type="worker", task_id=index
    )
    return types.SimpleNamespace(cluster_resolver=resolver, num_replicas_in_sync=2)


CLUSTER = '{"cluster": {"worker": ["h:1"]}, '


def test_tf_config_is_parsed_and_checked():
    config = {
        "cluster": {"worker": ["h0:1", "h1:1"]},
        "task": {"type": "worker", "index": 1},
    }
    assert distribute.tf_config({"TF_CONFIG": json.dumps(config)}) == config
    assert distribute.tf_config({}) == {}
    bad = {
        "{not json": "is not JSON",
        "[1]": "must be a JSON object",
        '{"task": {"type": "worker", "index": 0}}': "needs a `cluster` with a `worker`",
        '{"cluster": {"worker": ["h:1"]}}': "needs a `task` with `type` and `index`",
        CLUSTER + '"task": {"type": "worker", "index": 1}}': "is not in its cluster",
        CLUSTER + '"task": {"type": "ps", "index": 0}}': "is not in its cluster",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            distribute.tf_config({"TF_CONFIG": text})


def test_make_strategy_by_name(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(
        ValueError, match=r"`strategy` \('tpu'\) must be one of 'default'"
    ):
        distribute.make_strategy("tpu")
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="need a `strategy` other than 'default'"):
        distribute.make_strategy("default", devices=["/cpu:0"])
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="needs a `cluster` with a `worker` list"):
        distribute.make_strategy("multi_worker")


def test_chief_and_write_dirs(tmp_path):
    model_dir = str(tmp_path / "run")
    # One process: the chief, writing where it is told.
    assert distribute.is_chief() and distribute.task() == (None, 0)
    assert distribute.write_dir(os.path.join(model_dir, "best")) == os.path.join(
        model_dir, "best"
    )
    distribute.barrier()  # nothing to wait for
    assert distribute.any_worker(True) is True and distribute.any_worker(False) is False
    # Worker 0 is the chief unless the cluster has a "chief" job.
    assert distribute.is_chief(_worker(0))
    assert not distribute.is_chief(_worker(0, chief_job=True))
    other = _worker(1)
    assert not distribute.is_chief(other) and distribute.task(other) == ("worker", 1)
    scratch = distribute.write_dir(os.path.join(model_dir, "best"), other)
    assert scratch == os.path.join(model_dir, "workertemp_1", "best")
    os.makedirs(scratch)
    (tmp_path / "run" / "workertemp_1" / "history.csv").write_text("step\n")
    distribute.remove_write_dir(os.path.join(model_dir, "history.csv"), other)
    assert os.listdir(tmp_path / "run" / "workertemp_1") == ["best"]
    distribute.remove_write_dir(os.path.join(model_dir, "best"), other)
    assert os.listdir(tmp_path / "run") == []  # the empty scratch parent goes too
    assert isinstance(
        distribute.summary_writer(str(tmp_path / "tb"), other),
        type(tf.summary.create_noop_writer()),
    )
    assert "workertemp" not in " ".join(os.listdir(tmp_path))


def test_a_strategy_refusal_leaves_no_model_dir(tmp_path, monkeypatch):
    # bin/train runs run_job and prints its refusal in flag terms (one line,
    # status 2: tests/test_bin_train.py); every choice: test_make_strategy_by_name.
    from lowtf.job import run as job

    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = job.JobConfig(strategy="multi_worker", model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"^`strategy` \('multi_worker'\) needs the TF_CONFIG"):
        job.run_job(config, log=lambda line: None)
    assert not (tmp_path / "run").exists()


# -- MirroredStrategy over two logical CPU devices (one subprocess) -----------


@pytest.fixture(scope="module")
def mirrored():
    run = subprocess.run(
        [sys.executable, os.path.join(HERE, "_mirrored_worker.py")],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return _result(run.stdout)


@pytest.mark.parametrize("mode", ["graph", "xla"])
@pytest.mark.e2e
def test_mirrored_gives_the_one_device_weights(mirrored, mode):
    # L2 and max-norm on, no dropout: the same global batches give the same
    # weights, so the penalty was added once and max-norm ran after the
    # all-reduce (a penalty per replica would move them by ~lr * l2 * w).
    result = mirrored["same_weights"][mode]
    assert result["weight_diff"] < 1e-6
    assert result["metric_diff"] < 1e-6
    one, two = result["regularization_loss"]
    assert one > 0.01 and abs(one - two) < 1e-6
    assert result["units_at_cap"] >= 2 and result["max_norm"] <= 0.6 + 1e-6
    assert result["replica_norm_diff"] == 0.0  # every copy clipped identically
    assert result["trace_count"] == 1
    assert result["mirrored_type"] == "MirroredVariable"
    assert result["data_type"] == "MirroredVariable"  # InMemoryBatches under the scope


@pytest.mark.e2e
def test_xla_replicas_match_graph_replicas(mirrored):
    assert mirrored["same_weights"]["xla_vs_graph_mirrored"] < 1e-6


@pytest.mark.e2e
def test_dropout_masks_differ_per_replica(mirrored):
    result = mirrored["dropout"]
    assert all(0.3 < kept < 0.7 for kept in result["kept"])
    # Same rows on both replicas; identical keys would give identical masks.
    assert result["differ"] > 0.3


@pytest.mark.e2e
def test_batchnorm_moving_statistics_are_averaged(mirrored):
    result = mirrored["batchnorm"]
    # After one step the average of the replicas' moving means equals the
    # one-device moving mean (equal shards), every copy holds it, and a
    # checkpoint carries it.
    assert result["mean_vs_one_device"] < 1e-6
    assert result["copies_diff"] == 0.0
    assert result["restored_vs_mean"] == 0.0


@pytest.mark.e2e
def test_evaluation_is_aggregated_across_replicas(mirrored):
    one, two = mirrored["evaluator"]["one"], mirrored["evaluator"]["two"]
    assert abs(one["cross_entropy"] - two["cross_entropy"]) < 1e-6
    assert one["accuracy"] == two["accuracy"]
    assert 0.3 < one["cross_entropy"] < 1.0


@pytest.mark.e2e
def test_mirrored_misuse_fails_with_one_readable_error(mirrored):
    errors = mirrored["errors"]
    assert (
        "optimizer was made under another tf.distribute strategy" in errors["optimizer"]
    )
    assert "global batch (15) must be divisible by the 2 replicas" in errors["batch"]
    assert errors["describe"] == "MirroredStrategy: 2 replica(s)"
    assert errors["chief"] is True


# -- MultiWorkerMirroredStrategy: two processes on localhost ------------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(out, timeout=400):
    """Runs the two workers; stops both as soon as one fails or time is up."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    logs = [out / f"worker{index}.log" for index in range(2)]
    procs = []
    try:
        for index, log in enumerate(logs):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            with open(log, "w") as f:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, os.path.join(HERE, "_mw_worker.py"), str(out)],
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        env=dict(ENV, TF_CONFIG=json.dumps(config)),
                    )
                )
        deadline = time.monotonic() + timeout
        # A worker whose peer died waits for it in the next all-reduce.
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for p in procs:  # a failed or hung worker must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], [log.read_text() for log in logs]


@pytest.fixture(scope="module")
def multi_worker(tmp_path_factory):
    (x, y), _ = _mw_worker().data()
    for attempt in range(2):
        out = tmp_path_factory.mktemp("multi_worker")
        # 4 shards of the training rows, 2 per worker, for the workers' runs
        # on shards.
        lowtf.data.write_tfrecords(x, y, str(out / "shards"), "train", shards=4)
        codes, outputs = _run_workers(out)
        # Another process may take a free port before a worker binds it.
        if attempt == 0 and any("ddress already in use" in o for o in outputs):
            continue
        break
    for code, output in zip(codes, outputs):
        assert code == 0, output[-4000:]
    return out, [_result(output) for output in outputs]


def _untimed(lines):
    """The log without speeds, and without who received the stop request."""
    lines = [line for line in lines if " received at step " not in line]
    return [re.sub(r"\s+ETA \S+$", "", line) for line in lines]


def _weights(out, index, run):
    """The trainable variables in order, then the batch-norm moving mean."""
    with np.load(out / f"{index}-{run}.npz") as f:
        return [f[f"arr_{i}"] for i in range(len(f.files) - 1)] + [f["moving_mean"]]


@pytest.mark.e2e
def test_multi_worker_run_completes_with_identical_workers(multi_worker):
    out, (chief, other) = multi_worker
    assert (
        chief["describe"]
        == "MultiWorkerMirroredStrategy: 2 replica(s), worker 0 (chief)"
    )
    assert other["describe"] == "MultiWorkerMirroredStrategy: 2 replica(s), worker 1"
    assert chief["chief"] and not other["chief"]
    # The same evaluations and decisions on both (the speed aside).
    assert _untimed(chief["straight-0"]["log"]) == _untimed(other["straight-0"]["log"])
    assert chief["straight-0"]["stop_reason"] == other["straight-0"]["stop_reason"]
    assert chief["straight-0"]["stop_reason"] == "max_steps"
    for a, b in zip(_weights(out, 0, "straight-0"), _weights(out, 1, "straight-0")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_only_the_chief_writes_and_the_best_snapshot_restores(multi_worker):
    out, (chief, _) = multi_worker
    result = chief["straight-0"]
    # The best is neither the first nor the last evaluation, so ending on it
    # really moved the weights back.
    assert 0 < result["best_step"] < result["last_step"] == 80
    model_dir = out / "model_straight"
    assert sorted(os.listdir(model_dir)) == [
        "best",
        "ckpt",
        "history.csv",
        "run.json",  # written by the chief only; no lock left behind
        "tensorboard",
    ]
    rows = lowtf.read_history(str(model_dir / "history.csv"))
    assert [row["step"] for row in rows] == list(range(0, 81, 10))
    pointer = lowtf.train.best_checkpoint(str(model_dir / "best"))
    assert pointer["step"] == result["best_step"]
    # The chief's snapshot loads into a fresh one-device model...
    model = lowtf.mlp((32,), l2=1e-4, maxnorm=2.0, dropout=0.1, batchnorm=True, seed=1)
    model(np.zeros([1, 8], np.float32))
    tf.train.Checkpoint(model=model).read(
        pointer["prefix"]
    ).assert_existing_objects_matched()
    restored = [v.numpy() for v in model.trainable_variables]
    restored.append(model.layers[1].moving_mean.numpy())
    # ... and equals what every worker ended holding.
    for index in (0, 1):
        for a, b in zip(restored, _weights(out, index, "straight-0")):
            np.testing.assert_array_equal(a, b)
    # Evaluating it gives the recorded best value.
    evaluation = lowtf.Evaluator(model)(*_validation())
    assert abs(evaluation["cross_entropy"] - result["best_value"]) < 1e-5


def _mw_worker():
    """tests/_mw_worker.py as a module (its data, without running it)."""
    sys.path.insert(0, HERE)
    try:
        import _mw_worker
    finally:
        sys.path.remove(HERE)
    return _mw_worker


def _validation():
    return _mw_worker().data()[1]


@pytest.mark.e2e
def test_workers_stop_together_and_resume_each_at_its_own_shards_batch(multi_worker):
    out, results = multi_worker
    # Only worker 1 got SIGTERM (after step 20's evaluation): both stopped there.
    assert "SIGTERM received at step 20: stopping" in results[1]["shards-0"]["log"]
    assert (
        "a stop request on another worker received at step 20: stopping"
        in results[0]["shards-0"]["log"]
    )
    for result in results:
        data = result["shards_straight-0"]["data"]
        assert data["per_worker"] and data["batches_read"] == 40
        assert "each of 2 workers reads its own files" in data["identity"]
        first, second = result["shards-0"], result["shards-1"]
        assert first["stop_reason"] == "interrupted" and first["last_step"] == 20
        assert first["data"]["batches_read"] == 20
        assert second["log"][0].startswith("resuming from ")
        assert second["log"][0].endswith("ckpt-20 at step 20")
        assert second["data"]["batches_read"] == 40  # 20 skipped, 20 read
        straight = result["shards_straight-0"]
        assert second["best_step"] == straight["best_step"]
        assert second["best_value"] == straight["best_value"]
    chief, other = results
    for run in ("shards-0", "shards-1", "shards_straight-0"):
        # Different batches on each worker, the same all-reduced steps.
        assert _untimed(chief[run]["log"]) == _untimed(other[run]["log"])
        for a, b in zip(_weights(out, 0, run), _weights(out, 1, run)):
            np.testing.assert_array_equal(a, b)
    # Stopped at 20 and resumed (each worker skipping its 20 batches) ends
    # as the straight run does, bit for bit.
    for index in (0, 1):
        for a, b in zip(
            _weights(out, index, "shards-1"), _weights(out, index, "shards_straight-0")
        ):
            np.testing.assert_array_equal(a, b)
    # Trained on other batches than the rows in memory: other weights.
    assert not np.array_equal(
        _weights(out, 0, "shards_straight-0")[0], _weights(out, 0, "straight-0")[0]
    )


# -- bin/train when a worker dies: one line, status 3, checkpoints intact ------

BIN_TRAIN = os.path.join(os.path.dirname(HERE), "bin", "train")
# A tiny model that trains far longer than the test lets it: a checkpoint and
# an evaluation every 50 steps.
DIE_FLAGS = [
    "--dataset=synthetic",
    "--train_size=400",
    "--validation_size=100",
    "--model=tiny",
    "--noxla",
    "--batch_size=50",
    "--max_steps=1000000",
    "--eval_every=50",
    "--checkpoint_every=50",
    "--steps_per_call=50",
    "--patience=1000000",
]


def _start_bin_train_workers(out, model_dir, *flags):
    """Two bin/train workers on localhost; their stdout and stderr go to files."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    procs = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        with (
            open(out / f"w{index}.out", "w") as stdout,
            open(out / f"w{index}.err", "w") as stderr,
        ):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        BIN_TRAIN,
                        "--strategy=multi_worker",
                        *flags,
                        f"--model_dir={model_dir}",
                    ],
                    stdout=stdout,
                    stderr=stderr,
                    env=dict(ENV, TF_CONFIG=json.dumps(config)),
                )
            )
    return procs


def _wait_for_line(procs, path, prefix, timeout):
    """Waits until the file at ``path`` has a line starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith(prefix) for line in path.read_text().splitlines()):
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.2)
    return False


def test_lost_worker_errors():
    unavailable = tf.errors.UnavailableError(None, None, "stopped sending heartbeats")
    timed_out = tf.errors.DeadlineExceededError(None, None, "Collective has timed out")
    for error in (unavailable, timed_out):
        assert distribute.lost_worker(error, _worker(0))
        assert distribute.lost_worker(error, _worker(1))
        assert not distribute.lost_worker(error)  # one process: something else
    assert not distribute.lost_worker(
        tf.errors.InternalError(None, None, "x"), _worker(1)
    )
    assert not distribute.lost_worker(ValueError("x"), _worker(1))


@pytest.mark.e2e
def test_bin_train_stops_with_one_line_when_a_worker_dies(tmp_path):
    model_dir = tmp_path / "run"
    # Below the coordination service's 10 s heartbeat timeout, so the survivor's
    # collective times out first (the other path raises UnavailableError).
    timeout = 5
    for attempt in range(2):
        out = tmp_path / f"try{attempt}"
        out.mkdir()
        procs = _start_bin_train_workers(
            out, model_dir, *DIE_FLAGS, f"--collective_timeout={timeout}"
        )
        try:
            # Step 100's line comes after its checkpoint (ckpt-100) is saved.
            started = _wait_for_line(procs, out / "w0.out", "step 100/", 120)
            if not started:
                logs = (out / "w0.err").read_text() + (out / "w1.err").read_text()
                # Another process may take a free port before a worker binds it.
                if attempt == 0 and "ddress already in use" in logs:
                    continue
                pytest.fail("the workers did not reach step 100:\n" + logs[-4000:])
            procs[1].kill()  # SIGKILL: no handler runs, no goodbye to the chief
            try:
                code = procs[0].wait(timeout=timeout + 60)
            except subprocess.TimeoutExpired:
                pytest.fail("worker 0 still waits for the killed worker 1")
            break
        finally:
            for p in procs:  # a hung worker must not outlive the test
                if p.poll() is None:
                    p.kill()
                    p.wait()
    stderr = (out / "w0.err").read_text()
    assert code == 3, stderr[-4000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-4000:]
    (error,) = errors
    assert error.startswith("error: worker 0 lost contact with the other workers")
    assert "a worker stopped or is unreachable" in error
    assert "run the same command on every worker again" in error
    # The latest checkpoint it names is on disk, step 100 or later ...
    latest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert error.endswith(f"training resumes from the latest checkpoint, {latest}")
    step = int(latest.rsplit("-", 1)[1])
    assert step >= 100 and step % 50 == 0
    # ... the best snapshot restores and evaluates to its recorded value ...
    data = lowtf.load_dataset("synthetic", train_size=400, validation_size=100)
    pointer = lowtf.train.best_checkpoint(str(model_dir / "best"))
    model = lowtf.mlp("tiny", num_classes=2)
    model(np.zeros([1, data.train[0].shape[1]], np.float32))
    tf.train.Checkpoint(model=model).read(
        pointer["prefix"]
    ).assert_existing_objects_matched()
    evaluation = lowtf.Evaluator(model)(*data.validation)
    assert abs(evaluation["cross_entropy"] - pointer["value"]) < 1e-5
    # ... and one worker alone resumes from the latest checkpoint.
    resumed = subprocess.run(
        [
            sys.executable,
            BIN_TRAIN,
            *DIE_FLAGS,
            f"--max_steps={step + 50}",
            f"--model_dir={model_dir}",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming from {latest} at step {step}" in resumed.stdout
    with open(model_dir / "summary.json") as f:
        assert json.load(f)["last_step"] == step + 50


@pytest.mark.e2e
def test_a_lone_worker_says_whom_it_waits_for_and_stops_on_sigterm_or_timeout(
    tmp_path,
):
    """Worker 0 of a two-worker cluster whose worker 1 never starts.

    Two such workers at once (two clusters): one gets SIGTERM after its first
    waiting line, the other gives up after --startup_timeout=5. Each leaves
    its model directory as it was.
    """
    procs, dirs = [], []
    for case, flags in (("sigterm", []), ("timeout", ["--startup_timeout=5"])):
        ports = _free_ports(2)
        cluster = {"worker": [f"localhost:{port}" for port in ports]}
        config = {"cluster": cluster, "task": {"type": "worker", "index": 0}}
        model_dir = tmp_path / case
        model_dir.mkdir()
        (model_dir / "notes.txt").write_text("an earlier run's file\n")
        dirs.append(model_dir)
        with (
            open(tmp_path / f"{case}.out", "w") as stdout,
            open(tmp_path / f"{case}.err", "w") as stderr,
        ):
            procs.append(
                subprocess.Popen(
                    [sys.executable, BIN_TRAIN, "--strategy=multi_worker", *DIE_FLAGS,
                     *flags, f"--model_dir={model_dir}"],
                    stdout=stdout, stderr=stderr,
                    env=dict(ENV, TF_CONFIG=json.dumps(config)),
                )
            )  # fmt: skip
    before = [_fixtures.tree_digest(d) for d in dirs]
    started = time.monotonic()
    try:
        waiting = f"worker 0 of 2: waiting for worker 1 (localhost:{ports[1]}) to start"
        assert _wait_for_line(procs[1:], tmp_path / "timeout.out", waiting, 30)
        assert _wait_for_line(procs[:1], tmp_path / "sigterm.out", "worker 0 of 2: waiting", 30)
        procs[0].terminate()
        term = time.monotonic()
        codes = [procs[0].wait(timeout=10)]
        sigterm_seconds = time.monotonic() - term
        codes.append(procs[1].wait(timeout=60))
        timeout_seconds = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [3, 3] and sigterm_seconds < 10 and timeout_seconds < 60
    errors = [(tmp_path / f"{case}.err").read_text() for case in ("sigterm", "timeout")]
    assert errors[0].startswith("error: worker 0 of 2 stopped by SIGTERM while waiting for "
                                "worker 1 (localhost:"), errors[0]  # fmt: skip
    assert errors[1] == (
        f"error: worker 0 of 2 gave up after 5 s waiting for worker 1 (localhost:{ports[1]}) "
        "to start (startup timeout); nothing was written: start every worker with the same "
        "cluster, or wait longer\n"
    )
    assert errors[0].count("\n") == 1 and "Traceback" not in errors[0]
    # The waiting line came at once; 5 s left no time for a second one.
    out = (tmp_path / "timeout.out").read_text().splitlines()
    assert out == [f"{waiting}; giving up in 0:00:05"]
    assert [_fixtures.tree_digest(d) for d in dirs] == before
