"""model_dir on any TensorFlow file system (ram:// here); fit cleans up on every exit.

``ram://`` is TensorFlow's in-memory file system: a whole run on it proves
that every file of ``model_dir`` goes through ``tf.io.gfile``. Each test
takes a fresh ram:// folder whose name is no prefix of another's: in
TF 2.21 ram:// lists and stats by string prefix ("run1" would see "run10").
"""

import ast
import dataclasses
import pathlib
import uuid

import _fixtures
import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf.train import checkpointing, summaries
from lowtf.train import step as step_lib

GRAPH = lowtf.StepOptions(jit_compile=False)
ROOT = pathlib.Path(__file__).resolve().parent.parent
# Overfits within some tens of steps (best at step 80 with dropout, seed 5).
CONFIG = lowtf.TrainConfig(
    batch_size=40,
    max_steps=200,
    eval_every=20,
    steps_per_call=9,
    patience=60,
    checkpoint_every=30,
)


@pytest.fixture
def ram_dir():
    root = f"ram://lowtf_test_{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(root)  # ram:// deletes a tree only from a made folder
    yield root
    if tf.io.gfile.exists(root):
        tf.io.gfile.rmtree(root)


def _fit(model_dir, config, model, log=None):
    train, validation = _fixtures.noisy_split(200, 400, 20, seed=0)
    lines = []
    result = lowtf.fit(
        model,
        tf.keras.optimizers.Adam(1e-2),
        train=train,
        validation=validation,
        model_dir=str(model_dir),
        config=config,
        step_options=GRAPH,
        log=log or lines.append,
    )
    return result, lines


def _files(root):
    """``{relative path: bytes}`` of every file under ``root``, read with gfile."""
    found = {}
    for folder, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = f"{folder.rstrip('/')}/{name}"
            with tf.io.gfile.GFile(path, "rb") as f:
                found[path[len(root) :]] = f.read()
    return found


def _events(logdir):
    """``{(tag, step): value}`` of the event files under ``logdir``."""
    points = {}
    for name in tf.io.gfile.listdir(logdir):
        path = f"{logdir}/{name}"
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                points[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    return points


def test_ram_file_system_has_what_fit_needs(ram_dir):
    # Checked once here so a TensorFlow upgrade that drops one op fails loudly.
    gfile = tf.io.gfile
    gfile.makedirs(f"{ram_dir}/d")
    with gfile.GFile(f"{ram_dir}/d/h.csv", "w") as f:
        f.write("a\r\n")
    for row in ("1\r\n", "2\r\n"):
        with gfile.GFile(f"{ram_dir}/d/h.csv", "a") as f:
            f.write(row)
    with gfile.GFile(f"{ram_dir}/d/h.csv.tmp", "w") as f:
        f.write("new")
    with gfile.GFile(f"{ram_dir}/d/h.csv", "rb") as f:
        assert f.read() == b"a\r\n1\r\n2\r\n"
    gfile.rename(f"{ram_dir}/d/h.csv.tmp", f"{ram_dir}/d/h.csv", overwrite=True)
    with gfile.GFile(f"{ram_dir}/d/h.csv") as f:
        assert f.read() == "new"
    assert gfile.listdir(f"{ram_dir}/d") == ["h.csv"]
    v = tf.Variable([1.0, 2.0])
    checkpoint = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(checkpoint, f"{ram_dir}/ckpt", max_to_keep=2)
    for number in range(4):
        v.assign([number, -number])
        manager.save(checkpoint_number=number)
    assert tf.train.latest_checkpoint(f"{ram_dir}/ckpt").endswith("ckpt-3")
    assert sorted(gfile.listdir(f"{ram_dir}/ckpt")) == [
        "checkpoint",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
        "ckpt-3.data-00000-of-00001",
        "ckpt-3.index",
    ]
    checkpoint.read(f"{ram_dir}/ckpt/ckpt-2").assert_consumed()
    np.testing.assert_array_equal(v.numpy(), [2.0, -2.0])
    # The one quirk lowtf works around: a file's prefix "is" a directory, so
    # tf.train.load_checkpoint(prefix) looks for a "checkpoint" file in it.
    assert gfile.isdir(f"{ram_dir}/ckpt/ckpt-2")
    with pytest.raises(ValueError, match="Couldn't find 'checkpoint' file"):
        tf.train.load_checkpoint(f"{ram_dir}/ckpt/ckpt-2")


@pytest.mark.e2e
def test_fit_on_ram_resumes_and_ends_as_an_uninterrupted_local_run(tmp_path, ram_dir):
    whole_model = lowtf.mlp("small", dropout=0.3, seed=5)
    whole, _ = _fit(tmp_path / "whole", CONFIG, whole_model)
    assert (whole.stop_reason, whole.best_step, whole.last_step) == (
        "patience",
        80,
        140,
    )

    run = f"{ram_dir}/run"
    first, _ = _fit(
        run,
        dataclasses.replace(CONFIG, max_steps=60),
        lowtf.mlp("small", dropout=0.3, seed=5),
    )
    assert (first.stop_reason, first.last_step, first.best_step) == (
        "max_steps",
        60,
        60,
    )
    pointer = lowtf.train.best_checkpoint(f"{run}/best")
    assert pointer["step"] == 60 and pointer["prefix"].startswith(
        f"{run}/best/best-60-"
    )
    model = lowtf.mlp("small", dropout=0.3, seed=5)
    second, lines = _fit(run, CONFIG, model)

    assert lines[0] == f"resuming from {run}/ckpt/ckpt-60 at step 60"
    assert second.history == whole.history
    assert [row["step"] for row in second.history] == list(range(0, 141, 20))
    assert (second.stop_reason, second.last_step) == ("patience", 140)
    assert (second.best_step, second.best_value) == (whole.best_step, whole.best_value)
    for a, b in zip(model.variables, whole_model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The same files as the local run, and nothing else.
    assert sorted(tf.io.gfile.listdir(run)) == [
        "best",
        "ckpt",
        "history.csv",
        "run.json",
        "tensorboard",
    ]
    files = _files(run)
    local = _files(str(tmp_path / "whole"))
    assert not [name for name in files if name.endswith(".tmp")]
    assert files["/history.csv"] == local["/history.csv"]
    assert files["/best/best.json"] == local["/best/best.json"]  # names, no paths
    assert sorted(tf.io.gfile.listdir(f"{run}/best")) == sorted(
        tf.io.gfile.listdir(str(tmp_path / "whole" / "best"))
    )
    assert lowtf.read_history(f"{run}/history.csv") == whole.history
    assert sorted(tf.io.gfile.listdir(f"{run}/ckpt")) == sorted(
        tf.io.gfile.listdir(str(tmp_path / "whole" / "ckpt"))
    )
    # Both sessions' TensorBoard points are readable, at every evaluation.
    points = _events(f"{run}/tensorboard/validation")
    steps = {step for tag, step in points if tag == "cross_entropy"}
    assert steps == set(range(0, 141, 20))
    # float32 in the event file, float64 in the result.
    assert points[("cross_entropy", 80)] == pytest.approx(whole.best_value, rel=1e-6)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["ram", "local"])
@pytest.mark.e2e
def test_an_exception_mid_training_leaves_best_alone_and_cleans_up(
    where, tmp_path, ram_dir, monkeypatch
):
    run = f"{ram_dir}/run" if where == "ram" else str(tmp_path / "run")
    writers = []
    create_file_writer = tf.summary.create_file_writer

    def recording_writer(logdir, *args, **kwargs):
        writers.append(create_file_writer(logdir, *args, **kwargs))
        return writers[-1]

    monkeypatch.setattr(tf.summary, "create_file_writer", recording_writer)
    at_raise = {}
    original_run = step_lib.TrainStep.run

    def run_then_fail(self, num_steps):
        calls = at_raise.setdefault("calls", 0) + 1
        at_raise["calls"] = calls
        if calls == 3:
            at_raise["best"] = _files(f"{run}/best")
            at_raise["weights"] = [v.numpy() for v in self.model.variables]
            raise _Boom("step 3 of the run fails")
        return original_run(self, num_steps)

    monkeypatch.setattr(step_lib.TrainStep, "run", run_then_fail)
    model = lowtf.mlp("small", seed=1)
    # Calls of 20 steps, a checkpoint only every 60: when the third call
    # fails, best/ still holds step 0's snapshot next to step 20's, which any
    # save (or prune) would delete.
    config = dataclasses.replace(
        CONFIG, steps_per_call=20, checkpoint_every=60, patience=1000
    )
    with pytest.raises(_Boom, match="step 3 of the run fails"):
        _fit(run, config, model)

    # best/ is byte for byte what it was when training failed.
    assert _files(f"{run}/best") == at_raise["best"]
    snapshots = {
        name.split(".")[0]
        for name in at_raise["best"]
        if name.startswith("/best-") and name.endswith(".index")
    }
    assert snapshots == {"/best-0-1", "/best-20-2"}
    # Nothing was restored: the model holds the weights it failed with.
    for variable, before in zip(model.variables, at_raise["weights"]):
        np.testing.assert_array_equal(variable.numpy(), before)
    # The latest checkpoint is still step 0's; nothing was saved on the way out.
    assert tf.train.latest_checkpoint(f"{run}/ckpt").endswith("ckpt-0")
    # Both writers are closed, and every point written before is on disk.
    assert len(writers) == 2
    for writer in writers:
        with pytest.raises(RuntimeError, match="already closed"):
            writer.as_default()
    for board in ("train", "validation"):
        points = _events(f"{run}/tensorboard/{board}")
        assert {step for tag, step in points if tag == "cross_entropy"} >= {20, 40}
    assert _events(f"{run}/tensorboard/validation").keys() >= {
        ("cross_entropy", 0),
        ("cross_entropy", 20),
        ("cross_entropy", 40),
    }
    assert [row["step"] for row in lowtf.read_history(f"{run}/history.csv")] == [
        0,
        20,
        40,
    ]
    leftovers = [
        name for name in _files(run) if name.endswith(".tmp") or "workertemp" in name
    ]
    assert leftovers == []

    # A rerun resumes from step 0's checkpoint and trains on.
    monkeypatch.undo()
    again, lines = _fit(run, dataclasses.replace(config, max_steps=60), model)
    assert lines[0] == f"resuming from {run}/ckpt/ckpt-0 at step 0"
    assert [row["step"] for row in again.history] == [0, 20, 40, 60]


@pytest.mark.e2e
def test_an_exception_at_the_step_0_evaluation_closes_the_writers(ram_dir, monkeypatch):
    writers = []
    create_file_writer = tf.summary.create_file_writer
    monkeypatch.setattr(
        tf.summary,
        "create_file_writer",
        lambda logdir: writers.append(create_file_writer(logdir)) or writers[-1],
    )

    def failing_log(line):
        raise _Boom(line)

    with pytest.raises(_Boom, match=r"^step 0/200"):
        _fit(f"{ram_dir}/run", CONFIG, lowtf.mlp("small", seed=1), log=failing_log)
    assert len(writers) == 2
    for writer in writers:
        with pytest.raises(RuntimeError, match="already closed"):
            writer.as_default()
    rows = lowtf.read_history(f"{ram_dir}/run/history.csv")
    assert [row["step"] for row in rows] == [0]


def test_a_workers_scratch_copies_on_ram_are_deleted(ram_dir):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": ["a:1", "b:1"]}), task_type="worker", task_id=1
    )

    class Worker1:  # a stand-in strategy: worker 1 of two, not the chief
        cluster_resolver = resolver
        num_replicas_in_sync = 2

    run = f"{ram_dir}/run"
    scratch = checkpointing.write_path(run, "best", Worker1)
    # The scheme's "//" survives (os.path.normpath would make it "ram:/").
    assert scratch == f"{run}/workertemp_1/best"
    tf.io.gfile.makedirs(scratch)
    for name in ("best/best.json", "history.csv", "history.csv.tmp"):
        with tf.io.gfile.GFile(f"{run}/workertemp_1/{name}", "w") as f:
            f.write("x")
    with tf.io.gfile.GFile(f"{run}/history.csv", "w") as f:
        f.write("the chief's")
    checkpointing.remove_scratch(run, Worker1)
    assert tf.io.gfile.listdir(run) == ["history.csv"]


def test_history_rows_are_appended_and_read_back_through_gfile(ram_dir):
    path = f"{ram_dir}/history.csv"
    history = summaries.History(path)
    assert history.start(keep_upto=None) == []
    rows = [
        {"step": 0, "val_cross_entropy": 0.5},
        {"step": 20, "val_cross_entropy": 0.25},
    ]
    for row in rows:
        history.append(row)
        # Each row is readable as soon as append returns.
        assert lowtf.read_history(path)[-1]["step"] == row["step"]
    assert [(r["step"], r["val_cross_entropy"]) for r in lowtf.read_history(path)] == [
        (0, 0.5),
        (20, 0.25),
    ]
    # A resume from step 0 keeps that row only, rewritten atomically.
    resumed = summaries.History(path)
    assert [r["step"] for r in resumed.start(keep_upto=0)] == [0]
    assert [r["step"] for r in lowtf.read_history(path)] == [0]
    assert tf.io.gfile.listdir(ram_dir) == ["history.csv"]
    with pytest.raises(FileNotFoundError, match="no history file"):
        lowtf.read_history(f"{ram_dir}/missing.csv")


# Calls that only reach the local disk; model_dir files go through tf.io.gfile.
_LOCAL_ONLY = {
    "open",
    "io.open",
    "os.replace",
    "os.rename",
    "os.remove",
    "os.unlink",
    "os.makedirs",
    "os.mkdir",
    "os.listdir",
    "os.scandir",
    "os.walk",
    "os.fsync",
    "os.path.exists",
    "os.path.isdir",
    "os.path.isfile",
    "os.path.getsize",
    "glob.glob",
    "tf.io.gfile.glob",
}


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


@pytest.mark.parametrize(
    "source",
    sorted(
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("lowtf/train/*.py"), ROOT / "lowtf" / "distribute.py"]
    ),
)
def test_model_dir_code_makes_no_local_only_file_calls(source):
    # A complement to the ram:// runs above, which catch what they exercise.
    tree = ast.parse((ROOT / source).read_text())
    calls = {
        _dotted(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)
    }
    imports = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert sorted(calls & _LOCAL_ONLY) == []
    assert "shutil" not in imports and "glob" not in imports
