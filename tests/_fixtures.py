"""Set-up shared by the fit tests and their subprocess workers (numpy only).

Importable as ``_fixtures`` from the tests (pytest puts tests/ on sys.path)
and from the workers run as ``python tests/_x_worker.py`` (the script's
folder comes first on sys.path). It imports no TensorFlow, so a worker may
import it before it makes its ``tf.distribute`` strategy.
"""

import hashlib
import os

import numpy as np

# bin/sweep, and a sweep small enough to train in a second or two per
# population: synthetic rows, off XLA, no winner retraining.
SWEEP_BIN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "sweep"
)
QUICK_SWEEP = {
    "dataset": "synthetic",
    "train_size": 120,
    "validation_size": 60,
    "batch_size": 24,
    "max_steps": 30,
    "eval_every": 10,
    "patience": 100,
    "xla": False,
    "retrain": False,
}


def noisy_split(n_train, n_val, features, *, seed, weights=(1.0, 1.0), noise=1.0):
    """A noisy linear binary problem as ``((x, y), (x_val, y_val))``, float32.

    ``x`` is standard normal; the label is ``sum(weights[i] * x[:, i]) +
    noise * N(0, 1) > 0``. Few examples and that much noise make a net
    overfit within a few hundred steps.

    Args:
      n_train: training examples (the first ones drawn).
      n_val: validation examples (the rest).
      features: columns of ``x``.
      seed: seed of the ``np.random.RandomState`` that draws ``x``, then
        the noise.
      weights: weights of the first features in the label (default (1, 1)).
      noise: standard deviation of the label noise (default 1).
    """
    rs = np.random.RandomState(seed)
    n = n_train + n_val
    x = rs.randn(n, features).astype(np.float32)
    signal = sum(w * x[:, i] for i, w in enumerate(weights))
    y = (signal + noise * rs.randn(n) > 0).astype(np.float32)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def new_best_at(line: str) -> int | None:
    """The step of a fit progress line that reports a new best at that step.

    None for any other line, e.g. ``"step 40/500 ... best @ 20 (stop in 480)
    ETA 0:00:01"`` or ``"resuming from ..."``.
    """
    if not line.startswith("step "):
        return None
    step = line.split("/")[0].removeprefix("step ")
    return int(step) if f"  best @ {step} " in line else None


def tree_digest(root) -> dict:
    """Every file under ``root`` (its path relative to it) with a hash of its bytes."""
    digest = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, root)] = hashlib.sha256(
                    f.read()
                ).hexdigest()
    return digest


def bin_train_in_process(args, log=None):
    """What ``bin/train ARGS`` trains, run in this process: run_job's result.

    bin/train parses its flags (lowtf.job.flags) into a JobConfig and runs
    lowtf.job.run_job; so does this, without a TensorFlow start-up (seconds).
    Its output lines, exit statuses and flags.txt are bin/train's own tests'.
    """
    from absl import flags

    from lowtf.job import flags as job_flags
    from lowtf.job import run as job

    flag_values = flags.FlagValues()
    job_flags.define_train_flags(flag_values)
    flag_values(["bin/train", *args])
    config = job_flags.job_config(flag_values)
    return job.run_job(config, log=log or (lambda line: None))
