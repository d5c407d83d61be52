"""Tests of lowtf.sweep and bin/sweep: the grid and its populations, fold scores,
resume, selection on validation only, refused inputs, and one end-to-end
bin/sweep run whose member bin/train reproduces."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from _fixtures import QUICK_SWEEP, SWEEP_BIN, bin_train_in_process

import lowtf
from lowtf import sweep
from lowtf.job import JobConfig
from lowtf.sweep import ensemble as ensemble_lib
from lowtf.sweep import run
from lowtf.train import rundir

BIN, QUICK = SWEEP_BIN, QUICK_SWEEP


@pytest.fixture(scope="module")
def data():
    return lowtf.load_dataset("synthetic", train_size=120, validation_size=60)


def test_grid_expands_every_combination_grouped_by_population():
    config = sweep.SweepConfig(
        architectures=("tiny", "8x8"), l2=(0.0, 1e-3), batchnorm=(False, True),
        learning_rate=[1e-3, 3e-3], maxnorm=3.0,
    )  # fmt: skip
    assert config.swept_names() == ("architecture", "l2", "batchnorm", "learning_rate")
    points = config.points()
    assert len(points) == len({p.key for p in points}) == 16
    # Each configuration is the base job with its values: bin/train's run.
    point = sweep.Point.of(
        {"architecture": "8x8", "l2": 1e-3, "batchnorm": True, "learning_rate": 3e-3}
    )
    assert point in points
    assert config.job_config(point) == JobConfig(
        hidden=(8, 8), l2=1e-3, batchnorm=True, learning_rate=3e-3, maxnorm=3.0
    )
    # The architecture and batch norm change shapes: a population each; the
    # penalty and the learning rate are per member.
    groups = run.by_population(config, [(None, p) for p in points])
    assert len(groups) == 4 and all(len(g) == 4 for g in groups.values())
    assert {dict(key)["architecture"] for key in groups} == {"tiny", "8x8"}


def test_fold_score_is_mean_and_population_std():
    mean, std = sweep.fold_score([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(np.sqrt(((0.1**2) * 2) / 3))
    assert sweep.fold_score([0.25]) == (0.25, 0.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"l2": ()}, "--l2 is empty"),
        ({"dropout": (0.0, 1.5)}, r"flag --dropout=1.5: --dropout must be in \[0, 1\)"),
        ({"l1": (0.0, -1.0)}, r"flag --l1=-1.0: -1.0 is not a non-negative number"),
        ({"l2": (0.0, 0.0)}, r"--l2=0.0,0.0 repeats a value"),
        ({"architectures": ("huge",)}, "neither a model"),
        ({"architectures": ()}, "--model is empty"),
        ({"monitor": ("val_accuracy", "total_loss")}, "--monitor takes one value"),
        ({"strategy": "mirrored"}, "--strategy is not for bin/sweep"),
        ({"weight_decay": (0.0, 1e-4)}, "--weight_decay is the decoupled decay of AdamW"),
        ({"folds": 0}, "`folds`"),
    ],
)
def test_bad_lists_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        sweep.SweepConfig(**fields)


def test_more_folds_than_the_smallest_class_and_a_bad_storage_are_refused(
    tmp_path, data
):
    least = int(np.bincount(data.train[1]).min())
    config = sweep.SweepConfig(**QUICK, folds=least + 1, sweep_dir=str(tmp_path / "a"))
    with pytest.raises(
        ValueError, match=f"--folds \\({least + 1}\\) exceeds the {least}"
    ):
        sweep.run_sweep(config, data=data, log=lambda line: None)
    assert not (tmp_path / "a" / "study.db").exists()
    config = sweep.SweepConfig(
        **QUICK, storage="nosuch://x", sweep_dir=str(tmp_path / "b")
    )
    with pytest.raises(ValueError, match=r"--storage \(nosuch://x\) cannot be opened"):
        sweep.run_sweep(config, data=data, log=lambda line: None)


@pytest.mark.e2e
def test_resume_selection_on_validation_only_and_definition(tmp_path, data):
    config = sweep.SweepConfig(
        **QUICK, architectures=("tiny", "4"), l2=(0.0, 1e-2), folds=2,
        sweep_dir=str(tmp_path / "s"),
    )  # fmt: skip
    first = sweep.run_sweep(config, data=data, log=lambda line: None)
    assert first.trained == 4 and len(first.rows) == 4
    for row in first.rows:
        assert row["status"] == "ok" and row["folds"] == 2
    scores = [r["score_mean"] for r in first.rows]
    assert scores == sorted(scores)  # val_cross_entropy: best (lowest) first
    assert first.winner is first.rows[0]
    with open(tmp_path / "s" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["score_mean"]) for r in table] == pytest.approx(scores)
    assert [r["winner"] for r in table] == ["True", "False", "False", "False"]
    assert (tmp_path / "s" / "curves.png").stat().st_size > 0
    assert (tmp_path / "s" / "scores.png").stat().st_size > 0

    # The same command again: every trial is finished, nothing is retrained.
    again = sweep.run_sweep(config, data=data, log=lambda line: None)
    assert again.trained == 0
    assert [(r["key"], r["score_mean"]) for r in again.rows] == [
        (r["key"], r["score_mean"]) for r in first.rows
    ]

    # Test labels permuted (and test features scrambled): the same winner and
    # bit-for-bit the same scores, since selection never reads the test split.
    rs = np.random.RandomState(1)
    x_test, y_test = data.test
    shuffled = dataclasses.replace(
        data, test=(rs.permutation(x_test), rs.permutation(y_test))
    )
    other = sweep.run_sweep(
        dataclasses.replace(config, sweep_dir=str(tmp_path / "t")),
        data=shuffled,
        log=lambda line: None,
    )
    assert [(r["key"], r["score_mean"], r["score_std"]) for r in other.rows] == [
        (r["key"], r["score_mean"], r["score_std"]) for r in first.rows
    ]

    # Another definition on the same sweep_dir is refused, not mixed in.
    changed = dataclasses.replace(config, l2=(0.0, 1e-3))
    with pytest.raises(ValueError, match=r"holds another sweep \(l2: stored"):
        sweep.run_sweep(changed, data=data, log=lambda line: None)


@pytest.mark.e2e
def test_a_sweep_ensemble_is_chosen_on_out_of_fold_predictions_only(tmp_path, data):
    # Two architectures x two learning rates, 2-fold CV: each configuration's
    # candidate predictions are out of fold (every training row predicted by
    # the fold model that did not train on it).
    config = sweep.SweepConfig(
        **{**QUICK, "max_steps": 60}, architectures=("4", "16"),
        learning_rate=(1e-2, 3e-2), folds=2, ensemble=5, sweep_dir=str(tmp_path / "s"),
    )  # fmt: skip
    first = sweep.run_sweep(config, data=data, log=lambda line: None)
    chosen = first.ensemble
    with open(tmp_path / "s" / "ensemble.json") as f:
        assert json.load(f) == json.loads(json.dumps(chosen))
    assert chosen["candidates"] == 4 and 1 <= chosen["picks"] <= 5
    assert sum(m["weight"] for m in chosen["members"]) == pytest.approx(1.0)
    v = chosen["validation"]
    # Selection starts from the best configuration alone (here the winner:
    # its out-of-fold cross-entropy is its score, the folds being of equal
    # size) and keeps the best prefix of picks: never worse than it.
    assert v["best_member"]["key"] == first.winner["key"]
    assert v["winner"]["cross_entropy"] == pytest.approx(first.winner["score_mean"], abs=1e-6)
    assert v["ensemble"]["cross_entropy"] <= v["best_member"]["cross_entropy"]
    # The kept fold models reproduce the predictions selection read, each
    # fold fed its rows standardized as it was trained on them.
    shared = run._splits(config, data)
    per_fold = ensemble_lib.load(config, chosen, data, str(tmp_path / "s"))
    for (_, mean, std), (_, fold_mean, fold_std) in zip(per_fold, shared.scales):
        np.testing.assert_allclose(mean, fold_mean)
        np.testing.assert_allclose(std, fold_std)
    rows, n = ensemble_lib.scored_rows(shared)
    oof = lowtf.ensemble.out_of_fold(
        [e.probabilities(shared.x[val]).numpy() for (e, _, _), (_, val) in zip(per_fold, shared.folds)],
        rows, n,
    )  # fmt: skip
    assert lowtf.ensemble.cross_entropy(oof, data.train[1]) == pytest.approx(
        v["ensemble"]["cross_entropy"], abs=1e-6
    )
    # Exported as one SavedModel (two architectures, each fold's models with
    # its fold's standardization): on raw rows it serves the weighted mean
    # of the members' own probabilities, and what the sweep scored on test.
    path = ensemble_lib.export(str(tmp_path / "s"), str(tmp_path / "export"))
    assert path == str(tmp_path / "export" / "1")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    (x_test, y_test), folds = data.test, len(per_fold)
    raw = x_test * data.std + data.mean
    out = serve(features=tf.constant(raw))
    members, weights = [], []
    for member in chosen["members"]:
        # Each fold model alone, rebuilt from its spec and kept weights.
        spec = lowtf.models.ModelSpec.from_dict(member["spec"])
        models = [spec.build() for _ in range(folds)]
        for model in models:
            model(tf.zeros([1, *data.feature_shape]))
        kept = ensemble_lib.member_dir(str(tmp_path / "s"), member["key"])
        tf.train.Checkpoint(members=models).read(
            os.path.join(kept, "weights")
        ).assert_existing_objects_matched()
        for model, (_, mean, std) in zip(models, per_fold):
            z = model((raw - mean) / std, training=False)  # one logit: two columns
            members.append(tf.concat([tf.sigmoid(-z), tf.sigmoid(z)], -1).numpy())
            weights.append(member["weight"] / folds)
    members, weights = np.array(members), np.array(weights)
    assert len(weights) == 2 * len(chosen["members"])
    assert weights.sum() == pytest.approx(1)
    average = np.tensordot(weights, members, axes=1)
    served = out["probabilities"].numpy()
    np.testing.assert_allclose(served, average, rtol=0, atol=1e-6)
    variance = np.tensordot(weights, (members - average) ** 2, axes=1)
    np.testing.assert_allclose(out["disagreement"].numpy(), variance, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), served.argmax(1))
    tested = chosen["test"]["ensemble"]  # scored as p(class 1), one column
    assert lowtf.ensemble.accuracy(served[:, 1:], y_test) == tested["accuracy"]
    assert lowtf.ensemble.cross_entropy(served[:, 1:], y_test) == pytest.approx(
        tested["cross_entropy"], abs=1e-5
    )
    md = (tmp_path / "s" / "results.md").read_text()
    assert "## Ensemble: " in md and "out-of-fold predictions of 2 folds" in md
    for m in chosen["members"]:
        assert f"| {m['picks']} | {m['weight']:.3f} | {m['score_mean']:.4f} |" in md

    # Test labels flipped: the same members, weights and validation scores,
    # and the ensemble's test accuracy flips with them (it is scored on test).
    x_test, y_test = data.test
    poisoned = dataclasses.replace(data, test=(x_test, 1 - y_test))
    other = sweep.run_sweep(
        dataclasses.replace(config, sweep_dir=str(tmp_path / "t")), data=poisoned,
        log=lambda line: None,
    )  # fmt: skip
    assert other.ensemble["members"] == chosen["members"]
    assert other.ensemble["validation"] == chosen["validation"]
    assert other.ensemble["test"]["ensemble"]["accuracy"] == pytest.approx(
        1 - chosen["test"]["ensemble"]["accuracy"]
    )


def test_diverged_configuration_never_wins(tmp_path, data):
    # A learning rate of 1e6 with SGD sends every member to NaN or Inf.
    config = sweep.SweepConfig(
        **{**QUICK, "max_steps": 20}, optimizer="sgd", learning_rate=1e6,
        architectures=("4",), l2=(0.0,), sweep_dir=str(tmp_path / "d"),
    )  # fmt: skip
    result = sweep.run_sweep(config, data=data, log=lambda line: None)
    assert [r["status"] for r in result.rows] == ["diverged"]
    assert result.winner is None


@pytest.mark.e2e
def test_a_sweep_member_is_its_bin_train_run(tmp_path):
    # CNNs with and without batch norm (two populations), each of two
    # members (two augmentations, given by repeating --augment), all with
    # label smoothing, input noise and EMA: the sweep's score of a member is
    # the validation score of the bin/train command results.csv prints for
    # it, and the winner is retrained into --model_dir.
    sweep_dir, winner_dir = tmp_path / "sweep", tmp_path / "best"
    args = [
        "--model=cnn", "--train_size=120", "--batch_size=30", "--max_steps=20",
        "--eval_every=10", "--augment=translate:1,rotate:10", "--augment=none",
        "--learning_rate=3e-3", "--batchnorm=false,true", "--label_smoothing=0.1",
        "--input_noise=0.1", "--ema=0.5", f"--model_dir={winner_dir}",
        f"--sweep_dir={sweep_dir}", "--ensemble=3",
    ]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, BIN, *args], check=False, capture_output=True, text=True,
        env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(os.listdir(sweep_dir / "populations")) == 2
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {r["augment"] for r in rows} == {"translate:1,rotate:10", "none"}
    with open(winner_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["best_value"] == pytest.approx(float(rows[0]["score_mean"]), rel=1e-4)
    md = (sweep_dir / "results.md").read_text()
    assert f"    {rows[0]['command']}" in md and "## Score against each swept setting" in md
    # --ensemble=3: chosen on validation, then the test split scored once for
    # the retrained winner and the ensemble side by side (the winner's test
    # cross-entropy is its summary's).
    with open(sweep_dir / "ensemble.json") as f:
        chosen = json.load(f)
    assert 1 <= chosen["picks"] <= 3 and chosen["candidates"] == 4
    assert chosen["test"]["winner"]["cross_entropy"] == pytest.approx(
        summary["test_cross_entropy"], rel=1e-5
    )
    v = chosen["validation"]
    assert v["ensemble"]["cross_entropy"] <= v["best_member"]["cross_entropy"]
    assert v["winner"]["cross_entropy"] == pytest.approx(float(rows[0]["score_mean"]), rel=1e-5)
    (winner_line,) = [line for line in md.splitlines() if line.startswith("| winner |")]
    (ensemble_line,) = [line for line in md.splitlines() if line.startswith("| ensemble |")]
    assert f"| {chosen['test']['ensemble']['accuracy']:.4f} |" in ensemble_line
    assert len(winner_line.split("|")) == 9 and "|  |" not in winner_line
    # An augmented member with batch norm, trained alone by its command.
    row = next(r for r in rows[1:] if r["batchnorm"] == "True" and r["augment"] != "none")
    command = row["command"].split()
    assert command[0] == "bin/train" and "--batchnorm" in command
    alone = tmp_path / "alone"
    bin_train_in_process([*command[1:], f"--model_dir={alone}"])
    with open(alone / "summary.json") as f:
        best = json.load(f)["best_value"]
    assert best == pytest.approx(float(row["score_mean"]), rel=1e-4)


def test_a_point_claimed_twice_goes_to_the_lowest_trial_number(monkeypatch):
    # Two processes on one storage both find a point free (their ledgers
    # read before either claimed): the lower trial number keeps it, the other
    # process fails its trial as a duplicate and takes the next free point.
    import optuna

    from lowtf.sweep import study as study_lib

    config = sweep.SweepConfig(**QUICK, architectures=("4",), l2=(0.0, 1e-3, 1e-2))
    storage = optuna.storages.InMemoryStorage()
    first, second = (study_lib.open_study(config, storage) for _ in range(2))
    (kept,) = study_lib.claim(first, config, 1)
    real, stale = study_lib.ledger, []

    def ledger_read_before_the_first_claim(study):
        book = real(study)
        if not stale:
            stale.append(True)
            return {**book, "running": set()}
        return book

    monkeypatch.setattr(study_lib, "ledger", ledger_read_before_the_first_claim)
    (other,) = study_lib.claim(second, config, 1)
    points = config.points()
    assert [kept[1], other[1]] == points[:2]
    assert [kept[0].number, other[0].number] == [0, 2]
    trials = storage.get_all_trials(second.study_id)
    assert [(t.number, t.state.name, t.user_attrs.get("status")) for t in trials] == [
        (0, "RUNNING", None), (1, "FAIL", "duplicate"), (2, "RUNNING", None)
    ]  # fmt: skip
    assert trials[1].user_attrs["key"] == points[0].key
    # Each claim was stored whole: its key and owner with it.
    assert all(t.user_attrs["owner"] == rundir.this_process() for t in trials)


def test_a_rerun_after_a_kill_while_claiming_claims_at_once(monkeypatch):
    # A process killed while claiming (this process's pid, another start
    # time: a restart reused the pid) left 3 of 6 points claimed, and an
    # ownerless trial (one asked by TPE, or by an older lowtf, killed before
    # it got its owner). The rerun frees the 3 and claims all 6 without a
    # single wait, in one claim: one population, as a fresh run.
    import optuna

    from lowtf.sweep import study as study_lib

    config = sweep.SweepConfig(
        **QUICK, architectures=("4",), l2=(0.0, 1e-3), dropout=(0.0, 0.1, 0.2)
    )
    storage = optuna.storages.InMemoryStorage()
    dead = study_lib.open_study(config, storage)
    me = rundir.this_process()
    with monkeypatch.context() as m:
        m.setattr(rundir, "this_process", lambda: {**me, "start": 1})
        assert len(study_lib.claim(dead, config, 3)) == 3
    dead.study.ask()  # ownerless, young: never waited for
    monkeypatch.setattr(study_lib.time, "sleep", lambda s: pytest.fail("waited"))
    rerun = study_lib.open_study(config, storage)
    assert study_lib.requeue_interrupted(rerun, config) == 3
    # Claiming says how far it got (every 2 s; here at each claim).
    monkeypatch.setattr(study_lib, "CLAIM_LOG_SECONDS", 0.0)
    lines = []
    claimed = study_lib.claim(rerun, config, config.batch, log=lines.append)
    assert [p for _, p in claimed] == config.points()
    assert [line.split(" (")[0] for line in lines] == [
        f"claiming: {i}/6 configurations" for i in range(1, 7)
    ]
    book = study_lib.ledger(rerun)
    assert len(book["running"]) == 6 and book["finished"] == {}
    statuses = [t.user_attrs.get("status") for t in rerun.study.get_trials()]
    assert statuses.count("interrupted") == 3


@pytest.mark.e2e
def test_a_noretrain_rerun_keeps_the_winners_test_line(tmp_path, data):
    config = sweep.SweepConfig(
        **{**QUICK, "retrain": True}, architectures=("4",), l2=(0.0, 1e-2),
        sweep_dir=str(tmp_path / "s"),
    )  # fmt: skip
    first = sweep.run_sweep(config, data=data, log=lambda line: None)
    report = (tmp_path / "s" / "results.md").read_text()
    (test_line,) = [line for line in report.splitlines() if "test accuracy" in line]
    assert f"test accuracy {first.winner_result.test_accuracy:.4f}" in test_line
    again = sweep.run_sweep(
        dataclasses.replace(config, retrain=False), data=data, log=lambda line: None
    )
    assert again.trained == 0 and again.winner_result is None
    assert (tmp_path / "s" / "results.md").read_text() == report
    # Another winner's retraining (its flags differ) is not this one's.
    flags = tmp_path / "s" / "winner" / "flags.txt"
    flags.write_text(flags.read_text() + "--seed=7\n")
    sweep.run_sweep(dataclasses.replace(config, retrain=False), data=data,
                    log=lambda line: None)  # fmt: skip
    assert "test accuracy" not in (tmp_path / "s" / "results.md").read_text()
