"""Transfer learning: frozen layers, init_from, unfreeze_at, and their resumes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf.train import transfer

FAST = lowtf.StepOptions(jit_compile=False)


def _data(n=240, features=12, classes=3, seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randn(n, features).astype(np.float32)
    y = (np.argmax(x[:, :classes], axis=1)).astype(np.int64)
    return x, y


def _values(layer):
    return {name: v.numpy().copy() for name, v in vars(layer).items() if isinstance(v, tf.Variable)}


def _model(**kwargs):
    defaults = {"num_classes": 3, "batchnorm": True, "l2": 1e-2, "maxnorm": 0.3, "seed": 1}
    return lowtf.mlp((16, 16), **{**defaults, **kwargs})


@pytest.mark.e2e
def test_frozen_layers_are_bit_for_bit_unchanged_and_get_no_optimizer_update():
    x, y = _data()
    model = _model()
    model(x[:1])
    frozen = transfer.freeze(model, 1)
    assert frozen == ["dense_0", "batchnorm_0"]
    layers = {layer.name: layer for layer in transfer.leaf_layers(model)}
    before = {name: _values(layers[name]) for name in ("dense_0", "batchnorm_0", "dense_1", "batchnorm_1")}
    optimizer = tf.keras.optimizers.Adam(0.05)
    step = lowtf.TrainStep(model, optimizer, options=lowtf.StepOptions())  # XLA
    for i in range(20):
        step(x[i * 12 : i * 12 + 12], y[i * 12 : i * 12 + 12])
    for name in ("dense_0", "batchnorm_0"):  # kernel; gamma, beta, moving statistics
        for attr, value in _values(layers[name]).items():
            np.testing.assert_array_equal(value, before[name][attr], err_msg=f"{name}.{attr}")
    assert set(_values(layers["batchnorm_0"])) == {"gamma", "beta", "moving_mean", "moving_variance"}
    # The next block trained: its kernel and its moving mean moved.
    assert np.abs(_values(layers["dense_1"])["kernel"] - before["dense_1"]["kernel"]).max() > 1e-3
    assert np.abs(_values(layers["batchnorm_1"])["moving_mean"] - before["batchnorm_1"]["moving_mean"]).max() > 1e-4
    # Only unfrozen variables reach the optimizer: 8 trainable variables (and 4
    # moving statistics), 3 of them frozen (dense_0's kernel, batchnorm_0's gamma, beta).
    assert len(model.variables) == 12 and len(model.trainable_variables) == 5
    assert len(step.trained_variables) == 5
    assert {v.ref() for v in step.trained_variables} == {v.ref() for v in model.trainable_variables}
    assert int(step.step.numpy()) == 20
    slots = {v.name: np.abs(v.numpy()).max() for v in optimizer.variables if v.shape.rank}
    assert len(slots) == 2 * 8  # built on all 8 variables: the checkpoint layout never changes
    for name, peak in slots.items():
        if name.startswith(("dense_0_", "batchnorm_0_")):
            assert peak == 0.0, name  # no gradient ever reached them
        else:
            assert peak > 0.0, name


def test_regularization_and_max_norm_leave_frozen_layers_out():
    x, _ = _data()
    model = _model(l2=1e-2, maxnorm=0.05)
    model(x[:1])
    layers = {layer.name: layer for layer in transfer.leaf_layers(model)}
    kernels = {name: layers[name].kernel.numpy() for name in ("dense_0", "dense_1", "logits")}
    penalty = {name: 1e-2 * float(np.sum(k.astype(np.float64) ** 2)) for name, k in kernels.items()}
    total = float(lowtf.nn.total_regularization_loss(model))
    np.testing.assert_allclose(total, sum(penalty.values()), rtol=1e-5)
    transfer.freeze(model, 1)
    frozen_total = float(lowtf.nn.total_regularization_loss(model))
    np.testing.assert_allclose(frozen_total, penalty["dense_1"] + penalty["logits"], rtol=1e-5)
    # Max-norm 0.05 is far below the Glorot norms: only dense_1 is clipped
    # (dense_0 is frozen; the output layer carries no max-norm by default).
    assert lowtf.nn.unit_norms(kernels["dense_0"]).numpy().min() > 0.05
    step = lowtf.TrainStep(model, tf.keras.optimizers.SGD(0.0), options=FAST)
    step(x[:8], np.zeros(8, np.int64))
    np.testing.assert_array_equal(layers["dense_0"].kernel.numpy(), kernels["dense_0"])
    np.testing.assert_allclose(lowtf.nn.unit_norms(layers["dense_1"].kernel).numpy(), 0.05, rtol=1e-5)
    metrics = lowtf.train.step.as_numpy(step(x[:8], np.zeros(8, np.int64)))
    assert metrics["regularization_loss"] == pytest.approx(
        float(lowtf.nn.total_regularization_loss(model)), rel=1e-5
    )
    assert metrics["regularization_loss"] < frozen_total  # dense_1 was clipped


def test_freeze_errors_and_unfreeze():
    model = _model()
    with pytest.raises(ValueError, match=r"`n` \(3\) exceeds the model's 2 hidden layers \(dense_0, dense_1\)"):
        transfer.freeze(model, 3)
    with pytest.raises(ValueError, match=r"`--freeze` \(-1\)"):
        transfer.freeze(model, -1, name="--freeze")
    assert transfer.freeze(model, 2) == ["dense_0", "batchnorm_0", "dense_1", "batchnorm_1"]
    lowtf.train.unfreeze(model)
    assert transfer.frozen_layers(model) == []
    layer = lowtf.Dense(3, trainable=False)
    layer(np.zeros((1, 2), np.float32))
    assert layer.trainable_variables == () and len(layer.non_trainable_variables) == 2


def test_unfreeze_retraces_once_and_then_trains_everything():
    x, y = _data()
    model = _model(batchnorm=False, l2=0.0, maxnorm=0.0)
    model(x[:1])
    transfer.freeze(model, 2)
    step = lowtf.TrainStep(model, tf.keras.optimizers.Adam(0.05), options=FAST)
    kernel = transfer.leaf_layers(model)[0].kernel
    start = kernel.numpy().copy()
    step(x[:12], y[:12])
    step(x[12:24], y[12:24])
    np.testing.assert_array_equal(kernel.numpy(), start)
    traces = step.trace_count
    lowtf.train.unfreeze(model)
    step(x[:12], y[:12])
    step(x[12:24], y[12:24])
    assert step.trace_count == traces + 1
    assert np.abs(kernel.numpy() - start).max() > 1e-3


def _digits(classes, per_class=None, seed=0):
    data = lowtf.load_dataset("digits")
    (x, y), (xv, yv) = data.train, data.validation
    keep, keep_v = np.isin(y, classes), np.isin(yv, classes)
    x, y, xv, yv = x[keep], y[keep], xv[keep_v], yv[keep_v]
    if per_class is not None:
        rs = np.random.RandomState(seed)
        rows = np.concatenate([rs.choice(np.flatnonzero(y == c), per_class, replace=False) for c in classes])
        x, y = x[rows], y[rows]
    offset = min(classes)
    return (x, (y - offset).astype(y.dtype)), (xv, (yv - offset).astype(yv.dtype))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A 10-class digits run with batch norm: its model directory."""
    model_dir = str(tmp_path_factory.mktemp("pretrained") / "run")
    train, validation = _digits(list(range(10)))
    model = lowtf.mlp((32, 16), num_classes=10, batchnorm=True, seed=3)
    lowtf.fit(
        model,
        tf.keras.optimizers.Adam(1e-2),
        train=train,
        validation=validation,
        model_dir=model_dir,
        config=lowtf.TrainConfig(batch_size=64, max_steps=60, eval_every=30),
        step_options=FAST,
        log=lambda line: None,
    )
    return model_dir


@pytest.mark.e2e
def test_init_from_a_10_class_run_into_a_5_class_head(digits_run):
    pointer = lowtf.train.best_checkpoint(os.path.join(digits_run, "best"))
    source = lowtf.mlp((32, 16), num_classes=10, batchnorm=True, seed=3)
    source(np.zeros((1, 64), np.float32))
    tf.train.Checkpoint(model=source).read(pointer["prefix"]).expect_partial()
    lines = []
    model = lowtf.mlp((32, 16), num_classes=5, batchnorm=True, seed=9)
    model(np.zeros((1, 64), np.float32))
    fresh_head = transfer.leaf_layers(model)[-1].kernel.numpy().copy()
    report = lowtf.train.init_from(model, digits_run, log=lines.append)
    assert report.loaded == ("dense_0", "batchnorm_0", "dense_1", "batchnorm_1")
    assert report.fresh == ("logits",)
    assert report.step == pointer["step"] and report.prefix == pointer["prefix"]
    assert lines == [report.line]
    assert "initialized afresh: logits (kernel (16, 10) in the snapshot, (16, 5) here)" in lines[0]
    for theirs, ours in zip(transfer.leaf_layers(source)[:-1], transfer.leaf_layers(model)[:-1]):
        for attr, value in _values(theirs).items():
            np.testing.assert_array_equal(_values(ours)[attr], value, err_msg=f"{ours.name}.{attr}")
    np.testing.assert_array_equal(transfer.leaf_layers(model)[-1].kernel.numpy(), fresh_head)
    # The best/ folder itself works too.
    again = lowtf.mlp((32, 16), num_classes=5, batchnorm=True, seed=9)
    again(np.zeros((1, 64), np.float32))
    assert lowtf.train.init_from(again, os.path.join(digits_run, "best"), log=lambda s: None).fresh == ("logits",)


@pytest.mark.e2e
def test_init_from_refuses_a_hidden_layer_of_another_width(digits_run, tmp_path):
    model = lowtf.mlp((32, 8), num_classes=5, batchnorm=True)
    model(np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match=r"layer 2 \(dense_1\) kernel: the snapshot has shape \(32, 16\), the model \(32, 8\)"):
        lowtf.train.init_from(model, digits_run)
    with pytest.raises(ValueError, match="holds no best snapshot"):
        lowtf.train.init_from(model, str(tmp_path))
    unbuilt = lowtf.mlp((32, 16), num_classes=5, batchnorm=True)
    with pytest.raises(ValueError, match=r"call it once on a batch"):
        lowtf.train.init_from(unbuilt, digits_run)
    # Another input width: dense_0 is drawn afresh, so freezing it is refused.
    wider = lowtf.mlp((32, 16), num_classes=5, batchnorm=True)
    wider(np.zeros((1, 60), np.float32))
    report = lowtf.train.init_from(wider, digits_run, log=lambda s: None)
    assert report.fresh == ("dense_0", "logits")
    with pytest.raises(ValueError, match=r"would freeze dense_0, which init_from did not load.*at most 0"):
        transfer.freeze(wider, 1, name="--freeze", loaded=report.loaded)
    assert all(layer.trainable for layer in transfer.leaf_layers(wider))
    # A snapshot of which nothing fits is refused, nothing copied.
    linear_dir = str(tmp_path / "linear")
    train, validation = _digits(list(range(10)))
    lowtf.fit(
        lowtf.mlp((), num_classes=10, seed=1), tf.keras.optimizers.Adam(1e-2), train=train,
        validation=validation, model_dir=linear_dir, step_options=FAST,
        config=lowtf.TrainConfig(batch_size=64, max_steps=10, eval_every=10), log=lambda s: None,
    )  # fmt: skip
    other = lowtf.mlp((), num_classes=5, seed=2)  # its one layer: a new head
    other(np.zeros((1, 64), np.float32))
    kernel = other.layers[-1].kernel.numpy().copy()
    with pytest.raises(ValueError, match="none of its layers fits the model"):
        lowtf.train.init_from(other, linear_dir)
    np.testing.assert_array_equal(other.layers[-1].kernel.numpy(), kernel)
    # A population's directory is no one model's run.
    population_dir = tmp_path / "population"
    population_dir.mkdir()
    lowtf.train.rundir.write_record(str(population_dir), {"identity": {"kind": "population"}})
    with pytest.raises(ValueError, match="is a population's directory"):
        lowtf.train.init_from(model, str(population_dir))


def _fine_tune(model_dir, pretrained, max_steps, unfreeze_at=40, log=None):
    train, validation = _digits([5, 6, 7, 8, 9], per_class=10)
    train = (train[0], train[1])
    model = lowtf.mlp((32, 16), num_classes=5, batchnorm=True, seed=4)
    model(train[0][:1])
    lowtf.train.init_from(model, pretrained, log=lambda s: None)
    transfer.freeze(model, 2)
    result = lowtf.fit(
        model,
        tf.keras.optimizers.Adam(1e-3),
        train=train,
        validation=validation,
        model_dir=model_dir,
        config=lowtf.TrainConfig(
            batch_size=25, max_steps=max_steps, eval_every=30, checkpoint_every=30,
            steps_per_call=7, unfreeze_at=unfreeze_at, patience=10000,
        ),
        step_options=FAST,
        log=(log.append if log is not None else lambda s: None),
    )
    return model, result


@pytest.mark.e2e
def test_unfreeze_at_trains_frozen_layers_only_after_the_step(digits_run, tmp_path):
    (x, _), _ = _digits([5, 6, 7, 8, 9], per_class=10)
    model_dir = str(tmp_path / "tuned")
    lines = []
    # Frozen until step 40: after 30 steps the hidden layers are the snapshot's.
    model, _ = _fine_tune(model_dir, digits_run, max_steps=30, log=lines)
    pre = lowtf.mlp((32, 16), num_classes=5, batchnorm=True)
    pre(x[:1])
    lowtf.train.init_from(pre, digits_run, log=lambda s: None)
    last = lowtf.train.best_checkpoint(os.path.join(model_dir, "best"))
    assert last["step"] == 30  # the restored snapshot is the one at step 30
    for theirs, ours in zip(transfer.leaf_layers(pre)[:-1], transfer.leaf_layers(model)[:-1]):
        for attr, value in _values(theirs).items():
            np.testing.assert_array_equal(_values(ours)[attr], value)
    assert any(line.startswith("frozen: dense_0, batchnorm_0, dense_1, batchnorm_1 (") and
               "regularization and max-norm are left out) until step 40" in line for line in lines)
    with open(os.path.join(model_dir, "run.json")) as f:
        record = json.load(f)
    assert record["identity"]["frozen"] == ["dense_0", "batchnorm_0", "dense_1", "batchnorm_1"]
    assert record["identity"]["unfreeze_at"] == 40
    # Resumed past step 40: unfrozen there, and the hidden layers move.
    lines.clear()
    model, _ = _fine_tune(model_dir, digits_run, max_steps=60, log=lines)
    assert any(line.startswith("step 40: unfroze dense_0") for line in lines)
    moved = np.abs(transfer.leaf_layers(model)[0].kernel.numpy() - transfer.leaf_layers(pre)[0].kernel.numpy())
    assert moved.max() > 1e-5
    # Another unfreeze_at is another run: refused.
    with pytest.raises(ValueError, match="unfreeze_at: recorded 40, now 50"):
        _fine_tune(model_dir, digits_run, max_steps=90, unfreeze_at=50)


@pytest.mark.e2e
def test_resumed_fine_tuning_ends_as_an_uninterrupted_one(digits_run, tmp_path):
    whole, _ = _fine_tune(str(tmp_path / "whole"), digits_run, max_steps=90)
    parts = str(tmp_path / "parts")
    _fine_tune(parts, digits_run, max_steps=30)  # stopped before unfreeze_at
    _fine_tune(parts, digits_run, max_steps=60)  # across it
    resumed, _ = _fine_tune(parts, digits_run, max_steps=90)  # resumed unfrozen
    for a, b in zip(whole.variables, resumed.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    history = lowtf.read_history(os.path.join(parts, "history.csv"))
    assert [row["step"] for row in history] == [0, 30, 60, 90]


def test_unfreeze_at_needs_frozen_layers(tmp_path):
    x, y = _data()
    with pytest.raises(ValueError, match=r"`unfreeze_at` \(5\) needs frozen layers"):
        lowtf.fit(
            _model(), tf.keras.optimizers.Adam(), train=(x, y), validation=(x, y),
            model_dir=str(tmp_path / "run"), config=lowtf.TrainConfig(unfreeze_at=5),
        )
    with pytest.raises(ValueError, match="unfreeze_at"):
        lowtf.TrainConfig(unfreeze_at=0)


def test_job_config_transfer_flags():
    with pytest.raises(ValueError, match=r"--freeze=2 keeps .* add --init_from=DIR"):
        lowtf.train.JobConfig(freeze=2)
    with pytest.raises(ValueError, match=r"--unfreeze_at=5 unfreezes .* add --freeze=N"):
        lowtf.train.JobConfig(init_from="x", unfreeze_at=5)
    with pytest.raises(ValueError, match="freeze"):
        lowtf.train.JobConfig(init_from="x", freeze=-1)


@pytest.mark.e2e
def test_run_job_fine_tunes_from_a_run(tmp_path):
    job = lowtf.train.JobConfig
    source = str(tmp_path / "source")
    common = {"hidden": (16,), "max_steps": 20, "eval_every": 10, "batch_size": 32, "xla": False}
    first = lowtf.train.run_job(job(model_dir=source, **common), log=lambda s: None)
    frozen = lowtf.train.run_job(
        job(model_dir=str(tmp_path / "frozen"), init_from=source, freeze=1, **common),
        log=lambda s: None,
    )
    # A frozen layer's weights are still the model's parameters.
    assert frozen.num_parameters == first.num_parameters == 64 * 16 + 16 + 16 * 10 + 10
    lines = []
    result = lowtf.train.run_job(
        job(model_dir=str(tmp_path / "tuned"), init_from=source, freeze=1, unfreeze_at=10, **common),
        log=lines.append,
    )
    assert result.last_step == 20
    text = "\n".join(lines)
    assert "init_from " in text and "loaded 2 layers (dense_0, logits)" in text
    assert "frozen: dense_0 (" in text and "step 10: unfroze dense_0" in text
    with pytest.raises(ValueError, match=r"`--freeze` \(2\) exceeds the model's 1 hidden layers"):
        lowtf.train.run_job(job(model_dir=str(tmp_path / "t2"), init_from=source, freeze=2, **common))
