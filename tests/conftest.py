"""Test set-up shared by the suite: quiet TensorFlow logs, fixed seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--readme",
        action="store_true",
        help="also run the README's shell commands in sequence (about 10 minutes)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``readme`` run only with ``--readme``."""
    if config.getoption("--readme"):
        return
    skip = pytest.mark.skip(reason="the README in sequence: run with --readme")
    for item in items:
        if "readme" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    # Imported here, not above: pytest-xdist's controller process loads this
    # file too and runs no test, so it need not start TensorFlow (seconds).
    import tensorflow as tf

    tf.random.set_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def binary_data():
    """A small, learnable binary problem with 28 features (Higgs-shaped)."""
    rs = np.random.RandomState(0)
    x = rs.randn(1000, 28).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rs.randn(1000) > 0).astype(np.float32)
    return x, y
