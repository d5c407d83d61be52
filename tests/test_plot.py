"""The learning-curve PNG: where the curves and the best-step mark land."""

import numpy as np
import pytest
import tensorflow as tf

from lowtf.train import plot


def overfitting_history():
    """Training falls steadily; validation bottoms out at step 2000, then rises."""
    steps = np.arange(0, 5001, 100)
    train = np.exp(-steps / 800) + 0.05
    validation = 0.2 + 0.5 * ((steps - 2000) / 3000) ** 2
    return [
        dict(step=int(s), train_cross_entropy=float(t), val_cross_entropy=float(v))
        for s, t, v in zip(steps, train, validation)
    ]


def pixels(image, color):
    """(rows, columns) of every pixel of exactly ``color``."""
    return np.nonzero(np.all(image == color, axis=-1))


def test_curves_and_best_step_land_where_the_numbers_say():
    image = plot.render(overfitting_history(), best_step=2000, width=720, height=440)
    assert image.shape == (440, 720, 3) and image.dtype == np.uint8
    rows, cols = pixels(image, plot.TRAIN_COLOR)
    curve = cols > 100  # leave out the legend's sample line at the top right
    assert len(rows[curve]) > 500
    # Training falls: its pixels on the right sit lower (larger rows) than on the left.
    assert rows[curve & (cols > 600)].mean() > rows[curve & (cols < 200)].mean() + 100
    # Validation is lowest (largest row) where the best step is marked.
    v_rows, v_cols = pixels(image, plot.VALIDATION_COLOR)
    v_curve = v_rows > 80  # below the legend
    bottom = v_rows[v_curve].max()
    lowest_col = v_cols[v_curve & (v_rows >= bottom - 1)].mean()  # the flat bottom's middle
    b_rows, b_cols = pixels(image, plot.BEST_COLOR)
    dashed_col = np.bincount(b_cols).argmax()  # the dashed line's column
    assert abs(lowest_col - dashed_col) <= 3
    assert np.count_nonzero(b_cols == dashed_col) > 100


def test_log_axis_when_the_values_span_decades():
    # 1, 0.1, 0.01 at equal step intervals: a straight line on a log axis.
    history = [
        dict(step=s, train_cross_entropy=t, val_cross_entropy=0.5)
        for s, t in ((0, 1.0), (1000, 0.1), (2000, 0.01))
    ]
    rows_at = {}
    for log_y in (None, False):  # None picks log: the values span 100x
        image = plot.render(history, log_y=log_y)
        rows, cols = pixels(image, plot.TRAIN_COLOR)  # the legend's sample is at 560-600
        rows_at[log_y] = [rows[abs(cols - c) <= 1].mean() for c in (64, 383, 702)]
    top, middle, bottom = rows_at[None]
    assert abs((top + bottom) / 2 - middle) < 3
    top, middle, bottom = rows_at[False]  # linear: 0.1 sits near the bottom
    assert middle - top > 4 * (bottom - middle)
    assert [label for _, label in plot._log_ticks(-2.1, 0.1)] == [
        "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1",
    ]  # fmt: skip


def test_png_round_trip(tmp_path):
    history = overfitting_history()
    path = plot.write_png(str(tmp_path / "curves.png"), history, best_step=2000, title="run 1")
    decoded = tf.io.decode_png(tf.io.read_file(path)).numpy()
    np.testing.assert_array_equal(decoded, plot.render(history, best_step=2000, title="run 1"))


def test_gaps_for_non_finite_values():
    history = overfitting_history()
    history[-1]["val_cross_entropy"] = float("nan")  # the run diverged at the end
    history[0]["train_cross_entropy"] = None  # no training mean before step 1
    image = plot.render(history)
    assert pixels(image, plot.BEST_COLOR)[0].size == 0  # no best step, no mark
    # The NaN is not drawn: no validation pixel in the last segment's columns.
    v_rows, v_cols = pixels(image, plot.VALIDATION_COLOR)
    assert v_cols[v_rows > 80].max() < 720 - 16 - 8
    t_rows, t_cols = pixels(image, plot.TRAIN_COLOR)
    assert t_cols[t_rows > 80].min() > 62 + 8  # nor the missing first training point


def test_font_bitmaps():
    zero = plot.glyph("0")
    assert zero.shape == (7, 5)
    assert zero[0].tolist() == [False, True, True, True, False]  # the top of the 0
    assert zero[:, 0].tolist() == [False] + [True] * 5 + [False]  # its left side
    np.testing.assert_array_equal(plot.glyph("a"), plot.glyph("A"))
    np.testing.assert_array_equal(plot.glyph("\u00e9"), plot.glyph("?"))
    mask = plot.text_mask("10")
    assert mask.shape == (7, 11)
    np.testing.assert_array_equal(mask[:, 6:], zero)
    assert not mask[:, 5].any()  # one blank column between glyphs


def test_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="`history` is empty"):
        plot.render([])
    with pytest.raises(ValueError, match="lack val_cross_entropy"):
        plot.render([dict(step=0, train_cross_entropy=1.0)])
    with pytest.raises(ValueError, match="no finite value"):
        plot.render([dict(step=0, train_cross_entropy=np.inf, val_cross_entropy=np.nan)])
    with pytest.raises(ValueError, match="at least 200x120"):
        plot.render(overfitting_history(), width=50)
