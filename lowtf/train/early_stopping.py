"""Early stopping by steps, with a "best" tf.train.Checkpoint snapshot.

The technique, as lowtf's source article describes it:

1. evaluate the model on the validation set every N steps (e.g. 100);
2. save a "best" snapshot whenever the monitored metric beats the best so far
   (by more than ``min_delta``);
3. once the steps since that best reach a patience limit (e.g. 4000 steps),
   stop and go back to the best snapshot.

:class:`EarlyStopping` is a small ``tf.Module``: its state (best value, best
step, steps without progress) lives in variables, so it goes into the same
checkpoint as the model and a resumed run keeps counting where it was.

A snapshot is written so that a crash at any moment leaves a restorable one.
Each is saved under a fresh prefix (``best-<step>-<n>``, never overwriting a
file), and only after it is complete does the small pointer file
``best.json`` move to it: written to ``best.json.tmp``, then renamed over
the old one (atomic on POSIX). Every file goes through ``tf.io.gfile``, so
``best_dir`` may be on any TensorFlow file system (``gs://``, ``ram://``). Older
snapshots are deleted after that, or, with ``prune_on_save=False``, only
when the caller says the new state is durable (:meth:`EarlyStopping.prune`,
which the trainer calls after each "latest" checkpoint): a run resumed from
an older checkpoint then still finds the snapshot its restored state names.

The rule itself (what improves, when the patience restarts, when it is used
up) is :func:`update_members`, on ``[K]`` NumPy arrays, and the one class
that holds its state is :class:`EarlyStopping`: one model's (K = 1, scalar
variables, :meth:`EarlyStopping.update`) or K members' (``size=K``, ``[K]``
variables, :meth:`EarlyStopping.update_members`, what a
:class:`lowtf.Population` holds).
The snapshot writer is :func:`write_snapshot` (and :func:`prune_snapshots`):
one model's snapshot and a population's stacked best weights are written,
pointed at and pruned alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import numpy as np
import tensorflow as tf

from lowtf import _checks, _files
from lowtf.train import metrics

MODES = ("auto", "min", "max")
POINTER = "best.json"
# A snapshot's files, and the temporary ones TensorFlow writes while saving.
_SNAPSHOT = re.compile(r"^best-(\d+)-(\d+)([._].*)?$")


def resolve_mode(monitor: str, mode: str) -> str:
    """``"auto"`` is ``"max"`` for an accuracy, ``"min"`` for anything else."""
    _checks.one_of("mode", mode, MODES)
    if mode != "auto":
        return mode
    if monitor in metrics.MONITORS:
        return metrics.monitor_mode(monitor)
    # A metric of the user's own loop: accuracies improve upwards, as in Keras.
    return "max" if "accuracy" in monitor else "min"


@dataclasses.dataclass(frozen=True)
class MemberUpdate:
    """What one evaluation does to K members' early stopping (``[K]`` arrays).

    Attributes:
      improved: bool, whose value beat its best by more than ``min_delta``.
      best_value: float64, the best values after the evaluation.
      best_step: int64, the steps of those best values (-1: none yet).
      patience_from: int64, the step each member's patience counts from.
      stopped: bool, whose patience is used up at this evaluation.
    """

    improved: np.ndarray
    best_value: np.ndarray
    best_step: np.ndarray
    patience_from: np.ndarray
    stopped: np.ndarray


def update_members(
    step: int,
    value,
    *,
    best_value,
    best_step,
    patience_from,
    mode: str,
    patience,
    min_delta=0.0,
    baseline=None,
    start_from_step: int = 0,
    active=True,
) -> MemberUpdate:
    """The early-stopping rule for K members at one evaluation, written once.

    Keras' ``EarlyStopping`` in global steps: a value improves when it beats
    the best by more than ``min_delta`` (a NaN never does, the first finite
    value always does); the patience counts from the first evaluation, and
    restarts at each improvement that also beats ``baseline`` (any
    improvement when it is None); it is used up once ``step - patience_from
    >= patience`` at a step at or past ``start_from_step``, after a best was
    recorded. Members not ``active`` (stopped already) are left as they are.

    Args:
      step: the global step of the evaluation.
      value: ``[K]`` monitored values (or one number for K = 1).
      best_value, best_step, patience_from: ``[K]`` state before the update
        (``patience_from`` -1 before the first evaluation).
      mode: ``"min"`` or ``"max"`` (resolved, see :func:`resolve_mode`).
      patience, min_delta: numbers or ``[K]`` arrays.
      baseline: None, a number or ``[K]`` numbers.
      start_from_step: no stop at a step below this (default 0).
      active: ``[K]`` bools or one, who is updated (default True: all).

    Returns:
      A :class:`MemberUpdate` of the state after the evaluation.
    """
    value = np.asarray(value, np.float64)
    best_value = np.asarray(best_value, np.float64)
    active = np.broadcast_to(np.asarray(active, bool), value.shape)
    improved = _beats(value, best_value, mode, min_delta) & active
    first = active & (np.asarray(patience_from) < 0)
    patience_from = np.where(first, step, patience_from)
    restarts = improved
    if baseline is not None:
        baseline = np.asarray(baseline, np.float64)
        restarts = improved & _beats(value, baseline, mode, min_delta)
    patience_from = np.where(restarts, step, patience_from).astype(np.int64)
    best_step = np.where(improved, step, best_step).astype(np.int64)
    stopped = active & patience_used_up(
        best_step, step, patience_from, patience, start_from_step
    )
    return MemberUpdate(
        improved=improved,
        best_value=np.where(improved, value, best_value),
        best_step=best_step,
        patience_from=patience_from,
        stopped=stopped,
    )


def patience_used_up(best_step, last_step, patience_from, patience, start_from_step):
    """Whether the patience is used up (elementwise): the stop condition alone."""
    return (
        (np.asarray(best_step) >= 0)
        & (np.asarray(last_step) >= start_from_step)
        & (np.asarray(last_step) - np.asarray(patience_from) >= patience)
    )


def _beats(value, reference, mode: str, min_delta):
    with np.errstate(invalid="ignore"):  # a NaN compares False: it never beats
        if mode == "min":
            return value < reference - min_delta
        return value > reference + min_delta


class EarlyStopping(tf.Module):
    """Step-based patience with a best snapshot; usable from any loop.

    >>> ckpt = tf.train.Checkpoint(model=model)
    >>> stopper = lowtf.EarlyStopping(
    ...     patience=4000, best_dir="run/best", checkpoint=ckpt)
    >>> while not done:
    ...     ...  # train 100 steps
    ...     if stopper.update(step, {"val_cross_entropy": evaluate()}):
    ...         break
    >>> stopper.restore_best()

    The arguments are those of ``tf.keras.callbacks.EarlyStopping``, counted
    in global steps instead of epochs: ``start_from_step`` is Keras'
    ``start_from_epoch``. Two differences, on purpose: the best weights are a
    ``tf.train.Checkpoint`` snapshot on disk (``best_dir``), not a copy in
    memory, so they survive a crash and a resume; and ``patience`` defaults to
    1000 steps (Keras: 0 epochs), the default of :class:`lowtf.TrainConfig`
    and ``bin/train``.

    Args:
      monitor: key of the metrics dict to watch, default
        ``"val_cross_entropy"`` (the validation cross-entropy, not the total
        loss, which carries the regularization term).
      mode: ``"min"``, ``"max"`` or ``"auto"`` (default: max when the name
        contains "accuracy", else min).
      patience: steps without improvement after which to stop, default 1000.
        Training stops at the first update whose step is at least
        ``best_step + patience``.
      min_delta: an improvement must beat the best by more than this
        (default 0.0: any improvement counts).
      baseline: a value the monitored metric must beat (by ``min_delta``) for
        an improvement to restart the patience, as in Keras; None (default)
        means any improvement does. The best is tracked all the same.
      restore_best_weights: when :meth:`update` signals the stop, restore the
        best snapshot into the checkpointed objects first (default False, as
        in Keras; :meth:`restore_best` does it on demand). Needs ``best_dir``.
      start_from_step: no stop is signalled at a step below this (default 0).
        The best is tracked from the start all the same.
      best_dir: directory of the best snapshot; None (default) tracks the best
        without saving anything.
      checkpoint: the ``tf.train.Checkpoint`` to snapshot (any other
        trackable is wrapped as the root of one); required with ``best_dir``.
      prune_on_save: delete the previous snapshot as soon as a new one is
        complete (default True). Pass False when the early-stopping state
        itself is checkpointed, and call :meth:`prune` after each checkpoint.
      size: None (default) for one model; K for K members (a
        :class:`lowtf.Population`'s): the state variables are then ``[K]``,
        ``patience``, ``min_delta`` and ``baseline`` may be K values, and
        :meth:`update_members` takes K values (the caller keeps each
        member's best weights; ``best_dir`` does not apply).
      name: module name.
    """

    def __init__(
        self,
        *,
        monitor: str = "val_cross_entropy",
        mode: str = "auto",
        patience: int = 1000,
        min_delta: float = 0.0,
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_step: int = 0,
        best_dir: str | None = None,
        checkpoint=None,
        prune_on_save: bool = True,
        size: int | None = None,
        name: str | None = "early_stopping",
    ):
        super().__init__(name=name)
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` ({monitor!r}) must be a metric name")
        if size is None:
            _checks.positive_int("patience", patience)
            _checks.non_negative("min_delta", min_delta)
            if baseline is not None:
                _checks.finite("baseline", baseline)
            patience, min_delta = int(patience), float(min_delta)
            baseline = None if baseline is None else float(baseline)
        else:
            _checks.positive_int("size", size)
            if best_dir is not None:
                raise ValueError(
                    "`best_dir` does not apply with `size`: the members' best "
                    "weights are their caller's to keep"
                )
            patience = _members("patience", patience, size, _checks.positive_int)
            min_delta = _members("min_delta", min_delta, size, _checks.non_negative)
            if baseline is not None:
                baseline = _members("baseline", baseline, size, _checks.finite)
        _checks.non_negative_int("start_from_step", start_from_step)
        _checks.boolean("restore_best_weights", restore_best_weights)
        if restore_best_weights and best_dir is None:
            raise ValueError(
                "`restore_best_weights=True` needs `best_dir=`, where the best "
                "snapshot is saved"
            )
        _checks.boolean("prune_on_save", prune_on_save)
        if best_dir is not None and checkpoint is None:
            raise ValueError(
                "`best_dir` needs `checkpoint=`, the tf.train.Checkpoint of what the "
                "best snapshot holds (e.g. tf.train.Checkpoint(model=model))"
            )
        if checkpoint is not None and not isinstance(checkpoint, tf.train.Checkpoint):
            checkpoint = tf.train.Checkpoint(root=checkpoint)
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.size = size
        self.patience, self.min_delta, self.baseline = patience, min_delta, baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_step = int(start_from_step)
        self.best_dir = None if best_dir is None else os.fspath(best_dir)
        self.prune_on_save = prune_on_save
        self._checkpoint = checkpoint
        worst = math.inf if self.mode == "min" else -math.inf
        shape = [] if size is None else [size]  # one model's are scalars

        def state(value, dtype, name):
            value = tf.fill(shape, tf.constant(value, dtype))
            return tf.Variable(value, trainable=False, name=name)

        self.best_value = state(worst, tf.float64, "best_value")
        self.best_step = state(-1, tf.int64, "best_step")
        self.last_step = state(-1, tf.int64, "last_step")
        self.steps_without_progress = state(0, tf.int64, "steps_without_progress")
        # Number of the best snapshot's prefix; with best_step it names the
        # snapshot, so a restored state always finds its own snapshot.
        self.best_id = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_id")
        # The step the patience counts from: the best step, or with a
        # baseline the last improvement that beat it (the first update if none).
        self.patience_from = state(-1, tf.int64, "patience_from")

    # -- the technique ------------------------------------------------------

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta``.

        A NaN never improves; the first finite value always does.
        """
        return bool(
            _beats(value, float(self.best_value.numpy()), self.mode, self.min_delta)
        )

    def update(self, step: int, metrics: dict) -> bool:
        """Records an evaluation at ``step``; returns True when training should stop.

        On improvement the best snapshot is saved first and the state
        variables move after it, so a crash in between leaves a consistent
        state.

        Args:
          step: the global step of the evaluation (non-decreasing).
          metrics: a dict holding ``monitor`` (a number or scalar tensor).
        """
        if self.size is not None:
            raise ValueError(
                f"update() records one model's evaluation; this EarlyStopping has "
                f"{self.size} members (`size`): call update_members(step, values)"
            )
        _checks.non_negative_int("step", int(step))
        step = int(step)
        if self.monitor not in metrics:
            raise ValueError(
                f"`monitor` ({self.monitor!r}) is not among the metrics: "
                f"{', '.join(sorted(metrics))}; pick one of these"
            )
        if step < int(self.last_step.numpy()):
            raise ValueError(
                f"`step` ({step}) is before the last update's step "
                f"({int(self.last_step.numpy())}); steps must not go back"
            )
        value = float(metrics[self.monitor])
        rule = self._rule(step, [value], active=True)
        if rule.improved[0]:
            # The snapshot first: a crash before the variables move leaves the
            # state naming the previous, complete snapshot.
            new_id = self._save_best(step, value) if self.best_dir else 0
            self.best_id.assign(new_id)
        self._assign(step, rule, active=True)
        if rule.improved[0] and self.best_dir and self.prune_on_save:
            self.prune()
        if self.stopped and self.restore_best_weights:
            self.restore_best()
        return self.stopped

    def update_members(self, step: int, values, *, active=True) -> MemberUpdate:
        """Records an evaluation of K members (``size=K``); returns what it did.

        The rule is :func:`update_members`'; the state variables move at once
        (who ``improved`` is the caller's to snapshot: a population copies
        those members' weights). Members not ``active`` are left as they are.

        Args:
          step: the global step of the evaluation.
          values: ``[K]`` monitored values.
          active: ``[K]`` bools or one, who is updated (default True: all).
        """
        rule = self._rule(int(step), values, active=active)
        self._assign(int(step), rule, active=active)
        return rule

    def _rule(self, step: int, values, *, active) -> MemberUpdate:
        return update_members(
            step,
            values,
            best_value=np.reshape(self.best_value.numpy(), -1),
            best_step=np.reshape(self.best_step.numpy(), -1),
            patience_from=np.reshape(self.patience_from.numpy(), -1),
            mode=self.mode,
            patience=self.patience,
            min_delta=self.min_delta,
            baseline=self.baseline,
            start_from_step=self.start_from_step,
            active=active,
        )

    def _assign(self, step: int, rule: MemberUpdate, *, active) -> None:
        """Moves the state variables to ``rule``'s (the active members' steps too)."""
        active = np.broadcast_to(np.asarray(active, bool), rule.improved.shape)
        last = np.reshape(self.last_step.numpy(), -1)
        idle = np.reshape(self.steps_without_progress.numpy(), -1)
        idle = np.where(active, step - rule.patience_from, idle)
        for var, value in (
            (self.best_value, rule.best_value),
            (self.best_step, rule.best_step),
            (self.patience_from, rule.patience_from),
            (self.last_step, np.where(active, step, last)),
            (self.steps_without_progress, idle),
        ):
            var.assign(np.reshape(value, var.shape).astype(var.dtype.as_numpy_dtype))

    @property
    def stopped(self) -> bool:
        """True once the patience is used up at a step at or past ``start_from_step``."""
        last_step = int(self.last_step.numpy())
        return bool(
            patience_used_up(
                int(self.best_step.numpy()),
                last_step,
                last_step - int(self.steps_without_progress.numpy()),
                self.patience,
                self.start_from_step,
            )
        )

    @property
    def has_best(self) -> bool:
        return int(self.best_step.numpy()) >= 0

    # -- the snapshot -------------------------------------------------------

    @property
    def best_prefix(self) -> str | None:
        """The checkpoint prefix of the current best snapshot, or None."""
        if not self.best_dir or not self.has_best:
            return None
        return os.path.join(
            self.best_dir,
            f"best-{int(self.best_step.numpy())}-{int(self.best_id.numpy())}",
        )

    def restore_best(self) -> None:
        """Restores the best snapshot into the checkpointed objects.

        Raises:
          ValueError: no best was recorded, no ``best_dir`` was given, or the
            snapshot's files are gone.
        """
        if not self.best_dir:
            raise ValueError(
                "restore_best() needs `best_dir=` to have saved a snapshot"
            )
        prefix = self.best_prefix
        if prefix is None:
            raise ValueError("no best snapshot yet: call update() with a metric first")
        if not tf.io.gfile.exists(prefix + ".index"):
            raise ValueError(
                f"the best snapshot {prefix} is missing; was {self.best_dir} "
                "cleaned by hand? Start from a new directory"
            )
        self._checkpoint.read(prefix).assert_existing_objects_matched()

    def prune(self) -> None:
        """Deletes every snapshot but the current best and points ``best.json`` at it.

        Snapshots of other steps are stale (superseded, half written by a
        crash, or written by a run that was later resumed from an earlier
        checkpoint). Safe to call at any time.
        """
        if not self.best_dir or not tf.io.gfile.isdir(self.best_dir):
            return
        keep = self.best_prefix
        keep_name = None if keep is None else os.path.basename(keep)
        pointer_path = os.path.join(self.best_dir, POINTER)
        if keep is None:
            _files.remove_if_present(pointer_path)
        elif _read_pointer(self.best_dir).get("prefix") != keep_name:
            self._write_pointer(keep)
        prune_snapshots(self.best_dir, keep_name)

    def _save_best(self, step: int, value: float) -> int:
        return write_snapshot(
            self.best_dir,
            self._checkpoint,
            step,
            self._pointer(step=step, value=value),
            after=int(self.best_id.numpy()),
        )

    def _write_pointer(self, prefix) -> None:
        pointer = {"prefix": os.path.basename(prefix), **self._pointer()}
        _files.write_atomically(
            os.path.join(self.best_dir, POINTER), json.dumps(pointer)
        )

    def _pointer(self, *, step=None, value=None) -> dict:
        return {
            "step": int(self.best_step.numpy()) if step is None else step,
            "value": float(self.best_value.numpy()) if value is None else value,
            "monitor": self.monitor,
            "mode": self.mode,
        }


# -- the snapshot writer, for one model and for a population ---------------------


def write_snapshot(
    best_dir: str, checkpoint, step: int, pointer: dict, *, after=0
) -> int:
    """Writes ``checkpoint`` as a best snapshot, then points ``best.json`` at it.

    The snapshot goes under a fresh prefix ``best-<step>-<n>`` (``n`` above
    ``after`` and every number in ``best_dir``: no file is overwritten); the
    pointer, ``{"prefix": ..., **pointer}``, is written to a temporary file
    renamed over the old one only once the snapshot is complete, so a crash
    at any moment leaves a readable snapshot. Older snapshots are left for
    :func:`prune_snapshots`.

    Returns:
      ``n``, the new snapshot's number.
    """
    tf.io.gfile.makedirs(best_dir)
    new_id = max(int(after), _largest_id(best_dir)) + 1
    name = f"best-{step}-{new_id}"
    prefix = os.path.join(best_dir, name)
    # write() (not save()) adds no save counter and no state file of its own.
    _files.write_checkpoint(lambda: checkpoint.write(prefix), prefix)
    _files.write_atomically(
        os.path.join(best_dir, POINTER), json.dumps({"prefix": name, **pointer})
    )
    return new_id


def prune_snapshots(best_dir: str, keep: str | None) -> None:
    """Deletes every snapshot in ``best_dir`` but the one named ``keep`` (None: all)."""
    # Left by a run killed while it rewrote the pointer.
    _files.remove_if_present(os.path.join(best_dir, POINTER) + _files.TMP_SUFFIX)
    for name in tf.io.gfile.listdir(best_dir):
        # Some file systems list a folder as "name/".
        name = name.rstrip("/")
        if not _SNAPSHOT.match(name) or (keep and name.startswith(keep + ".")):
            continue
        _files.remove_if_present(os.path.join(best_dir, name))


def _members(name: str, value, size: int, check) -> np.ndarray:
    """``value`` (one number, or ``size``) as ``[size]`` numbers, each checked."""
    values = np.asarray(value).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, size)
    if values.size != size:
        raise ValueError(
            f"`{name}` has {values.size} values for {size} members; give one per "
            "member or a single number for all"
        )
    for k, v in enumerate(values.tolist()):
        check(f"{name}[{k}]", v)
    return values


def best_checkpoint(best_dir: str) -> dict | None:
    """The pointer of a best directory: prefix (full path), step, value, monitor, mode.

    None when the directory holds no complete snapshot. Read it to load the
    best weights without an :class:`EarlyStopping`, e.g.
    ``tf.train.Checkpoint(model=m).read(best_checkpoint(d)["prefix"])``.
    """
    pointer = _read_pointer(best_dir)
    if not pointer:
        return None
    pointer["prefix"] = os.path.join(best_dir, pointer["prefix"])
    if not tf.io.gfile.exists(pointer["prefix"] + ".index"):
        return None
    return pointer


def _read_pointer(best_dir) -> dict:
    """best.json as a dict; {} when absent; a ValueError when it is not lowtf's.

    lowtf writes it atomically, so a file that does not parse, or parses to
    something else than a pointer, was damaged or written by hand: trusting
    it (or ignoring it and pruning the snapshots it names) could lose the
    best weights.
    """
    path = os.path.join(best_dir, POINTER)
    try:
        text = _files.read_text(path)
    except (UnicodeDecodeError, tf.errors.OpError) as error:
        raise ValueError(f"{path} cannot be read ({type(error).__name__}); {_POINTER_FIX}") from None
    if text is None:
        return {}
    try:
        pointer = json.loads(text)
    except ValueError:
        raise ValueError(f"{path} is not valid JSON; {_POINTER_FIX}") from None
    fields = {"prefix": str, "step": int, "value": (int, float)}
    if not isinstance(pointer, dict) or not all(
        isinstance(pointer.get(k), t) and not isinstance(pointer.get(k), bool)
        for k, t in fields.items()
    ):
        raise ValueError(
            f"{path} is not a best-snapshot pointer (an object with prefix, step and "
            f"value); {_POINTER_FIX}"
        )
    return pointer


_POINTER_FIX = (
    "restore it from a copy, or delete the best/ folder to give up the best "
    "snapshot (nothing was changed)"
)


def _largest_id(best_dir) -> int:
    ids = [
        int(m.group(2))
        for m in (_SNAPSHOT.match(n.rstrip("/")) for n in tf.io.gfile.listdir(best_dir))
        if m
    ]
    return max(ids, default=0)
