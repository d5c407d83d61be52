"""The one record of a training step's metrics and of an evaluation.

Every name a user sees for a metric is defined here and nowhere else: the
keys of the dict a :class:`~lowtf.TrainStep` returns (:data:`STEP_METRICS`),
the columns of history.csv, the monitors early stopping and
``bin/train --monitor`` accept, the TensorBoard tags, summary.json's fields
and the progress line all derive from :class:`Evaluation`'s fields.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

# What one training step (or the mean of N steps) reports, in this order.
STEP_METRICS = ("cross_entropy", "regularization_loss", "total_loss", "accuracy")
# What a loop of steps sums: the mean total is the sum of the two loss means,
# one addition that no graph rewrite can reorder, so a run and its rerun
# report the same digits.
SUMMED_METRICS = ("cross_entropy", "regularization_loss", "accuracy")


def means_of_sums(totals: dict, num_steps) -> dict:
    """The STEP_METRICS of ``num_steps`` steps, from their SUMMED_METRICS sums."""
    count = tf.cast(num_steps, tf.float32)
    means = {name: value / count for name, value in totals.items()}
    means["total_loss"] = means["cross_entropy"] + means["regularization_loss"]
    return {name: means[name] for name in STEP_METRICS}


def _field(*, monitor: str | None, board: tuple[str, str] | None, label: str = ""):
    """A field of :class:`Evaluation` and how the rest of lowtf uses it.

    Args:
      monitor: "min" or "max" if early stopping may monitor it (the direction
        of improvement that ``mode="auto"`` takes), else None.
      board: the TensorBoard (run, tag) it is written under, or None.
      label: its short name in the progress line; "" leaves it out.
    """
    return dataclasses.field(
        default=None, metadata={"monitor": monitor, "board": board, "label": label}
    )


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The metrics of one evaluation, at one global step (a history.csv row).

    The training metrics are the means over the steps since the previous
    evaluation (None at step 0, before any step); the validation metrics are
    of the whole validation set in inference mode; ``regularization_loss`` is
    the penalty the last steps added to the cross-entropy.
    ``maxnorm_clipped_fraction`` is the fraction of max-norm-capped units
    whose cap bound (clipped the unit) at any step since the previous
    evaluation, a diagnostic of how hard the constraint works (None at step
    0, and for a model without a lowtf max-norm constraint).
    """

    step: int = 0
    train_cross_entropy: float | None = _field(
        monitor="min", board=("train", "cross_entropy"), label="train ce"
    )
    train_accuracy: float | None = _field(
        monitor="max", board=("train", "accuracy"), label="acc"
    )
    val_cross_entropy: float | None = _field(
        monitor="min", board=("validation", "cross_entropy"), label="val ce"
    )
    val_accuracy: float | None = _field(
        monitor="max", board=("validation", "accuracy"), label="acc"
    )
    regularization_loss: float | None = _field(
        monitor="min", board=("train", "regularization_loss"), label="reg"
    )
    total_loss: float | None = _field(monitor="min", board=("train", "total_loss"))
    learning_rate: float | None = _field(monitor=None, board=("train", "learning_rate"))
    maxnorm_clipped_fraction: float | None = _field(
        monitor=None, board=("train", "maxnorm_clipped_fraction")
    )

    def as_dict(self) -> dict:
        """The record as a dict in column order (None for a missing value)."""
        return dataclasses.asdict(self)

    def monitored(self) -> dict[str, float]:
        """The monitorable metrics, a missing one as NaN (what early stopping reads)."""
        return {
            name: math.nan if getattr(self, name) is None else getattr(self, name)
            for name in MONITORS
        }

    def board(self) -> dict[str, dict[str, float]]:
        """The TensorBoard scalars by run: ``{"train": {tag: value}, ...}``.

        The validation run also gets ``total_loss``: the validation
        cross-entropy plus the same penalty, the objective on held-out data.
        """
        runs: dict[str, dict[str, float]] = {"train": {}, "validation": {}}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("board") and value is not None:
                run, tag = f.metadata["board"]
                runs[run][tag] = value
        if self.val_cross_entropy is not None and self.regularization_loss is not None:
            runs["validation"]["regularization_loss"] = self.regularization_loss
            runs["validation"]["total_loss"] = (
                self.val_cross_entropy + self.regularization_loss
            )
        return runs

    def progress(self) -> str:
        """The metrics part of the progress line, e.g. ``train ce 0.3102 acc 0.912 ...``.

        Cross-entropies with 4 decimals, accuracies with 3 (a step of 1/300
        on 300 validation rows), the penalty with 3 digits and left out while
        it is 0 (no L1/L2 penalty). Two spaces separate the train, validation
        and penalty groups.
        """
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata.get("label"):
                continue
            if f.name == "regularization_loss":
                if value:
                    parts.append(f"  {f.metadata['label']} {format_number(value, '.3g')}")
                continue
            spec = ".3f" if f.name.endswith("accuracy") else ".4f"
            glue = "  " if f.name == "val_cross_entropy" else " "
            parts.append(f"{glue}{f.metadata['label']} {format_number(value, spec)}")
        return "".join(parts).strip()

    @classmethod
    def from_dict(cls, row: dict) -> Evaluation:
        """The record of a dict holding (at least) ``step``; other keys are ignored."""
        return cls(**{name: row.get(name) for name in COLUMNS})


COLUMNS = tuple(f.name for f in dataclasses.fields(Evaluation))
MONITORS = tuple(
    f.name for f in dataclasses.fields(Evaluation) if f.metadata.get("monitor")
)


def monitor_mode(monitor: str) -> str:
    """The direction in which ``monitor`` improves: "min" or "max"."""
    for f in dataclasses.fields(Evaluation):
        if f.name == monitor and f.metadata.get("monitor"):
            return f.metadata["monitor"]
    raise ValueError(f"`monitor` ({monitor!r}) must be one of {', '.join(MONITORS)}")


def format_number(value, spec: str = ".4f") -> str:
    """``value`` formatted by ``spec``, or "-" when missing."""
    return "-" if value is None else format(value, spec)
