"""Per-feature standardization statistics of streamed data, in one pass.

:class:`Moments` merges blocks of rows as they are read (float64, Chan et
al.'s pairwise update: exact whatever the number of rows, nothing held but
two vectors); :class:`FeatureStatistics` is the result, saved as JSON next
to a model and applied to every streamed batch. A feature constant over the
rows is centred, not divided (its std is 1), as
:func:`lowtf.data.datasets.statistics` does for in-memory data.

Chan, Golub and LeVeque (1979), "Updating formulae and a pairwise algorithm
for computing sample variances".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow as tf

from lowtf.data.readers import DataError


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Per-feature ``mean`` and ``std`` (float64 ``[features]``) over ``rows`` rows."""

    mean: np.ndarray
    std: np.ndarray
    rows: int

    def standardize(self, x):
        """``(x - mean) / std`` in float32; a tensor or an array."""
        mean = tf.constant(self.mean, tf.float32)
        std = tf.constant(self.std, tf.float32)
        return (tf.cast(x, tf.float32) - mean) / std

    @property
    def digest(self) -> str:
        """A short hash of the values, for a run's identity."""
        digest = hashlib.sha256(np.concatenate([self.mean, self.std]).tobytes())
        return digest.hexdigest()[:12]

    def save(self, path: str) -> None:
        """Writes ``{"mean", "std", "rows"}`` as JSON (any TensorFlow file system)."""
        text = json.dumps(
            {"mean": self.mean.tolist(), "std": self.std.tolist(), "rows": self.rows},
            indent=2,
        )
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text + "\n")

    @classmethod
    def load(cls, path: str) -> FeatureStatistics:
        """Reads what :meth:`save` wrote."""
        try:
            with tf.io.gfile.GFile(path) as f:
                record = json.loads(f.read())
            mean = np.asarray(record["mean"], np.float64)
            std = np.asarray(record["std"], np.float64)
            rows = int(record["rows"])
        except (tf.errors.OpError, ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{path}: not a statistics file ({type(e).__name__}: {e})"
            ) from None
        if mean.shape != std.shape or mean.ndim != 1 or not (std > 0).all():
            raise DataError(
                f"{path}: mean and std must be vectors of one length, std > 0"
            )
        return cls(mean=mean, std=std, rows=rows)


class Moments:
    """Count, mean and sum of squared deviations of rows added block by block."""

    def __init__(self, num_features: int):
        self.count = 0
        self.mean = np.zeros(num_features)
        self.m2 = np.zeros(num_features)

    def add(self, block) -> None:
        """Merges a block ``[n, features...]`` (flattened per row)."""
        block = np.asarray(block, np.float64).reshape(len(block), -1)
        n = len(block)
        if not n:
            return
        block_mean = block.mean(axis=0)
        block_m2 = ((block - block_mean) ** 2).sum(axis=0)
        # Chan et al.'s update: exact in float64 whatever the file's size.
        delta = block_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + block_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def statistics(self) -> FeatureStatistics:
        """The :class:`FeatureStatistics` of the rows added (at least one)."""
        std = np.sqrt(self.m2 / self.count)
        return FeatureStatistics(
            mean=self.mean, std=np.where(std > 1e-6, std, 1.0), rows=self.count
        )
