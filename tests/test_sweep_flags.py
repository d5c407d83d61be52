"""Tests of the one flag definition of bin/train and bin/sweep (lowtf.job.flags):
every bin/train flag means the same to bin/sweep, lists and repeats, the
settings a sweep takes once or refuses, a bin/train command line as a sweep
of one configuration, and the same exit status for the same bad value."""

import ast
import dataclasses
import os
import subprocess
import sys

import pytest
from _fixtures import SWEEP_BIN
from absl import flags

import lowtf
from lowtf import sweep
from lowtf.job import JobConfig
from lowtf.job import flags as job_flags
from lowtf.job.flags import BY_NAME, FIXED, REFUSED

TRAIN_BIN = os.path.join(os.path.dirname(SWEEP_BIN), "train")
SWEEP_OWN = ("search", "trials", "folds", "sweep_dir", "storage", "claim", "retrain")
# Per bin/train flag, a command line that sets it off its default (with what
# it needs beside it). A flag added to bin/train must be added here, and so
# is checked against bin/sweep.
SAMPLES = {
    "dataset": ["--dataset=synthetic"],
    "data_path": ["--dataset=csv", "--data_path=rows.csv"],
    "label_column": ["--dataset=csv", "--data_path=rows.csv", "--label_column=y"],
    "train_size": ["--train_size=300"],
    "validation_size": ["--validation_size=200"],
    "data_seed": ["--dataset=synthetic", "--data_seed=3"],
    "stream": ["--dataset=higgs", "--data_path=HIGGS.csv.gz", "--stream"],
    "shuffle_buffer": ["--dataset=tfrecord", "--data_path=shards", "--shuffle_buffer=500"],
    "stats_rows": ["--dataset=tfrecord", "--data_path=shards", "--stats_rows=5000"],
    "model": ["--model=cnn"],
    "hidden": ["--hidden=512,512,512"],
    "activation": ["--activation=relu"],
    "dropout": ["--dropout=0.3"],
    "l1": ["--l1=1e-5"],
    "l2": ["--l2=1e-4"],
    "maxnorm": ["--maxnorm=3"],
    "batchnorm": ["--batchnorm"],
    "input_noise": ["--input_noise=0.1"],
    "hidden_noise": ["--hidden_noise=0.2"],
    "augment": ["--augment=translate:1,rotate:10"],
    "optimizer": ["--optimizer=sgd"],
    "learning_rate": ["--learning_rate=0.003"],
    "lr_decay_steps": ["--lr_decay_steps=500"],
    "weight_decay": ["--optimizer=adamw", "--weight_decay=1e-4"],
    "label_smoothing": ["--label_smoothing=0.1"],
    "mixup": ["--mixup=0.2"],
    "cutmix": ["--cutmix=1"],
    "ema": ["--ema=0.99"],
    "swa_from": ["--swa_from=500"],
    "batch_size": ["--batch_size=64"],
    "max_steps": ["--max_steps=1500"],
    "eval_every": ["--eval_every=50"],
    "patience": ["--patience=200"],
    "min_delta": ["--min_delta=0.001"],
    "monitor": ["--monitor=val_accuracy"],
    "warmup": ["--warmup=100"],
    "steps_per_call": ["--steps_per_call=50"],
    "checkpoint_every": ["--checkpoint_every=500"],
    "xla": ["--noxla"],
    "seed": ["--seed=7"],
    "strategy": ["--strategy=mirrored"],
    "collective_timeout": ["--strategy=multi_worker", "--collective_timeout=30"],
    "startup_timeout": ["--strategy=multi_worker", "--startup_timeout=60"],
    "model_dir": ["--model_dir=runs/x"],
    "export_dir": ["--export_dir=exports/x"],
    "init_from": ["--init_from=runs/pre"],
    "freeze": ["--init_from=runs/pre", "--freeze=2"],
    "unfreeze_at": ["--init_from=runs/pre", "--freeze=2", "--unfreeze_at=500"],
    "ensemble": ["--ensemble=5"],
}


def train_config(*args) -> JobConfig:
    """bin/train's JobConfig of ``args``, in process."""
    values = flags.FlagValues()
    job_flags.define_train_flags(values)
    values(["bin/train", *args])
    return job_flags.job_config(values)


def sweep_config(*args, **options) -> sweep.SweepConfig:
    """bin/sweep's SweepConfig of ``args``, in process."""
    values = flags.FlagValues()
    holders = job_flags.define_sweep_flags(values)
    values(["bin/sweep", *args])
    return sweep.from_flags(job_flags.given(holders), **options)


def defined_flags(path) -> list[str]:
    """The flags a binary defines itself (module-level flags.DEFINE_* calls)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "").startswith("DEFINE")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


def test_every_bin_train_flag_means_the_same_to_bin_sweep():
    # bin/train's flags are the table's, one per JobConfig field; bin/sweep
    # defines the same ones and its own few beside them.
    names = [s.name for s in job_flags.SETTINGS]
    assert names == [f.name for f in dataclasses.fields(JobConfig)]
    assert defined_flags(TRAIN_BIN) == []
    assert sorted(defined_flags(SWEEP_BIN)) == sorted(SWEEP_OWN)
    assert set(SAMPLES) == set(names), "give each new flag a sample"
    for name, args in SAMPLES.items():
        job = train_config(*args)
        assert getattr(job, name) != getattr(JobConfig(), name), name
        if BY_NAME[name].sweep == REFUSED:
            # One line saying why (--strategy's, for the timeouts that need it).
            with pytest.raises(ValueError, match="is not for bin/sweep: .*; drop it$"):
                sweep_config(*args)
            continue
        # The same line is a sweep of one configuration: bin/train's job.
        config = sweep_config(*args)
        assert config.swept == {} and config.configurations == 1, name
        (point,) = config.points()
        if name == "ensemble":
            # The sweep's ensemble of its configurations, each one model.
            assert config.ensemble == 5 and config.job.ensemble == 0
            job = dataclasses.replace(job, ensemble=0)
        assert config.job_config(point) == job, name


def test_lists_repeats_and_settings_a_sweep_takes_once():
    config = sweep_config(
        "--hidden=512,512,512", "--hidden=64,64", "--augment=translate:1,rotate:10",
        "--augment=none", "--batchnorm=false,true", "--learning_rate=1e-3,3e-3",
        "--learning_rate=1e-2", "--monitor=val_accuracy",
    )  # fmt: skip
    assert config.swept == {
        "architecture": ("512x512x512", "64x64"),
        "batchnorm": (False, True),
        "augment": ("translate:1,rotate:10", "none"),
        "learning_rate": (1e-3, 3e-3, 1e-2),
    }
    assert config.job.monitor == "val_accuracy" and config.configurations == 24
    job = config.job_config(config.points()[-1])
    assert (job.hidden, job.batchnorm, job.augment, job.learning_rate) == (
        (64, 64), True, "none", 1e-2
    )  # fmt: skip
    assert sweep_config("--model=tiny,small,cnn").swept["architecture"] == (
        "tiny", "small", "cnn"
    )  # fmt: skip
    assert sweep_config("--nobatchnorm").job.batchnorm is False
    assert sweep_config("--monitor=val_accuracy", "--monitor=val_accuracy").job.monitor == (
        "val_accuracy"
    )  # the same value twice is one
    for args, message in [
        (["--monitor=val_accuracy", "--monitor=total_loss"], "--monitor takes one value"),
        (["--train_size=100,200"], r"--train_size takes one value in a sweep \(every "
                                   "configuration is scored on the same data\)"),
        (["--hidden=64", "--hidden=64"], "repeats a value"),
        (["--ensemble=2,3"], "--ensemble takes one value in a sweep \\(it is the sweep's"),
        (["--batchnorm=maybe"], "flag --batchnorm=maybe: "),
        (["--learning_rate=1e-3,0"], "flag --learning_rate=0.0: --learning_rate must be > 0"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            sweep_config(*args)


def test_bin_sweep_help_lists_what_it_takes_once_and_refuses():
    with open(SWEEP_BIN) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    for s in job_flags.SETTINGS:
        if s.sweep in (FIXED, REFUSED):
            assert f"--{s.name}" in doc, s.name
        assert job_flags.sweep_help(s).startswith("bin/sweep: ")


@pytest.mark.e2e
def test_a_bin_train_line_is_a_sweep_of_one_configuration(tmp_path):
    args = ["--dataset=synthetic", "--train_size=120", "--validation_size=60",
            "--hidden=8", "--l2=1e-3", "--batch_size=24", "--max_steps=20",
            "--eval_every=10", "--noxla"]  # fmt: skip
    config = sweep_config(*args, sweep_dir=str(tmp_path / "s"), retrain=False)
    result = sweep.run_sweep(config, log=lambda line: None)
    (row,) = result.rows
    assert row["winner"] and row["status"] == "ok"
    assert (row["architecture"], row["l2"]) == ("8", 1e-3)
    # Its report names the run as bin/train's flags give it (the winner's
    # retraining is that command: tests/test_sweep.py).
    command = " ".join(["bin/train", *job_flags.command_line(train_config(*args))])
    assert row["command"] == command
    assert f"    {command}\n" in (tmp_path / "s" / "results.md").read_text()


@pytest.mark.e2e
def test_the_same_bad_value_exits_2_in_both_binaries(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for args, message in [
        (["--dropout=1"], "error: flag --dropout=1.0: --dropout must be in [0, 1)"),
        (["--cutmix=1", "--dataset=synthetic"], "error: --cutmix=1.0 needs images"),
    ]:
        for binary in (TRAIN_BIN, SWEEP_BIN):
            result = subprocess.run(
                [sys.executable, binary, *args, f"--model_dir={tmp_path / 'x'}"],
                check=False, capture_output=True, text=True, env=env, timeout=120,
            )  # fmt: skip
            assert result.returncode == 2, (binary, result.stderr)
            assert result.stderr.startswith(message), (binary, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert lowtf.job.JobConfig is JobConfig
