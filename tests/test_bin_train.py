"""End-to-end tests of bin/train, run as a subprocess on small data.

A run that trains costs several seconds (TensorFlow's import, a compile), so
there are few of them, each checked on many numbers; the bad-flag cases fail
before TensorFlow is imported and cost a fraction of a second each.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from lowtf.train import summaries

# Subprocesses: bin/ runs and multi-device workers (the slow tier).
pytestmark = pytest.mark.e2e

BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "train")
SUMMARY_FIELDS = {
    "best_step",
    "best_value",
    "monitor",
    "stop_reason",
    "last_step",
    "test_cross_entropy",
    "test_accuracy",
    "wall_seconds",
}
# Keep the end-to-end runs short and off XLA (which compiles for seconds).
QUICK = ["--noxla", "--eval_every=50", "--max_steps=200", "--batch_size=50"]


def train(*args, cwd=None, env=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run(
        [sys.executable, BIN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def summary(model_dir):
    with open(os.path.join(model_dir, "summary.json")) as f:
        return json.load(f)


def assert_refused(result, message):
    assert result.returncode != 0, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default run (digits, medium MLP, XLA), shortened by flags."""
    model_dir = str(tmp_path_factory.mktemp("default") / "run")
    result = train(f"--model_dir={model_dir}", "--max_steps=300", "--eval_every=50", "--patience=100")
    assert result.returncode == 0, result.stderr
    return model_dir, result


def test_default_run_outputs(default_run):
    model_dir, result = default_run
    got = summary(model_dir)
    assert SUMMARY_FIELDS <= set(got)
    assert got["dataset"] == "digits" and got["model"] == "medium"
    assert (got["train_size"], got["validation_size"], got["test_size"]) == (1197, 300, 300)
    assert got["stop_reason"] in ("patience", "max_steps")
    assert got["last_step"] <= 300 and got["monitor"] == "val_cross_entropy"
    # The best step is the lowest validation cross-entropy of the history...
    history = summaries.read_history(os.path.join(model_dir, "history.csv"))
    best = min(history, key=lambda row: row["val_cross_entropy"])
    assert got["best_step"] == best["step"]
    assert got["best_value"] == pytest.approx(best["val_cross_entropy"], rel=1e-6)
    # ... and that snapshot was restored: the final model scores the same.
    assert got["validation_cross_entropy"] == pytest.approx(got["best_value"], rel=1e-5)
    assert got["test_accuracy"] > 0.9 and 0 < got["test_cross_entropy"] < 0.5
    assert f"test accuracy {got['test_accuracy']:.4f}" in result.stdout
    image = tf.io.decode_png(tf.io.read_file(os.path.join(model_dir, "curves.png"))).numpy()
    assert image.shape == (440, 720, 3)
    assert np.all(image == (31, 119, 180), axis=-1).sum() > 200  # the training curve is drawn


def test_npz_images(tmp_path):
    # MNIST-shaped: uint8 images whose class is the brightest quadrant.
    rs = np.random.RandomState(0)

    def images(n):
        x = rs.randint(0, 100, (n, 8, 8))
        y = rs.randint(0, 4, n)
        for image, label in zip(x, y):
            image[4 * (label // 2) : 4 * (label // 2) + 4, 4 * (label % 2) : 4 * (label % 2) + 4] += 150
        return x.astype(np.uint8), y.astype(np.uint8)

    (x_train, y_train), (x_test, y_test) = images(600), images(100)
    path = tmp_path / "quadrants.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    model_dir = str(tmp_path / "run")
    # The cnn is relu and, on a CPU, off XLA only while --activation and --xla
    # are not given: flags.txt must hold the given flags only, or its rerun
    # would give them.
    given = ["--dataset=npz", f"--data_path={path}", "--model=cnn", "--eval_every=50",
             "--max_steps=100", "--batch_size=50", f"--model_dir={model_dir}"]  # fmt: skip
    result = train(*given)
    assert result.returncode == 0, result.stderr
    got = summary(model_dir)
    assert (got["train_size"], got["validation_size"], got["test_size"]) == (540, 60, 100)
    assert got["num_classes"] == 4 and got["model"] == "cnn"
    assert got["test_accuracy"] > 0.9
    # The saved flags reproduce the run, number for number.
    flags_txt = os.path.join(model_dir, "flags.txt")
    with open(flags_txt) as f:
        assert sorted(f.read().splitlines()) == sorted(given)
    again = str(tmp_path / "again")
    result = train(f"--flagfile={flags_txt}", f"--model_dir={again}")
    assert result.returncode == 0, result.stderr
    for name in ("best_step", "best_value", "last_step", "test_cross_entropy", "test_accuracy"):
        assert summary(again)[name] == got[name], name


def test_unusable_model_dir_is_one_line_and_status_2(tmp_path):
    # A model_dir under a file is refused before any write (tests/test_job.py,
    # in process); a write that fails later (here flags.txt's temporary name
    # is taken by a directory) is one line too, not a traceback.
    model_dir = tmp_path / "run"
    (model_dir / "flags.txt.tmp").mkdir(parents=True)
    result = train(f"--model_dir={model_dir}", "--hidden=4", "--train_size=100", "--noxla", "--batch_size=50", "--max_steps=2")
    assert_refused(result, "error: FailedPreconditionError: ")  # from tf.io.gfile
    assert result.returncode == 2 and "flags.txt.tmp" in result.stderr.strip().splitlines()[-1]


# Refused at flag parsing (absl's bounds and validators) or by
# lowtf.job.JobConfig (each of its refusals is tested in process by
# tests/test_job.py, a few here), all before TensorFlow is imported: one line
# `error: ...` and status 2.
BAD_FLAGS = [
    (["--dropout=1"], "error: flag --dropout=1.0: --dropout must be in [0, 1)"),
    (["--maxnorm=-1"], "error: flag --maxnorm=-1: -1.0 is not a non-negative number"),
    (["--batch_size=0"], "error: flag --batch_size=0: 0 is not a positive integer"),
    (["--model=huge"], "error: flag --model=huge: value should be one of <tiny|small|medium|large|cnn>"),
    (["--learning_rate=0"], "error: flag --learning_rate=0.0: --learning_rate must be > 0"),
    (["--model=small", "--hidden=8"], "error: give --model or --hidden, not both"),
    (["--hidden=8,x"], "error: flag --hidden=8,x: widths must be positive integers"),
    (["--learning_rate=inf"], "--learning_rate must be a finite number (not nan or inf)"),
    (["--optimizer=adamw", "--weight_decay=inf"], "--weight_decay must be a finite number"),
    (["--weight_decay=0.1"], "error: --weight_decay is the decoupled decay of AdamW"),
    (["--data_path=rows.csv"], "error: --data_path=rows.csv is not read by --dataset=digits (its data are embedded); add --dataset=csv"),
    (["--batch_size=5000"], "error: --batch_size (5000) exceeds the 1,197 training examples of digits; lower it to at most 1197"),
]
# NaN passes every bound (each comparison with it is false): one float flag
# here, every one in process below.
BAD_FLAGS += [(["--l2=nan"], "flag --l2=nan: --l2 must be a finite number")]


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory):
    """A PYTHONPATH whose `tensorflow` fails to import: the refusals come before it."""
    root = tmp_path_factory.mktemp("no_tensorflow")
    (root / "tensorflow").mkdir()
    (root / "tensorflow" / "__init__.py").write_text("raise ImportError('tensorflow was imported')\n")
    return str(root)


@pytest.mark.parametrize("args,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_are_refused_before_tensorflow_is_imported(tmp_path, no_tensorflow, args, message):
    model_dir = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([no_tensorflow, os.environ.get("PYTHONPATH", "")])}
    result = train(*args, f"--model_dir={model_dir}", env=env)
    assert_refused(result, message)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("error: ") and result.stdout == ""
    assert not model_dir.exists()


def test_bad_data_is_refused_with_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,oops,1\n")
    result = train("--dataset=csv", f"--data_path={bad}", f"--model_dir={tmp_path / 'run'}")
    assert_refused(result, f"error: {bad}, line 3, column 2: 'oops' is not a number")
    assert result.returncode == 2
    assert not (tmp_path / "run").exists()


def test_help_documents_defaults_and_flagfile_errors(tmp_path):
    result = train("--helpfull")  # absl prints the help and exits (with status 1)
    assert "--maxnorm: Max-norm cap" in result.stdout and "(default: '0.0')" in result.stdout
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("--dropout=1.5\n")
    assert_refused(train(f"--flagfile={flagfile}"), "--dropout must be in [0, 1)")


def test_float_flags_refuse_nan():
    """Every float flag of bin/train (lowtf.job.flags) refuses nan and inf."""
    from absl import flags

    from lowtf.job import flags as job_flags

    floats = [s.name for s in job_flags.SETTINGS if s.kind == "float"]
    assert {"dropout", "learning_rate", "collective_timeout", "ema"} <= set(floats)
    for name in floats:
        for value in ("nan", "inf"):
            values = flags.FlagValues()
            job_flags.define_train_flags(values)
            # inf may meet a bound first: refused all the same.
            with pytest.raises(flags.IllegalFlagValueError, match=f"flag --{name}={value}: "):
                values(["bin/train", f"--{name}={value}"])


def test_a_second_run_on_a_busy_model_dir_is_refused_naming_the_holder(tmp_path):
    model_dir = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.Popen(
        [sys.executable, BIN, f"--model_dir={model_dir}", "--noxla", "--max_steps=100000",
         "--patience=100000", "--eval_every=50"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        # Wait until the first run trains (its first progress line).
        for line in first.stdout:
            if line.startswith("step "):
                break
        second = train(f"--model_dir={model_dir}", *QUICK)
        assert second.returncode == 2
        assert_refused(second, f"is in use by another run (pid {first.pid} on ")
        assert len(second.stderr.strip().splitlines()[-1:]) == 1
        # The second run wrote nothing: no flags.txt of its own, no summary.
        assert not os.path.exists(os.path.join(model_dir, "summary.json"))
        with open(os.path.join(model_dir, "flags.txt")) as f:
            assert "--max_steps=100000" in f.read()
    finally:
        first.terminate()
        first.wait(timeout=120)
    assert first.returncode == 0  # SIGTERM: a graceful stop with a summary
    assert summary(model_dir)["stop_reason"] == "interrupted"
    assert not os.path.exists(os.path.join(model_dir, "lock"))
