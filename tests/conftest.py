"""Test set-up shared by the suite: quiet TensorFlow logs, fixed seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
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
