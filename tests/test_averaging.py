"""Weight averaging: lowtf's EMA equals Keras' optimizer EMA; fit evaluates it; resume is exact."""

import numpy as np
import pytest
import tensorflow as tf
from _fixtures import noisy_split

import lowtf
from lowtf.data import InMemoryBatches

(X, Y), (X_VAL, Y_VAL) = noisy_split(200, 80, 5, seed=3)


def test_ema_after_200_steps_equals_keras_optimizer_ema():
    model = lowtf.mlp("small", seed=1)
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(1e-2),
        data=InMemoryBatches(X, Y, 40, seed=0),
        options=lowtf.StepOptions(jit_compile=False, ema=0.9),
    )
    twin = lowtf.mlp("small", seed=1)
    keras = tf.keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9)
    twin_step = lowtf.TrainStep(
        twin, keras, data=InMemoryBatches(X, Y, 40, seed=0),
        options=lowtf.StepOptions(jit_compile=False),
    )  # fmt: skip
    step.run(200)
    twin_step.run(200)
    for a, b in zip(model.variables, twin.variables):  # the same updates
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    keras.finalize_variable_values(twin_step.trained_variables)  # Keras' averages
    with step.averaged_weights():
        ours = [v.numpy() for v in model.variables]
    for a, b in zip(ours, twin.variables):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-6)
    assert not np.allclose(ours[0], model.variables[0].numpy())  # swapped back


@pytest.mark.e2e
def test_fit_evaluates_the_averaged_weights_and_resumes_exactly(tmp_path):
    def fit(model_dir, max_steps):
        model = lowtf.mlp("small", dropout=0.2, seed=2)
        result = lowtf.fit(
            model,
            tf.keras.optimizers.Adam(1e-2),
            train=(X, Y),
            validation=(X_VAL, Y_VAL),
            model_dir=str(model_dir),
            config=lowtf.TrainConfig(
                batch_size=40, max_steps=max_steps, eval_every=20, checkpoint_every=20
            ),
            step_options=lowtf.StepOptions(jit_compile=False, ema=0.95, seed=2),
            log=lambda line: None,
        )
        return model, result

    whole, whole_result = fit(tmp_path / "whole", 120)
    fit(tmp_path / "split", 60)
    resumed, resumed_result = fit(tmp_path / "split", 120)
    assert resumed_result.history == whole_result.history
    for a, b in zip(resumed.variables, whole.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The model ends holding its best evaluation's averaged weights: their
    # validation cross-entropy is the best value.
    val = lowtf.Evaluator(whole, jit_compile=False)(X_VAL, Y_VAL)
    assert val["cross_entropy"] == pytest.approx(whole_result.best_value, rel=1e-6)


def _batch_norm_reference(model, x, batch_size):
    """SWA's statistics computed by hand: per full batch of ``x`` in order, each
    BatchNorm's input moments (NumPy), other layers in inference mode; their mean."""
    layers = model.layers
    per_layer = {}
    for start in range(0, len(x) - batch_size + 1, batch_size):
        h = x[start : start + batch_size]
        for layer in layers:
            if isinstance(layer, lowtf.nn.BatchNorm):
                a = np.asarray(h, np.float64)
                mean, var = a.mean(0), a.var(0)
                per_layer.setdefault(layer.name, []).append((mean, var))
                gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
                h = ((a - mean) / np.sqrt(var + layer.epsilon) * gamma + beta).astype(
                    np.float32
                )
            else:
                h = layer(h, training=False).numpy()
    return {
        name: tuple(np.mean([m[i] for m in moments], axis=0) for i in range(2))
        for name, moments in per_layer.items()
    }


def test_swa_is_the_mean_of_the_weights_at_its_points_with_batch_norm_recomputed():
    model = lowtf.mlp("small", batchnorm=True, dropout=0.3, seed=1)
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(1e-2),
        data=InMemoryBatches(X, Y, 40, seed=0),
        options=lowtf.StepOptions(jit_compile=False, swa_from=1, seed=1),
    )
    trainable = step.trained_variables
    points = []
    for _ in range(3):
        step.run(15)
        points.append([v.numpy() for v in trainable])
        step.update_swa()
    live = [v.numpy() for v in model.variables]
    with step.averaged_weights():
        for var, *values in zip(trainable, *points):
            np.testing.assert_allclose(var.numpy(), np.mean(values, 0), atol=1e-6)
        expected = _batch_norm_reference(model, X, 40)
        assert len(expected) == 2  # the small MLP's two hidden layers
        for layer in model.layers:
            if isinstance(layer, lowtf.nn.BatchNorm):
                mean, var = expected[layer.name]
                np.testing.assert_allclose(layer.moving_mean.numpy(), mean, atol=1e-5)
                np.testing.assert_allclose(
                    layer.moving_variance.numpy(), var, rtol=1e-4
                )
    for a, b in zip(model.variables, live):  # swapped back, moving statistics too
        np.testing.assert_array_equal(a.numpy(), b)


def test_swa_refuses_ema_and_a_stream_with_batch_norm():
    with pytest.raises(ValueError, match="`ema` .* `swa_from`"):
        lowtf.StepOptions(ema=0.9, swa_from=10)
    with pytest.raises(ValueError, match="`swa_from` \\(0\\) must be"):
        lowtf.StepOptions(swa_from=0)
    step = lowtf.TrainStep(
        lowtf.mlp("tiny", batchnorm=True, seed=0),
        tf.keras.optimizers.Adam(1e-2),
        options=lowtf.StepOptions(jit_compile=False, swa_from=5),
    )
    with pytest.raises(ValueError, match="in-memory data"):
        step(X[:40], Y[:40])


@pytest.mark.e2e
def test_fit_evaluates_swa_with_batch_norm_and_resumes_exactly(tmp_path):
    def fit(model_dir, max_steps):
        model = lowtf.mlp("small", batchnorm=True, dropout=0.2, seed=2)
        result = lowtf.fit(
            model,
            tf.keras.optimizers.Adam(1e-2),
            train=(X, Y),
            validation=(X_VAL, Y_VAL),
            model_dir=str(model_dir),
            config=lowtf.TrainConfig(
                batch_size=40, max_steps=max_steps, eval_every=20, checkpoint_every=20
            ),
            step_options=lowtf.StepOptions(jit_compile=False, swa_from=40, seed=2),
            log=lambda line: None,
        )
        return model, result

    whole, whole_result = fit(tmp_path / "whole", 120)
    fit(tmp_path / "split", 80)  # stopped with two points in the mean
    resumed, resumed_result = fit(tmp_path / "split", 120)
    assert resumed_result.history == whole_result.history
    for a, b in zip(resumed.variables, whole.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The model ends holding its best evaluation's weights, averaged from step
    # 40 on, with their recomputed statistics: their validation loss is the best.
    val = lowtf.Evaluator(whole, jit_compile=False)(X_VAL, Y_VAL)
    assert val["cross_entropy"] == pytest.approx(whole_result.best_value, rel=1e-6)
    record = lowtf.train.rundir.read_record(str(tmp_path / "whole"))
    assert record["identity"]["swa_from"] == 40


@pytest.mark.e2e
def test_members_with_their_own_swa_equal_single_runs():
    seeds, swa_from = [0, 1, 2], [0, 20, 40]  # member 0 does not average
    # Members with 4, 3 and 3 batches: the batch-norm pass pads the shorter.
    rows = [np.arange(160), np.arange(120), np.arange(40, 160)]
    pop = lowtf.Population(
        X, Y, train_rows=rows, val_rows=[np.arange(160, 200)] * 3, seeds=seeds,
        models=lambda k: lowtf.mlp("small", batchnorm=True, dropout=0.2, seed=seeds[k]),
        swa_from=swa_from, optimizer=tf.keras.optimizers.Adam(1e-2), batch_size=40,
        jit_compile=False,
    )  # fmt: skip
    for _ in range(3):
        pop.run(20)
        record = pop.evaluate()
    for k in range(3):
        single = lowtf.mlp("small", batchnorm=True, dropout=0.2, seed=seeds[k])
        step = lowtf.TrainStep(
            single,
            tf.keras.optimizers.Adam(1e-2),
            data=InMemoryBatches(X[rows[k]], Y[rows[k]], 40, seed=seeds[k]),
            options=lowtf.StepOptions(
                seed=seeds[k], jit_compile=False, swa_from=swa_from[k] or None
            ),
        )
        for i in range(1, 4):
            step.run(20)
            if swa_from[k] and 20 * i >= swa_from[k]:
                step.update_swa()
        with pop.averaged_weights():
            member = pop.member(k, weights="latest")
        with step.averaged_weights():
            for a, b in zip(member.variables, single.variables):
                np.testing.assert_allclose(
                    a.numpy(), b.numpy(), atol=2e-5, err_msg=a.name
                )
            val = lowtf.Evaluator(single, jit_compile=False)(X[160:200], Y[160:200])
        assert record["val_cross_entropy"][k] == pytest.approx(
            val["cross_entropy"], rel=1e-4
        )
    for a, b in zip(pop.member(2, weights="latest").variables, single.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5)  # swapped back
    with pytest.raises(ValueError, match="member 1 has `ema` .* and `swa_from`"):
        lowtf.Population(
            X, Y, train_rows=rows, val_rows=[np.arange(160, 200)] * 3, seeds=seeds,
            ema=[0.0, 0.9, 0.0], swa_from=[0, 20, 40],
            optimizer=tf.keras.optimizers.Adam(1e-2), batch_size=40,
        )  # fmt: skip
