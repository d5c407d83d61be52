"""The sweep's report: results.csv, results.md, curves.png and scores.png.

results.csv holds every configuration with every setting a sweep can vary
(each row says what it trained) and the ``bin/train`` command that trains
it alone; results.md the ranking by the settings swept, the winner's
command and, per swept setting, the score against each of its values;
scores.png draws the same (a log axis for the learning rate and the other
settings of a log scale). Every file goes through ``tf.io.gfile`` (any
TensorFlow file system), whole or not at all. The pictures are drawn as
:mod:`lowtf.train.plot` draws: a matplotlib ``Figure`` on its own Agg
canvas, never pyplot.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lowtf import _files
from lowtf.job import run as job_lib
from lowtf.job.flags import BY_NAME
from lowtf.job.run import write_text
from lowtf.sweep.config import ARCHITECTURE, SWEPT, Range
from lowtf.sweep.ensemble import METRICS

CSV_COLUMNS = (
    "rank", "winner", *SWEPT, "status", "score_mean", "score_std", "folds",
    "best_step", "gap", "wall_seconds", "trial", "command",
)  # fmt: skip
WINNER_COLOR = "#d62728"  # C3 red: the one line that must stand out
_DPI = 100


def write(config, rows, sweep_dir: str, *, command: str | None, test, ensemble=None) -> None:
    """Writes results.csv, results.md, curves.png and scores.png into ``sweep_dir``.

    ``ensemble``: the chosen ensemble's record (:func:`lowtf.sweep.ensemble.select`),
    or None.
    """
    write_text(os.path.join(sweep_dir, "results.csv"), csv_text(rows))
    write_text(
        os.path.join(sweep_dir, "results.md"),
        markdown(config, rows, command=command, test=test, ensemble=ensemble),
    )
    _save(curves_figure(rows, config.job.monitor), os.path.join(sweep_dir, "curves.png"))
    figure = scores_figure(config, rows)
    if figure is not None:
        _save(figure, os.path.join(sweep_dir, "scores.png"))


def csv_text(rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for rank, r in enumerate(rows, 1):
        cells = {"rank": rank, **r}
        writer.writerow(["" if _missing(cells[c]) else cells[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def markdown(config, rows, *, command: str | None, test, ensemble=None) -> str:
    folds = "validation split" if config.folds == 1 else f"{config.folds}-fold CV"
    monitor = config.job.monitor
    # Sampled values print to 4 significant digits here; results.csv and the
    # commands keep every digit.
    ranges = ", ".join(f"{n} in {v}" for n, v in config.ranges().items())
    swept = config.swept_names()
    lines = [
        f"# Sweep: {config.job.dataset}, {len(rows)} configurations",
        "",
        *([f"Sampled by TPE: {ranges}.", ""] if ranges else []),
        (
            f"Score: {monitor} at each member's best step ({folds}; mean ± std "
            "over folds). Gap: train minus validation cross-entropy there. Wall time: "
            "the population's, shared among its configurations. Each configuration "
            "alone is the `bin/train` command in results.csv."
        ),
        "",
        "| rank | " + "".join(f"{n} | " for n in swept) + "score | best step | gap | wall s |",
        "|---" * (len(swept) + 5) + "|",
    ]
    for rank, r in enumerate(rows, 1):
        mark = " **winner**" if r.get("winner") else ""
        gap = "" if _missing(r["gap"]) else f"{r['gap']:+.4f}"
        values = "".join(f"{_short(r[n])} | " for n in swept)
        lines.append(
            f"| {rank}{mark} | {values}{_score(r)} | {r['best_step']} | {gap} | "
            f"{r['wall_seconds']:.1f} |"
        )
    lines.append("")
    if command:
        lines += ["The winner, alone, as `bin/train` runs it:", "", f"    {command}", ""]
    if test is not None and test.stop_reason == "interrupted":
        lines.append(
            f"The winner's retraining was interrupted at step {test.last_step}, before "
            "its end: it has no test score yet. Rerun the same command to finish it."
        )
        lines.append("")
    elif test is not None:
        lines.append(
            f"Winner retrained on all training rows (early stopping on the validation "
            f"split, best step {test.best_step}): test accuracy {test.test_accuracy:.4f}, "
            f"test cross-entropy {test.test_cross_entropy:.4f}."
        )
        lines.append("")
    if ensemble is not None:
        lines += ensemble_lines(config, ensemble)
    lines += _per_setting(config, rows)
    return "\n".join(lines)


def ensemble_lines(config, record: dict) -> list[str]:
    """results.md's ensemble section: its members with their weights, then the
    winner's and the ensemble's scores side by side (validation; test once scored)."""
    swept = config.swept_names()
    lines = [
        (
            f"## Ensemble: {_count(len(record['members']), 'configuration')} in "
            f"{_count(record['picks'], 'pick')} (at most {record['max_picks']})"
        ),
        "",
        (
            f"Greedy forward selection with replacement (Caruana et al. 2004) over the "
            f"{record['candidates']} configurations that trained, on the "
            f"{record['scored_on']} only: each pick adds the configuration that lowers the "
            "cross-entropy of the averaged probabilities most, the best prefix of picks is "
            "kept, and a configuration's weight is its share of the picks"
            + (
                "; its fold models share it equally."
                if record["folds"] > 1
                else "."
            )
            + " `bin/export --sweep_dir` exports it (`--export_dir` exports the winner)."
        ),
        "",
        "| rank | " + "".join(f"{n} | " for n in swept) + "picks | weight | score | validation CE |",
        "|---" * (len(swept) + 5) + "|",
    ]
    for m in record["members"]:
        values = "".join(f"{_short(m['point'].get(n, ''))} | " for n in swept)
        lines.append(
            f"| {m['rank']} | {values}{m['picks']} | {m['weight']:.3f} | "
            f"{m['score_mean']:.4f} | {m['validation']['cross_entropy']:.4f} |"
        )
    lines += [
        "",
        "| | validation CE | validation accuracy | validation ECE | test accuracy | test CE | test ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    v, t = record["validation"], record["test"] or {}
    for label, name in (("winner", "winner"), ("ensemble", "ensemble")):
        val, test = v.get(name), t.get(name)
        cells = [f"{val[m]:.4f}" if val else "" for m in METRICS]
        cells += [f"{test[m]:.4f}" if test else "" for m in ("accuracy", "cross_entropy", "calibration_error")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = v["best_member"]
    lines += [
        "",
        (
            f"Validation scores are of the predictions selection read ({record['scored_on']}); "
            f"the best configuration alone there: cross-entropy {best['cross_entropy']:.4f}. "
            "ECE: expected calibration error, 15 equal-width bins."
            + ("" if record["test"] else " No test scores yet: the sweep scores the test split once, at its end.")
        ),
        "",
    ]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _per_setting(config, rows) -> list[str]:
    """Per swept setting, the best and mean score of the configurations at each value.

    A range's values are the sampled ones, grouped in its quartiles.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or not config.swept:
        return []
    pick = max if "accuracy" in config.job.monitor else min
    lines = ["## Score against each swept setting", ""]
    for name, space in config.swept.items():
        groups: dict = {}
        if isinstance(space, Range):
            values = sorted(r[name] for r in ok)
            edges = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
            for r in ok:
                i = min(int(np.searchsorted(edges, r[name], side="right")) - 1, 3)
                groups.setdefault(f"{_short(edges[i])}..{_short(edges[i + 1])}", []).append(r)
        else:
            for v in space:
                groups[_short(v)] = [r for r in ok if r[name] == v]
        lines += [f"| {name} | best | mean | configurations |", "|---|---|---|---|"]
        for label, mine in groups.items():
            if mine:
                scores = [r["score_mean"] for r in mine]
                lines.append(
                    f"| {label} | {pick(scores):.4f} | {np.mean(scores):.4f} | {len(mine)} |"
                )
        lines.append("")
    return lines


def _score(row) -> str:
    if row["status"] != "ok":
        return "diverged"
    return f"{row['score_mean']:.4f} ± {row['score_std']:.4f}"


def read_test(winner_dir: str, flags_text: str):
    """The winner's earlier retraining in ``winner_dir``, if it trained this winner.

    Returns the :class:`lowtf.job.JobResult` of its summary.json when its
    flags.txt is ``flags_text`` (the same configuration, retrained as now),
    else None: a ``--noretrain`` rerun keeps the test line of a retraining
    that an earlier run did.
    """
    flags = _files.read_text(os.path.join(winner_dir, job_lib.FLAGS_FILE))
    summary = _files.read_text(os.path.join(winner_dir, job_lib.SUMMARY_FILE))
    if flags != flags_text or summary is None:
        return None
    try:
        fields = json.loads(summary)
        # The fields it holds (one written without the optional ones, e.g.
        # an ensemble's, leaves them to their defaults).
        return job_lib.JobResult(
            **{
                f.name: fields[f.name]
                for f in dataclasses.fields(job_lib.JobResult)
                if f.name in fields
            }
        )
    except (ValueError, TypeError):
        return None  # not a summary this lowtf wrote: no line rather than a wrong one


def curves_figure(rows, monitor: str) -> Figure:
    """Validation (solid) and training (dashed) cross-entropy of every configuration."""
    fig = Figure(figsize=(8, 5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_yscale("log")
    # The default cycle without its red (C3), which marks the winner.
    palette = [f"C{i}" for i in range(10) if i != 3]
    colors = [palette[i % len(palette)] for i in range(len(rows))]
    varying = [n for n in SWEPT if len({repr(r.get(n)) for r in rows}) > 1]
    # The winner last, so that it is drawn over the others.
    order = sorted(range(len(rows)), key=lambda i: bool(rows[i].get("winner")))
    for i in order:
        r = rows[i]
        curve = r["curve"]
        steps = np.asarray(curve["step"], np.float64)
        win = bool(r.get("winner"))
        color, width, alpha = (WINNER_COLOR, 2.6, 1.0) if win else (colors[i], 1.0, 0.6)
        label = ": ".join(
            part for part in ("winner" if win else "", _label(r, varying)) if part
        )
        ax.plot(steps, _floats(curve["val"]), "-", color=color, lw=width, alpha=alpha,
                label=label if (win or len(rows) <= 12) else None)  # fmt: skip
        ax.plot(steps, _floats(curve["train"]), "--", color=color, lw=width * 0.7,
                alpha=alpha * 0.8)  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (log): validation solid, train dashed")
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[1]:  # one configuration alone has no label
        ax.legend(loc="best", fontsize="x-small")
    ax.set_title(f"{len(rows)} configurations (score: {monitor})")
    return fig


def scores_figure(config, rows) -> Figure | None:
    """The score against each swept setting; one line per value of another one.

    A listed setting: each point is the best score over the settings neither
    on the axis nor the line; numbers of a log scale (the learning rate,
    weight decay, L1, L2) all above 0 at their values on a log axis, other
    values at categorical positions. A range: every configuration's score
    against its sampled value (a log axis for a log range), coloured by the
    other listed setting. None when nothing is swept.
    """
    swept = config.swept_names()
    if not swept:
        return None
    space = config.search_space()
    monitor = config.job.monitor
    ok = [r for r in rows if r["status"] == "ok"]
    fig = Figure(figsize=(4.2 * len(swept), 4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(swept)))
    pick = max if "accuracy" in monitor else min
    for ax, name in zip(axes, swept):
        # Lines (or colours) need a listed setting: a range has no values to
        # draw one line per.
        others = [n for n in swept if n != name and not isinstance(space[n], Range)]
        line_by = others[0] if others else None
        series = space[line_by] if line_by else [None]
        if isinstance(space[name], Range):
            for i, v_line in enumerate(series):
                mine = [r for r in ok if line_by is None or r[line_by] == v_line]
                ax.plot(
                    [r[name] for r in mine],
                    [r["score_mean"] for r in mine],
                    "o",
                    color=f"C{i % 10}",
                    alpha=0.8,
                    label=f"{line_by}={_short(v_line)}" if line_by else None,
                )
            win = [r for r in ok if r.get("winner")]
            ax.plot([r[name] for r in win], [r["score_mean"] for r in win], "*",
                    color=WINNER_COLOR, ms=14, label="winner" if win else None)  # fmt: skip
            if space[name].log:
                ax.set_xscale("log")
            ax.set_xlim(space[name].low, space[name].high)
            ax.set_ylabel(monitor)
        else:
            values = space[name]
            # A log scale's numbers at their values (a swept list often holds
            # 0, which no log axis can show: then categorical positions).
            logged = _log_scale(name) and all(_positive(v) for v in values)
            xs = values if logged else list(range(len(values)))
            for v_line in series:
                ys = []
                for v in values:
                    scores = [
                        r["score_mean"]
                        for r in ok
                        if r[name] == v and (line_by is None or r[line_by] == v_line)
                    ]
                    ys.append(pick(scores) if scores else math.nan)
                label = f"{line_by}={_short(v_line)}" if line_by else None
                ax.plot(xs, ys, "o-", label=label)
            if logged:
                ax.set_xscale("log")
            else:
                ax.set_xticks(xs, [_short(v) for v in values])
            ax.set_ylabel(f"{monitor} (best over the rest)")
        ax.set_xlabel(name)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize="x-small")
    return fig


def _log_scale(name: str) -> bool:
    return name != ARCHITECTURE and name in BY_NAME and BY_NAME[name].log


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _save(fig: Figure, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _files.write_atomically(path, buffer.getvalue())


def _label(row, names) -> str:
    """``name=value`` of ``names``, the settings that differ between rows."""
    return " ".join(f"{n}={_short(row.get(n))}" for n in names)


def _short(value) -> str:
    """A float to 4 significant digits where it has more (a sampled one)."""
    if not isinstance(value, float):
        return str(value)
    short = f"{value:.4g}"
    return str(value) if float(short) == value else short


def _floats(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], np.float64)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
