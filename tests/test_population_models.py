"""A population of any lowtf model: member k equals its single run, with its own rate."""

import numpy as np
import pytest
import tensorflow as tf
from _fixtures import noisy_split

import lowtf
from lowtf.data import InMemoryBatches

STEPS = 300


def _single_run(model, optimizer, x, y, seed, batch_size, jit, augment=None):
    """Member k's configuration trained alone for STEPS steps; its model."""
    step = lowtf.TrainStep(
        model,
        optimizer,
        data=InMemoryBatches(x, y, batch_size, seed=seed),
        augment=augment,
        options=lowtf.StepOptions(seed=seed, jit_compile=jit),
    )
    step.run(STEPS)
    return model


# 300 steps of training amplify rounding, most for the fastest learner: with
# TF_NUM_INTRAOP_THREADS=1 (other reduction orders than the default pool's)
# the CNN member at rate 3e-3 was seen 3.4e-3 from its single run at most,
# 1.3e-4 at the median, the other members within 2.2e-6; a processor or a
# thread count may move them as far. Another seed, mask or rate moves weights
# by 1e-1 and more.
ATOL, MEAN_ATOL = 1e-2, 1e-3


def _assert_members_equal_singles(pop, singles):
    for k, single in enumerate(singles):
        member = pop.member(k, weights="latest")
        ours, theirs = member.variables, single.variables
        assert len(ours) == len(theirs) > 0
        gaps = np.concatenate([np.abs(a.numpy() - b.numpy()).ravel() for a, b in zip(ours, theirs)])
        assert gaps.mean() < MEAN_ATOL, (k, gaps.mean())
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=ATOL, err_msg=a.name)


@pytest.mark.e2e
def test_mlp_members_with_batch_norm_and_their_own_learning_rates_equal_single_runs():
    (x, y), _ = noisy_split(360, 0, 6, seed=3, weights=(1.0, -1.0, 0.5))
    rates = [3e-4, 1e-3, 3e-3, 1e-2]
    seeds = [5, 6, 7, 8]
    rows = [np.arange(0, 300), np.arange(60, 360), np.arange(0, 240), np.arange(30, 330)]
    val = [np.arange(300, 360), np.arange(0, 60), np.arange(240, 360), np.arange(0, 30)]

    def make(k):
        return lowtf.mlp("small", batchnorm=True, l2=[0.0, 1e-3, 0.0, 1e-2][k], seed=seeds[k])

    schedule = tf.keras.optimizers.schedules.InverseTimeDecay(1e-3, 100, 1.0)
    pop = lowtf.Population(
        x,
        y,
        models=make,
        train_rows=rows,
        val_rows=val,
        seeds=seeds,
        learning_rate=rates,
        optimizer=tf.keras.optimizers.Adam(schedule),
        batch_size=32,
        jit_compile=False,
    )
    pop.run(STEPS)
    np.testing.assert_allclose(pop.evaluate()["learning_rate"], np.array(rates) / 4)
    singles = [
        _single_run(
            make(k),
            tf.keras.optimizers.Adam(
                tf.keras.optimizers.schedules.InverseTimeDecay(rates[k], 100, 1.0)
            ),
            x[rows[k]],
            y[rows[k]],
            seeds[k],
            32,
            jit=False,
        )
        for k in range(4)
    ]
    _assert_members_equal_singles(pop, singles)
    # The rates made a difference: members 0 and 3 moved apart from a common start.
    first = [pop.member(k, weights="latest").variables[-1].numpy() for k in (0, 3)]
    assert not np.allclose(first[0], first[1], atol=1e-2)


@pytest.mark.e2e
def test_cnn_members_with_their_augmentation_dropout_and_max_norm_equal_single_runs():
    data = lowtf.load_dataset("digits")
    x, y = data.train
    x, y = x[:600], y[:600]
    raw = x * data.std + data.mean
    # Each member its own augmentation (the second none), as a sweep gives them.
    augments = [
        lowtf.augment.parse(
            spec,
            image_shape=(8, 8, 1),
            value_range=(float(raw.min()), float(raw.max())),
            mean=data.mean,
            std=data.std,
        )
        if spec
        else None
        for spec in ("translate:1,rotate:10", "", "translate:2,rotate:20", "zoom:0.1")
    ]
    seeds = [1, 2, 3, 4]
    dropout = [0.0, 0.3, 0.5, 0.2]
    caps = [0.0, 1.0, 2.0, 0.5]
    rates = [1e-3, 3e-3, 1e-3, 2e-3]

    def make(k):
        return lowtf.cnn(
            filters=(4, 8),
            dense=(16,),
            dropout=dropout[k],
            maxnorm=caps[k],
            seed=seeds[k],
        )

    rows = [np.arange(0, 500)] * 4
    val = [np.arange(500, 600)] * 4
    pop = lowtf.Population(
        x,
        y,
        models=make,
        train_rows=rows,
        val_rows=val,
        seeds=seeds,
        learning_rate=rates,
        optimizer=tf.keras.optimizers.Adam(1e-3),
        augment=augments,
        batch_size=32,
        jit_compile=False,
    )
    pop.run(STEPS)
    singles = [
        _single_run(
            make(k),
            tf.keras.optimizers.Adam(rates[k]),
            x[:500],
            y[:500],
            seeds[k],
            32,
            jit=False,
            augment=augments[k],
        )
        for k in range(4)
    ]
    _assert_members_equal_singles(pop, singles)
    # The caps bind: member 3's dense units sit at its cap of 0.5.
    dense = [m for m in pop.member(3, weights="latest").layers if isinstance(m, lowtf.Dense)]
    norms = lowtf.nn.unit_norms(dense[0].kernel).numpy()
    assert norms.max() == pytest.approx(0.5, rel=1e-5)


@pytest.mark.e2e
def test_per_member_weight_decay_equals_adamw():
    (x, y), _ = noisy_split(200, 0, 5, seed=1)
    decays = [0.0, 0.05, 0.3]
    seeds = [0, 1, 2]
    rows, val = [np.arange(160)] * 3, [np.arange(160, 200)] * 3
    pop = lowtf.Population(
        x,
        y,
        models=lambda k: lowtf.mlp("tiny", seed=seeds[k]),
        train_rows=rows,
        val_rows=val,
        seeds=seeds,
        weight_decay=decays,
        learning_rate=[1e-2, 1e-2, 3e-2],
        optimizer=tf.keras.optimizers.AdamW(1e-2, weight_decay=0.0),
        batch_size=40,
        jit_compile=False,
    )
    pop.run(40)
    for k in range(3):
        single = lowtf.mlp("tiny", seed=seeds[k])
        step = lowtf.TrainStep(
            single,
            tf.keras.optimizers.AdamW([1e-2, 1e-2, 3e-2][k], weight_decay=decays[k]),
            data=InMemoryBatches(x[:160], y[:160], 40, seed=seeds[k]),
            options=lowtf.StepOptions(seed=seeds[k], jit_compile=False),
        )
        step.run(40)
        for a, b in zip(pop.member(k, weights="latest").variables, single.variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_members_of_different_architectures_and_bad_rates_are_refused():
    (x, y), _ = noisy_split(100, 0, 4, seed=0)
    rows, val = [np.arange(80)] * 2, [np.arange(80, 100)] * 2
    common = dict(train_rows=rows, val_rows=val, seeds=[0, 1], batch_size=20)
    with pytest.raises(ValueError, match="architecture") as info:
        lowtf.Population(
            x,
            y,
            models=[lowtf.mlp("tiny"), lowtf.mlp("small")],
            optimizer=tf.keras.optimizers.Adam(1e-3),
            **common,
        )
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"`learning_rate\[1\]`"):
        lowtf.Population(
            x,
            y,
            learning_rate=[1e-3, -1.0],
            optimizer=tf.keras.optimizers.Adam(1e-3),
            **common,
        )
    pop = lowtf.Population(x, y, optimizer=tf.keras.optimizers.Adam(1e-3), **common)
    with pytest.raises(ValueError, match="never evaluated"):
        pop.member(0)


@pytest.mark.e2e
def test_members_with_smoothing_mixup_and_noise_equal_single_runs():
    (x, y), _ = noisy_split(200, 0, 5, seed=4)
    seeds = [0, 1, 2]
    smoothing, mixup = [0.0, 0.1, 0.2], [0.0, 0.4, 0.0]
    noise = [dict(), dict(input_noise=0.1), dict(hidden_noise=0.2, dropout=0.2)]

    def make(k):
        return lowtf.mlp("small", seed=seeds[k], **noise[k])

    rows, val = [np.arange(160)] * 3, [np.arange(160, 200)] * 3
    pop = lowtf.Population(
        x,
        y,
        models=make,
        train_rows=rows,
        val_rows=val,
        seeds=seeds,
        label_smoothing=smoothing,
        mixup=mixup,
        optimizer=tf.keras.optimizers.Adam(1e-2),
        batch_size=40,
        jit_compile=False,
    )
    pop.run(60)
    for k in range(3):
        single = make(k)
        options = lowtf.StepOptions(
            seed=seeds[k], jit_compile=False, label_smoothing=smoothing[k], mixup=mixup[k]
        )
        step = lowtf.TrainStep(
            single,
            tf.keras.optimizers.Adam(1e-2),
            data=InMemoryBatches(x[:160], y[:160], 40, seed=seeds[k]),
            options=options,
        )
        step.run(60)
        for a, b in zip(pop.member(k, weights="latest").variables, single.variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.e2e
def test_members_with_their_own_ema_equal_single_runs_and_evaluate_their_averages():
    (x, y), _ = noisy_split(200, 0, 5, seed=6)
    seeds, emas = [0, 1, 2], [0.0, 0.9, 0.99]
    rows, val = [np.arange(160)] * 3, [np.arange(160, 200)] * 3
    pop = lowtf.Population(
        x, y, models=lambda k: lowtf.mlp("small", seed=seeds[k]), train_rows=rows,
        val_rows=val, seeds=seeds, ema=emas, optimizer=tf.keras.optimizers.Adam(1e-2),
        batch_size=40, jit_compile=False,
    )  # fmt: skip
    pop.run(50)
    record = pop.evaluate()
    for k in range(3):
        single = lowtf.mlp("small", seed=seeds[k])
        step = lowtf.TrainStep(
            single,
            tf.keras.optimizers.Adam(1e-2),
            data=InMemoryBatches(x[:160], y[:160], 40, seed=seeds[k]),
            options=lowtf.StepOptions(seed=seeds[k], jit_compile=False, ema=emas[k]),
        )
        step.run(50)
        for a, b in zip(pop.member(k, weights="latest").variables, single.variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
        with step.averaged_weights():
            averaged = [v.numpy() for v in single.variables]
            val_ce = lowtf.Evaluator(single, jit_compile=False)(x[160:], y[160:])
        for a, b in zip(pop.member(k).variables, averaged):  # best = step 50's averages
            np.testing.assert_allclose(a.numpy(), b, atol=1e-5)
        assert record["val_cross_entropy"][k] == pytest.approx(val_ce["cross_entropy"], rel=1e-4)
