"""The learning-curve picture, drawn with matplotlib and written as a PNG.

:func:`write_png` draws two panels over the steps of a fit's history:
cross-entropy on a log axis and accuracy, training dashed and validation
solid, the best step marked, the regularization penalty on the
cross-entropy panel when there is one, and on the accuracy panel (both are
fractions in [0, 1]) the fraction of units max-norm clipped in each
interval when the model has a max-norm constraint. It is the picture that shows
overfitting: validation turning up while training keeps going down.

:func:`figure` builds the matplotlib ``Figure`` on an Agg canvas of its own,
never through pyplot: no display is needed and no global figure state is
touched, so threads and notebooks that use pyplot are not disturbed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lowtf import _files

TRAIN_COLOR = "#1f77b4"  # matplotlib's C0 blue, (31, 119, 180)
VALIDATION_COLOR = "#ff7f0e"  # C1 orange, (255, 127, 14)
BEST_COLOR = "#2ca02c"  # C2 green, (44, 160, 44)
REGULARIZATION_COLOR = "#7f7f7f"  # C7 grey, (127, 127, 127)
CLIPPED_COLOR = "#9467bd"  # C4 purple, (148, 103, 189)
_DPI = 100


def figure(
    history: Sequence[dict],
    *,
    best_step: int | None = None,
    title: str | None = None,
    width: int = 720,
    height: int = 440,
) -> Figure:
    """The learning curves as a matplotlib ``Figure`` with two axes.

    The first axes show the cross-entropies on a log axis (the first
    evaluations' loss often dwarfs the gap that shows overfitting), with the
    regularization loss when any of it is non-zero; the second the
    accuracies, with ``maxnorm_clipped_fraction`` (dash-dotted, labelled
    "max-norm clipped") when any of it is known. A history with no finite
    value at all (a run that diverged at its first evaluation) still gets a
    picture, with empty panels and a note, since that is the run whose
    picture is most wanted.

    Args:
      history: one dict per evaluation with ``step`` and any of the columns
        of :data:`lowtf.train.metrics.COLUMNS` (a fit's ``history`` or the
        rows of history.csv); a missing key, None or a non-finite value
        leaves a gap.
      best_step: the step to mark with a vertical line on both panels and a
        point on each validation curve; default none.
      title: a line of text above the panels; default none.
      width, height: the image size in pixels (default 720 x 440).

    Returns:
      A ``matplotlib.figure.Figure`` attached to an Agg canvas.

    Raises:
      ValueError: ``history`` is empty or a row lacks ``step``, or the size
        is too small for two panels.
    """
    if width < 320 or height < 200:
        raise ValueError(
            f"`width` x `height` ({width}x{height}) must be at least 320x200 pixels "
            "to hold two panels"
        )
    if not history:
        raise ValueError(
            "`history` is empty: there is nothing to plot; pass the history of a fit "
            "that ran at least one evaluation"
        )
    if any("step" not in row for row in history):
        raise ValueError(
            "every row of `history` needs a `step`; pass a fit's history or the rows "
            "of history.csv"
        )
    steps = np.array([row["step"] for row in history], np.float64)

    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    loss_ax.set_yscale("log")
    panels = (
        (loss_ax, "cross_entropy", "cross-entropy (log)"),
        (accuracy_ax, "accuracy", "accuracy"),
    )
    for ax, metric, label in panels:
        train, validation = (
            _values(history, f"train_{metric}"),
            _values(history, f"val_{metric}"),
        )
        ax.plot(steps, train, "--", color=TRAIN_COLOR, lw=1.8, label="train")
        ax.plot(
            steps, validation, "-", color=VALIDATION_COLOR, lw=1.8, label="validation"
        )
        if best_step is not None:
            ax.axvline(
                best_step,
                color=BEST_COLOR,
                ls=":",
                lw=1.5,
                label=f"best step {best_step}",
            )
            at = np.flatnonzero(steps == best_step)
            if len(at) and np.isfinite(validation[at[0]]):
                ax.plot([best_step], [validation[at[0]]], "o", color=BEST_COLOR, ms=6)
        if not (np.isfinite(train).any() or np.isfinite(validation).any()):
            ax.text(0.5, 0.5, "no finite value", transform=ax.transAxes, ha="center")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    penalty = _values(history, "regularization_loss")
    # Zero everywhere (no regularizer) would only add an empty legend entry.
    if np.any(np.nan_to_num(penalty) != 0):
        loss_ax.plot(
            steps,
            penalty,
            ":",
            color=REGULARIZATION_COLOR,
            lw=1.5,
            label="regularization",
        )
    loss_ax.legend(loc="best", fontsize="small")
    clipped = _values(history, "maxnorm_clipped_fraction")
    # None everywhere: the model has no max-norm constraint.
    if np.isfinite(clipped).any():
        accuracy_ax.plot(
            steps, clipped, "-.", color=CLIPPED_COLOR, lw=1.5, label="max-norm clipped"
        )
        accuracy_ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def render(history: Sequence[dict], **kwargs) -> np.ndarray:
    """:func:`figure`'s picture as an RGB ``uint8 [height, width, 3]`` array."""
    fig = figure(history, **kwargs)
    fig.canvas.draw()
    # The figure is opaque: the alpha channel of Agg's buffer is all 255.
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_png(path: str, history: Sequence[dict], **kwargs) -> str:
    """Writes :func:`render`'s picture to ``path`` as a PNG; returns ``path``.

    Written through ``tf.io.gfile`` to ``path + ".tmp"``, then renamed over
    ``path``, so that the model directory may be on any TensorFlow file
    system and a reader never sees half a file.

    Args:
      path: the file to write.
      history: as :func:`figure` takes it.
      **kwargs: :func:`figure`'s ``best_step``, ``title``, ``width`` and
        ``height``.
    """
    _files.write_atomically(path, tf.io.encode_png(render(history, **kwargs)).numpy())
    return path


def _values(history: Sequence[dict], key: str) -> np.ndarray:
    """The ``key`` column as float64, NaN (a gap in a line) where missing or non-finite."""
    values = np.array(
        [np.nan if row.get(key) is None else row[key] for row in history], np.float64
    )
    return np.where(np.isfinite(values), values, np.nan)
