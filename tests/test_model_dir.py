"""A model directory belongs to one run: faults that would mix or lose runs.

Each test reproduces one class of fault through ``lowtf.fit`` (bin/train runs
the same call; its subprocess tests are in test_bin_train.py) and checks that
the directory's files are left byte for byte as they were.
"""

import json
import os
import shutil

import _fixtures
import pytest
import tensorflow as tf

import lowtf

GRAPH = lowtf.StepOptions(jit_compile=False)
CONFIG = lowtf.TrainConfig(batch_size=40, max_steps=40, eval_every=20, checkpoint_every=20)


def _data(seed=0):
    return _fixtures.noisy_split(200, 100, 6, seed=seed)


def _fit(model_dir, *, config=CONFIG, model=None, optimizer=None, data=None, options=GRAPH):
    (train, validation), lines = data or _data(), []
    result = lowtf.fit(
        model or lowtf.mlp([16], seed=1),
        optimizer or tf.keras.optimizers.Adam(1e-2),
        train=train,
        validation=validation,
        model_dir=str(model_dir),
        config=config,
        step_options=options,
        log=lines.append,
    )
    return result, lines


@pytest.fixture(scope="module")
def fitted_once(tmp_path_factory):
    """A directory as ``_fit`` leaves it; tests start from a copy (the paths in
    it are relative), one fit for all of them."""
    model_dir = tmp_path_factory.mktemp("fitted")
    _fit(model_dir)
    return model_dir


@pytest.mark.e2e
def test_a_missing_state_file_resumes_from_the_newest_readable_checkpoint(tmp_path, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    os.remove(tmp_path / "ckpt" / "checkpoint")
    result, lines = _fit(tmp_path, config=lowtf.TrainConfig(
        batch_size=40, max_steps=60, eval_every=20, checkpoint_every=20))
    assert any("ckpt/checkpoint is missing: resuming from the newest readable "
               "checkpoint on disk" in line and line.endswith("ckpt-40") for line in lines)
    assert [row["step"] for row in result.history] == [0, 20, 40, 60]


@pytest.mark.e2e
def test_traces_without_a_checkpoint_are_refused_and_the_best_snapshot_kept(tmp_path, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "ckpt")
    before = _fixtures.tree_digest(tmp_path)
    with pytest.raises(ValueError, match=r"holds best, history.csv of an earlier run but "
                       r"no checkpoint to resume from"):
        _fit(tmp_path)
    assert _fixtures.tree_digest(tmp_path) == before


@pytest.mark.e2e
def test_a_resume_with_other_settings_is_refused_setting_by_setting(tmp_path, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    before = _fixtures.tree_digest(tmp_path)
    cases = [
        (dict(model=lowtf.mlp([16], activation="relu", seed=1)), "elu.*relu"),
        (dict(model=lowtf.mlp([16], dropout=0.2, seed=1)), r"Dropout \{\"rate\": 0.2\}"),
        (dict(options=lowtf.StepOptions(jit_compile=False, seed=3)), "step_seed: recorded 0, now 3"),
        (dict(config=lowtf.TrainConfig(batch_size=20, max_steps=40, eval_every=20)),
         "batch_size: recorded 40, now 20"),
        (dict(data=_data(seed=1)), "train_data: recorded '[0-9a-f]+', now '[0-9a-f]+'"),
        (dict(optimizer=tf.keras.optimizers.Adam(1e-2, beta_1=0.8)), "optimizer: recorded"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match="belongs to another run.*" + message):
            _fit(tmp_path, **kwargs)
    assert _fixtures.tree_digest(tmp_path) == before


@pytest.mark.e2e
def test_the_learning_rate_given_on_resume_is_the_one_that_runs_and_is_recorded(tmp_path, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    optimizer = tf.keras.optimizers.Adam(5e-4)
    config = lowtf.TrainConfig(batch_size=40, max_steps=60, eval_every=20, checkpoint_every=20)
    result, lines = _fit(tmp_path, config=config, optimizer=optimizer)
    assert "changed on resume: learning_rate 0.01 -> 0.0005" in lines
    assert "changed on resume: max_steps 40 -> 60" in lines
    # The rows after the resume ran at the new rate (the optimizer itself
    # ends holding the best snapshot's state, whose rate may be the old one).
    assert [row["learning_rate"] for row in result.history] == pytest.approx(
        [1e-2, 1e-2, 1e-2, 5e-4])
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["settings"]["learning_rate"] == pytest.approx(5e-4)
    assert record["resumes"][-1]["step"] == 40


@pytest.mark.e2e
def test_a_second_run_on_a_busy_directory_is_refused_naming_the_holder(tmp_path, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    with lowtf.train.rundir.RunLock(str(tmp_path)):
        (tmp_path / "lock").write_text(json.dumps({"host": "node7", "pid": 4242}))
        before = _fixtures.tree_digest(tmp_path)
        with pytest.raises(ValueError, match=r"in use by another run \(pid 4242 on node7"):
            _fit(tmp_path)
        assert _fixtures.tree_digest(tmp_path) == before
        (tmp_path / "lock").unlink()


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
@pytest.mark.e2e
def test_a_damaged_latest_checkpoint_is_refused_at_start_naming_an_older_one(tmp_path, damage, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    data = next((tmp_path / "ckpt").glob("ckpt-40.data-*"))
    content = data.read_bytes()
    data.write_bytes(content[: len(content) // 2] if damage == "truncated" else bytes(len(content)))
    before = _fixtures.tree_digest(tmp_path)
    with pytest.raises(ValueError, match=r"ckpt-40\) that cannot be resumed .* An older "
                       r"checkpoint, .*ckpt-20, is readable"):
        _fit(tmp_path)
    assert _fixtures.tree_digest(tmp_path) == before


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "is not a best-snapshot pointer"),
    ('{"prefix": 3}', "is not a best-snapshot pointer"),
    ("{trunc", "is not valid JSON"),
])
@pytest.mark.e2e
def test_a_best_json_of_the_wrong_shape_is_refused_at_start(tmp_path, text, message, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    (tmp_path / "best" / "best.json").write_text(text)
    before = _fixtures.tree_digest(tmp_path)
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path)
    assert _fixtures.tree_digest(tmp_path) == before


@pytest.mark.e2e
def test_a_truncated_best_snapshot_is_refused_at_start(tmp_path):
    result, _ = _fit(tmp_path)
    pointer = lowtf.train.best_checkpoint(str(tmp_path / "best"))
    data = next((tmp_path / "best").glob(os.path.basename(pointer["prefix"]) + ".data-*"))
    data.write_bytes(data.read_bytes()[:10])
    before = _fixtures.tree_digest(tmp_path)
    with pytest.raises(ValueError, match=r"the best snapshot .* cannot be read"):
        _fit(tmp_path)
    assert _fixtures.tree_digest(tmp_path) == before


@pytest.mark.e2e
def test_an_undecodable_or_foreign_history_is_refused_at_start(tmp_path, fitted_once):
    shutil.copytree(fitted_once, tmp_path, dirs_exist_ok=True)
    (tmp_path / "history.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"history.csv cannot be read \(UnicodeDecodeError\)"):
        _fit(tmp_path)
    (tmp_path / "history.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(ValueError, match="is not a lowtf history"):
        _fit(tmp_path)


@pytest.mark.parametrize("name", ["run[1]", "run*", "run?"])
def test_a_glob_pattern_in_model_dir_is_refused_before_training(tmp_path, name):
    with pytest.raises(ValueError, match="glob pattern"):
        _fit(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_a_failed_start_in_a_new_directory_leaves_nothing_behind(tmp_path):
    (train, validation) = _data()
    with pytest.raises(ValueError, match="exceeds"):
        _fit(tmp_path / "new", config=lowtf.TrainConfig(batch_size=400))
    assert not (tmp_path / "new").exists()


def test_a_failed_checkpoint_write_is_one_line_with_the_path_and_no_leftovers(tmp_path):
    from lowtf import _files

    prefix = str(tmp_path / "ckpt-20")
    (tmp_path / "ckpt-10.index").write_text("older")

    def write():
        (tmp_path / "ckpt-20_temp").mkdir()
        (tmp_path / "ckpt-20_temp" / "part-00000").write_text("half")
        (tmp_path / "ckpt-20.index").write_text("half")
        raise tf.errors.ResourceExhaustedError(
            None, None,
            "{{function_node __wrapped__SaveV2_dtypes_10_device_/job:localhost/replica:0"
            "/task:0/device:CPU:0}} " + prefix + "_temp/part-00000: No space left on "
            "device [Op:SaveV2]")

    with pytest.raises(OSError) as caught:
        _files.write_checkpoint(write, prefix)
    message = str(caught.value)
    assert message == (f"cannot write the checkpoint {prefix}: {prefix}_temp/part-00000: "
                       "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-10.index"]


def test_an_empty_hidden_list_is_refused_not_a_linear_model():
    with pytest.raises(ValueError, match="--hidden"):
        lowtf.train.JobConfig(hidden=())


def test_a_refusal_names_the_layers_added_or_changed_not_every_later_one():
    dense = 'Dense {"units": 8}'
    before = {"model": [dense, dense, 'Dense {"units": 2}'], "seed": 0}
    dropout = 'Dropout {"rate": 0.2}'
    now = {"model": [dense, dropout, dense, dropout, 'Dense {"units": 2}'], "seed": 0}
    assert lowtf.train.rundir.differences(before, now) == [
        f"model layer 1: recorded none, now {dropout}",
        f"model layer 3: recorded none, now {dropout}",
    ]
    wider = {"model": ['Dense {"units": 16}', dense, 'Dense {"units": 2}'], "seed": 1}
    assert lowtf.train.rundir.differences(before, wider) == [
        "model layer 0 Dense: units recorded 8, now 16",
        "seed: recorded 0, now 1",
    ]
