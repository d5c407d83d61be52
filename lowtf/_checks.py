"""Argument checks shared by the library, each raising one actionable error."""

from __future__ import annotations

import math
import numbers

import numpy as np


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite(name: str, value) -> None:
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"`{name}` ({value!r}) must be a finite number")


def non_negative(name: str, value) -> None:
    finite(name, value)
    if value < 0:
        raise ValueError(f"`{name}` ({value!r}) must be >= 0; use 0 to turn it off")


def positive(name: str, value) -> None:
    finite(name, value)
    if value <= 0:
        raise ValueError(f"`{name}` ({value!r}) must be > 0")


def positive_int(name: str, value) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` ({value!r}) must be a positive integer")


def non_negative_int(name: str, value) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"`{name}` ({value!r}) must be an integer >= 0")


def rate(name: str, value) -> None:
    """A probability in [0, 1): dropout rates and the like."""
    finite(name, value)
    if not 0 <= value < 1:
        raise ValueError(
            f"`{name}` ({value!r}) must be in [0, 1); use 0 to turn it off"
        )


def beta_shape(name: str, alpha) -> float:
    """A Beta(alpha, alpha) shape in [0, 2] (0: off), as mixup's and CutMix's."""
    non_negative(name, alpha)
    if alpha > 2:
        raise ValueError(
            f"`{name}` ({alpha}) must be at most 2: Beta(alpha, alpha) mixing "
            "beyond that is almost always lam = 0.5 (the usual values are 0.1-1)"
        )
    return float(alpha)


def boolean(name: str, value, *, also: tuple = ()) -> None:
    """True or False (a NumPy bool too), or one of the strings in ``also``.

    Stricter than :func:`one_of`: ``1 in (True, False)`` holds, and a string
    such as ``"no"`` is truthy, so either would pass as a flag in silence.
    """
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, str) and value in also
    ):
        return
    *first, last = ["True", "False", *(repr(a) for a in also)]
    raise ValueError(f"`{name}` ({value!r}) must be {', '.join(first)} or {last}")


def one_of(name: str, value, choices) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` ({value!r}) must be one of {options}")


def image_shape(name: str, value) -> tuple:
    """A (height, width, channels) shape of positive integers, as a tuple."""
    shape = tuple(value)
    if len(shape) != 3:
        raise ValueError(f"`{name}` ({shape!r}) must be (height, width, channels)")
    for i, size in enumerate(shape):
        positive_int(f"{name}[{i}]", size)
    return shape
