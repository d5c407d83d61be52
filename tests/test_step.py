"""The training step: heads, optimizers, Keras models, modes, N steps, checkpoints."""

import re

import numpy as np
import pytest
import tensorflow as tf

import lowtf

RS = np.random.RandomState(4)
GRAPH = lowtf.StepOptions(jit_compile=False)


def _weights(module):
    return [v.numpy() for v in module.variables]


def _assert_bitwise(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)


def _multiclass(n=96, width=10, classes=3):
    x = RS.randn(n, width).astype(np.float32)
    return x, np.argmax(x[:, :classes], axis=1).astype(np.int32)


# -- heads ----------------------------------------------------------------------


def test_softmax_head_with_integer_labels():
    x, y = _multiclass()
    model = lowtf.mlp("tiny", num_classes=3, seed=1)
    model(x[:1])
    logits = model(x).numpy().astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    step = lowtf.TrainStep(model, tf.keras.optimizers.SGD(0.1), options=GRAPH)
    metrics = lowtf.train.step.as_numpy(step(x, y))
    assert step.head == "softmax"
    assert metrics["cross_entropy"] == pytest.approx(
        -log_p[np.arange(96), y].mean(), 1e-5
    )
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == y).mean())


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_a_users_layer_may_branch_on_a_tensor_in_python(jit):
    # lowtf's own layers skip AutoGraph; a user's layer, a subclass's call and
    # a Lambda's function are still converted, so a Python `if` on a tensor
    # works inside the compiled step (here every branch flips the sign).
    class FlipIfNegative(lowtf.nn.Layer):
        def call(self, x, training):
            if tf.reduce_mean(x) < 0:
                return -x
            return x

    class FlippedDense(lowtf.nn.Dense):
        def call(self, x, training):
            out = super().call(x, training)
            if tf.reduce_mean(out) > 0:
                out = -out
            return out

    def flip_if_positive(x):
        if tf.reduce_sum(x) > 0:
            return -x
        return x

    def elu_or_relu(x):  # a user's activation
        if tf.reduce_min(x) < -10:
            return tf.nn.relu(x)
        return tf.nn.elu(x)

    def l2_if_large(w):  # a user's regularizer
        if tf.reduce_max(tf.abs(w)) > 0:
            return 0.01 * tf.reduce_sum(tf.square(w))
        return tf.constant(0.0)

    def clip_if_large(w):  # a user's constraint
        if tf.reduce_max(tf.abs(w)) > 0.05:
            return tf.clip_by_value(w, -0.05, 0.05)
        return w

    x, y = _multiclass()
    x = x - 1.0  # a negative mean: the first layer flips
    model = lowtf.nn.Sequential([
        FlipIfNegative(),
        FlippedDense(8, "elu", seed=1),
        lowtf.nn.Lambda(flip_if_positive),
        lowtf.nn.Dense(
            3, elu_or_relu, kernel_regularizer=l2_if_large,
            kernel_constraint=clip_if_large, seed=2,
        ),
    ])  # fmt: skip
    logits = model(x).numpy().astype(np.float64)  # eager: Python branches
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    kernel = model.layers[-1].kernel
    penalty = 0.01 * np.sum(np.square(kernel.numpy().astype(np.float64)))
    step = lowtf.TrainStep(
        model, tf.keras.optimizers.SGD(0.1), options=lowtf.StepOptions(jit_compile=jit)
    )
    metrics = lowtf.train.step.as_numpy(step(x, y))
    assert metrics["cross_entropy"] == pytest.approx(
        -log_p[np.arange(len(y)), y].mean(), 1e-5
    )
    assert metrics["regularization_loss"] == pytest.approx(penalty, 1e-5)
    assert np.abs(kernel.numpy()).max() == pytest.approx(0.05)  # clipped


def test_training_may_be_a_tensor_known_at_run_time_only():
    # lowtf's layers branch on a Python bool; a `training` tensor picks one of
    # the two traces at run time, as AutoGraph's tf.cond did.
    model = lowtf.mlp("tiny", num_classes=3, dropout=0.5, batchnorm=True, seed=1)
    x = _multiclass()[0]
    model(x[:1])

    @tf.function(input_signature=[tf.TensorSpec([], tf.bool)])
    def logits(training):
        return model(x, training=training)

    (moving,) = [v for v in model.variables if "moving_mean" in v.name]
    inference = model(x, training=False).numpy()
    np.testing.assert_array_equal(logits(tf.constant(False)).numpy(), inference)
    np.testing.assert_array_equal(moving.numpy(), 0.0)  # inference moves nothing
    trained = logits(tf.constant(True)).numpy()
    assert np.abs(trained - inference).max() > 1e-3  # batch statistics, dropout
    assert np.abs(moving.numpy()).max() > 1e-4  # the moving mean moved


def test_sigmoid_head_with_binary_labels(binary_data):
    x, y = binary_data[0][:100], binary_data[1][:100]
    model = lowtf.mlp("tiny", seed=2)
    model(x[:1])
    z = model(x).numpy().reshape(-1).astype(np.float64)
    expected = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    step = lowtf.TrainStep(model, tf.keras.optimizers.SGD(0.1), options=GRAPH)
    metrics = lowtf.train.step.as_numpy(step(x, y.astype(np.int64)))  # int 0/1 works too
    assert step.head == "sigmoid"
    assert metrics["cross_entropy"] == pytest.approx(expected, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(((z > 0) == y).mean())


def test_bad_head_choices_raise():
    x, y = _multiclass(8)
    with pytest.raises(ValueError, match="`loss` .*must be one of"):
        lowtf.StepOptions(loss="hinge")
    step = lowtf.TrainStep(
        lowtf.mlp("tiny", num_classes=3),
        tf.keras.optimizers.SGD(0.1),
        options=lowtf.StepOptions(loss="sigmoid", jit_compile=False),
    )
    with pytest.raises(ValueError, match="needs 1 logit, the model gives 3"):
        step(x, y)


# -- optimizers -----------------------------------------------------------------


def test_sgd_with_inverse_time_decay_uses_the_decayed_rate_each_step(binary_data):
    x, y = binary_data[0][:64], binary_data[1][:64]
    schedule = tf.keras.optimizers.schedules.InverseTimeDecay(
        0.5, decay_steps=1, decay_rate=1
    )
    model = lowtf.mlp("tiny", seed=3)
    model(x[:1])
    step = lowtf.TrainStep(model, tf.keras.optimizers.SGD(schedule), options=GRAPH)
    for k in range(2):  # learning rates 0.5 / (1 + k): 0.5 then 0.25
        before = [v.numpy() for v in model.trainable_variables]
        with tf.GradientTape() as tape:
            z = tf.reshape(model(x, training=True), [-1])
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, z))
        grads = tape.gradient(loss, model.trainable_variables)
        step(x, y)
        lr = 0.5 / (1 + k)
        for var, w0, g in zip(model.trainable_variables, before, grads):
            np.testing.assert_allclose(var.numpy(), w0 - lr * g.numpy(), atol=1e-6)


@pytest.mark.e2e
def test_adam_with_the_tutorials_inverse_time_decay_trains_under_xla(binary_data):
    x, y = binary_data
    # The tutorial: lr 1e-3 halved after 1000 epochs; decay faster here to see it.
    schedule = tf.keras.optimizers.schedules.InverseTimeDecay(
        0.01, decay_steps=10, decay_rate=1, staircase=False
    )
    optimizer = tf.keras.optimizers.Adam(schedule)
    step = lowtf.TrainStep(
        lowtf.mlp("small", l2=1e-4, seed=4),
        optimizer,
        data=lowtf.InMemoryBatches(x, y, 100),
    )
    first = lowtf.train.step.as_numpy(step.run(5))
    last = lowtf.train.step.as_numpy(step.run(45))
    assert int(optimizer.iterations) == 50 == int(step.step)
    assert float(optimizer.learning_rate) == pytest.approx(
        0.01 / (1 + 50 / 10), rel=1e-6
    )
    assert last["cross_entropy"] < 0.8 * first["cross_entropy"]
    assert last["accuracy"] > 0.8


def test_adamw_decays_weights_decoupled_from_the_gradient(binary_data):
    x, y = binary_data[0][:64], binary_data[1][:64]
    lr, wd = 0.01, 0.5
    adam_model, adamw_model = lowtf.mlp("tiny", seed=5), lowtf.mlp("tiny", seed=5)
    adam_model(x[:1]), adamw_model(x[:1])
    before = _weights(adamw_model)
    lowtf.TrainStep(adam_model, tf.keras.optimizers.Adam(lr), options=GRAPH)(x, y)
    adamw = tf.keras.optimizers.AdamW(lr, weight_decay=wd)
    lowtf.TrainStep(adamw_model, adamw, options=GRAPH)(x, y)
    # AdamW = Adam's update minus lr * wd * w, the decay not passing through Adam.
    for w0, a, aw in zip(before, _weights(adam_model), _weights(adamw_model)):
        np.testing.assert_allclose(a - aw, lr * wd * w0, atol=1e-7)
    assert any(np.abs(lr * wd * w0).max() > 1e-3 for w0 in before)


# -- Keras models ----------------------------------------------------------------


def test_keras_model_trains_and_its_losses_are_gathered(binary_data):
    x, y = binary_data[0][:128], binary_data[1][:128]
    keras = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((28,)),
            keras.Dense(
                16,
                activation="elu",
                kernel_regularizer=tf.keras.regularizers.L2(1e-2),
                kernel_constraint=tf.keras.constraints.MaxNorm(0.5),
            ),
            keras.Dropout(0.5, seed=1),
            keras.Dense(1, kernel_regularizer=tf.keras.regularizers.L2(1e-2)),
        ]
    )
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(1e-2),
        options=lowtf.StepOptions(
            jit_compile=False, require_regularization=True, require_constraints=True
        ),
    )
    assert len(lowtf.regularization_losses(model)) == 2
    step.build(x[:1])
    penalty = sum(
        1e-2 * np.square(layer.kernel.numpy()).sum() for layer in model.layers[::2]
    )
    first = lowtf.train.step.as_numpy(step(x, y))
    assert first["regularization_loss"] == pytest.approx(penalty, rel=1e-5)
    assert first["total_loss"] == pytest.approx(
        first["cross_entropy"] + penalty, rel=1e-5
    )
    for _ in range(20):
        last = lowtf.train.step.as_numpy(step(x, y))
    assert last["cross_entropy"] < first["cross_entropy"]
    norms = np.linalg.norm(model.layers[0].kernel.numpy(), axis=0)
    assert norms.max() <= 0.5 + 1e-6  # the Keras constraint, applied by the optimizer


# -- eager, tf.function and XLA ---------------------------------------------------


@pytest.mark.e2e
def test_eager_graph_and_xla_agree(binary_data):
    x, y = binary_data[0][:200], binary_data[1][:200]
    modes = {
        "eager": lowtf.StepOptions(run_eagerly=True),
        "graph": lowtf.StepOptions(jit_compile=False),
        "xla": lowtf.StepOptions(jit_compile=True),
    }
    results = {}
    for name, options in modes.items():
        model = lowtf.mlp("small", l2=1e-3, maxnorm=1.0, batchnorm=True, seed=6)
        step = lowtf.TrainStep(model, tf.keras.optimizers.Adam(1e-2), options=options)
        for i in range(3):
            metrics = lowtf.train.step.as_numpy(
                step(x[i * 50 : i * 50 + 100], y[i * 50 : i * 50 + 100])
            )
        results[name] = metrics, _weights(model)
    eager_metrics, eager_weights = results["eager"]
    for name in ("graph", "xla"):
        metrics, weights = results[name]
        for key in lowtf.train.metrics.STEP_METRICS:
            assert metrics[key] == pytest.approx(eager_metrics[key], rel=1e-5, abs=1e-6)
        for a, b in zip(weights, eager_weights):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


MODES = {
    "eager": lowtf.StepOptions(run_eagerly=True),
    "graph": lowtf.StepOptions(jit_compile=False),
    "xla": lowtf.StepOptions(jit_compile=True),
}


def _one_dropout_step(options, x, y, augment=None):
    model = lowtf.mlp("small", dropout=0.5, seed=0)
    step = lowtf.TrainStep(
        model, tf.keras.optimizers.Adam(1e-2), augment=augment, options=options
    )
    metrics = lowtf.train.step.as_numpy(step(x, y))
    return metrics, _weights(model)


@pytest.mark.parametrize("augmented", [False, True], ids=["dropout", "augment"])
@pytest.mark.e2e
def test_one_dropout_step_is_the_same_in_eager_graph_and_xla(binary_data, augmented):
    # One generator (lowtf.random): a run continues the same random stream
    # whether jit_compile="auto" picks XLA or not on the machine it resumes on.
    x, y = binary_data[0][:500], binary_data[1][:500]
    augment = None
    if augmented:
        augment = lowtf.augment.parse(
            "translate:1,rotate:10,noise:0.05",
            image_shape=(4, 7, 1),
            value_range=(-5, 5),
        )
    results = {
        name: _one_dropout_step(options, x, y, augment)
        for name, options in MODES.items()
    }
    eager_metrics, eager_weights = results["eager"]
    # Dropout is on: the loss differs from the same step without it.
    no_dropout = lowtf.train.step.as_numpy(
        lowtf.TrainStep(
            lowtf.mlp("small", seed=0),
            tf.keras.optimizers.Adam(1e-2),
            augment=augment,
            options=GRAPH,
        )(x, y)
    )
    assert abs(eager_metrics["cross_entropy"] - no_dropout["cross_entropy"]) > 0.01
    for name in ("graph", "xla"):
        metrics, weights = results[name]
        for key in lowtf.train.metrics.STEP_METRICS:
            # Across processors (Intel, AMD) XLA's fused ops may round a few
            # values of 256 one step apart from the kernels': float tolerance.
            assert metrics[key] == pytest.approx(eager_metrics[key], rel=1e-5, abs=1e-6)
        for a, b in zip(weights, eager_weights):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- N steps per call -------------------------------------------------------------


@pytest.mark.e2e
def test_run_with_other_n_and_many_calls_does_not_retrace(binary_data):
    x, y = binary_data
    step = lowtf.TrainStep(
        lowtf.mlp("tiny", dropout=0.2, seed=7),
        tf.keras.optimizers.Adam(1e-2),
        data=lowtf.InMemoryBatches(x, y, 100),
        options=GRAPH,  # tracing is the same with XLA, and cheaper to test here
    )
    total = 0
    for n in (1, 3, 2, 5, 1, 4, 3):
        step.run(n)
        total += n
    assert step.trace_count == 1
    assert int(step.step) == total
    for _ in range(4):
        step(x[:100], y[:100])
    assert step.trace_count == 2  # the single-batch function, traced once


@pytest.mark.e2e
def test_run_n_equals_n_single_steps_on_the_same_batches(binary_data):
    x, y = binary_data
    n, batch = 5, 300  # 3 batches an epoch: the run crosses an epoch boundary

    def make():
        model = lowtf.mlp("tiny", dropout=0.3, l2=1e-3, maxnorm=2.0, seed=8)
        data = lowtf.InMemoryBatches(x, y, batch, seed=3)
        return model, lowtf.TrainStep(
            model, tf.keras.optimizers.Adam(1e-2), data=data, options=GRAPH
        )

    model_a, step_a = make()
    averaged = lowtf.train.step.as_numpy(step_a.run(n))

    model_b, step_b = make()
    twin = lowtf.InMemoryBatches(x, y, batch, seed=3)
    singles = [lowtf.train.step.as_numpy(step_b(*twin.next())) for _ in range(n)]
    assert int(step_a.step) == int(step_b.step) == n
    assert int(step_a.data.epoch) == 1 and int(step_a.data.cursor) == 2 * batch
    for key in lowtf.train.metrics.STEP_METRICS:
        assert averaged[key] == pytest.approx(
            np.mean([m[key] for m in singles]), rel=1e-5
        )
    for a, b in zip(model_a.variables, model_b.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_batches_cover_each_epoch_once(binary_data):
    x = binary_data[0]
    data = lowtf.InMemoryBatches(x, np.arange(1000), 250, seed=1)
    seen = np.concatenate([data.next()[1].numpy() for _ in range(4)])
    assert np.array_equal(np.sort(seen), np.arange(1000))
    next_epoch = data.next()[1].numpy()
    assert int(data.epoch) == 1 and not np.array_equal(next_epoch, seen[:250])


def test_the_whole_permutation_is_drawn_once_per_epoch(binary_data, monkeypatch):
    # The graph path (per_batch=False) builds an epoch's order when the epoch
    # changes, not at every batch; in a graph its tf.cond takes the same branch.
    x = binary_data[0]
    data = lowtf.InMemoryBatches(x, np.arange(1000), 300, seed=1)  # 3 per epoch
    drawn = []
    permutation = data._permutation
    monkeypatch.setattr(data, "_permutation", lambda e: drawn.append(int(e)) or permutation(e))
    eager = [data.next()[1].numpy() for _ in range(7)]  # epochs 0, 0, 0, 1, 1, 1, 2
    assert drawn == [1, 2]  # epoch 0's was drawn when the data was made
    again = lowtf.InMemoryBatches(x, np.arange(1000), 300, seed=1)
    graph = tf.function(lambda: again.next()[1])
    np.testing.assert_array_equal([graph().numpy() for _ in range(7)], eager)


# -- checkpoints -------------------------------------------------------------------


@pytest.mark.e2e
def test_checkpoint_round_trip_of_model_optimizer_step_and_data(binary_data, tmp_path):
    x, y = binary_data

    def make():
        model = lowtf.mlp(
            "tiny", dropout=0.3, l2=1e-3, maxnorm=2.0, batchnorm=True, seed=9
        )
        data = lowtf.InMemoryBatches(x, y, 300, seed=2)
        step = lowtf.TrainStep(
            model, tf.keras.optimizers.Adam(1e-2), data=data, options=GRAPH
        )
        step.build(x[:1])
        return step

    def state(step):
        # tf.Module.variables does not reach into the Keras optimizer.
        return _weights(step) + [v.numpy() for v in step.optimizer.variables]

    step = make()
    step.run(4)
    path = tf.train.Checkpoint(step=step).save(str(tmp_path / "ckpt"))
    saved = state(step)
    assert len(step.optimizer.variables) > 3 and len(step.data.variables) >= 2
    step.run(3)  # overwrite every weight, the counters and the data position
    continued = state(step)
    changed = [not np.array_equal(a, b) for a, b in zip(saved, continued)]
    assert sum(changed) >= len(saved) // 2

    # Restore into the same objects ...
    tf.train.Checkpoint(step=step).restore(path).assert_consumed()
    _assert_bitwise(state(step), saved)

    # ... and into fresh ones, which then resume exactly where the run went on.
    fresh = make()
    tf.train.Checkpoint(step=fresh).restore(path).assert_consumed()
    _assert_bitwise(state(fresh), saved)
    assert int(fresh.step) == 4 and int(fresh.optimizer.iterations) == 4
    fresh.run(3)
    _assert_bitwise(state(fresh), continued)


# -- bad input ---------------------------------------------------------------------


def test_bad_batches_and_arguments_give_one_readable_error(binary_data):
    x, y = binary_data[0][:32], binary_data[1][:32]
    step = lowtf.TrainStep(
        lowtf.mlp("tiny"), tf.keras.optimizers.SGD(0.1), options=GRAPH
    )
    cases = [
        (lambda: step(x, y[:10]), "x has 32 examples but y has 10"),
        (lambda: step(x[0], y), "x must be a batch"),
        (lambda: step(x, y[:, None]), "y must be a vector of labels"),
        (lambda: step.run(3), "`run` needs the step to be built with `data=`"),
    ]
    step(x, y)
    cases += [
        (lambda: step(x[:, :5], y), r"shape \(32, 5\).*built for \[batch, 28\]"),
        (lambda: step(x.astype(np.float64), y), "dtype float64.*float32"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="float64.*cast the input"):
        lowtf.TrainStep(lowtf.mlp("tiny"), tf.keras.optimizers.SGD(0.1))(
            x.astype(np.float64), y
        )
    with_data = lowtf.TrainStep(
        lowtf.mlp("tiny"),
        tf.keras.optimizers.SGD(0.1),
        data=lowtf.InMemoryBatches(x, y, 8),
    )
    for bad in (0, -2, 2.7, "3", True):
        with pytest.raises(
            ValueError, match=r"`num_steps` \(.*\) must be a positive integer"
        ):
            with_data.run(bad)
    assert int(with_data.step) == 0
    with pytest.raises(ValueError, match="x has 32 rows but y has 31"):
        lowtf.InMemoryBatches(x, y[:31], 8)
    with pytest.raises(ValueError, match="y must be a vector of labels"):
        lowtf.InMemoryBatches(x, y[:, None], 8)
    with pytest.raises(ValueError, match="x must be a batch"):
        lowtf.InMemoryBatches(x[:, 0], y, 8)
    with pytest.raises(ValueError, match="`batch_size` .64. exceeds the 32 examples"):
        lowtf.InMemoryBatches(x, y, 64)
    with pytest.raises(ValueError, match="seed"):
        lowtf.StepOptions(seed=-1)
    with pytest.raises(
        ValueError, match="`optimizer` .'adam'. must be a Keras optimizer"
    ):
        lowtf.TrainStep(lowtf.mlp("tiny"), "adam")


def test_each_batch_is_checked_on_the_host_before_the_compiled_call(binary_data):
    # Under XLA a softmax label past the last logit gives a NaN loss, and a
    # sigmoid label of 0.5 or 2 a wrong one, with no error: the per-batch
    # path checks every batch (NumPy or eager tensor) before it runs.
    x, y = _multiclass(32)
    step = lowtf.TrainStep(
        lowtf.mlp("tiny", num_classes=3, seed=13),
        tf.keras.optimizers.SGD(0.1),
        options=GRAPH,
    )
    step(x, y)
    before = _weights(step.model)
    nan_x, inf_x = x.copy(), x.copy()
    nan_x[[4, 9], 3] = np.nan
    inf_x[30, 7] = -np.inf
    rows = np.arange(32)
    cases = [
        (
            x,
            np.where(rows == 5, 3, y),
            (
                r"^label 3 is out of range in `y` \(row 5; 1 of 32 labels are out, "
                r"values 3\): the model's softmax head with 3 logit\(s\) takes labels "
                r"that are integers in \[0, 3\); give the model 4 classes "
                r"\(lowtf.mlp\(..., num_classes=4\)\)$"
            ),
        ),
        (
            x,
            tf.constant(np.where(rows % 8 == 7, -1, y), tf.int64),
            (
                r"^label -1 is out of range in `y` \(row 7; 4 of 32 labels are out, "
                r"values -1\).*map them to 0, 1, ... first"
            ),
        ),
        (
            x,
            np.where(rows == 0, 1.5, y).astype(np.float32),
            r"^label 1.5 is out of range in `y` \(row 0; 1 of 32 .*round or threshold",
        ),
        (
            nan_x,
            y,
            r"^`x` holds NaN or Inf: x\[4, 3\] is nan \(2 of 32 rows\); .*impute",
        ),
        (
            tf.constant(inf_x),
            tf.constant(y),
            r"^`x` .*x\[30, 7\] is -inf \(1 of 32 rows\)",
        ),
    ]
    for bad_x, bad_y, message in cases:
        with pytest.raises(ValueError, match=message):
            step(bad_x, bad_y)
    assert int(step.step) == 1
    _assert_bitwise(_weights(step.model), before)
    step(tf.constant(x), tf.constant(y))  # a good batch as tensors: no retrace
    assert int(step.step) == 2 and step.trace_count == 1

    x, y = binary_data[0][:32], binary_data[1][:32]
    binary = lowtf.TrainStep(
        lowtf.mlp("tiny", seed=14), tf.keras.optimizers.SGD(0.1), options=GRAPH
    )
    binary(x, y)
    for labels, message in [
        (
            np.where(rows == 2, 0.5, y),
            r"label 0.5 .*row 2; 1 of 32 .*round or threshold",
        ),
        (
            np.where(rows < 3, 2, y).astype(np.int32),
            r"label 2 .*sigmoid.*num_classes=3",
        ),
        (np.where(rows == 1, np.nan, y), r"label nan is out of range in `y` \(row 1;"),
    ]:
        with pytest.raises(ValueError, match=message):
            binary(x, labels)
    with pytest.raises(ValueError, match=r"^`y` holds labels of dtype <U3 .*'yes'"):
        binary(x, np.array(["yes", "no"] * 16))
    assert int(binary.step) == 1
    with pytest.raises(ValueError, match=r"^`x` holds NaN or Inf: x\[2, 0\] is nan"):
        lowtf.InMemoryBatches(np.where(rows[:, None] == 2, np.nan, x), y, 8)


@pytest.mark.parametrize(
    "field", ["run_eagerly", "require_regularization", "require_constraints"]
)
def test_step_option_flags_take_only_bools(field):
    # "no" is truthy and 1 == True: either would pass as a flag in silence.
    for bad in ("no", 1, 0.0, None):
        message = rf"^`{field}` \({re.escape(repr(bad))}\) must be True or False$"
        with pytest.raises(ValueError, match=message):
            lowtf.StepOptions(**{field: bad})
    assert getattr(lowtf.StepOptions(**{field: np.True_}), field) is np.True_
    for bad in (1, "yes", None):
        with pytest.raises(
            ValueError, match=r"`jit_compile` .* True, False or 'auto'$"
        ):
            lowtf.StepOptions(jit_compile=bad)
    model = lowtf.mlp("tiny")
    with pytest.raises(ValueError, match=r"^`jit_compile` \('auto'\) must be True or"):
        lowtf.Evaluator(model, jit_compile="auto")  # no "auto" rule there
    with pytest.raises(ValueError, match=r"^`loss` \('hinge'\) must be one of"):
        lowtf.Evaluator(model, loss="hinge")


# -- tf.distribute arithmetic (one process, one device) -----------------------------


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.e2e
def test_mirrored_strategy_on_one_device_matches_the_default_strategy(binary_data, jit):
    x, y = binary_data

    def train(strategy):
        with strategy.scope():
            model = lowtf.mlp("tiny", l2=1e-3, maxnorm=1.0, batchnorm=True, seed=10)
            step = lowtf.TrainStep(
                model,
                tf.keras.optimizers.Adam(1e-2),
                data=lowtf.InMemoryBatches(x, y, 100),
                options=lowtf.StepOptions(jit_compile=jit),
            )
        metrics = [lowtf.train.step.as_numpy(step(x[:100], y[:100]))]
        if not jit:  # one XLA compile per strategy is enough to be slow
            metrics.append(lowtf.train.step.as_numpy(step.run(3)))
        return metrics, [v.numpy() for v in model.variables]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert mirrored.num_replicas_in_sync == 1
    base_metrics, base_weights = train(tf.distribute.get_strategy())
    metrics, weights = train(mirrored)
    for got, want in zip(metrics, base_metrics):
        for key in lowtf.train.metrics.STEP_METRICS:
            assert got[key] == pytest.approx(want[key], rel=1e-6)
    for a, b in zip(weights, base_weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class _FakeReplica:
    """A replica context of ``replicas`` replicas, for the loss arithmetic."""

    def __init__(self, replica_id, replicas):
        self.replica_id_in_sync_group = replica_id
        self.num_replicas_in_sync = replicas


class _RecordingOptimizer:
    """Keeps the gradients instead of applying them."""

    def build(self, variables):
        pass

    def apply_gradients(self, pairs):
        self.grads = [g.numpy() for g, _ in pairs]


def test_replica_losses_sum_to_one_global_step(binary_data, monkeypatch):
    """Cross-entropy over the global batch, the penalty once across replicas."""
    x, y = binary_data[0][:64], binary_data[1][:64]
    model = lowtf.mlp("tiny", l2=0.05, seed=11)
    model(x[:1])
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        z = tf.reshape(model(x, training=True), [-1])
        ce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, z))
        reg = lowtf.nn.total_regularization_loss(model)
        loss = ce + reg
    want_grads = tape.gradient(loss, variables)

    optimizer = _RecordingOptimizer()
    step = lowtf.TrainStep(
        model, optimizer, options=lowtf.StepOptions(run_eagerly=True)
    )
    step.build(x[:1])
    key = lowtf.random.make_key(0, 0)
    totals, grads = {}, []
    for replica in range(2):
        monkeypatch.setattr(
            tf.distribute, "get_replica_context", lambda r=replica: _FakeReplica(r, 2)
        )
        part = lowtf.train.step.as_numpy(
            step._replica_step(tf.constant(x), tf.constant(y), key)
        )
        # Each replica sees its half, divided by the global batch of 64.
        half = x[32 * replica : 32 * replica + 32], y[32 * replica : 32 * replica + 32]
        z_half = tf.reshape(model(half[0]), [-1])
        ce_half = tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(half[1], z_half)
        )
        assert part["cross_entropy"] == pytest.approx(float(ce_half) / 64, rel=1e-5)
        assert part["regularization_loss"] == pytest.approx(float(reg) / 2, rel=1e-6)
        totals = {k: totals.get(k, 0.0) + v for k, v in part.items()}
        grads.append(optimizer.grads)
    assert totals["cross_entropy"] == pytest.approx(float(ce), rel=1e-5)
    assert totals["regularization_loss"] == pytest.approx(float(reg), rel=1e-6)
    assert totals["total_loss"] == pytest.approx(float(loss), rel=1e-5)
    for g0, g1, want in zip(grads[0], grads[1], want_grads):
        np.testing.assert_allclose(g0 + g1, want.numpy(), rtol=1e-4, atol=1e-6)


# -- evaluation ----------------------------------------------------------------------


def test_evaluator_matches_a_hand_computation_over_uneven_batches():
    x, y = _multiclass(250)
    model = lowtf.mlp("tiny", num_classes=3, seed=12)
    model(x[:1])
    logits = model(x).numpy().astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    result = lowtf.Evaluator(model, batch_size=100, jit_compile=False)(x, y)
    assert result["cross_entropy"] == pytest.approx(
        -log_p[np.arange(250), y].mean(), 1e-5
    )
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == y).mean())


@pytest.mark.parametrize(
    "labels, classes, message",
    [
        (
            np.arange(40) % 4,
            3,
            (
                r"label 3 is out of range in `data.y` \(row 3; 10 of 40 labels are "
                r"out, values 3\).*softmax head with 3 logit.*num_classes=4\)\)$"
            ),
        ),
        (
            np.arange(40) % 3 * 1.0,
            2,
            (
                r"label 2.0 is out of range in `data.y` \(row 2; 13 of 40 .*sigmoid "
                r"head with 1 logit\(s\) takes labels that are 0 or 1; give the model "
                r"3 classes"
            ),
        ),
        (
            np.arange(40) % 2 * 0.5,
            2,
            r"label 0.5 is out of range in `data.y` \(row 1; 20 of 40 .*threshold",
        ),
    ],
)
def test_out_of_range_labels_are_refused_before_training(labels, classes, message):
    # Under XLA a softmax label past the last logit gives NaN, not an error.
    x = np.random.RandomState(0).randn(40, 4).astype(np.float32)
    model = lowtf.mlp("tiny", num_classes=classes)
    step = lowtf.TrainStep(
        model, tf.keras.optimizers.Adam(), data=lowtf.InMemoryBatches(x, labels, 10)
    )
    with pytest.raises(ValueError, match=message):
        step.run(1)
    assert int(step.step.numpy()) == 0
