"""README.md: the own-loop example runs, and CI runs the README's commands."""

import contextlib
import io
import math
import pathlib
import re

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
