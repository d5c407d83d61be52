"""lowtf.ensemble: averaged probabilities as a model, greedy selection, calibration."""

import os

import numpy as np
import pytest
import tensorflow as tf
from _fixtures import noisy_split

import lowtf
from lowtf import ensemble

(X, Y), _ = noisy_split(64, 0, 6, seed=2)


def _built(model, x=X):
    model(x[:1])
    return model


def _softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_an_ensemble_averages_its_members_probabilities_with_weights():
    members = [
        _built(lowtf.mlp("tiny", num_classes=3, seed=0)),
        _built(lowtf.mlp("small", num_classes=3, seed=1)),  # another architecture
        _built(lowtf.mlp("tiny", num_classes=3, seed=2)),
    ]
    weights = [0.5, 0.25, 0.25]
    model = lowtf.Ensemble(members, weights=[2, 1, 1])
    assert [sorted(g) for g in model.order] == [[0, 2], [1]]  # stacked by architecture
    singles = np.stack([_softmax(m(X).numpy()) for m in members])
    expected = np.tensordot(weights, singles, axes=1)
    np.testing.assert_allclose(model.probabilities(X).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(model.member_probabilities(X).numpy(), singles, atol=1e-6)
    variance = np.tensordot(weights, (singles - expected) ** 2, axes=1)
    np.testing.assert_allclose(model.disagreement(X).numpy(), variance, atol=1e-6)
    # Its logits are those of the mean: an Evaluator scores the ensemble itself.
    y = np.arange(len(X)) % 3
    scores = lowtf.Evaluator(model, jit_compile=False)(X, y)
    picked = expected[np.arange(len(y)), y]
    assert scores["cross_entropy"] == pytest.approx(-np.log(picked).mean(), rel=1e-5)
    assert scores["accuracy"] == pytest.approx((expected.argmax(1) == y).mean())


def test_a_sigmoid_ensemble_and_refusals():
    members = [_built(lowtf.mlp("tiny", seed=s)) for s in (0, 1)]
    model = lowtf.Ensemble(members)
    p = np.mean([1 / (1 + np.exp(-m(X).numpy())) for m in members], axis=0)
    np.testing.assert_allclose(model.probabilities(X).numpy(), p, atol=1e-6)
    scores = lowtf.Evaluator(model, jit_compile=True)(X, Y)
    expected = -np.mean(np.where(Y[:, None] == 1, np.log(p), np.log1p(-p)))
    assert scores["cross_entropy"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="not built"):
        lowtf.Ensemble([lowtf.mlp("tiny")])
    with pytest.raises(ValueError, match="different numbers of logits"):
        lowtf.Ensemble([members[0], _built(lowtf.mlp("tiny", num_classes=3))])
    with pytest.raises(ValueError, match="`weights`"):
        lowtf.Ensemble(members, weights=[1.0, -1.0])


def test_greedy_selection_picks_on_validation_with_replacement():
    y = np.array([0, 1, 1, 0])
    good = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    bad = good[:, ::-1]
    sharp = np.array([[0.99, 0.01], [0.01, 0.99], [0.7, 0.3], [0.55, 0.45]])
    weights = ensemble.greedy_selection(np.stack([bad, good, sharp]), y, max_picks=5)
    # Four picks of `good`, one of `sharp` (a mix), never `bad`.
    np.testing.assert_allclose(weights, [0.0, 0.8, 0.2])
    mixed = np.tensordot(weights, np.stack([bad, good, sharp]), axes=1)
    # The chosen mixture beats every single candidate on validation.
    assert ensemble.cross_entropy(mixed, y) < min(
        ensemble.cross_entropy(c, y) for c in (good, sharp)
    )


def test_selection_over_out_of_fold_predictions():
    # 2-fold CV of 6 rows: fold 0 holds out rows 0, 2, 4 and fold 1 rows 1, 3,
    # 5. Per configuration, each fold model's class-1 probability on the rows
    # its fold held out (it never trained on them).
    y = np.array([0, 1, 0, 1, 0, 1])
    held_out = [np.array([0, 2, 4]), np.array([1, 3, 5])]

    def probabilities(p1):
        return np.stack([1 - np.asarray(p1), np.asarray(p1)], -1)

    folds = {
        "steady": ([0.3, 0.3, 0.3], [0.7, 0.7, 0.7]),
        "wrong on rows 4, 5": ([0.1, 0.1, 0.6], [0.9, 0.9, 0.4]),
        "wrong on rows 0, 1": ([0.6, 0.1, 0.1], [0.4, 0.9, 0.9]),
    }
    library = np.stack([
        ensemble.out_of_fold([probabilities(f0), probabilities(f1)], held_out, 6)
        for f0, f1 in folds.values()
    ])  # fmt: skip
    # Every row once, from the fold that held it out.
    np.testing.assert_allclose(
        library[1, :, 1], [0.1, 0.9, 0.1, 0.9, 0.6, 0.4]
    )
    alone = [ensemble.cross_entropy(p, y) for p in library]
    np.testing.assert_allclose(alone, [0.356675, 0.375671, 0.375671], atol=1e-6)
    # The first pick is the best configuration alone; then the two that err
    # on different rows, twice each: 5 of at most 6 picks.
    np.testing.assert_array_equal(ensemble.greedy_picks(library, y, 1), [1, 0, 0])
    np.testing.assert_array_equal(ensemble.greedy_picks(library, y, 6), [1, 2, 2])
    weights = ensemble.greedy_selection(library, y, 6)
    np.testing.assert_allclose(weights, [0.2, 0.4, 0.4])
    mixed = ensemble.cross_entropy(np.tensordot(weights, library, axes=1), y)
    assert mixed == pytest.approx(0.327285, abs=1e-6) and mixed < min(alone)
    # A row held out twice, or by no fold, is no k-fold.
    for rows in ([np.array([0, 2, 4]), np.array([1, 3, 4])], [np.array([0, 2, 4])]):
        with pytest.raises(ValueError, match="exactly once"):
            ensemble.out_of_fold([probabilities([0.5] * 3)] * len(rows), rows, 6)


def test_calibration_error_bins_confidence():
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # Bins of width 1/15: 0.95 (two, half right), 0.6 (right), 0.7 (right).
    expected = 0.5 * abs(0.5 - 0.95) + 0.25 * abs(1 - 0.6) + 0.25 * abs(1 - 0.7)
    assert ensemble.calibration_error(p, y) == pytest.approx(expected)
    sigmoid = np.array([[0.95], [0.2]])
    assert ensemble.calibration_error(sigmoid, np.array([1, 0])) == pytest.approx(
        0.5 * 0.05 + 0.5 * 0.2
    )


def test_an_exported_ensemble_serves_the_mean_and_the_disagreement(tmp_path):
    from lowtf.export import saved_model

    members = [_built(lowtf.mlp("tiny", num_classes=3, seed=s)) for s in range(3)]
    mean, std = X.mean(0), X.std(0)
    path = saved_model.save(
        lowtf.Ensemble(members), str(tmp_path), feature_shape=(6,), mean=mean, std=std
    )
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(features=tf.constant(X * std + mean))
    singles = np.stack([_softmax(m(X).numpy()) for m in members])
    np.testing.assert_allclose(out["probabilities"].numpy(), singles.mean(0), atol=1e-6)
    np.testing.assert_allclose(out["disagreement"].numpy(), singles.var(0), atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), singles.mean(0).argmax(1))


@pytest.mark.e2e
def test_a_deep_ensemble_of_digits_beats_its_members_and_exports_as_one_model(tmp_path):
    import json

    from lowtf.ensemble import job as ensemble_job
    from lowtf.export import saved_model
    from lowtf.export import spec as spec_lib

    model_dir = str(tmp_path / "run")
    config = lowtf.train.JobConfig(ensemble=5, max_steps=300, model_dir=model_dir)
    result = lowtf.train.run_job(config, log=lambda line: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    members, together = summary["members"], summary["ensemble"]
    assert len(members) == 5 and together["seeds"] == [0, 1, 2, 3, 4]
    mean = lambda name: np.mean([m[name] for m in members])  # noqa: E731
    # Averaged probabilities: accuracy at least the members' mean, and a
    # cross-entropy at most their mean (Jensen), on both splits.
    for split in ("validation", "test"):
        assert together[f"{split}_accuracy"] >= mean(f"{split}_accuracy")
        assert together[f"{split}_cross_entropy"] <= mean(f"{split}_cross_entropy")
        assert 0 <= together[f"{split}_calibration_error"] < 0.1
    assert result.test_accuracy == together["test_accuracy"]
    # The export scores all 1,797 digits (loaded here: that an export loads
    # where lowtf is never imported is test_export's, for any export).
    path = saved_model.export(model_dir, str(tmp_path / "export"))
    digits = np.loadtxt(
        os.path.join(os.path.dirname(lowtf.__file__), "data", "digits.csv.gz"),
        delimiter=",",
    )
    x, y = digits[:, :-1].astype(np.float32), digits[:, -1].astype(np.int64)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(features=tf.constant(x))["probabilities"].numpy()
    assert (served.argmax(1) == y).mean() >= 0.98
    # They are the mean of the five members' probabilities, as each member's
    # export computes them (normalization, then softmax of its logits).
    spec, mu, sigma = spec_lib.read(model_dir)
    models = [spec_lib.rebuild({**spec, "seed": s}) for s in range(5)]
    for m in models:
        m(tf.zeros([1, 64]))
    ensemble_job.load_members(model_dir, models)
    normalized = (x - mu) / sigma
    singles = np.stack([_softmax(m(normalized).numpy()) for m in models])
    np.testing.assert_allclose(served, singles.mean(0), atol=1e-6)
