"""fit_population (and lowtf.fit of a Population): lock, run identity, NaN, signals, outputs."""

import json
import os
import re
import shutil
import signal

import _fixtures  # tests/_fixtures.py; pytest puts tests/ on sys.path
import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf.population import Population, fit_population

(X, Y), _ = _fixtures.noisy_split(300, 0, 5, seed=7, weights=(1.0, -1.0, 0.5))
PERM = np.random.RandomState(0).permutation(len(X))
TRAIN = [PERM[:200], PERM[50:250], PERM[100:]]
VAL = [PERM[200:], PERM[:50], PERM[:100]]
# Member 0 never improves after step 0 (min_delta huge): patience 10 would stop
# it at step 10, start_from_step 30 holds it until then.
SCHEDULE = dict(max_steps=40, eval_every=10, checkpoint_every=20, start_from_step=30)


def _population(**kwargs):
    settings = {
        **dict(
            seeds=[3, 11, 4],
            l2=[1e-3, 0.0, 1e-2],
            dropout=[0.3, 0.0, 0.1],
            patience=[10, 1000, 1000],
            min_delta=[1e9, 0.0, 0.0],
            model=(8,),
            batch_size=32,
            jit_compile=False,  # these tests are about the loop: no XLA compiles
        ),
        **kwargs,
    }
    return Population(
        X,
        Y,
        train_rows=TRAIN,
        val_rows=VAL,
        optimizer=tf.keras.optimizers.Adam(settings.pop("lr", 1e-2)),
        **settings,
    )


def _fit(model_dir, population=None, log=None, **schedule):
    lines = []
    population = population or _population()
    result = fit_population(
        population,
        model_dir=str(model_dir),
        **{**SCHEDULE, **schedule},
        log=log or lines.append,
    )
    return population, result, lines


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One uninterrupted fit, read (never changed) by the tests below."""
    model_dir = tmp_path_factory.mktemp("population")
    pop, result, lines = _fit(model_dir)
    return pop, result, lines, model_dir


def _checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if not key.startswith("_CHECKPOINTABLE")
    }


def test_start_from_step_holds_a_member_and_the_outputs_are_per_member(fitted):
    pop, result, lines, model_dir = fitted
    reasons = [(m.stop_reason, m.stop_step) for m in result.members]
    assert reasons == [("patience", 30), ("max_steps", 40), ("max_steps", 40)]
    assert pop.best_step[0] == 0 and pop.start_from_step == 30
    assert lines[-1] == "population stopped at step 40: 1 patience, 2 max_steps"
    # The progress line: members training, the leader, the speed after compiling.
    progress = [line for line in lines if line.startswith("step ")]
    assert progress[0].endswith("  - steps/s  ETA ?")
    assert re.fullmatch(
        r"step 20/40  3/3 members training  best val_cross_entropy \S+ "
        r"\(member \d @ \d+\)  [\d,]+ steps/s  ETA 0:00:\d\d",
        progress[2],
    ), progress[2]
    # history.csv: a row per member per evaluation while it trains.
    history = lowtf.read_history(str(model_dir / "history.csv"))
    assert [(r["member"], r["step"]) for r in history if r["member"] == 0] == [
        (0, s) for s in (0, 10, 20, 30)
    ]
    assert len(history) == 4 + 5 + 5
    assert [r["val_cross_entropy"] for r in history if r["member"] == 2] == [
        r["val_cross_entropy"] for r in result.members[2].history
    ]
    # TensorBoard: the single run's tags, per member, under train and validation.
    tags = {}
    for run in ("train", "validation"):
        for path in tf.io.gfile.glob(str(model_dir / "tensorboard" / run / "*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    tags.setdefault((run, value.tag), []).append(event.step)
    assert tags[("validation", "member_2/cross_entropy")] == [0, 10, 20, 30, 40]
    assert tags[("validation", "member_0/cross_entropy")] == [0, 10, 20, 30]
    assert tags[("train", "member_1/learning_rate")] == [0, 10, 20, 30, 40]
    # run.json: the population's identity, member by member, and its settings.
    record = json.loads((model_dir / "run.json").read_text())
    assert record["identity"]["kind"] == "population"
    assert [m["seed"] for m in record["identity"]["members"]] == [3, 11, 4]
    assert record["settings"]["start_from_step"] == 30
    assert record["settings"]["patience"] == [10, 1000, 1000]
    assert not (model_dir / "lock").exists()


def test_a_resume_with_other_members_or_a_busy_directory_is_refused(fitted):
    _, _, _, model_dir = fitted
    before = _fixtures.tree_digest(model_dir)
    other = _population(seeds=[3, 12, 4], l2=[1e-3, 0.0, 0.5])
    with pytest.raises(ValueError) as info:
        _fit(model_dir, other)
    message = str(info.value)
    assert "belongs to another population" in message and "\n" not in message
    assert "member 1 seed: recorded 11, now 12" in message
    # Layer by layer: its hidden and output layers carry the L2 scale.
    for layer in (0, 2):
        assert re.search(
            rf"member 2 model layer {layer} Dense: kernel_regularizer recorded "
            r'"Regularizer\(l1=0\.0, l2=0\.01\)", now "Regularizer\(l1=0\.0, l2=0\.5\)"',
            message,
        )
    assert "member 0" not in message
    # Another process holds the lock (a host that cannot be checked from here).
    (model_dir / "lock").write_text(json.dumps({"host": "node7", "pid": 4242}))
    try:
        with pytest.raises(
            ValueError, match=r"in use by another run \(pid 4242 on node7"
        ):
            _fit(model_dir, _population())
    finally:
        (model_dir / "lock").unlink()
    assert _fixtures.tree_digest(model_dir) == before


def test_a_corrupt_latest_checkpoint_is_refused_then_skipped_as_a_single_runs_is(
    tmp_path, fitted
):
    pop, result, _, fitted_dir = fitted
    model_dir = tmp_path / "run"
    shutil.copytree(fitted_dir, model_dir)
    ckpt = model_dir / "ckpt"
    # A crash of the file system: ckpt-40's data is cut short.
    (data,) = ckpt.glob("ckpt-40.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    before = _fixtures.tree_digest(model_dir)
    with pytest.raises(ValueError) as info:
        _fit(model_dir)
    assert re.search(
        r"latest checkpoint \(.*ckpt-40\) that cannot be resumed \(it cannot be "
        r"read: .*An older checkpoint, .*ckpt-20, is readable",
        str(info.value),
    )
    assert "\n" not in str(info.value)
    assert _fixtures.tree_digest(model_dir) == before
    # Without the state file: the newest readable checkpoint on disk, logged.
    os.remove(ckpt / "checkpoint")
    clock = [
        v for k, v in _checkpoint_values(str(ckpt / "ckpt-20")).items() if "clock" in k
    ]
    resumed, again, lines = _fit(model_dir)
    assert (
        f"{ckpt / 'checkpoint'} is missing: resuming from the newest readable "
        f"checkpoint on disk, {ckpt / 'ckpt-20'} ({ckpt / 'ckpt-40'} cannot be read)"
    ) in lines
    assert [(m.stop_reason, m.stop_step) for m in again.members] == [
        (m.stop_reason, m.stop_step) for m in result.members
    ]
    for a, b in zip(resumed.variables, pop.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    history = (model_dir / "history.csv").read_text()
    assert history == (fitted_dir / "history.csv").read_text()
    # The wall clock goes on from the checkpoint's (sessions before included).
    assert len(clock) == 1 and 0 < clock[0] < again.wall_seconds
    assert tf.train.latest_checkpoint(str(ckpt)).endswith("ckpt-40")


def test_one_kind_of_run_per_directory(tmp_path, fitted):
    _, _, _, population_dir = fitted
    (x, y), validation = _fixtures.noisy_split(100, 50, 5, seed=1)
    single_dir = tmp_path / "single"

    def single(model_dir):
        return lowtf.fit(
            lowtf.mlp((8,), seed=1),
            tf.keras.optimizers.Adam(1e-2),
            train=(x, y),
            validation=validation,
            model_dir=str(model_dir),
            config=lowtf.TrainConfig(batch_size=32, max_steps=10, eval_every=10),
            step_options=lowtf.StepOptions(jit_compile=False),
            log=lambda line: None,
        )

    single(single_dir)
    for gone in ("nothing", "ckpt"):  # a single run's directory, then without ckpt/
        shutil.rmtree(single_dir / gone, ignore_errors=True)
        before = _fixtures.tree_digest(single_dir)
        for fit in (
            lambda: _fit(single_dir),
            lambda: lowtf.fit(_population(), model_dir=str(single_dir)),
        ):
            with pytest.raises(
                ValueError, match="holds the run of a single model"
            ) as info:
                fit()
            assert "\n" not in str(info.value)
        assert _fixtures.tree_digest(single_dir) == before
    before = _fixtures.tree_digest(population_dir)
    with pytest.raises(ValueError, match="holds the run of a population") as info:
        single(population_dir)
    assert "\n" not in str(info.value)
    assert _fixtures.tree_digest(population_dir) == before


def test_a_diverged_member_stops_with_its_best_weights_and_the_others_go_on(
    tmp_path, fitted
):
    clean, _, _, _ = fitted
    pop = _population()

    def poison(line):
        lines.append(line)
        if line.startswith("step 10/"):  # member 1's weights go NaN after step 10
            kernel = pop.variables[0]  # a weight, [K, ...]
            member = tf.reshape(tf.range(3) == 1, [3] + [1] * (kernel.shape.rank - 1))
            kernel.assign(tf.where(member, np.nan, kernel))

    lines = []
    _, result, _ = _fit(tmp_path, pop, log=poison)
    assert [(m.stop_reason, m.stop_step) for m in result.members] == [
        ("patience", 30),
        ("diverged", 20),
        ("max_steps", 40),
    ]
    assert pop.diverged.tolist() == [False, True, False]
    assert (
        "member 1: non-finite loss or weights in steps 11-20: stopped as diverged, "
        "back to its best weights (step 10); the others go on"
    ) in lines
    assert [r["step"] for r in result.members[1].history] == [0, 10]
    # It holds its best weights (those of step 10), bit for bit.
    latest, best = (pop.member(1, weights=w).variables for w in ("latest", "best"))
    assert len(latest) == len(best) == 4  # two kernels, two biases
    for a, b in zip(latest, best):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The others trained as if it had not diverged (members do not interact).
    for k in (0, 2):
        ours, theirs = (p.member(k, weights="latest").variables for p in (pop, clean))
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Nothing non-finite was ever saved, and the flag is checkpointed.
    saved = [str(tmp_path / "ckpt" / f"ckpt-{s}") for s in (0, 20, 40)]
    saved.append(lowtf.population.read_best_weights(str(tmp_path / "best"))["prefix"])
    for path in saved:
        for key, value in _checkpoint_values(path).items():
            if np.issubdtype(value.dtype, np.floating):
                assert np.isfinite(value).all(), (path, key)
    flags = [v for k, v in _checkpoint_values(saved[2]).items() if "diverged" in k]
    assert [f.tolist() for f in flags] == [[False, True, False]]
    resumed = _population()
    _, again, _ = _fit(tmp_path, resumed)
    assert again.members[1].stop_reason == "diverged"
    assert resumed.diverged.tolist() == [False, True, False]


def test_sigterm_saves_and_ends_at_the_next_call_boundary(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("step 10/"):
            os.kill(os.getpid(), signal.SIGTERM)

    _, result, _ = _fit(tmp_path, log=log)
    assert result.last_step == 10 and result.interrupted == "SIGTERM"
    assert [m.stop_reason for m in result.members] == ["interrupted"] * 3
    assert "SIGTERM received at step 10: stopping" in lines
    assert signal.getsignal(signal.SIGTERM) is before
    # The latest state was saved: a rerun resumes at step 10.
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-10")


def test_lowtf_fit_trains_a_population_with_the_cadence_of_its_config(tmp_path):
    # A baseline no value beats: the patience runs from step 0 although every
    # member improves, so all stop at step 10.
    pop = _population(patience=10, min_delta=0.0)
    config = lowtf.TrainConfig(max_steps=40, eval_every=10, baseline=1e-6)
    result = lowtf.fit(pop, model_dir=str(tmp_path), config=config, log=lambda s: None)
    assert isinstance(result, lowtf.population.PopulationResult)
    assert result.interrupted is None
    assert [(m.stop_reason, m.stop_step, m.best_step) for m in result.members] == [
        ("patience", 10, 10)
    ] * 3
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-10")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(config=lowtf.TrainConfig(patience=50)),
            r"`config.patience` \(50\) does not apply",
        ),
        (dict(config=lowtf.TrainConfig(seed=3)), r"`config.seed` \(3\) does not apply"),
        (
            dict(optimizer=tf.keras.optimizers.SGD()),
            r"`optimizer` was given, but it does not apply",
        ),
        (dict(train=(X, Y)), r"`train` was given, but it does not apply"),
    ],
)
def test_lowtf_fit_refuses_what_a_population_has_of_its_own(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        lowtf.fit(_population(), model_dir=str(tmp_path / "run"), **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_sigkill_and_resume_end_as_an_uninterrupted_run_with_a_diverged_member(tmp_path):
    import subprocess
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    import _population_worker as worker

    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight, result = worker.fit(str(straight_dir), log=lambda line: None)
    # Member 3 (learning rate 1e20) diverges; the others train on.
    assert [m.stop_reason for m in result.members][3] == "diverged"
    assert [m.stop_reason for m in result.members][:3] != ["diverged"] * 3
    process = subprocess.Popen(
        [sys.executable, worker.__file__, str(killed_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:  # killed between checkpoints 30 and 60
        if line.startswith("step 50/"):
            process.kill()
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed, again = worker.fit(str(killed_dir), log=lambda line: None)
    assert [m.stop_reason for m in again.members] == [m.stop_reason for m in result.members]
    assert len(resumed.variables) == len(straight.variables) > 10
    for a, b in zip(resumed.variables, straight.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (killed_dir / "history.csv").read_text() == (straight_dir / "history.csv").read_text()
