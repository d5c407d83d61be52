"""The max-norm diagnostic: which units the cap bound, per interval, in history and TensorBoard."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from _fixtures import noisy_split

import lowtf
from lowtf.data import InMemoryBatches

(X, Y), (X_VAL, Y_VAL) = noisy_split(200, 80, 5, seed=4)


def test_bound_flags_exactly_the_units_the_clip_changes_per_member():
    w = tf.random.stateless_normal([3, 6, 5], seed=[1, 2]) * 0.8
    stacked = lowtf.MaxNorm((1.5, 0.0, 2.0))
    bound, capped = stacked.bound(w).numpy(), stacked.capped(w).numpy()
    changed = np.any(stacked(w).numpy() != w.numpy(), axis=1)
    assert bound.shape == capped.shape == (3, 5)
    np.testing.assert_array_equal(bound, changed)
    assert bound[0].any() and bound[2].any() and not bound[1].any()  # cap 0: free
    np.testing.assert_array_equal(capped, [[True] * 5, [False] * 5, [True] * 5])
    conv = tf.random.stateless_normal([3, 3, 2, 4], seed=[3, 4])
    single = lowtf.max_norm(2.5)
    np.testing.assert_array_equal(
        single.bound(conv).numpy(),
        lowtf.nn.unit_norms(conv).numpy() > 2.5,
    )


def _fit(model_dir, maxnorm, max_steps=60):
    model = lowtf.mlp("small", maxnorm=maxnorm, maxnorm_output=True, seed=3)
    return lowtf.fit(
        model,
        tf.keras.optimizers.Adam(3e-2),
        train=(X, Y),
        validation=(X_VAL, Y_VAL),
        model_dir=str(model_dir),
        config=lowtf.TrainConfig(
            batch_size=40, max_steps=max_steps, eval_every=20, checkpoint_every=20
        ),
        step_options=lowtf.StepOptions(jit_compile=False, seed=3),
        log=lambda line: None,
    )


def _board(model_dir, tag):
    values = {}
    for path in glob.glob(os.path.join(model_dir, "tensorboard", "train", "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_fit_reports_the_fraction_of_units_the_cap_bound_per_interval(tmp_path):
    loose = _fit(tmp_path / "loose", maxnorm=100.0)
    fractions = [row["maxnorm_clipped_fraction"] for row in loose.history]
    assert fractions == [None, 0.0, 0.0, 0.0]  # step 0 has no interval yet
    tight = _fit(tmp_path / "tight", maxnorm=0.3)
    fractions = [row["maxnorm_clipped_fraction"] for row in tight.history]
    assert fractions[0] is None and all(0.0 < f <= 1.0 for f in fractions[1:])
    history = lowtf.train.summaries.read_history(
        str(tmp_path / "tight" / "history.csv")
    )
    assert [row["maxnorm_clipped_fraction"] for row in history] == fractions
    board = _board(str(tmp_path / "tight"), "maxnorm_clipped_fraction")
    assert board == pytest.approx(
        {20: fractions[1], 40: fractions[2], 60: fractions[3]}
    )


def test_the_flags_are_in_the_checkpoint_and_a_model_without_max_norm_reports_none(
    tmp_path,
):
    def step_for(maxnorm):
        model = lowtf.mlp("small", maxnorm=maxnorm, seed=5)
        return lowtf.TrainStep(
            model,
            tf.keras.optimizers.Adam(3e-2),
            data=InMemoryBatches(X, Y, 40, seed=5),
            options=lowtf.StepOptions(jit_compile=False, seed=5),
        )

    whole = step_for(0.6)
    whole.run(12)
    halfway = whole.maxnorm_clipped_fraction()
    assert halfway > 0.0
    saved = tf.train.Checkpoint(step=whole).write(str(tmp_path / "mid"))
    whole.run(12)
    fraction = whole.maxnorm_clipped_fraction()
    assert 0.0 < fraction < 1.0
    resumed = step_for(0.6)
    resumed.build(X[:1])
    tf.train.Checkpoint(step=resumed).read(saved).assert_consumed()
    assert resumed.maxnorm_clipped_fraction() == halfway  # mid-interval flags restored
    resumed.run(12)
    assert resumed.maxnorm_clipped_fraction() == fraction
    resumed.reset_maxnorm_bound()
    assert resumed.maxnorm_clipped_fraction() == 0.0
    assert step_for(0.0).maxnorm_clipped_fraction() is None


def test_a_history_written_before_the_column_existed_is_resumable(tmp_path):
    summaries = lowtf.train.summaries
    older = [c for c in summaries.COLUMNS if c != "maxnorm_clipped_fraction"]
    path = str(tmp_path / "history.csv")
    row = ["20", *["0.5"] * (len(older) - 1)]
    with open(path, "w") as f:
        f.write(",".join(older) + "\r\n" + ",".join(row) + "\r\n")
    summaries.check_history(path)  # not refused
    (read,) = summaries.read_history(path)
    assert read["step"] == 20 and read["val_cross_entropy"] == 0.5
    assert read["maxnorm_clipped_fraction"] is None
    history = summaries.History(path)
    assert history.start(keep_upto=20) == [read]  # rewritten with today's header
    assert summaries.read_history(path) == [read]
    with open(path) as f:
        assert f.readline().strip().split(",") == list(summaries.COLUMNS)
