"""lowtf.population: K members in one compiled step, each equal to its own single run."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from _fixtures import noisy_split

import lowtf
from lowtf.population import Population, fit_population, k_fold
from lowtf.population import population as population_lib

(X, Y), _ = noisy_split(400, 0, 5, seed=7, weights=(1.0, -1.0, 0.5))
PERM = np.random.RandomState(0).permutation(len(X))
# Three members with overlapping, differently sized rows of the one data set.
TRAIN = [PERM[:280], PERM[60:360], PERM[120:]]
VAL = [PERM[280:], PERM[:60], PERM[:120]]
MEMBERS = dict(
    seeds=[3, 11, 4],
    l1=[0.0, 0.0, 1e-4],
    l2=[1e-3, 0.0, 1e-2],
    dropout=[0.3, 0.0, 0.1],
    maxnorm=[0.8, 0.0, 0.6],
)


def _population(jit=False, members=MEMBERS, train=TRAIN, val=VAL, **kwargs):
    kwargs = {"model": (16, 8), "batch_size": 32, **kwargs}
    return Population(
        X,
        Y,
        train_rows=train,
        val_rows=val,
        optimizer=tf.keras.optimizers.Adam(kwargs.pop("lr", 1e-2)),
        jit_compile=jit,
        **members,
        **kwargs,
    )


def _weights(model):
    return [v.numpy() for v in model.variables]


# One schedule for the fitted population and its single-fit twins: patience
# 60 with evaluations every 20 steps lets members stop before the last step.
SCHEDULE = dict(max_steps=200, eval_every=20, patience=60)


def _fit(model_dir, jit=False, max_steps=SCHEDULE["max_steps"]):
    pop = _population(jit=jit, patience=SCHEDULE["patience"])
    result = fit_population(
        pop,
        model_dir=model_dir,
        max_steps=max_steps,
        eval_every=SCHEDULE["eval_every"],
        checkpoint_every=60,
        log=lambda s: None,
    )
    return pop, result


def _assert_same_history(dir_a, dir_b):
    """history.csv of two model dirs: equal bit for bit but the mean total loss.

    The training means of total_loss may differ by an ulp in graph mode
    (not under XLA) between two identical uninterrupted runs on a busy
    machine (seen under pytest -n 2); every other number must be equal.
    """
    a, b = (
        np.genfromtxt(d / "history.csv", delimiter=",", names=True)
        for d in (dir_a, dir_b)
    )
    assert a.dtype.names == b.dtype.names and len(a) == len(b) > 0
    for name in a.dtype.names:
        if name == "total_loss":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One uninterrupted graph-mode fit, read (never changed) by several tests."""
    model_dir = tmp_path_factory.mktemp("fitted")
    pop, result = _fit(model_dir)
    return pop, result, model_dir


def _single_fit(k, model_dir, jit, schedule, train=TRAIN, val=VAL):
    """Member k's configuration fit alone by lowtf.fit: (model, FitResult)."""
    seed = MEMBERS["seeds"][k]
    model = lowtf.mlp(
        (16, 8),
        seed=seed,
        l1=MEMBERS["l1"][k],
        l2=MEMBERS["l2"][k],
        dropout=MEMBERS["dropout"][k],
        maxnorm=MEMBERS["maxnorm"][k],
    )
    single = lowtf.fit(
        model,
        tf.keras.optimizers.Adam(1e-2),
        train=(X[train[k]], Y[train[k]]),
        validation=(X[val[k]], Y[val[k]]),
        model_dir=str(model_dir),
        config=lowtf.TrainConfig(batch_size=32, seed=seed, **schedule),
        step_options=lowtf.StepOptions(seed=seed, jit_compile=jit),
        log=lambda s: None,
    )
    return model, single


def _assert_member_equals_single(pop, member, k, model, single):
    assert member.best_step == single.best_step
    assert member.stop_step == single.last_step
    assert member.best_value == pytest.approx(single.best_value, rel=1e-5)
    ours = [r["val_cross_entropy"] for r in member.history]
    theirs = [r["val_cross_entropy"] for r in single.history]
    assert len(ours) == len(theirs) >= 2
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    for a, b in zip(_weights(pop.member(k)), _weights(model)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The max-norm cap binds: some hidden unit sits at the cap (clipped), so
    # the equality covers the clipping, not only L2 and dropout.
    dense = [m for m in model.layers if isinstance(m, lowtf.Dense)][:-1]
    norms = [lowtf.nn.unit_norms(layer.kernel).numpy().max() for layer in dense]
    assert max(norms) == pytest.approx(MEMBERS["maxnorm"][k], rel=1e-5)


def test_member_equals_its_single_fit_after_20_steps(tmp_path):
    # The quick check of the fast tier: member 0 (dropout, L2, max-norm),
    # graph mode; the e2e test below runs both modes and lets members stop.
    pop = _population(patience=100)
    result = fit_population(
        pop, model_dir=tmp_path / "pop", max_steps=20, eval_every=10,
        log=lambda s: None,
    )  # fmt: skip
    schedule = dict(max_steps=20, eval_every=10, patience=100)
    model, single = _single_fit(0, tmp_path / "single", False, schedule)
    member = result.members[0]
    assert member.best_step == single.best_step
    assert member.best_value == pytest.approx(single.best_value, rel=1e-5)
    ours = [r["val_cross_entropy"] for r in member.history]
    theirs = [r["val_cross_entropy"] for r in single.history]
    assert len(ours) == len(theirs) == 3  # steps 0, 10, 20
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    for a, b in zip(_weights(pop.member(0)), _weights(model)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_run_of_several_calls_and_one_batch_epochs_draw_as_single_runs(
    tmp_path, monkeypatch
):
    # The random tables of a call reach as many epochs as it can: here every
    # step starts a new epoch for members 0 and 1 (40 and 60 rows, batch 32),
    # and each run(10) of the fit takes two calls (CALL_STEPS lowered to 7).
    monkeypatch.setattr(population_lib, "CALL_STEPS", 7)
    train = [PERM[:40], PERM[40:100], PERM[100:180]]
    val = [PERM[300:]] * 3
    pop = _population(train=train, val=val, patience=100)
    assert pop._table_epochs == 7 // 1 + 3
    result = fit_population(
        pop, model_dir=tmp_path / "pop", max_steps=20, eval_every=10,
        log=lambda s: None,
    )  # fmt: skip
    schedule = dict(max_steps=20, eval_every=10, patience=100)
    for k in (0, 2):  # with dropout: its keys come from the tables too
        model, single = _single_fit(k, tmp_path / f"s{k}", False, schedule, train, val)
        ours = [r["val_cross_entropy"] for r in result.members[k].history]
        theirs = [r["val_cross_entropy"] for r in single.history]
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
        for a, b in zip(_weights(pop.member(k)), _weights(model)):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("jit", [True, False], ids=["xla", "graph"])
def test_member_equals_its_single_fit(tmp_path, fitted, jit):
    if jit:
        pop, result = _fit(tmp_path / "pop", jit=True)
    else:
        pop, result, _ = fitted
    for k in (0, 2):  # dropout, L2 (and L1) and max-norm on both
        model, single = _single_fit(k, tmp_path / f"single{k}", jit, SCHEDULE)
        _assert_member_equals_single(pop, result.members[k], k, model, single)


@pytest.mark.e2e
def test_members_do_not_interact():
    # Under XLA, whose reductions are deterministic: a graph's step metrics
    # can differ in the last bit between two identical runs (the weights not).
    base = _population(jit=True)
    first = [base.run(40)["total_loss"] for _ in range(2)]
    changed = dict(MEMBERS, l2=[1e-3, 0.5, 0.0], dropout=[0.3, 0.5, 0.0])
    changed["maxnorm"] = [0.8, 0.1, 0.0]
    other = _population(
        jit=True,
        members=changed,
        train=[TRAIN[0], PERM[:300], TRAIN[1]],
        val=[VAL[0], PERM[300:], VAL[1]],
    )
    second = [other.run(40)["total_loss"] for _ in range(2)]
    assert [m[0] for m in first] == [m[0] for m in second]  # bit for bit
    assert first[-1][1] != second[-1][1]
    for a, b in zip(base.model.variables, other.model.variables):
        np.testing.assert_array_equal(a.numpy()[0], b.numpy()[0])
        assert not np.array_equal(a.numpy()[1], b.numpy()[1])


@pytest.mark.e2e
def test_max_norm_caps_each_member_at_its_own_cap():
    members = dict(MEMBERS, maxnorm=[0.3, 0.0, 1.0], l2=0.0, dropout=0.0)
    pop = _population(members=members, lr=0.05)
    pop.run(60)
    kernels = [m.kernel for m in pop.model.submodules if isinstance(m, lowtf.Dense)]
    hidden = kernels[:-1]
    for kernel in hidden:
        norms = np.sqrt((kernel.numpy() ** 2).sum(axis=1))  # [K, units]
        assert norms[0].max() <= 0.3 + 1e-6
        assert norms[2].max() <= 1.0 + 1e-6
        assert norms[1].max() > 1.0  # uncapped: grew past both others' caps
    out = np.sqrt((kernels[-1].numpy() ** 2).sum(axis=1))
    assert out[0].max() > 0.3  # the output layer is not capped by default


@pytest.mark.e2e
def test_a_stopped_member_no_longer_changes():
    # Member 0 never improves after step 0 (min_delta huge): it stops at 40.
    pop = _population(patience=[40, 10_000, 10_000], min_delta=[1e9, 0.0, 0.0])
    pop.evaluate()
    pop.run(40)
    record = pop.evaluate()
    assert record["stopped"].tolist() == [True, False, False]
    assert pop.stop_step.tolist() == [40, -1, -1]
    frozen = [v.numpy()[0] for v in pop.model.variables]
    slots = [
        v.numpy()[0]
        for v in pop.optimizer.variables
        if len(v.shape) and v.shape[0] == 3
    ]
    moving = [v.numpy()[1] for v in pop.model.variables]
    pop.run(30)
    for v, before in zip(pop.model.variables, frozen):
        np.testing.assert_array_equal(v.numpy()[0], before)
    after = [
        v.numpy()[0]
        for v in pop.optimizer.variables
        if len(v.shape) and v.shape[0] == 3
    ]
    for a, b in zip(after, slots):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(pop.model.variables[0].numpy()[1], moving[0])
    # Its best weights are those of step 0 (its only improvement).
    assert pop.best_step.tolist()[0] == 0
    assert int(pop.step.numpy()) == 70


@pytest.mark.e2e
def test_member_holds_the_best_weights_bit_for_bit(fitted):
    pop, _, model_dir = fitted
    for k in range(3):
        model = pop.member(k)
        ours = [v.numpy() for v in model.variables]
        best = [v.numpy()[k] for v in pop.state.best]  # kernel, bias per layer
        assert len(ours) == len(best) == 6
        for a, b in zip(ours, best):
            np.testing.assert_array_equal(a, b)
        val = lowtf.Evaluator(model, jit_compile=False)(X[VAL[k]], Y[VAL[k]])
        assert val["cross_entropy"] == pytest.approx(pop.best_value[k], rel=1e-5)
    # The snapshot on disk holds the same stacked best weights.
    pointer = lowtf.population.read_best_weights(str(model_dir / "best"))
    assert pointer["best_step"] == pop.best_step.tolist()
    copy = [tf.Variable(tf.zeros_like(v)) for v in pop.state.best]
    tf.train.Checkpoint(best=copy).read(pointer["prefix"]).assert_consumed()
    for a, b in zip(copy, pop.state.best):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.e2e
def test_one_trace_for_any_number_of_steps():
    pop = _population()
    for n in (3, 7, 1, 20):
        metrics = pop.run(n)
        assert set(metrics) == set(lowtf.train.metrics.STEP_METRICS)
        assert metrics["total_loss"].shape == (3,)
    assert pop.trace_count == 1
    assert int(pop.step.numpy()) == 31


@pytest.mark.e2e
def test_batch_norm_statistics_are_per_member():
    pop = _population(batchnorm=True, members=dict(MEMBERS, dropout=0.0))
    pop.run(30)
    means = _first_batchnorm(pop.model).moving_mean.numpy()
    assert not np.allclose(means[0], means[1])
    single = _population(
        batchnorm=True,
        members=dict(seeds=[3], l1=[0.0], l2=[1e-3], dropout=[0.0], maxnorm=[0.8]),
        train=[TRAIN[0]],
        val=[VAL[0]],
    )
    single.run(30)
    np.testing.assert_allclose(
        _first_batchnorm(single.model).moving_mean.numpy()[0], means[0], atol=1e-6
    )
    model = pop.member(0, weights="latest")
    bn = [m for m in model.layers if isinstance(m, lowtf.BatchNorm)][0]
    np.testing.assert_array_equal(bn.moving_mean.numpy(), means[0])


def _first_batchnorm(model):
    return [m for m in model.submodules if isinstance(m, lowtf.BatchNorm)][0]


def test_k_fold_is_stratified_and_disjoint():
    y = np.array([0] * 30 + [1] * 10)
    folds = k_fold(y, 5, seed=1)
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(40))
    for train, v in folds:
        assert len(np.intersect1d(train, v)) == 0
        assert len(train) + len(v) == 40
        assert (y[v] == 1).sum() == 2 and len(v) == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(members=dict(MEMBERS, l2=[0.1, 0.2])), r"`l2` has 2 values .* 3 members"),
        (dict(members=dict(MEMBERS, dropout=[0.1] * 4)), r"`dropout` has 4 values"),
        (dict(val=[VAL[0], [], VAL[2]]), r"`val_rows\[1\]` is empty"),
        (dict(train=[TRAIN[0], TRAIN[1], PERM]), r"member 2's validation rows leak"),
        (dict(train=TRAIN[:2]), r"`train_rows` has 2 lists of rows but .* 3 members"),
        (dict(val=[VAL[0], VAL[1], [400]]), r"`val_rows\[2\]` holds row 400, outside"),
        (dict(batch_size=290), r"`train_rows\[0\]` has 280 rows, fewer than"),
        (dict(patience=[1, 2]), r"`patience` has 2 values"),
    ],
)
def test_bad_input_is_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        _population(**kwargs)
    assert "\n" not in str(info.value)


def test_refused_under_a_strategy():
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        with pytest.raises(ValueError, match="refused under a tf.distribute strategy"):
            _population()


def _fit_six(model_dir, patience, max_steps, jit=False, compact=True):
    """Six members (MEMBERS twice): 1 and 4 improve, the others never after step 0.

    fit_population with evaluations every 20 steps and checkpoints every 40;
    returns the population and the fit's log lines.
    """
    six = {k: v * 2 for k, v in MEMBERS.items()}
    six["seeds"] = [3, 11, 4, 5, 6, 7]
    pop = _population(
        jit=jit,
        members=six,
        train=TRAIN * 2,
        val=VAL * 2,
        patience=patience,
        min_delta=[1e9, 0.0, 1e9, 1e9, 0.0, 1e9],
    )
    lines = []
    fit_population(
        pop,
        model_dir=model_dir,
        max_steps=max_steps,
        eval_every=20,
        checkpoint_every=40,
        compact=compact,
        log=lines.append,
    )
    return pop, lines


@pytest.mark.e2e
def test_compacting_stopped_members_changes_no_number(tmp_path):
    # Six members; four never improve after step 0 (min_delta huge) and stop
    # at step 40, so from then on fit_population trains a subset of the two
    # still training. Every variable and history row equals the whole run's,
    # also for a compacted run resumed from its step-80 checkpoint. Under XLA,
    # the default (the subsets are the same code in a plain graph).
    def fit(name, compact, max_steps=120):
        patience = [40, 1000, 40, 40, 1000, 40]
        return _fit_six(tmp_path / name, patience, max_steps, jit=True, compact=compact)

    whole, _ = fit("whole", False)
    compacted, lines = fit("compacted", True)
    assert "step 40: 2 of 6 members still train; training them alone from here" in lines
    fit("resumed", True, max_steps=80)
    resumed, _ = fit("resumed", True)
    assert compacted.stop_step.tolist() == [40, -1, 40, 40, -1, 40]
    assert len(whole.variables) == len(compacted.variables) > 20
    for other in (compacted, resumed):
        for a, b in zip(whole.variables, other.variables):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for other in ("compacted", "resumed"):
        _assert_same_history(tmp_path / other, tmp_path / "whole")
    built = [{"step": 40, "members": [1, 4]}]
    assert json.loads((tmp_path / "compacted" / "subsets.json").read_text()) == built
    assert json.loads((tmp_path / "resumed" / "subsets.json").read_text()) == built
    assert not json.loads((tmp_path / "whole" / "subsets.json").read_text())


@pytest.mark.e2e
def test_a_resumed_compacted_fit_trains_the_subset_it_trained_before(tmp_path):
    # Members 0, 2 and 3 stop at step 20, member 5 at 40: the subset built at
    # 20 ({1, 4, 5}) trains on. Resumed from the step-40 checkpoint, the fit
    # trains that subset again, not one of the two still training, and forgets
    # the subset an interrupted run built after step 40.
    def fit(max_steps):
        return _fit_six(tmp_path, [20, 1000, 20, 20, 1000, 40], max_steps)

    pop, lines = fit(60)
    assert "step 20: 3 of 6 members still train; training them alone from here" in lines
    assert pop.stop_step.tolist() == [20, -1, 20, 20, -1, 40]
    subsets = tmp_path / "subsets.json"
    written = [{"step": 20, "members": [1, 4, 5]}]
    assert json.loads(subsets.read_text()) == written
    # An interrupted run's later subset, and a rewind to the step-40 checkpoint.
    subsets.write_text(json.dumps(written + [{"step": 50, "members": [1, 4]}]))
    ckpt = tf.train.CheckpointManager(tf.train.Checkpoint(), tmp_path / "ckpt", 3)
    ckpt_40 = [c for c in ckpt.checkpoints if c.endswith("-40")]
    assert ckpt_40
    with open(tmp_path / "ckpt" / "checkpoint", "w") as f:
        f.write(f'model_checkpoint_path: "{os.path.basename(ckpt_40[0])}"\n')
    _, lines = fit(80)
    assert (
        "step 40: training the 3 members of the subset built at step 20 alone, as before"
        in lines
    )
    assert json.loads(subsets.read_text()) == written
