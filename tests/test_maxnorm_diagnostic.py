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


@pytest.mark.e2e
def test_members_report_their_own_fraction_and_swa_resumes_exactly(tmp_path):
    caps = [0.0, 100.0, 0.3]  # none, one that never binds, a tight one

    def fit(model_dir, max_steps):
        pop = lowtf.Population(
            X, Y, train_rows=[np.arange(160)] * 3, val_rows=[np.arange(160, 200)] * 3,
            seeds=[0, 1, 2], swa_from=[20, 0, 40], batch_size=40, jit_compile=False,
            models=lambda k: lowtf.mlp(
                "small", batchnorm=True, maxnorm=caps[k], maxnorm_output=True, seed=k
            ),
            optimizer=tf.keras.optimizers.Adam(3e-2),
        )  # fmt: skip
        result = lowtf.population.fit_population(
            pop, model_dir=str(model_dir), max_steps=max_steps, eval_every=20,
            checkpoint_every=20, log=lambda line: None,
        )  # fmt: skip
        return pop, result

    whole, whole_result = fit(tmp_path / "whole", 80)
    fit(tmp_path / "split", 40)  # stopped inside member 0's averaging
    resumed, resumed_result = fit(tmp_path / "split", 80)
    for a, b in zip(whole_result.members, resumed_result.members):
        assert a.history == b.history
    for k in range(3):
        for a, b in zip(resumed.member(k).variables, whole.member(k).variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    fractions = [
        [row["maxnorm_clipped_fraction"] for row in m.history]
        for m in whole_result.members
    ]
    assert fractions[0] == [None] * 5
    assert fractions[1] == [None, 0.0, 0.0, 0.0, 0.0]
    assert all(f > 0.0 for f in fractions[2][1:])
    history = lowtf.train.summaries.read_history(
        str(tmp_path / "split" / "history.csv")
    )
    assert [r["maxnorm_clipped_fraction"] for r in history if r["member"] == 2] == (
        fractions[2]
    )
    identity = lowtf.train.rundir.read_record(str(tmp_path / "whole"))["identity"]
    assert [m.get("swa_from") for m in identity["members"]] == [20, None, 40]
