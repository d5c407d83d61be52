"""The learning-curve picture: what the Figure holds and the PNG that is written."""

import matplotlib.colors
import matplotlib.text
import numpy as np
import pytest
import tensorflow as tf

from lowtf.train import plot
from lowtf.train.metrics import COLUMNS


def overfitting_history():
    """Training falls steadily; validation bottoms out at step 2000, then rises."""
    steps = np.arange(0, 5001, 500)
    train = np.exp(-steps / 800) + 0.05
    validation = 0.2 + 0.5 * ((steps - 2000) / 3000) ** 2
    rows = [
        dict.fromkeys(COLUMNS)
        | {
            "step": int(s),
            "train_cross_entropy": float(t),
            "val_cross_entropy": float(v),
            "train_accuracy": float(1 - t / 2),
            "val_accuracy": float(1 - v),
            "regularization_loss": 0.01,
            "learning_rate": 0.1,
        }
        for s, t, v in zip(steps, train, validation)
    ]
    # A fit has no training means at step 0, before any step.
    rows[0].update(train_cross_entropy=None, train_accuracy=None)
    return rows


def lines(ax):
    """The plotted lines of ``ax`` by legend label (None for the best-step point)."""
    return {
        (None if line.get_label().startswith("_") else line.get_label()): line
        for line in ax.get_lines()
    }


def ydata(line):
    return np.asarray(line.get_ydata(), np.float64)


def test_figure_holds_the_history():
    history = overfitting_history()
    fig = plot.figure(history, best_step=2000, title="run 1")
    loss_ax, accuracy_ax = fig.axes
    assert len(fig.axes) == 2
    assert (loss_ax.get_yscale(), accuracy_ax.get_yscale()) == ("log", "linear")
    assert "run 1" in [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    steps = [row["step"] for row in history]
    for ax, metric in ((loss_ax, "cross_entropy"), (accuracy_ax, "accuracy")):
        drawn = lines(ax)
        train, validation = drawn["train"], drawn["validation"]
        # Train dashed, validation solid, both at the history's steps and values;
        # the missing step-0 training mean is a gap (NaN), not a zero.
        assert (train.get_linestyle(), validation.get_linestyle()) == ("--", "-")
        np.testing.assert_array_equal(train.get_xdata(), steps)
        np.testing.assert_array_equal(
            ydata(train), [np.nan] + [r[f"train_{metric}"] for r in history[1:]]
        )
        np.testing.assert_array_equal(
            ydata(validation), [r[f"val_{metric}"] for r in history]
        )
        # The best step: a vertical line and a point on the validation curve.
        best = drawn["best step 2000"]
        np.testing.assert_array_equal(best.get_xdata(), [2000, 2000])
        point = drawn[None]
        assert point.get_xdata() == [2000]
        assert point.get_ydata() == [history[4][f"val_{metric}"]]
    # The validation cross-entropy's lowest point is the marked one.
    val_ce = ydata(lines(loss_ax)["validation"])
    assert steps[int(np.argmin(val_ce))] == 2000
    np.testing.assert_array_equal(ydata(lines(loss_ax)["regularization"]), 0.01)
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
        "train", "validation", "best step 2000", "regularization",
    ]  # fmt: skip


def test_no_penalty_line_without_a_penalty_nor_a_mark_without_a_best_step():
    history = overfitting_history()
    for row in history:
        row["regularization_loss"] = 0.0
    history[-1]["val_cross_entropy"] = float("inf")  # the run diverged at the end
    loss_ax, accuracy_ax = plot.figure(history).axes
    assert set(lines(loss_ax)) == set(lines(accuracy_ax)) == {"train", "validation"}
    assert np.isnan(ydata(lines(loss_ax)["validation"])[-1])  # a gap, not inf


def test_the_max_norm_diagnostic_is_a_curve_on_the_accuracy_panel():
    history = overfitting_history()
    assert "max-norm clipped" not in lines(plot.figure(history).axes[1])
    fractions = [None] + [0.5 / (1 + i) for i in range(len(history) - 1)]
    for row, fraction in zip(history, fractions):
        row["maxnorm_clipped_fraction"] = fraction
    loss_ax, accuracy_ax = plot.figure(history).axes
    curve = lines(accuracy_ax)["max-norm clipped"]
    assert "max-norm clipped" not in lines(loss_ax)
    assert curve.get_linestyle() == "-."
    np.testing.assert_array_equal(ydata(curve), [np.nan, *fractions[1:]])
    assert [t.get_text() for t in accuracy_ax.get_legend().get_texts()] == [
        "train", "validation", "max-norm clipped",
    ]  # fmt: skip


def test_png_is_the_rendered_picture(tmp_path):
    history = overfitting_history()
    path = plot.write_png(
        str(tmp_path / "curves.png"), history, best_step=2000, title="run 1"
    )
    assert path == str(tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no .tmp left
    decoded = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert decoded.shape == (440, 720, 3)
    expected = plot.render(history, best_step=2000, title="run 1")
    np.testing.assert_array_equal(decoded, expected)
    # The curves' colours are in the picture, drawn solid somewhere.
    for color in (plot.TRAIN_COLOR, plot.VALIDATION_COLOR, plot.BEST_COLOR):
        rgb = np.round(np.array(matplotlib.colors.to_rgb(color)) * 255)
        assert np.all(decoded == rgb, axis=-1).sum() > 50


def test_png_on_a_tensorflow_file_system():
    path = "ram://plot_test/run/curves.png"
    plot.write_png(path, overfitting_history(), width=400, height=300)
    plot.write_png(path, overfitting_history()[:3], best_step=500)  # overwrites it
    assert tf.io.gfile.listdir("ram://plot_test/run") == ["curves.png"]
    assert tf.io.decode_png(tf.io.read_file(path)).shape == (440, 720, 3)


def test_a_history_with_no_finite_value_is_still_drawn():
    # A run that diverged at its first evaluation: the picture says so.
    history = [
        {"step": 0, "train_cross_entropy": None, "val_cross_entropy": float("nan")}
    ]
    fig = plot.figure(history, best_step=0)
    for ax in fig.axes:
        assert [t.get_text() for t in ax.texts] == ["no finite value"]
        assert np.isnan(ydata(lines(ax)["validation"])).all()
    assert plot.render(history).shape == (440, 720, 3)


def test_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="`history` is empty"):
        plot.figure([])
    with pytest.raises(ValueError, match="needs a `step`"):
        plot.figure([{"train_cross_entropy": 1.0}])
    with pytest.raises(ValueError, match=r"\(50x440\) must be at least 320x200"):
        plot.figure(overfitting_history(), width=50)
