"""In-graph data augmentation: a spec, a pipeline, geometric and photometric ops.

See :mod:`lowtf.augment.pipeline` for the spec's grammar.
"""

from lowtf.augment.geometric import affine, flip, rotate, shift, translate, zoom
from lowtf.augment.photometric import brightness, contrast, noise
from lowtf.augment.pipeline import DEFAULT_SEED, OPS, Op, Pipeline, parse

__all__ = [
    "DEFAULT_SEED",
    "OPS",
    "Op",
    "Pipeline",
    "affine",
    "brightness",
    "contrast",
    "flip",
    "noise",
    "parse",
    "rotate",
    "shift",
    "translate",
    "zoom",
]
