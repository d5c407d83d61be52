"""lowtf.cli: what every binary imports first (quiet start-up, flag errors), console scripts."""

import os
import subprocess
import sys

import pytest

from lowtf import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imports TensorFlow as a binary does, looks at the devices, runs one op.
_BINARY = """
import lowtf.cli
import tensorflow as tf
print(float(tf.constant(2.0) + 1.0), tf.config.list_physical_devices()[0].device_type)
"""


def test_verbosity_is_found_in_any_spelling():
    for argv in (["--verbosity=0"], ["--verbosity", "1"], ["-v=1"], ["-v", "0"], ["-verbosity=2"]):
        assert cli._verbose(["bin/train", "--l2=1", *argv]), argv
    for argv in ([], ["--vv=1"], ["--", "--verbosity=1"], ["--model_dir=v"]):
        assert not cli._verbose(["bin/train", *argv]), argv


def test_the_console_scripts_run_the_bin_scripts():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    scripts = setup["options.entry_points"]["console_scripts"].split()
    entries = dict(zip(scripts[0::3], scripts[2::3]))
    names = ("train", "sweep", "export", "predict", "bench", "convert")
    assert entries == {f"lowtf-{name}": f"lowtf.cli:{name}" for name in names}
    assert "scripts" not in setup["options"]  # no generic names (export!) on PATH
    for name in names:
        assert callable(getattr(cli, name))
        with open(os.path.join(ROOT, "bin", name)) as f:
            first = [line for line in f if line.startswith(("import ", "from "))][0]
        assert first.startswith("import lowtf.cli")  # before TensorFlow, in every binary


@pytest.mark.e2e
def test_tensorflow_starts_quietly_unless_verbosity_is_given(tmp_path):
    # Quiet without the flag: bin/train's first run prints nothing on stderr
    # (tests/test_readme.py, the first commands).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    loud = subprocess.run(
        [sys.executable, "-c", _BINARY, "--verbosity=0"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert loud.stdout == "3.0 CPU\n"
    # What --verbosity brings back depends on the machine (CUDA or not, CPU
    # features); TensorFlow always says something at start-up.
    assert loud.stderr.strip()
    # A failing import still shows what it printed, before its traceback.
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import sys\nprint('a line of the failed import', file=sys.stderr)\n"
        "raise ImportError('broken tensorflow')\n"
    )
    broken = subprocess.run(
        [sys.executable, "-c", _BINARY],
        capture_output=True, text=True, timeout=60, check=False,
        env=dict(env, PYTHONPATH=str(tmp_path)),
    )  # fmt: skip
    assert broken.returncode == 1
    assert broken.stderr.startswith("a line of the failed import\n")
    assert "ImportError: broken tensorflow" in broken.stderr


def test_every_public_name_resolves():
    import lowtf

    assert set(lowtf.__all__) == set(lowtf._EXPORTS)
    for name in lowtf.__all__:
        assert getattr(lowtf, name) is not None, name
    assert callable(lowtf.fit) and callable(lowtf.train.fit)  # not the module lowtf.train.fit


@pytest.mark.e2e
def test_lowtf_its_job_config_and_cli_import_no_tensorflow():
    # bin/ refuses bad flags before TensorFlow's import (about 4 s) only while
    # these stay free of it: an eager import in lowtf/__init__.py would undo that.
    check = (
        "import sys, lowtf, lowtf.cli, lowtf.job, lowtf.job.flags, lowtf.sweep.config; "
        "lowtf.job.JobConfig(model='small', l2=1e-4); "
        "lowtf.sweep.SweepConfig(model=('tiny', 'cnn'), l2=(0, 1e-4)); "
        "assert 'tensorflow' not in sys.modules, sorted(sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
