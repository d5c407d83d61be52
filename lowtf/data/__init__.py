"""Data sets, readers, in-memory and streamed batches; data is checked once, where it enters.

The embedded digits data (``digits.csv.gz``, CC BY 4.0, see README.md) lives
in this folder too.
"""

from lowtf.data.batches import InMemoryBatches
from lowtf.data.datasets import DATASETS, Dataset, load, pipeline, synthetic
from lowtf.data.readers import DataError
from lowtf.data.streams import Stream

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "InMemoryBatches",
    "Stream",
    "load",
    "pipeline",
    "synthetic",
]
