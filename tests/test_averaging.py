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
