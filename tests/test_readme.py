"""README.md: the own-loop example runs, and CI runs the README's commands."""

import contextlib
import io
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import _fixtures  # tests/_fixtures.py; pytest puts tests/ on sys.path
import numpy as np
import pytest

import lowtf

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title_fragment: str) -> str:
    """The text of the ``##`` section whose title contains ``title_fragment``."""
    sections = re.split(r"^## ", README, flags=re.MULTILINE)
    matches = [s for s in sections if title_fragment in s.splitlines()[0]]
    assert len(matches) == 1, f"README has no single section titled *{title_fragment}*"
    return matches[0]


@pytest.mark.e2e
def test_own_loop_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", _section("own loop"), flags=re.DOTALL)
    assert len(blocks) == 1
    source = blocks[0]
    assert 10 <= len(source.strip().splitlines()) <= 25  # "about 15 lines"

    namespace = {"__name__": "readme_example"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, "README.md", "exec"), namespace)

    metrics = {k: float(v) for k, v in namespace["metrics"].items()}
    assert set(metrics) == set(lowtf.train.metrics.STEP_METRICS)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["total_loss"] == pytest.approx(
        metrics["cross_entropy"] + metrics["regularization_loss"], rel=1e-5
    )
    assert metrics["regularization_loss"] > 0  # the example asks for l2
    assert 0.0 <= metrics["accuracy"] <= 1.0
    # The example caps hidden units at norm 3.
    model = namespace["model"]
    for layer in [m for m in model.layers if isinstance(m, lowtf.Dense)][:-1]:
        assert lowtf.nn.unit_norms(layer.kernel).numpy().max() <= 3.0 + 1e-6
    assert all(k in printed.getvalue() for k in lowtf.train.metrics.STEP_METRICS)


@pytest.mark.e2e
def test_population_example_runs():
    blocks = re.findall(
        r"```python\n(.*?)```", _section("Populations"), flags=re.DOTALL
    )
    assert len(blocks) == 1
    source = blocks[0]
    assert 10 <= len(source.strip().splitlines()) <= 25  # "about 15 lines"

    namespace = {"__name__": "readme_population"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, "README.md", "exec"), namespace)

    pop, record = namespace["pop"], namespace["record"]
    assert pop.size == 4
    assert set(namespace["metrics"]) == set(lowtf.train.metrics.STEP_METRICS)
    assert (record["val_accuracy"] > 0.9).all()  # every CNN learned
    np.testing.assert_allclose(record["learning_rate"], [1e-3, 3e-3, 1e-3, 3e-3])
    best = namespace["best"]
    k = int(np.argmin(pop.best_value))
    val_rows = pop.val_rows[k]
    x, y = namespace["x"], namespace["y"]
    result = lowtf.Evaluator(best)(x[val_rows], y[val_rows])
    assert result["cross_entropy"] == pytest.approx(pop.best_value[k], rel=1e-5)


def test_ci_runs_the_readmes_install_and_test_commands():
    commands = re.findall(
        r"^    (pip install .*)$", _section("Set-up"), flags=re.MULTILINE
    )
    test_command = [c for c in commands if "pytest" in c]
    assert test_command == [
        "pip install -e '.[test]' && python -m pytest -n 2 --dist loadfile"
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command[0] in ci.splitlines()


# -- every ```python block, and the shell commands, as a reader runs them ------

ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
# Blocks the tests above run in process, checking their numbers.
IN_PROCESS = ("own loop", "Populations")


def _python_blocks():
    """``(section title, code)`` of every ```python block, dedented (list items)."""
    found = []
    for section in re.split(r"^## ", README, flags=re.MULTILINE)[1:]:
        title = section.splitlines()[0]
        for indent, code in re.findall(
            r"^( *)```python\n(.*?)^\1```", section, flags=re.MULTILINE | re.DOTALL
        ):
            found.append((title, textwrap.dedent(code)))
    return found


def _higgs_file(path, rows=3000):
    """A file in the HIGGS.csv.gz format (label, then 28 features) for blocks that read one."""
    rs = np.random.RandomState(0)
    x = rs.randn(rows, 28)
    y = (x[:, 0] + 0.5 * rs.randn(rows) > 0).astype(float)
    np.savetxt(path, np.column_stack([y, x]), delimiter=",", fmt="%.5g")


# Runs the blocks it is given one after another, each in a fresh namespace and
# its own directory, as a reader pastes them; one TensorFlow start-up for all.
_RUNNER = """
import contextlib, json, os, sys, traceback
failed = 0
for title, cwd in json.loads(sys.argv[1]):
    os.chdir(cwd)
    with open("log.txt", "w") as log, contextlib.redirect_stdout(log):
        try:
            code = open("block.py").read()
            exec(compile(code, "README.md: " + title, "exec"), {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc(file=log)
            failed += 1
            print("FAILED", title, file=log)
sys.exit(1 if failed else 0)
"""


PYTHON_MAX_STEPS = 100


@pytest.mark.e2e
def test_every_python_block_runs_alone(tmp_path):
    """Each block in a fresh namespace and an empty directory, in two processes.

    A block that reads HIGGS.csv.gz (the UCI file, 2.6 GB) gets a small file
    of that format; the blocks of IN_PROCESS run in process above. A block's
    ``max_steps=N`` runs at most PYTHON_MAX_STEPS steps (as SHRINK does for
    the shell commands): the block runs as written, for fewer steps.
    """
    blocks = []
    for i, (title, code) in enumerate(_python_blocks()):
        if any(part in title for part in IN_PROCESS):
            continue
        cwd = tmp_path / f"block{i}"
        cwd.mkdir()
        shrunk = re.sub(
            r"\bmax_steps=(\d+)",
            lambda m: f"max_steps={min(int(m.group(1)), PYTHON_MAX_STEPS)}",
            code,
        )
        (cwd / "block.py").write_text(shrunk)
        if "HIGGS.csv.gz" in code:
            _higgs_file(cwd / "HIGGS.csv.gz")
        blocks.append((title, str(cwd)))
    assert len(blocks) >= 5
    halves = [blocks[0::2], blocks[1::2]]
    running = [
        subprocess.Popen(
            [sys.executable, "-c", _RUNNER, json.dumps(half)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for half in halves
    ]  # fmt: skip
    for process in running:
        process.wait(timeout=900)
    logs = {title: pathlib.Path(cwd, "log.txt").read_text() for title, cwd in blocks}
    failed = {title: log[-3000:] for title, log in logs.items() if "FAILED" in log}
    assert not failed, failed
    assert [p.returncode for p in running] == [0, 0]


# The first commands of a first hour, run here in every suite with their
# output checked; the whole README in sequence is test_the_readme_runs_in_sequence.
SHELL = [
    ("bin/train", []),
    ("bin/train --maxnorm=3 --dropout=0.2 --l2=1e-4", ["--max_steps=100"]),
]  # fmt: skip


def _shell_commands():
    """The README's commands: lines of its indented code blocks that run something."""
    return [
        line.strip().split("  #")[0].strip()
        for line in re.findall(r"^    (?:\S.*)$", README, flags=re.MULTILINE)
        if re.match(r"\s*(pip |bin/|lowtf-|python |tensorboard |TF_CONFIG|for )", line)
    ]


def test_shell_commands_name_the_files_they_need():
    # Each command that reads a file made by no earlier command says where it comes from.
    for line in re.findall(r"^    .*(?:HIGGS\.csv\.gz|breast_cancer\.csv).*$", README, re.MULTILINE):
        if "--data_path=" in line:
            assert "# needs " in line, line
    assert "UCI HIGGS data set" in README and "examples/breast_cancer_csv.py" in README
    # bin/predict's rows are written by the line before it.
    commands = _shell_commands()
    predict = next(i for i, c in enumerate(commands) if c.startswith("bin/predict"))
    assert "np.savetxt('rows.csv.gz'" in commands[predict - 1]
    assert " ..." not in "\n".join(_shell_commands())  # a literal ... is a flag error


@pytest.mark.e2e
def test_the_first_commands_run_in_order_quietly_in_an_empty_directory(
    tmp_path, monkeypatch
):
    commands = _shell_commands()
    for command, _ in SHELL:
        assert command in commands or f"pip install -e . && {command}" in commands
    # The first as a reader runs it; the second's flags through bin/train's
    # parser into run_job, in process (the binary's start-up is the first's).
    binary, *args = SHELL[0][0].split()
    first = subprocess.run(
        [sys.executable, str(ROOT / binary), *args, *SHELL[0][1]], cwd=tmp_path, env=ENV,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    _fixtures.bin_train_in_process([*SHELL[1][0].split()[1:], *SHELL[1][1]])
    # lowtf's lines only: nothing of TensorFlow's start-up, no line over 120 characters.
    assert first.stderr == ""
    lines = first.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    assert lines[-1].startswith("test cross-entropy ")
    # The ETA is to the first end (patience: `stop in`), at the speed after compiling.
    progress = [line for line in lines if line.startswith("step ")]
    etas = [line.rsplit("ETA ", 1)[1] for line in progress]
    assert etas[0] == "?" and all(eta.count(":") == 2 for eta in etas[2:])
    h, m, s = map(int, etas[2].split(":"))
    assert "(stop in " in progress[2] and h * 3600 + m * 60 + s < 60, progress[2]
    # Two runs, two directories.
    found = sorted(os.listdir(tmp_path / "runs"))
    assert found == ["digits-medium", "digits-medium-dropout0.2-l2_0.0001-maxnorm3"]
    with open(tmp_path / "runs" / found[1] / "summary.json") as f:
        assert json.load(f)["last_step"] == 100
    with open(tmp_path / "runs" / "digits-medium" / "summary.json") as f:
        assert json.load(f)["stop_reason"] == "patience"
    # Another run's flags on an existing directory: one short line naming
    # them, status 2, and the directory as it was (tests/test_job.py refuses
    # every defining setting in process).
    before = _fixtures.tree_digest(tmp_path / "runs" / "digits-medium")
    refused = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "train"), "--model_dir=runs/digits-medium",
         "--l2=1e-4", "--max_steps=100"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: --model_dir=runs/digits-medium belongs to another run (--l2: 0 in the "
        "run, 0.0001 now); pick another --model_dir\n"
    )
    assert _fixtures.tree_digest(tmp_path / "runs" / "digits-medium") == before


# -- the README in sequence (pytest --readme; about 10 minutes on 2 cores) -----

# The step counts the sequence shrinks: a value given is replaced, and bin/train
# and bin/sweep get the first three where the command gives none.
SHRINK = {"max_steps": "40", "eval_every": "20", "patience": "40", "steps": "40", "trials": "4"}
# Runs ROOT's script with SHRINK applied (written as bin/<name> of the directory).
_WRAPPER = """import os, sys
SHRINK, ADD, SCRIPT = {shrink!r}, {add!r}, {script!r}
args = []
for arg in sys.argv[1:]:
    name = arg[2:].split("=", 1)[0]
    args.append(f"--{{name}}={{SHRINK[name]}}" if arg.startswith("--") and name in SHRINK else arg)
given = {{arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}}
args += [f"--{{name}}={{SHRINK[name]}}" for name in ADD if name not in given]
os.execv(sys.executable, [sys.executable, SCRIPT, *args])
"""
_COMMAND = re.compile(r"(pip |bin/|lowtf-|python |tensorboard |TF_CONFIG=|for |[A-Z]+=)")
# Lines the sequence does not run: what needs a file or hosts it has not got (the
# README says so on the line), the set-up this test runs under, a server.
_NOT_RUN = re.compile(r".*# needs |.*\(needs |pip install|python -m pytest|tensorboard ")


def _shell_blocks():
    """The README's indented shell blocks (outside ``` fences), dedented, in order."""
    blocks, lines, fenced = [], [], False
    for line in README.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("    "):
            lines.append(line)
            continue
        if lines:
            text = textwrap.dedent("\n".join(lines))
            if _COMMAND.match(next(s for s in text.splitlines() if not s.startswith("#"))):
                blocks.append(text)
            lines = []
    return blocks


def _runnable(block: str) -> str:
    """``block`` without the lines it does not run (and their continuation lines)."""
    kept, skipping = [], False
    for line in block.splitlines():
        skip = skipping or bool(_NOT_RUN.match(line))
        if skip and line.startswith("pip install -e . && "):
            kept.append(line.removeprefix("pip install -e . && "))  # bin/train
        elif not skip:
            kept.append(line)
        skipping = skip and line.rstrip().endswith("\\")
    text = "\n".join(kept).strip()
    return "" if text.startswith("TF_CONFIG") else text


@pytest.mark.readme
@pytest.mark.e2e
def test_the_readme_runs_in_sequence(tmp_path):
    """Every shell command of the README, in order, in a fresh venv and an empty directory.

    The venv sees this Python's packages and gets lowtf installed by pip;
    the directory gets bin/<name> (and examples/augment_digits.py) that run
    the checkout's script with SHRINK's step counts. No --model_dir or
    --sweep_dir is added: the README's default directories must not collide.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    work = tmp_path / "work"
    for name, add in [
        ("bin/train", ["max_steps", "eval_every", "patience"]),
        ("bin/sweep", ["max_steps", "eval_every", "patience"]),
        ("bin/export", []), ("bin/predict", []), ("bin/convert", []),
        ("examples/augment_digits.py", []),
    ]:  # fmt: skip
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        code = _WRAPPER.format(shrink=SHRINK, add=add, script=str(ROOT / name))
        path.write_text(f"#!{python}\n{code}")
        path.chmod(0o755)
    env = {**ENV, "PATH": f"{venv / 'bin'}{os.pathsep}{ENV['PATH']}"}
    ran = []
    for block in map(_runnable, _shell_blocks()):
        if not block:
            continue
        run = subprocess.run(["bash", "-e", "-c", block], cwd=work, env=env,
                             capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        assert run.returncode == 0, (block, run.stderr[-3000:])
        ran.append(block)
    commands = sum(len(re.findall(r"^\s*(?:bin/|python )|; bin/", b, re.M)) for b in ran)
    assert commands >= 40, ran
    # Each command wrote where it says: a directory of its own, and the chain's files.
    assert len(os.listdir(work / "runs")) >= 20 and len(os.listdir(work / "sweeps")) >= 15
    assert (work / "exports" / "digits" / "1" / "saved_model.pb").exists()
    assert (work / "exports" / "digits-ensemble" / "1" / "saved_model.pb").exists()
    with open(work / "predictions.csv") as f:
        assert len(f.read().splitlines()) == 1 + 300  # a header, then the test digits
