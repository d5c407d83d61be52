"""fit(): early stopping of an overfitting net, cadence, outputs, endings, resume."""

import contextlib
import dataclasses
import glob
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import _fixtures  # tests/_fixtures.py; pytest puts tests/ on sys.path
import numpy as np
import pytest
import tensorflow as tf

import lowtf

# Graph mode: these tests are about the loop, and XLA compiles cost seconds.
GRAPH = lowtf.StepOptions(jit_compile=False)
WORKER = os.path.join(os.path.dirname(__file__), "_resume_worker.py")


def _noisy(n_train=200, n_val=400, features=20, seed=0):
    """Few examples with 20% of the signal's variance in label noise."""
    return _fixtures.noisy_split(n_train, n_val, features, seed=seed)


def _values(model):
    return [v.numpy() for v in model.variables]


def _best_weights(model_dir, like):
    """The model variables stored in the best snapshot, read into a copy of `like`."""
    prefix = lowtf.train.best_checkpoint(os.path.join(model_dir, "best"))["prefix"]
    tf.train.Checkpoint(model=like).read(prefix).expect_partial()
    return _values(like)


def _fit(
    model_dir,
    config,
    *,
    model=None,
    optimizer=None,
    data=None,
    log=None,
    step_options=GRAPH,
):
    train, validation = data or _noisy()
    lines = []
    result = lowtf.fit(
        model or lowtf.mlp("small", seed=1),
        optimizer or tf.keras.optimizers.Adam(1e-2),
        train=train,
        validation=validation,
        model_dir=str(model_dir),
        config=config,
        step_options=step_options,
        log=log or lines.append,
    )
    return result, lines


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, r"`batch_size` \(0\) must be a positive integer"),
        ("eval_every", -5, r"`eval_every` \(-5\) must be a positive integer"),
        ("steps_per_call", 2.5, r"`steps_per_call` \(2.5\) must be a positive integer"),
        ("patience", 0, r"`patience` \(0\) must be a positive integer"),
        ("min_delta", -0.1, r"`min_delta` \(-0.1\) must be >= 0"),
        (
            "monitor",
            "val_loss",
            r"`monitor` \('val_loss'\) must be one of 'train_cross_entropy'",
        ),
        (
            "mode",
            "largest",
            r"`mode` \('largest'\) must be one of 'auto', 'min', 'max'",
        ),
        ("start_from_step", -1, r"`start_from_step` \(-1\) must be an integer >= 0"),
        ("checkpoint_every", 0, r"`checkpoint_every` \(0\) must be a positive integer"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        lowtf.TrainConfig(**{field: value})


def test_overfitting_net_stops_at_best_step_plus_patience_with_the_best_weights(
    tmp_path,
):
    # A medium net (64 x 3) on 200 noisy examples: validation loss turns up
    # within a few hundred steps while the training loss keeps falling.
    config = lowtf.TrainConfig(
        batch_size=50,
        max_steps=2000,
        eval_every=20,
        steps_per_call=7,
        patience=90,
        checkpoint_every=1000,
    )
    train, validation = _noisy()
    model = lowtf.mlp("medium", seed=1)
    result, lines = _fit(
        tmp_path,
        config,
        model=model,
        optimizer=tf.keras.optimizers.Adam(1e-3),
    )
    history = result.history
    assert result.stop_reason == "patience"
    # Patience 90 rounds up to the next evaluation, 100 steps after the best.
    assert result.last_step == result.best_step + 100 < config.max_steps
    # Evaluations land on eval_every boundaries although 7 does not divide 20.
    assert [row["step"] for row in history] == list(range(0, result.last_step + 1, 20))
    assert len(lines) >= len(history)
    best = next(row for row in history if row["step"] == result.best_step)
    last = history[-1]
    assert result.best_value == best["val_cross_entropy"]
    assert result.best_value == min(row["val_cross_entropy"] for row in history)
    # It really overfit: training loss fell, validation loss rose.
    assert last["train_cross_entropy"] < 0.8 * best["train_cross_entropy"]
    assert last["val_cross_entropy"] > result.best_value + 0.02
    # The model holds the best snapshot bit for bit, and evaluates to the best value.
    copy = lowtf.mlp("medium", seed=2)
    copy(train[0][:1])
    for restored, stored in zip(_values(model), _best_weights(tmp_path, copy)):
        np.testing.assert_array_equal(restored, stored)
    evaluation = lowtf.Evaluator(model, jit_compile=False)(*validation)
    assert evaluation["cross_entropy"] == result.best_value
    assert evaluation["accuracy"] == best["val_accuracy"]


@pytest.mark.e2e
def test_history_tensorboard_and_progress_lines(tmp_path):
    schedule = tf.keras.optimizers.schedules.InverseTimeDecay(
        1e-2, decay_steps=50, decay_rate=1.0
    )
    model = lowtf.mlp("small", l2=1e-3, maxnorm=0.5, seed=4)
    config = lowtf.TrainConfig(
        batch_size=40, max_steps=50, eval_every=20, steps_per_call=15
    )
    result, lines = _fit(
        tmp_path, config, model=model, optimizer=tf.keras.optimizers.Adam(schedule)
    )
    assert result.stop_reason == "max_steps" and result.last_step == 50
    # max_steps is evaluated even off the eval_every grid.
    assert [row["step"] for row in result.history] == [0, 20, 40, 50]
    assert lowtf.read_history(str(tmp_path / "history.csv")) == result.history
    with open(tmp_path / "history.csv") as f:
        assert f.readline().strip().split(",") == list(lowtf.train.metrics.COLUMNS)
    first, rows = result.history[0], result.history[1:]
    assert first["train_cross_entropy"] is None and first["regularization_loss"] > 0
    for row in rows:
        assert row["total_loss"] == pytest.approx(
            row["train_cross_entropy"] + row["regularization_loss"], rel=1e-5
        )
        # The learning rate the optimizer uses at that step (inverse-time decay).
        assert row["learning_rate"] == pytest.approx(
            1e-2 / (1 + row["step"] / 50), rel=1e-6
        )
    # One progress line per evaluation, with the numbers of the history.
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 4
    assert progress[2].startswith("step 40/50  train ce ")
    assert f"val ce {rows[1]['val_cross_entropy']:.4f}" in progress[2]
    # Step 0 has no speed yet; from the first call on (steps 1-15, which
    # compiled) it is timed, and patience (1000) ends after max_steps.
    assert progress[0].endswith("  best @ 0  ETA ?")
    line = re.fullmatch(r"step 40/50  (.*)  best @ (\d+)  ETA \d+:\d\d:\d\d", progress[2])
    assert line, progress[2]
    assert line[1] == lowtf.train.metrics.Evaluation.from_dict(rows[1]).progress()
    assert " reg " in line[1]  # the model's L2 penalty
    best = min(result.history[:3], key=lambda row: row["val_cross_entropy"])
    assert int(line[2]) == best["step"]

    events = {}
    for split in ("train", "validation"):
        for path in glob.glob(str(tmp_path / "tensorboard" / split / "events.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    number = float(tf.make_ndarray(value.tensor))
                    events[(split, value.tag, event.step)] = number
                    assert value.metadata.plugin_data.plugin_name == "scalars"
    for row in result.history:
        step = row["step"]
        assert events[("validation", "cross_entropy", step)] == np.float32(
            row["val_cross_entropy"]
        )
        assert events[("validation", "accuracy", step)] == np.float32(
            row["val_accuracy"]
        )
        assert events[("train", "learning_rate", step)] == np.float32(
            row["learning_rate"]
        )
    for row in rows:
        step = row["step"]
        assert events[("train", "cross_entropy", step)] == np.float32(
            row["train_cross_entropy"]
        )
        assert events[("train", "regularization_loss", step)] == np.float32(
            row["regularization_loss"]
        )
        assert events[("train", "total_loss", step)] == np.float32(row["total_loss"])
        assert events[("validation", "total_loss", step)] == pytest.approx(
            row["val_cross_entropy"] + row["regularization_loss"], rel=1e-6
        )
    # Max-norm at work: Glorot starts the 20 -> 16 units above 0.5; each step caps them.
    assert events[("train", "max_unit_norm/dense_0", 0)] > 0.6
    for step in (20, 40, 50):
        for layer in ("dense_0", "dense_1"):
            assert events[("train", f"max_unit_norm/{layer}", step)] <= 0.5 * (1 + 1e-6)
    assert (
        events[("train", "max_unit_norm/logits", 50)] > 0
    )  # unconstrained, still reported


@pytest.mark.e2e
def test_rerun_resumes_and_matches_one_uninterrupted_run(tmp_path):
    config = lowtf.TrainConfig(
        batch_size=40,
        max_steps=120,
        eval_every=20,
        steps_per_call=9,
        patience=1000,
        checkpoint_every=30,
    )
    whole_model = lowtf.mlp("small", dropout=0.3, seed=5)
    whole, _ = _fit(tmp_path / "whole", config, model=whole_model)
    first, _ = _fit(
        tmp_path / "split",
        dataclasses.replace(config, max_steps=60),
        model=lowtf.mlp("small", dropout=0.3, seed=5),
    )
    assert first.last_step == 60
    # New Python objects, same directory: training continues from step 60
    # (dropout masks and batches included) and ends as the single run did.
    model = lowtf.mlp("small", dropout=0.3, seed=5)
    second, lines = _fit(tmp_path / "split", config, model=model)
    assert lines[0].startswith("resuming from") and lines[0].endswith("at step 60")
    assert second.history == whole.history
    assert [row["step"] for row in second.history] == list(range(0, 121, 20))
    assert (second.best_step, second.best_value, second.last_step) == (
        whole.best_step,
        whole.best_value,
        120,
    )
    for a, b in zip(_values(model), _values(whole_model)):
        np.testing.assert_array_equal(a, b)
    # The run's wall time covers both sessions, not only the resumed one.
    assert second.wall_seconds > first.wall_seconds > 0
    # A finished run is not trained again.
    again, lines = _fit(
        tmp_path / "split", config, model=lowtf.mlp("small", dropout=0.3, seed=5)
    )
    assert again.stop_reason == "max_steps" and again.history == whole.history
    assert not [line for line in lines if line.startswith("step ")]


@pytest.mark.e2e
def test_non_finite_loss_stops_restores_best_and_keeps_the_checkpoints(tmp_path):
    # The learning rate turns NaN after step 60: the weights go NaN at once.
    schedule = _NanAfter(60, 1e-2)
    model = lowtf.mlp("small", seed=6)
    config = lowtf.TrainConfig(
        batch_size=40,
        max_steps=500,
        eval_every=20,
        steps_per_call=7,
        checkpoint_every=20,
        keep_checkpoints=5,
    )
    train, validation = _noisy()
    result, lines = _fit(
        tmp_path, config, model=model, optimizer=tf.keras.optimizers.Adam(schedule)
    )
    assert result.stop_reason == "non_finite"
    assert result.last_step < 100
    message = next(line for line in lines if "non-finite" in line)
    assert (
        "non-finite training loss" in message
        and "latest checkpoint (step 60)" in message
    )
    assert "Run again with a lower learning rate" in message
    # Best snapshot restored: finite weights that evaluate to the best value.
    assert all(np.isfinite(v).all() for v in _values(model))
    assert (
        lowtf.Evaluator(model, jit_compile=False)(*validation)["cross_entropy"]
        == result.best_value
    )
    # The latest checkpoints written before are intact: each restores and
    # evaluates to what was recorded at its step.
    state = tf.train.get_checkpoint_state(str(tmp_path / "ckpt"))
    paths = list(state.all_model_checkpoint_paths)
    assert [int(p.rsplit("-", 1)[1]) for p in paths] == [0, 20, 40, 60]
    recorded = {row["step"]: row["val_cross_entropy"] for row in result.history}
    copy = lowtf.mlp("small", seed=7)
    copy(train[0][:1])
    evaluate = lowtf.Evaluator(copy, jit_compile=False)
    for path in paths:
        ckpt = tf.train.Checkpoint(train_step=tf.train.Checkpoint(model=copy))
        ckpt.read(path).expect_partial()
        step = tf.train.load_checkpoint(path).get_tensor(
            "train_step/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
        )
        assert evaluate(*validation)["cross_entropy"] == recorded[int(step)]


@pytest.mark.e2e
def test_weights_broken_by_a_calls_last_step_are_never_checkpointed(tmp_path):
    # Step 25's update uses a NaN rate: the call 21-25 reports finite losses
    # (computed before the update), then step 25 is a checkpoint step.
    model = lowtf.mlp("small", seed=6)
    config = lowtf.TrainConfig(
        batch_size=40,
        max_steps=500,
        eval_every=20,
        steps_per_call=7,
        checkpoint_every=25,
    )
    _, validation = _noisy()
    result, lines = _fit(
        tmp_path,
        config,
        model=model,
        optimizer=tf.keras.optimizers.Adam(_NanAfter(24, 1e-2)),
    )
    assert (result.stop_reason, result.last_step) == ("non_finite", 25)
    assert any(line.startswith("non-finite weights at step 25") for line in lines)
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-0")
    assert result.best_step == 20
    assert all(np.isfinite(v).all() for v in _values(model))
    evaluate = lowtf.Evaluator(model, jit_compile=False)
    assert evaluate(*validation)["cross_entropy"] == result.best_value


class _NanAfter(tf.keras.optimizers.schedules.LearningRateSchedule):
    """``rate`` for the first ``steps`` steps, then NaN."""

    def __init__(self, steps, rate):
        self.steps, self.rate = steps, rate

    def __call__(self, step):
        return tf.where(tf.cast(step, tf.float32) < self.steps, self.rate, float("nan"))

    def get_config(self):
        return {"steps": self.steps, "rate": self.rate}


def _signal_at(step, action):
    """A log callback that runs `action` when the progress line of `step` is logged."""
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith(f"step {step}/"):
            action()

    return log, lines


@pytest.mark.e2e
def test_sigterm_stops_gracefully_saves_and_restores_best(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    log, lines = _signal_at(40, lambda: os.kill(os.getpid(), signal.SIGTERM))
    model = lowtf.mlp("small", seed=8)
    config = lowtf.TrainConfig(
        batch_size=40, max_steps=500, eval_every=20, checkpoint_every=1000
    )
    train, validation = _noisy()
    result, _ = _fit(tmp_path, config, model=model, log=log)
    assert result.stop_reason == "interrupted" and result.last_step == 40
    assert any(line.startswith("SIGTERM received at step 40") for line in lines)
    assert signal.getsignal(signal.SIGTERM) is before
    assert (
        lowtf.Evaluator(model, jit_compile=False)(*validation)["cross_entropy"]
        == result.best_value
    )
    # The graceful stop saved the latest state: a rerun resumes at step 40.
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-40")


@pytest.mark.e2e
def test_keyboard_interrupt_restores_best_and_keeps_the_last_checkpoint(tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    log, lines = _signal_at(60, interrupt)
    model = lowtf.mlp("small", seed=9)
    config = lowtf.TrainConfig(
        batch_size=40, max_steps=500, eval_every=20, checkpoint_every=50
    )
    train, validation = _noisy()
    result, _ = _fit(tmp_path, config, model=model, log=log)
    assert result.stop_reason == "interrupted" and result.last_step == 60
    assert lines[-1].startswith("restored the best snapshot")
    assert (
        lowtf.Evaluator(model, jit_compile=False)(*validation)["cross_entropy"]
        == result.best_value
    )
    # Interrupted anywhere, the state may be mid-update: nothing new is saved.
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-50")


@pytest.mark.e2e
def test_a_failed_start_leaves_an_existing_model_dir_untouched(tmp_path):
    config = lowtf.TrainConfig(batch_size=40, max_steps=40, eval_every=20)
    _fit(tmp_path, config)
    before = _fixtures.tree_digest(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"does not fit .* float32\[1\] in the checkpoint but float32\[16\] here",
    ):
        _fit(tmp_path, config, model=lowtf.mlp((16, 16, 16), seed=1))
    (x, y), validation = _noisy(features=20)
    with pytest.raises(ValueError, match="both sets need the same features"):
        _fit(tmp_path, config, data=((x[:, :10], y), validation))
    with pytest.raises(ValueError, match=r"`train` has 200 examples but 199 labels"):
        _fit(tmp_path, config, data=((x, y[:-1]), validation))
    with pytest.raises(
        ValueError, match=r"`batch_size` \(400\) exceeds the 200 examples"
    ):
        _fit(tmp_path, lowtf.TrainConfig(batch_size=400))
    assert _fixtures.tree_digest(tmp_path) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _fit(tmp_path / "file", config)


@pytest.mark.e2e
def test_sigkill_at_any_moment_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    killed_dir, ref_dir = tmp_path / "killed", tmp_path / "reference"

    def worker(*args):
        return subprocess.Popen(
            [sys.executable, WORKER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    # Paused, then killed, at the first new best from step 20 on (step 20
    # itself unless training got worse than the initial weights).
    run = worker("--pause_on_best_after", "20", f"{killed_dir}={tmp_path / 'killed'}")
    seen = []
    for line in run.stdout:
        seen.append(line)
        kill_step = _fixtures.new_best_at(line)
        if kill_step is not None and kill_step >= 20:
            break
    else:
        pytest.fail(
            "the worker ended without a new best to be killed at:\n" + "".join(seen)
        )
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    run.stdout.close()
    assert run.returncode == -signal.SIGKILL
    # Killed right after an evaluation wrote a new best snapshot and its
    # history row, before the next checkpoint: the latest checkpoint is older
    # (and off the evaluation grid, holding the running training means), and
    # the best snapshot on disk is from a future the resumed run must redo.
    latest_step = (kill_step - 1) // 15 * 15
    assert latest_step % 20 != 0
    latest = tf.train.latest_checkpoint(str(killed_dir / "ckpt"))
    assert latest.endswith(f"ckpt-{latest_step}")
    assert lowtf.train.best_checkpoint(str(killed_dir / "best"))["step"] == kill_step
    assert lowtf.read_history(str(killed_dir / "history.csv"))[-1]["step"] == kill_step

    # One process resumes the killed run, then trains a reference from scratch.
    run = worker(
        f"{killed_dir}={tmp_path / 'killed'}", f"{ref_dir}={tmp_path / 'reference'}"
    )
    out, _ = run.communicate(timeout=240)
    assert run.returncode == 0, out
    assert f"resuming from {latest} at step {latest_step}" in out

    results = [
        json.loads((tmp_path / f"{n}.json").read_text())
        for n in ("reference", "killed")
    ]
    # Best step and value, stop reason, last step and every history row.
    assert results[1] == results[0]
    assert results[0]["stop_reason"] == "patience"
    weights = [np.load(tmp_path / f"{n}.npz") for n in ("reference", "killed")]
    assert len(weights[0].files) == 6
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[1][name], weights[0][name])
    # The snapshot of the lost future was pruned; one best snapshot remains.
    assert len(glob.glob(str(killed_dir / "best" / "best-*.index"))) == 1


@pytest.mark.e2e
def test_readme_examples_run_and_stop_early(tmp_path):
    # Also the XLA path of fit (the default), as bin/train runs it.
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    section = readme.read_text().split("## Early stopping by steps in Python")[1]
    section = section.split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    namespace = {"__name__": "readme_example"}
    with contextlib.redirect_stdout(io.StringIO()):
        for block in blocks:
            block = block.replace("/tmp/lowtf_", str(tmp_path / "lowtf_"))
            exec(compile(block, "README.md", "exec"), namespace)
    result, config = namespace["result"], namespace["config"]
    assert result.stop_reason == "patience" and result.last_step < config.max_steps
    assert result.last_step == result.best_step + config.patience
    stopper, validation = namespace["stopper"], namespace["validation"]
    assert stopper.stopped
    restored = namespace["evaluate"](*validation)["cross_entropy"]
    assert restored == float(stopper.best_value.numpy())


@pytest.mark.e2e
def test_a_keras_model_trains_reports_its_kernel_norms_and_restores(tmp_path):
    def keras_mlp():
        return tf.keras.Sequential(
            [
                tf.keras.Input((20,)),
                tf.keras.layers.Dense(16, activation="elu", name="hidden"),
                tf.keras.layers.Dense(1, name="out"),
            ]
        )

    model = keras_mlp()
    config = lowtf.TrainConfig(batch_size=40, max_steps=40, eval_every=20)
    result, _ = _fit(tmp_path, config, model=model)
    _, validation = _noisy()
    evaluate = lowtf.Evaluator(model, jit_compile=False)
    assert evaluate(*validation)["cross_entropy"] == result.best_value
    norms = {}
    for path in glob.glob(str(tmp_path / "tensorboard" / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                norms[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    kernel = model.get_layer("hidden").kernel
    expected = lowtf.nn.unit_norms(tf.identity(kernel)).numpy().max()
    assert norms[("max_unit_norm/hidden", result.best_step)] == np.float32(expected)
    assert ("max_unit_norm/out", 40) in norms


@pytest.mark.e2e
def test_a_keras_model_with_dropout_saves_and_resumes(tmp_path):
    # Keras 3 Dropout keeps an int64 seed-generator state among the model's
    # variables: the NaN/Inf check before each save must skip it.
    def keras_dropout_mlp():
        return tf.keras.Sequential(
            [
                tf.keras.Input((20,)),
                tf.keras.layers.Dense(16, activation="elu"),
                tf.keras.layers.Dropout(0.3, seed=1),
                tf.keras.layers.Dense(1),
            ]
        )

    model = keras_dropout_mlp()
    assert tf.int64 in [v.dtype for v in model.variables]
    config = lowtf.TrainConfig(
        batch_size=40, max_steps=40, eval_every=20, checkpoint_every=20
    )
    result, _ = _fit(tmp_path, config, model=model)
    assert (result.stop_reason, result.last_step) == ("max_steps", 40)
    state = tf.train.get_checkpoint_state(str(tmp_path / "ckpt"))
    assert [p.rsplit("-", 1)[1] for p in state.all_model_checkpoint_paths] == [
        "0",
        "20",
        "40",
    ]
    _, validation = _noisy()
    evaluate = lowtf.Evaluator(model, jit_compile=False)
    assert evaluate(*validation)["cross_entropy"] == result.best_value
    # A new model resumes from step 40 and, at max_steps already, ends there.
    again, lines = _fit(tmp_path, config, model=keras_dropout_mlp())
    assert lines[0].endswith("at step 40")
    assert (again.best_step, again.best_value) == (result.best_step, result.best_value)


@pytest.mark.e2e
def test_bad_validation_data_is_refused_before_model_dir_is_written(tmp_path):
    config = lowtf.TrainConfig(batch_size=40, max_steps=40, eval_every=20)
    (x, y), (x_val, y_val) = _noisy()
    three = y_val.copy()
    three[5] = 3.0
    nan = x_val.copy()
    nan[7, 2] = np.nan
    softmax = lowtf.mlp("small", num_classes=3, seed=1)
    cases = [
        # A sigmoid head would take 3 as "more than 1" in silence.
        (
            None,
            (x_val, three),
            (
                r"label 3\.0 is out of range in `validation\[1\]` \(row 5; 1 of 400 "
                r"labels are out.*sigmoid head with 1 logit"
            ),
        ),
        # A softmax head fails in the graph, or gives NaN under XLA.
        (
            softmax,
            (x_val, np.where(np.arange(400) == 9, 3, y_val.astype(np.int64))),
            (
                r"label 3 is out of range in `validation\[1\]` \(row 9; .*softmax "
                r"head with 3 logit\(s\) takes labels that are integers in \[0, 3\)"
            ),
        ),
        (
            None,
            (x_val.astype(np.float64), y_val),
            (
                r"training features are float32 but validation features "
                r"\(validation\[0\]\) float64; cast them to one dtype, e.g. "
                r"x_val.astype\(np.float32\)"
            ),
        ),
        (
            None,
            (nan, y_val),
            r"`validation\[0\]` holds NaN or Inf: validation\[0\]\[7, 2\] is nan",
        ),
        (None, (x_val, y_val[:-1]), r"`validation` has 400 examples but 399 labels"),
        (None, (x_val[:0], y_val[:0]), r"`validation` has 0 examples but 0 labels"),
    ]
    fresh = tmp_path / "fresh"
    for model, validation, message in cases:
        with pytest.raises(ValueError, match=message):
            _fit(fresh, config, model=model, data=((x, y), validation))
        assert not fresh.exists()
    existing = tmp_path / "existing"
    _fit(existing, config)
    before = _fixtures.tree_digest(existing)
    with pytest.raises(ValueError, match=r"label 3\.0 is out of range"):
        _fit(existing, config, data=((x, y), (x_val, three)))
    assert _fixtures.tree_digest(existing) == before


@pytest.mark.e2e
def test_regularization_loss_monitor_needs_a_regularized_model(tmp_path):
    config = lowtf.TrainConfig(monitor="regularization_loss", batch_size=40)
    with pytest.raises(
        ValueError,
        match=r"`monitor` \('regularization_loss'\) never improves on this model: "
        r"it has no regularization loss .* the penalty stays 0\.0; monitor "
        r"'val_cross_entropy', or regularize the model \(e\.g\. "
        r"lowtf\.mlp\(\.\.\., l2=1e-4\)\)",
    ):
        _fit(tmp_path / "run", config)
    assert not (tmp_path / "run").exists()
    # With an L2 penalty it is a metric that moves, and is accepted.
    config = dataclasses.replace(config, max_steps=20, eval_every=10)
    result, _ = _fit(tmp_path / "l2", config, model=lowtf.mlp("small", l2=1e-2))
    assert result.monitor == "regularization_loss"
    values = [row["regularization_loss"] for row in result.history]
    assert values[0] > 0 and values[-1] != values[0]


def _fit_monitoring_training_loss(tmp_path, model, steps_per_call, *, nan_after):
    """fit() on train_cross_entropy, evaluated every 20 steps, whose learning
    rate turns NaN from update ``nan_after`` (0-based) on."""
    config = lowtf.TrainConfig(
        batch_size=40,
        max_steps=500,
        eval_every=20,
        steps_per_call=steps_per_call,
        checkpoint_every=1000,
        monitor="train_cross_entropy",
    )
    optimizer = tf.keras.optimizers.Adam(_NanAfter(nan_after, 1e-2))
    return _fit(tmp_path, config, model=model, optimizer=optimizer)


@pytest.mark.e2e
def test_weights_broken_before_an_evaluation_never_become_the_best(tmp_path):
    # Monitoring a training metric, whose means come from before each update:
    # step 40's update uses a NaN rate, yet the training loss of steps 21-40
    # improves on that of steps 1-20. The NaN weights must not be snapshot.
    model = lowtf.mlp("small", seed=6)
    result, lines = _fit_monitoring_training_loss(tmp_path, model, 7, nan_after=39)
    # Unchecked, the step-40 NaN weights were the best (train ce 0.353 < 0.516).
    assert result.best_step == 20
    assert all(np.isfinite(v).all() for v in _values(model))
    assert (result.stop_reason, result.last_step) == ("non_finite", 40)
    assert any(line.startswith("non-finite weights at step 40") for line in lines)
    assert [row["step"] for row in result.history] == [0, 20]
    assert len(glob.glob(str(tmp_path / "best" / "best-*.index"))) == 1
    copy = lowtf.mlp("small", seed=7)
    copy(_noisy()[0][0][:1])
    for restored, stored in zip(_values(model), _best_weights(tmp_path, copy)):
        np.testing.assert_array_equal(restored, stored)


@pytest.mark.e2e
def test_weights_broken_before_any_snapshot_fall_back_to_the_latest_checkpoint(
    tmp_path,
):
    # A training metric has no value at step 0, so no best snapshot exists
    # until step 20; the update of step 10 breaks the weights before that.
    model = lowtf.mlp("small", seed=6)
    result, lines = _fit_monitoring_training_loss(tmp_path, model, 5, nan_after=9)
    # Step 10's update is the first with a NaN rate; the call ending at step 15
    # reports the NaN loss. best_step -1: no snapshot.
    assert (result.stop_reason, result.last_step, result.best_step) == (
        "non_finite",
        15,
        -1,
    )
    assert not glob.glob(str(tmp_path / "best" / "best-*.index"))
    assert any("restored the latest checkpoint (step 0)" in line for line in lines)
    # The step-0 checkpoint holds the initial weights: the model has them again.
    initial = lowtf.mlp("small", seed=6)
    initial(_noisy()[0][0][:1])
    for restored, start in zip(_values(model), _values(initial)):
        np.testing.assert_array_equal(restored, start)


# val_accuracy's "auto" mode resolves to max, like the explicit one.
@pytest.mark.parametrize(
    "monitor, mode", [("val_accuracy", "auto"), ("val_cross_entropy", "max")]
)
@pytest.mark.e2e
def test_resume_with_another_monitor_or_mode_is_refused(tmp_path, monitor, mode):
    config = lowtf.TrainConfig(
        batch_size=50, max_steps=40, eval_every=20, checkpoint_every=20
    )
    first, _ = _fit(tmp_path, config)
    assert first.last_step == 40
    files = {
        path: pathlib.Path(path).read_bytes()
        for path in glob.glob(str(tmp_path / "**" / "*"), recursive=True)
        if os.path.isfile(path)
    }
    other = dataclasses.replace(config, max_steps=80, monitor=monitor, mode=mode)
    with pytest.raises(
        ValueError,
        match=rf"was trained monitoring 'val_cross_entropy' \(mode 'min'\) but this run "
        rf"monitors '{monitor}' \(mode 'max'\): its best value cannot be compared",
    ):
        _fit(tmp_path, other)
    after = {path: pathlib.Path(path).read_bytes() for path in files}
    assert after == files  # nothing rewritten, nothing pruned
    # The same monitor resumes where the first run stopped.
    resumed, _ = _fit(tmp_path, dataclasses.replace(config, max_steps=80))
    assert resumed.last_step == 80
