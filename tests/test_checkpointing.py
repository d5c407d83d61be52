"""_checkpointing: fit's latest checkpoints, refusing a misfit, the running means.

tests/test_trainer.py covers them through ``fit`` (resume, kill and resume,
NaN weights); these tests pin what ``fit`` only shows indirectly: a refused
checkpoint leaves the model as it was, each way a checkpoint can differ is
named, a state already on disk is not written again.
"""

import os
import shutil

import _fixtures
import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf.train import checkpointing


def _checkpoints(model_dir, hidden=(8,), seed=1):
    """A TrainStep, its early stopping and their Checkpoints, wired as fit does."""
    (x, y), _ = _fixtures.noisy_split(40, 0, 6, seed=0)
    model = lowtf.mlp(hidden, seed=seed)
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(1e-2),
        data=lowtf.InMemoryBatches(x, y, 16, seed=2),
        options=lowtf.StepOptions(jit_compile=False),
    )
    step.build(x[:1])
    snapshot = tf.train.Checkpoint(
        model=model, optimizer=step.optimizer, step=step.step
    )
    stopper = lowtf.EarlyStopping(
        best_dir=os.path.join(model_dir, "best"),
        checkpoint=snapshot,
        prune_on_save=False,
    )
    return checkpointing.Checkpoints(
        str(model_dir),
        objects={
            "train_step": step,
            "early_stopping": stopper,
            "running": checkpointing.RunningMeans(),
        },
        step=step.step,
        finite=lambda: checkpointing.finite_weights(model),
        clock=checkpointing.WallClock(),
        keep=3,
        strategy=tf.distribute.get_strategy(),
        stopper=stopper,
        snapshot=snapshot,
    )


def _values(checkpoints):
    return [v.numpy() for v in checkpoints.objects["train_step"].model.variables]


def test_running_means_weigh_each_call_by_its_steps_and_reset():
    running = checkpointing.RunningMeans()
    assert running.means() is None
    metrics = lowtf.train.metrics.STEP_METRICS
    running.add({name: float(i) for i, name in enumerate(metrics)}, 3)
    running.add({name: 10.0 for name in metrics}, 1)
    means = running.means()
    for i, name in enumerate(metrics):
        assert means[name] == pytest.approx((3 * i + 10) / 4, rel=1e-12)
    running.reset()
    assert running.means() is None
    assert running.sums.numpy().tolist() == [0.0] * len(metrics)


def test_save_then_restore_latest_brings_back_the_whole_state(tmp_path):
    first = _checkpoints(tmp_path)
    assert first.restore_latest() is None and first.saved_step is None
    # The state after 5 steps of 16 of 40 examples, set rather than trained.
    data = first.objects["train_step"].data
    first.objects["train_step"].step.assign(5)
    data.epoch.assign(2)
    data.cursor.assign(16)
    first.state.running.add({name: 0.5 for name in lowtf.train.metrics.STEP_METRICS}, 1)
    assert first.save() and first.saved_step == 5
    # Already on disk: not written again.
    assert first.save() and len(first.manager.checkpoints) == 1

    # New objects, other initial weights: everything comes from the checkpoint.
    second = _checkpoints(tmp_path, seed=7)
    path = second.restore_latest()
    assert path.endswith("ckpt-5") and second.saved_step == 5
    assert int(second.objects["train_step"].step.numpy()) == 5
    for a, b in zip(_values(first), _values(second)):
        np.testing.assert_array_equal(a, b)
    assert second.state.running.means() == first.state.running.means()
    # The data position too.
    positions = [
        (
            int(c.objects["train_step"].data.epoch.numpy()),
            int(c.objects["train_step"].data.cursor.numpy()),
        )
        for c in (first, second)
    ]
    assert positions == [(2, 16), (2, 16)]


def test_non_finite_weights_are_never_saved(tmp_path):
    checkpoints = _checkpoints(tmp_path)
    assert checkpoints.save() and checkpoints.saved_step == 0
    checkpoints.objects["train_step"].step.assign(3)
    variable = checkpoints.objects["train_step"].model.variables[0]
    variable.assign(tf.fill(variable.shape, float("nan")))
    assert not checkpoints.save()
    assert checkpoints.saved_step == 0
    latest = tf.train.latest_checkpoint(str(tmp_path / "ckpt"))
    assert latest.endswith("ckpt-0")


def test_a_checkpoint_of_another_model_is_refused_before_anything_is_restored(
    tmp_path,
):
    _checkpoints(tmp_path).save()
    files = sorted(os.listdir(tmp_path / "ckpt"))
    other = _checkpoints(tmp_path, hidden=(16,), seed=3)
    before = _values(other)
    with pytest.raises(
        ValueError,
        match=r"holds a checkpoint \(.*ckpt-0\) that does not fit this model, "
        r"optimizer and data \(.*float32\[.*8\] in the checkpoint but "
        r"float32\[.*16\] here\); resume with the same settings or pick a new "
        r"model_dir",
    ):
        other.restore_latest()
    for a, b in zip(before, _values(other)):
        np.testing.assert_array_equal(a, b)
    assert other.saved_step is None
    assert sorted(os.listdir(tmp_path / "ckpt")) == files


def test_mismatch_names_the_variable_and_how_it_differs(tmp_path):
    def state(**variables):
        return tf.train.Checkpoint(
            **{name: tf.Variable(value) for name, value in variables.items()}
        )

    path = state(a=[1.0, 2.0], b=3).write(str(tmp_path / "probe"))
    mismatch = checkpointing._mismatch
    assert mismatch(state(a=[5.0, 6.0], b=7), path) is None
    assert (
        mismatch(state(a=[1.0, 2.0, 3.0], b=3), path)
        == "a is float32[2] in the checkpoint but float32[3] here"
    )
    assert (
        mismatch(state(a=[1.0, 2.0], b=3.0), path)
        == "b is int32[] in the checkpoint but float32[] here"
    )
    assert (
        mismatch(state(a=[1.0, 2.0]), path)
        == "the checkpoint has b, which this run does not"
    )
    assert (
        mismatch(state(a=[1.0, 2.0], b=3, c=0.0), path) == "c is not in the checkpoint"
    )


def test_an_unreadable_latest_checkpoint_is_refused_and_left_as_it_is(tmp_path):
    first = _checkpoints(tmp_path)
    first.save()
    first.objects["train_step"].step.assign(5)
    first.save()
    # A truncated copy or a full disk: the index file of ckpt-5 is zeroed.
    (tmp_path / "ckpt" / "ckpt-5.index").write_bytes(b"")
    before = _fixtures.tree_digest(tmp_path)
    other = _checkpoints(tmp_path, seed=3)
    weights = _values(other)
    with pytest.raises(
        ValueError,
        match=r"has a latest checkpoint \(.*ckpt-5\) that cannot be resumed \(it "
        r"cannot be read: .*too short.*\); model_dir was left as it is\. An older "
        r"checkpoint, .*ckpt-0, is readable: delete the newer files and "
        r".*ckpt/checkpoint to resume from it\. Restore its files from a copy, or "
        r"pick another model_dir",
    ):
        other.restore_latest()
    assert _fixtures.tree_digest(tmp_path) == before
    for a, b in zip(weights, _values(other)):
        np.testing.assert_array_equal(a, b)


def test_a_latest_checkpoint_named_but_missing_is_refused(tmp_path):
    first = _checkpoints(tmp_path)
    first.save()
    first.objects["train_step"].step.assign(5)
    first.save()
    # ckpt/checkpoint names ckpt-5, whose index is gone: TensorFlow finds no
    # checkpoint, and starting over would rewrite this run's history.
    os.remove(tmp_path / "ckpt" / "ckpt-5.index")
    before = _fixtures.tree_digest(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"has a latest checkpoint \(.*ckpt-5\) that cannot be resumed \(its "
        r"files are missing\); model_dir was left as it is",
    ):
        _checkpoints(tmp_path).restore_latest()
    assert _fixtures.tree_digest(tmp_path) == before
    # A state file that does not parse is refused too.
    (tmp_path / "ckpt" / "checkpoint").write_text("model_checkpoint_path: ckpt-5 {")
    with pytest.raises(
        ValueError,
        match=r"has a latest checkpoint \(.*ckpt/checkpoint\) that cannot be resumed "
        r"\(this state file cannot be parsed\)",
    ):
        _checkpoints(tmp_path).restore_latest()
    # With the checkpoints deleted, as the message says, a run starts at step 0.
    shutil.rmtree(tmp_path / "ckpt")
    assert _checkpoints(tmp_path).restore_latest() is None


def test_finite_weights_skips_integer_variables():
    model = tf.Module()
    model.seed = tf.Variable([3, 7], dtype=tf.int64)
    model.kernel = tf.Variable([1.0, 2.0])
    assert checkpointing.finite_weights(model)
    model.kernel.assign([1.0, float("inf")])
    assert not checkpointing.finite_weights(model)
