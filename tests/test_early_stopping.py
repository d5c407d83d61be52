"""EarlyStopping on its own: patience in steps, modes, min_delta, baseline, start step, snapshots."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf.train import early_stopping


def _feed(stopper, values, every=100, start=100):
    """Updates at steps start, start + every, ...; returns the first stop or None."""
    for i, value in enumerate(values):
        step = start + i * every
        if stopper.update(step, {stopper.monitor: value}):
            return step
    return None


def test_stops_at_best_step_plus_patience():
    stopper = lowtf.EarlyStopping(patience=300)
    # Best at step 300 (0.5); then no improvement.
    stop = _feed(stopper, [0.9, 0.7, 0.5, 0.6, 0.55, 0.51, 0.8, 0.9])
    assert stop == 600
    assert int(stopper.best_step.numpy()) == 300
    assert float(stopper.best_value.numpy()) == 0.5
    assert int(stopper.steps_without_progress.numpy()) == 300
    assert stopper.stopped


def test_patience_rounds_up_to_the_eval_interval():
    stopper = lowtf.EarlyStopping(patience=250)
    stop = _feed(stopper, [0.5] + [0.6] * 10)
    assert stop == 400  # best at 100, 100 + 250 rounded up to the next evaluation


def test_min_delta_ignores_small_improvements():
    stopper = lowtf.EarlyStopping(patience=300, min_delta=0.01)
    stop = _feed(stopper, [1.0, 0.995, 0.991, 0.9, 0.895, 0.899])
    assert stop is None
    assert int(stopper.best_step.numpy()) == 400
    assert float(stopper.best_value.numpy()) == 0.9
    assert int(stopper.steps_without_progress.numpy()) == 200
    assert stopper.update(700, {"val_cross_entropy": 0.8905})  # < 0.9 but not by 0.01
    assert int(stopper.best_step.numpy()) == 400


def test_auto_mode_maximizes_accuracy():
    stopper = lowtf.EarlyStopping(monitor="val_accuracy", patience=200)
    assert stopper.mode == "max"
    stop = _feed(stopper, [0.5, 0.8, 0.7, 0.79, 0.6])
    assert (stop, int(stopper.best_step.numpy())) == (400, 200)
    assert lowtf.EarlyStopping(monitor="train_cross_entropy").mode == "min"
    assert lowtf.EarlyStopping(monitor="val_accuracy", mode="min").mode == "min"


def test_start_from_step_defers_the_stop():
    stopper = lowtf.EarlyStopping(patience=100, start_from_step=500)
    stop = _feed(stopper, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert stop == 500
    assert int(stopper.best_step.numpy()) == 100


def test_nan_never_improves():
    stopper = lowtf.EarlyStopping(patience=200)
    stop = _feed(stopper, [0.5, math.nan, math.nan])
    assert stop == 300
    assert float(stopper.best_value.numpy()) == 0.5


def test_bad_arguments_raise_one_readable_error():
    with pytest.raises(
        ValueError, match=r"`patience` \(0\) must be a positive integer"
    ):
        lowtf.EarlyStopping(patience=0)
    with pytest.raises(ValueError, match=r"`mode` \('up'\) must be one of"):
        lowtf.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match=r"`min_delta` \(-1\) must be >= 0"):
        lowtf.EarlyStopping(min_delta=-1)
    with pytest.raises(ValueError, match="`best_dir` needs `checkpoint=`"):
        lowtf.EarlyStopping(best_dir="/tmp/x")
    with pytest.raises(
        ValueError, match=r"`prune_on_save` \('no'\) must be True or False"
    ):
        lowtf.EarlyStopping(prune_on_save="no")  # a truthy string: would prune
    stopper = lowtf.EarlyStopping()
    with pytest.raises(
        ValueError, match=r"`monitor` \('val_cross_entropy'\) is not among"
    ):
        stopper.update(100, {"val_loss": 0.3})
    stopper.update(200, {"val_cross_entropy": 0.3})
    with pytest.raises(ValueError, match="steps must not go back"):
        stopper.update(100, {"val_cross_entropy": 0.3})
    with pytest.raises(ValueError, match="needs `best_dir=`"):
        stopper.restore_best()


def test_restore_best_brings_back_the_best_weights_bit_for_bit(tmp_path):
    w = tf.Variable(tf.zeros([3, 4]))
    stopper = lowtf.EarlyStopping(
        patience=200, best_dir=str(tmp_path), checkpoint=tf.train.Checkpoint(w=w)
    )
    weights = {}
    for step, value in zip(range(100, 700, 100), [0.9, 0.4, 0.5, 0.6, 0.7, 0.8]):
        w.assign(tf.random.normal([3, 4]))
        weights[step] = w.numpy()
        if stopper.update(step, {"val_cross_entropy": value}):
            break
    assert step == 400
    stopper.restore_best()
    np.testing.assert_array_equal(w.numpy(), weights[200])
    # One snapshot left, and the pointer names it with its step and value.
    pointer = lowtf.train.best_checkpoint(str(tmp_path))
    assert pointer["step"] == 200 and pointer["value"] == 0.4
    snapshots = {n.split(".")[0] for n in os.listdir(tmp_path) if n.startswith("best-")}
    assert snapshots == {os.path.basename(pointer["prefix"])}
    reader = tf.train.load_checkpoint(pointer["prefix"])
    np.testing.assert_array_equal(
        reader.get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE"), weights[200]
    )


class _Crash(Exception):
    pass


def test_a_crash_while_saving_leaves_the_previous_snapshot_restorable(
    tmp_path, monkeypatch
):
    w = tf.Variable([1.0, 2.0])
    ckpt = tf.train.Checkpoint(w=w)
    stopper = lowtf.EarlyStopping(
        patience=1000, best_dir=str(tmp_path), checkpoint=ckpt
    )
    stopper.update(100, {"val_cross_entropy": 0.5})
    good = lowtf.train.best_checkpoint(str(tmp_path))

    def crash_half_way(prefix):
        # The index file lands, the data file is cut short, then the process "dies".
        with open(prefix + ".index", "wb") as f:
            f.write(b"garbage")
        with open(prefix + ".data-00000-of-00001", "wb") as f:
            f.write(b"\0" * 3)
        raise _Crash

    w.assign([7.0, 8.0])
    monkeypatch.setattr(ckpt, "write", crash_half_way)
    with pytest.raises(_Crash):
        stopper.update(200, {"val_cross_entropy": 0.1})
    monkeypatch.undo()
    # Neither the pointer nor the state moved to the broken snapshot.
    assert lowtf.train.best_checkpoint(str(tmp_path)) == good
    assert int(stopper.best_step.numpy()) == 100
    stopper.restore_best()
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    # The next snapshot gets a fresh name; the broken files are pruned.
    w.assign([3.0, 4.0])
    stopper.update(300, {"val_cross_entropy": 0.2})
    names = sorted(os.listdir(tmp_path))
    assert names == ["best-300-3.data-00000-of-00001", "best-300-3.index", "best.json"]


def test_state_round_trips_through_a_checkpoint(tmp_path):
    stopper = lowtf.EarlyStopping(monitor="val_accuracy", patience=300, start_from_step=100)
    _feed(stopper, [0.5, 0.7, 0.6, 0.65])
    path = tf.train.Checkpoint(stopper=stopper).write(str(tmp_path / "state"))
    fresh = lowtf.EarlyStopping(monitor="val_accuracy", patience=300, start_from_step=100)
    tf.train.Checkpoint(stopper=fresh).read(path).assert_consumed()
    for name in (
        "best_value",
        "best_step",
        "last_step",
        "steps_without_progress",
        "best_id",
    ):
        assert getattr(fresh, name).numpy() == getattr(stopper, name).numpy(), name
    assert (int(fresh.best_step.numpy()), float(fresh.best_value.numpy())) == (200, 0.7)
    assert int(fresh.steps_without_progress.numpy()) == 200
    # Both copies continue identically: the restored one stops where the original does.
    assert fresh.update(500, {"val_accuracy": 0.6}) and stopper.update(
        500, {"val_accuracy": 0.6}
    )


def test_deferred_prune_keeps_the_snapshot_a_restored_state_names(tmp_path):
    w = tf.Variable(0.0)
    stopper = lowtf.EarlyStopping(
        patience=1000,
        best_dir=str(tmp_path),
        checkpoint=tf.train.Checkpoint(w=w),
        prune_on_save=False,
    )
    w.assign(1.0)
    stopper.update(100, {"val_cross_entropy": 0.5})
    state = tf.train.Checkpoint(stopper=stopper).write(str(tmp_path / "state"))
    w.assign(2.0)
    stopper.update(200, {"val_cross_entropy": 0.4})  # never made durable: "lost"
    # A run resumed from `state` must find the step-100 snapshot.
    resumed = lowtf.EarlyStopping(
        patience=1000,
        best_dir=str(tmp_path),
        checkpoint=tf.train.Checkpoint(w=w),
        prune_on_save=False,
    )
    tf.train.Checkpoint(stopper=resumed).read(state).assert_consumed()
    resumed.prune()
    assert json.loads((tmp_path / early_stopping.POINTER).read_text())["step"] == 100
    assert not [n for n in os.listdir(tmp_path) if n.startswith("best-200")]
    resumed.restore_best()
    assert float(w.numpy()) == 1.0


def test_baseline_improvements_that_miss_it_do_not_restart_the_patience():
    # As Keras: the best is tracked, but the patience runs from the first
    # update until a value beats the baseline.
    stopper = lowtf.EarlyStopping(patience=300, baseline=0.5)
    stop = _feed(stopper, [0.9, 0.8, 0.7, 0.6, 0.55])
    assert stop == 400  # first update at 100, no value below 0.5
    assert (int(stopper.best_step.numpy()), float(stopper.best_value.numpy())) == (500 - 100, 0.6)
    beaten = lowtf.EarlyStopping(patience=300, baseline=0.5)
    assert _feed(beaten, [0.9, 0.45, 0.6, 0.6, 0.6, 0.6]) == 500  # 200 + 300
    with pytest.raises(ValueError, match="`baseline`"):
        lowtf.EarlyStopping(baseline=math.nan)


def test_restore_best_weights_restores_when_update_signals_the_stop(tmp_path):
    var = tf.Variable(0.0)
    stopper = lowtf.EarlyStopping(
        patience=200, best_dir=str(tmp_path / "best"),
        checkpoint=tf.train.Checkpoint(v=var), restore_best_weights=True,
    )
    for step, (value, weight) in enumerate([(0.9, 1.0), (0.3, 2.0), (0.6, 3.0), (0.7, 4.0)]):
        var.assign(weight)
        stopped = stopper.update(100 * (step + 1), {"val_cross_entropy": value})
    assert stopped and float(var.numpy()) == 2.0  # the weights of step 200
    with pytest.raises(ValueError, match="needs `best_dir=`"):
        lowtf.EarlyStopping(restore_best_weights=True)


def test_the_members_rule_is_early_stopping_for_each_member():
    # K members with their own patience, min_delta and baseline, fed random
    # values with NaNs: update_members on [K] arrays decides as K
    # EarlyStopping objects do, update by update (a stopped member frozen).
    rs = np.random.RandomState(5)
    patience = np.array([100, 200, 300, 200, 400])
    min_delta = np.array([0.0, 0.01, 0.0, 0.05, 0.0])
    baseline = np.array([0.5, 0.7, 0.2, 0.6, 0.9])
    for mode, base in (("min", baseline), ("max", None)):
        singles = [
            lowtf.EarlyStopping(
                monitor="m",
                mode=mode,
                patience=int(p),
                min_delta=float(d),
                baseline=None if base is None else float(b),
                start_from_step=300,
            )
            for p, d, b in zip(patience, min_delta, baseline)
        ]
        worst = math.inf if mode == "min" else -math.inf
        best_value, best_step = np.full(5, worst), np.full(5, -1)
        patience_from, stop_step = np.full(5, -1), np.full(5, -1)
        for step in range(0, 1500, 100):
            values = rs.uniform(0.0, 1.0, 5)
            values[rs.uniform(size=5) < 0.1] = math.nan
            active = stop_step < 0
            rule = early_stopping.update_members(
                step,
                values,
                best_value=best_value,
                best_step=best_step,
                patience_from=patience_from,
                mode=mode,
                patience=patience,
                min_delta=min_delta,
                baseline=base,
                start_from_step=300,
                active=active,
            )
            best_value, best_step = rule.best_value, rule.best_step
            patience_from = rule.patience_from
            stop_step = np.where(rule.stopped, step, stop_step)
            for k, single in enumerate(singles):
                if not active[k]:
                    continue
                assert single.update(step, {"m": values[k]}) == rule.stopped[k]
                assert float(single.best_value.numpy()) == best_value[k]
                assert int(single.best_step.numpy()) == best_step[k]
        assert (stop_step >= 300).all()  # every one stopped, none before 300
