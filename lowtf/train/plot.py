"""The learning-curve picture, drawn with numpy and written as a PNG.

:func:`write_png` draws training vs validation cross-entropy over steps, with
the best step marked: the picture that shows overfitting (validation turning
up while training keeps going down). It needs no plotting library: lines are
rasterized into a numpy RGB array, labels come from a built-in 5x7 bitmap
font, and ``tf.io.encode_png`` writes the file.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID = (225, 225, 225)
TRAIN_COLOR = (31, 119, 180)  # blue
VALIDATION_COLOR = (255, 127, 14)  # orange
BEST_COLOR = (44, 160, 44)  # green

# A 5x7 bitmap font: five column bytes per glyph, bit 0 the top row (the
# classic HD44780-style glyphs). Lowercase letters are drawn as uppercase.
_FONT = {
    " ": (0x00, 0x00, 0x00, 0x00, 0x00),
    "0": (0x3E, 0x51, 0x49, 0x45, 0x3E),
    "1": (0x00, 0x42, 0x7F, 0x40, 0x00),
    "2": (0x42, 0x61, 0x51, 0x49, 0x46),
    "3": (0x21, 0x41, 0x45, 0x4B, 0x31),
    "4": (0x18, 0x14, 0x12, 0x7F, 0x10),
    "5": (0x27, 0x45, 0x45, 0x45, 0x39),
    "6": (0x3C, 0x4A, 0x49, 0x49, 0x30),
    "7": (0x01, 0x71, 0x09, 0x05, 0x03),
    "8": (0x36, 0x49, 0x49, 0x49, 0x36),
    "9": (0x06, 0x49, 0x49, 0x29, 0x1E),
    "A": (0x7E, 0x11, 0x11, 0x11, 0x7E),
    "B": (0x7F, 0x49, 0x49, 0x49, 0x36),
    "C": (0x3E, 0x41, 0x41, 0x41, 0x22),
    "D": (0x7F, 0x41, 0x41, 0x22, 0x1C),
    "E": (0x7F, 0x49, 0x49, 0x49, 0x41),
    "F": (0x7F, 0x09, 0x09, 0x09, 0x01),
    "G": (0x3E, 0x41, 0x49, 0x49, 0x7A),
    "H": (0x7F, 0x08, 0x08, 0x08, 0x7F),
    "I": (0x00, 0x41, 0x7F, 0x41, 0x00),
    "J": (0x20, 0x40, 0x41, 0x3F, 0x01),
    "K": (0x7F, 0x08, 0x14, 0x22, 0x41),
    "L": (0x7F, 0x40, 0x40, 0x40, 0x40),
    "M": (0x7F, 0x02, 0x0C, 0x02, 0x7F),
    "N": (0x7F, 0x04, 0x08, 0x10, 0x7F),
    "O": (0x3E, 0x41, 0x41, 0x41, 0x3E),
    "P": (0x7F, 0x09, 0x09, 0x09, 0x06),
    "Q": (0x3E, 0x41, 0x51, 0x21, 0x5E),
    "R": (0x7F, 0x09, 0x19, 0x29, 0x46),
    "S": (0x46, 0x49, 0x49, 0x49, 0x31),
    "T": (0x01, 0x01, 0x7F, 0x01, 0x01),
    "U": (0x3F, 0x40, 0x40, 0x40, 0x3F),
    "V": (0x1F, 0x20, 0x40, 0x20, 0x1F),
    "W": (0x3F, 0x40, 0x38, 0x40, 0x3F),
    "X": (0x63, 0x14, 0x08, 0x14, 0x63),
    "Y": (0x07, 0x08, 0x70, 0x08, 0x07),
    "Z": (0x61, 0x51, 0x49, 0x45, 0x43),
    ".": (0x00, 0x60, 0x60, 0x00, 0x00),
    ",": (0x00, 0x50, 0x30, 0x00, 0x00),
    ":": (0x00, 0x36, 0x36, 0x00, 0x00),
    "-": (0x08, 0x08, 0x08, 0x08, 0x08),
    "+": (0x08, 0x08, 0x3E, 0x08, 0x08),
    "=": (0x14, 0x14, 0x14, 0x14, 0x14),
    "_": (0x40, 0x40, 0x40, 0x40, 0x40),
    "/": (0x20, 0x10, 0x08, 0x04, 0x02),
    "(": (0x00, 0x1C, 0x22, 0x41, 0x00),
    ")": (0x00, 0x41, 0x22, 0x1C, 0x00),
    "%": (0x23, 0x13, 0x08, 0x64, 0x62),
    "?": (0x02, 0x01, 0x51, 0x09, 0x06),
}
GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7
_ADVANCE = GLYPH_WIDTH + 1  # one blank column between glyphs


def glyph(char: str) -> np.ndarray:
    """The 7x5 boolean bitmap of ``char`` (``?`` for a character the font lacks)."""
    columns = _FONT.get(char.upper(), _FONT["?"])
    rows = np.arange(GLYPH_HEIGHT)[:, None]
    return (np.array(columns)[None, :] >> rows & 1).astype(bool)


def text_mask(text: str) -> np.ndarray:
    """The boolean bitmap of a line of text, 7 pixels high."""
    mask = np.zeros((GLYPH_HEIGHT, max(len(text) * _ADVANCE - 1, 0)), bool)
    for i, char in enumerate(text):
        mask[:, i * _ADVANCE : i * _ADVANCE + GLYPH_WIDTH] = glyph(char)
    return mask


def render(
    history: Sequence[dict],
    *,
    best_step: int | None = None,
    title: str | None = None,
    train_key: str = "train_cross_entropy",
    validation_key: str = "val_cross_entropy",
    y_label: str = "cross-entropy",
    log_y: bool | None = None,
    width: int = 720,
    height: int = 440,
) -> np.ndarray:
    """Draws the learning curves; returns an RGB ``uint8 [height, width, 3]`` array.

    Args:
      history: one dict per evaluation with ``step`` and the two keys below
        (a fit's ``history``); None and non-finite values leave a gap.
      best_step: the step to mark with a dashed line and a dot on the
        validation curve; default none.
      title: a line of text above the plot; default none.
      train_key, validation_key: the series drawn (default the cross-entropies).
      y_label: the vertical axis's label, default ``"cross-entropy"``.
      log_y: a logarithmic vertical axis; None (default) picks it when the
        values are positive and span more than a factor of 10, as the first
        evaluations' loss often dwarfs the gap that shows overfitting.
      width, height: image size in pixels (default 720 x 440).
    """
    if width < 200 or height < 120:
        raise ValueError(f"the image ({width}x{height}) must be at least 200x120 pixels")
    if not history:
        raise ValueError("`history` is empty: there is nothing to plot")
    missing = {"step", train_key, validation_key} - set(history[0])
    if missing:
        raise ValueError(f"`history` rows lack {', '.join(sorted(missing))}")
    steps = np.array([row["step"] for row in history], np.float64)
    # None (the training means at step 0, before any step) draws as a gap.
    series = [
        (np.array([np.nan if row[key] is None else row[key] for row in history], np.float64), color)
        for key, color in ((train_key, TRAIN_COLOR), (validation_key, VALIDATION_COLOR))
    ]
    values = np.concatenate([v for v, _ in series])
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError("`history` has no finite value to plot")
    if log_y is None:
        log_y = values.min() > 0 and values.max() > 10 * values.min()
    if log_y:
        # Everything below is drawn in log10 units; zeros or negatives leave gaps.
        with np.errstate(divide="ignore", invalid="ignore"):
            series = [(np.where(v > 0, np.log10(v), np.nan), color) for v, color in series]
        values = np.concatenate([v for v, _ in series])
        values = values[np.isfinite(values)]
        if not len(values):
            raise ValueError("`history` has no positive value to plot on a log axis")

    image = np.full((height, width, 3), WHITE, np.uint8)
    left, right, top, bottom = 62, width - 16, 34 if title else 16, height - 42
    x_lo, x_hi = min(0.0, steps.min()), max(steps.max(), 1.0)
    y_lo, y_hi = _padded(values.min(), values.max())
    to_x = lambda s: left + (s - x_lo) / (x_hi - x_lo) * (right - left)  # noqa: E731
    to_y = lambda v: bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)  # noqa: E731

    # Grid and tick labels first, so that the curves are drawn over them.
    for tick, label in _log_ticks(y_lo, y_hi) if log_y else _ticks(y_lo, y_hi):
        y = round(to_y(tick))
        image[y, left:right] = GRID
        _text(image, label, left - 6 - len(label) * _ADVANCE, y - 3)
    for tick, label in _ticks(x_lo, x_hi, integer=True):
        x = round(to_x(tick))
        image[top:bottom, x] = GRID
        _text(image, label, x - len(label) * _ADVANCE // 2, bottom + 6)
    image[top : bottom + 1, left] = BLACK
    image[bottom, left : right + 1] = BLACK
    _text(image, "STEP", (left + right) // 2 - 12, height - 14)
    _text(image, f"{y_label} (log)" if log_y else y_label, 4, 4, vertical=True, bottom=bottom)
    if title:
        _text(image, title, left, 12)

    if best_step is not None and x_lo <= best_step <= x_hi:
        x = round(to_x(best_step))
        dashes = np.arange(top, bottom)
        image[dashes[(dashes // 4) % 2 == 0], x] = BEST_COLOR
    for v, color in series:
        points = [(to_x(s), to_y(value)) for s, value in zip(steps, v)]
        for (x0, y0), (x1, y1), a, b in zip(points, points[1:], v, v[1:]):
            if math.isfinite(a) and math.isfinite(b):
                _line(image, x0, y0, x1, y1, color)
    if best_step is not None:
        at = np.flatnonzero(steps == best_step)
        if len(at) and math.isfinite(series[1][0][at[0]]):
            _dot(image, to_x(best_step), to_y(series[1][0][at[0]]), BEST_COLOR)

    legend = [("train", TRAIN_COLOR), ("validation", VALIDATION_COLOR)]
    if best_step is not None:
        legend.append((f"best step {best_step}", BEST_COLOR))
    longest = max(len(label) for label, _ in legend) * _ADVANCE
    x = right - longest - 30
    for i, (label, color) in enumerate(legend):
        y = top + 8 + 12 * i
        image[y : y + 2, x : x + 18] = color
        _text(image, label, x + 24, y - 3)
    return image


def write_png(path: str, history: Sequence[dict], **kwargs) -> str:
    """Renders :func:`render`'s picture and writes it to ``path`` as a PNG."""
    image = render(history, **kwargs)
    tf.io.write_file(path, tf.io.encode_png(image))
    return path


# -- rasterizing ---------------------------------------------------------------


def _padded(lo, hi):
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - 0.05 * span, hi + 0.05 * span


def _ticks(lo, hi, integer=False, target=6):
    """Round tick values (1, 2 or 5 times a power of ten) and their labels."""
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(step, 1)
    decimals = 0 if integer else max(0, -math.floor(math.log10(step)))
    first = math.ceil(lo / step)
    ticks = []
    for k in range(first, math.floor(hi / step) + 1):
        ticks.append((k * step, f"{k * step:.{decimals}f}"))
    return ticks


def _log_ticks(lo, hi):
    """Ticks of a log10 axis from ``lo`` to ``hi`` (in log10 units), labelled in values."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    # 1-2-5 per decade while that stays readable, else the powers of ten alone.
    multiples = (1, 2, 5) if hi - lo <= 3 else (1,)
    ticks = []
    for k in decades:
        for m in multiples:
            u = math.log10(m) + k
            if lo <= u <= hi:
                ticks.append((u, f"{m * 10.0**k:.{max(0, -k)}f}" if k > -5 else f"{m}e{k}"))
    return ticks


def _text(image, text, x, y, color=BLACK, vertical=False, bottom=None):
    mask = text_mask(text)
    if vertical:
        # Rotated a quarter turn counter-clockwise, centred on the plot's height.
        mask = np.rot90(mask)
        y = max(0, (bottom - mask.shape[0]) // 2) if bottom else y
    h, w = mask.shape
    x, y = int(x), int(y)
    region = image[max(y, 0) : y + h, max(x, 0) : x + w]
    mask = mask[max(-y, 0) : max(-y, 0) + region.shape[0], max(-x, 0) : max(-x, 0) + region.shape[1]]
    region[mask] = color


def _line(image, x0, y0, x1, y1, color, thickness=2):
    """A line segment two pixels thick, sampled once per pixel of its length."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 2
    xs = np.rint(np.linspace(x0, x1, n)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n)).astype(int)
    for dx in range(thickness):
        for dy in range(thickness):
            _set(image, ys + dy, xs + dx, color)


def _dot(image, x, y, color, radius=4):
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    inside = dx**2 + dy**2 <= radius**2
    _set(image, np.rint(y).astype(int) + dy[inside], np.rint(x).astype(int) + dx[inside], color)


def _set(image, ys, xs, color):
    keep = (ys >= 0) & (ys < image.shape[0]) & (xs >= 0) & (xs < image.shape[1])
    image[ys[keep], xs[keep]] = color
