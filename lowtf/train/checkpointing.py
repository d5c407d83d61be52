"""The state :func:`lowtf.fit` keeps in ``model_dir``: saving it, resuming from it.

``model_dir/ckpt`` holds the "latest" checkpoints (a
``tf.train.CheckpointManager``): model, optimizer, global step and data
position (the :class:`lowtf.TrainStep` tracks them), the early-stopping
state and the running training means (:class:`RunningMeans`), so a run
resumed between two evaluations reports the same means as one that was never
stopped. A population's (:mod:`lowtf.population.fit`) go through the same
:class:`Checkpoints`, holding its stacked state instead. ``model_dir/best`` holds the best snapshot (see
:mod:`lowtf.train.early_stopping`); :data:`WRITTEN` lists all that ``fit`` writes.

Two rules keep an existing ``model_dir`` usable:

* a checkpoint is compared with this run's variables (names, dtypes,
  shapes) before anything is restored, so one made for another model or
  data is refused with a ValueError before the model or the directory is
  touched;
* a state with NaN/Inf weights is never saved, so the checkpoint to resume
  from never holds them.

Under a ``tf.distribute`` strategy only the chief writes into ``model_dir``;
another worker takes part in each save (which may need collective ops)
through a scratch copy (:func:`write_path`, deleted by
:func:`remove_scratch`), and every worker resumes from, and ends holding, the
chief's checkpoints, so ``model_dir`` must be on a file system they share.
"""

from __future__ import annotations

import os
import re
import tempfile
import time

import tensorflow as tf

from lowtf import _files, distribute
from lowtf.train import early_stopping, rundir
from lowtf.train.metrics import STEP_METRICS

# What fit writes into model_dir (each through write_path).
WRITTEN = ("best", "ckpt", "history.csv", "tensorboard")


def write_path(model_dir: str, name: str, strategy) -> str:
    """Where this worker writes ``model_dir/name``: there (chief) or a scratch twin."""
    return distribute.write_dir(os.path.join(model_dir, name), strategy)


def remove_scratch(model_dir: str, strategy) -> None:
    """Deletes this worker's scratch copies of :data:`WRITTEN`; no-op on the chief."""
    # history.csv's temporary twin too: a run killed mid-rewrite leaves it.
    for name in (*WRITTEN, "history.csv" + _files.TMP_SUFFIX):
        distribute.remove_write_dir(os.path.join(model_dir, name), strategy)


def finite_weights(model) -> bool:
    """Whether every floating-point variable of ``model`` is free of NaN and Inf.

    Integer variables (a Keras ``Dropout``'s int64 seed-generator state, a
    counter) are skipped: they cannot be NaN, and ``tf.math.is_finite``
    refuses them.
    """
    return all(
        bool(tf.reduce_all(tf.math.is_finite(v)))
        for v in model.variables
        if tf.as_dtype(v.dtype).is_floating
    )


class RunningMeans(tf.Module):
    """Sums of the step metrics since the last evaluation (checkpointed)."""

    def __init__(self):
        super().__init__(name="running_means")
        self.sums = tf.Variable(tf.zeros([len(STEP_METRICS)], tf.float64), name="sums")
        self.count = tf.Variable(0, dtype=tf.int64, name="count")

    def add(self, means: dict, num_steps: int) -> None:
        values = [means[name] * num_steps for name in STEP_METRICS]
        self.sums.assign_add(tf.constant(values, tf.float64))
        self.count.assign_add(num_steps)

    def means(self) -> dict | None:
        count = int(self.count.numpy())
        if not count:
            return None
        return dict(zip(STEP_METRICS, (float(s) / count for s in self.sums.numpy())))

    def reset(self) -> None:
        self.sums.assign(tf.zeros_like(self.sums))
        self.count.assign(0)


class WallClock(tf.Module):
    """The wall time a run has trained, over all its sessions (checkpointed).

    Each save adds the time since the previous one (or since the clock was
    made), so a resumed run counts the sessions before it up to the
    checkpoint it resumed from; what a killed session did after its last
    checkpoint is redone, and counted, by the next.
    """

    def __init__(self):
        super().__init__(name="wall_clock")
        self.seconds = tf.Variable(0.0, dtype=tf.float64, name="seconds")
        self._since = time.monotonic()

    def tick(self) -> None:
        """Adds the time since the last tick to ``seconds``."""
        now = time.monotonic()
        self.seconds.assign_add(now - self._since)
        self._since = now

    def total(self) -> float:
        """Seconds so far, this session's untaken tick included."""
        return float(self.seconds.numpy()) + time.monotonic() - self._since


class Checkpoints:
    """The "latest" checkpoints of one fit, and the restore of its best snapshot.

    One implementation for every trainer: a single model's
    (:class:`lowtf.train.trainer.StepTrainer`) and a population's
    (:class:`lowtf.population.fit.PopulationTrainer`) save ``objects`` and
    ``clock`` as one ``tf.train.Checkpoint`` in ``model_dir/ckpt``
    (``ckpt-<step>``, with TensorFlow's ``checkpoint`` state file).

    Args:
      model_dir: the run's directory; checkpoints go to ``model_dir/ckpt``.
      objects: ``{name: trackable}``, what each checkpoint holds besides the
        clock (the names are the checkpoint's keys: keep them stable).
      step: the run's global step, a scalar integer ``tf.Variable``.
      finite: returns whether the weights are free of NaN and Inf; a state
        for which it is False is never saved.
      clock: the run's :class:`WallClock`.
      keep: how many latest checkpoints to keep.
      strategy: the ``tf.distribute`` strategy the run is under.
      stopper: a single model's :class:`lowtf.EarlyStopping`, made with
        ``prune_on_save=False`` (its old snapshots go after each save here,
        its monitor and best snapshot are checked on resume); None (default)
        when the best weights live in ``objects`` (a population's).
      snapshot: the ``tf.train.Checkpoint`` the stopper saves as best (None
        without a stopper).
      subject: what a checkpoint that does not fit is said not to fit
        (default "model, optimizer and data").
    """

    def __init__(
        self,
        model_dir,
        *,
        objects,
        step,
        finite,
        clock,
        keep,
        strategy,
        stopper=None,
        snapshot=None,
        subject="model, optimizer and data",
    ):
        self.model_dir, self.strategy = model_dir, strategy
        self.objects, self.step, self.finite = dict(objects), step, finite
        self.stopper, self.snapshot, self.subject = stopper, snapshot, subject
        self.clock = clock
        self.state = tf.train.Checkpoint(**self.objects, clock=clock)
        self.manager = tf.train.CheckpointManager(
            self.state,
            write_path(model_dir, "ckpt", strategy),
            max_to_keep=keep,
            checkpoint_name="ckpt",
        )
        # The step of the checkpoint on disk that the state equals, if any.
        self.saved_step = None
        # What the run should be told about how it resumed (logged by fit).
        self.note = None

    def restore_latest(self) -> str | None:
        """Restores the chief's newest checkpoint, if any, on every worker.

        Returns:
          Its path, or None (nothing restored) when there is none.

        Raises:
          ValueError: the checkpoint does not fit this run's variables,
            cannot be read, or is named in ``ckpt/checkpoint`` but missing;
            ``model_dir`` is left as it is.
        """
        # Every worker resumes from the chief's checkpoint (see write_path).
        ckpt_dir = os.path.join(self.model_dir, "ckpt")
        path = tf.train.latest_checkpoint(ckpt_dir)
        if path is None and tf.io.gfile.exists(os.path.join(ckpt_dir, "checkpoint")):
            # The state file names a checkpoint that is gone (or is itself
            # unreadable): starting over would rewrite history.csv and prune
            # the best snapshots of the run it describes.
            named = _named_checkpoint(ckpt_dir)
            if named is None:
                state_file = os.path.join(ckpt_dir, "checkpoint")
                raise self._unusable(state_file, "this state file cannot be parsed")
            raise self._unusable(named, "its files are missing")
        if path is None:
            path = self._newest_on_disk(ckpt_dir)
        if path is not None:
            why = unreadable(path)
            if why is not None:
                raise self._unusable(path, f"it cannot be read: {why}")
            self._check_monitor()
            self._restore(path)
            self._check_best()
            self.saved_step = int(self.step.numpy())
        # Every worker has read the chief's checkpoint before any one writes.
        distribute.barrier(self.strategy)
        return path

    def _newest_on_disk(self, ckpt_dir: str) -> str | None:
        """With no state file: the newest readable checkpoint on disk, or None.

        Raises ValueError when ``model_dir`` holds traces of an earlier run
        but no checkpoint to resume: starting from step 0 there would prune
        that run's best snapshot and rewrite its history.
        """
        found = checkpoints_on_disk(ckpt_dir)
        readable = [prefix for prefix in found if unreadable(prefix) is None]
        if readable:
            self.note = (
                f"{os.path.join(ckpt_dir, 'checkpoint')} is missing: resuming from the "
                f"newest readable checkpoint on disk, {readable[0]}"
            )
            if readable[0] != found[0]:
                self.note += f" ({found[0]} cannot be read)"
            return readable[0]
        traces = rundir.traces(self.model_dir)
        if traces:
            what = "unreadable checkpoints" if found else "no checkpoint"
            raise ValueError(
                f"`model_dir` ({self.model_dir!r}) holds {', '.join(traces)} of an "
                f"earlier run but {what} to resume from: restore ckpt/ from a copy, "
                "pick another model_dir, or delete these to train it from step 0 "
                "(nothing was changed)"
            )
        return None

    def _check_best(self) -> None:
        """Refuses a resume whose best snapshot cannot be read back (checked at start)."""
        if self.stopper is None or not distribute.is_chief(self.strategy):
            # None: the best weights are in the checkpoint just read. Not the
            # chief: its own snapshot is a scratch copy; it restores the chief's.
            return
        prefix = self.stopper.best_prefix
        if prefix is None:
            return
        why = unreadable(prefix)
        if why is not None:
            raise ValueError(
                f"the best snapshot {prefix} of `model_dir` ({self.model_dir!r}) "
                f"cannot be read ({why}); nothing was changed: restore best/ from a "
                "copy, or pick another model_dir"
            )

    def _check_monitor(self) -> None:
        """Refuses to resume a run whose best value is of another metric or mode.

        The checkpoint holds the best value as a number: compared with another
        metric (a cross-entropy against an accuracy), or in the other
        direction, every later evaluation would look like an improvement, or
        none would.
        """
        if self.stopper is None:
            return  # the best values are per member, in the checkpoint
        pointer = early_stopping.best_checkpoint(os.path.join(self.model_dir, "best"))
        if not pointer:
            return
        theirs = (pointer.get("monitor"), pointer.get("mode"))
        ours = (self.stopper.monitor, self.stopper.mode)
        if theirs != ours:
            raise ValueError(
                f"{self.model_dir} was trained monitoring {theirs[0]!r} (mode "
                f"{theirs[1]!r}) but this run monitors {ours[0]!r} (mode {ours[1]!r}): "
                "its best value cannot be compared; resume with the same monitor and "
                "mode, or train in a new model_dir"
            )

    def save(self) -> bool:
        """Saves the latest checkpoint; False, and nothing saved, on NaN/Inf weights."""
        step = int(self.step.numpy())
        if step == self.saved_step:
            return True  # already on disk; rewriting it would expose it to a crash
        # The last step of a call can break the weights after its (finite)
        # loss was computed; such a state must not become the one to resume.
        if not self.finite():
            return False
        self.clock.tick()
        _files.write_checkpoint(
            lambda: self.manager.save(checkpoint_number=step),
            os.path.join(self.manager.directory, f"ckpt-{step}"),
        )
        self.saved_step = step
        if self.stopper is not None:
            # The saved state now names the current best; older snapshots may go.
            self.stopper.prune()
        return True

    def restore_best(self) -> None:
        """Restores the chief's best snapshot into the model, on every worker."""
        # Every worker waits until the chief's snapshot is complete, then
        # reads the chief's: a worker's own scratch copy may be gone.
        distribute.barrier(self.strategy)
        if distribute.is_chief(self.strategy):
            self.stopper.restore_best()
            return
        best_dir = os.path.join(self.model_dir, "best")
        pointer = early_stopping.best_checkpoint(best_dir)
        if pointer is None:
            raise ValueError(
                f"this worker cannot read the chief's best snapshot in {best_dir}: "
                "under MultiWorkerMirroredStrategy `model_dir` must be on a file "
                "system every worker shares (NFS, GCS, ...)"
            )
        self.snapshot.read(pointer["prefix"]).assert_existing_objects_matched()

    def _restore(self, path: str) -> None:
        # Compared before restoring: a failed restore would leave the model
        # half overwritten (and TensorFlow warning about it at exit).
        try:
            reason = _mismatch(self.state, path)
            if reason is None:
                try:
                    self.state.restore(path).assert_consumed()
                except (AssertionError, ValueError) as error:
                    reason = _first_line(error)
                except tf.errors.OpError as error:
                    # A tf.data iterator (lowtf.data.Stream) saved by another
                    # pipeline: its state names the ops it was saved from.
                    found = re.search(
                        r"restore dataset iterator from checkpoint: (.*)", str(error)
                    )
                    if found is None:
                        raise
                    reason = (
                        "its data position does not fit this training pipeline "
                        f"({found.group(1).strip()})"
                    )
        except tf.errors.OpError as error:
            # A truncated or zeroed file: "file is too short to be an sstable".
            raise self._unusable(
                path, f"it cannot be read: {_first_line(error)}"
            ) from None
        if reason is not None:
            raise ValueError(
                f"`model_dir` ({self.model_dir!r}) holds a checkpoint ({path}) that "
                f"does not fit this {self.subject} ({reason}); resume with "
                "the same settings or pick a new model_dir"
            )

    def _unusable(self, path: str, why: str) -> ValueError:
        ckpt_dir = os.path.join(self.model_dir, "ckpt")
        older = [
            p
            for p in checkpoints_on_disk(ckpt_dir)
            if p != path and unreadable(p) is None
        ]
        hint = (
            f" An older checkpoint, {older[0]}, is readable: delete the newer files "
            f"and {os.path.join(ckpt_dir, 'checkpoint')} to resume from it."
            if older
            else ""
        )
        return ValueError(
            f"`model_dir` ({self.model_dir!r}) has a latest checkpoint ({path}) "
            f"that cannot be resumed ({why}); model_dir was left as it is.{hint} "
            f"Restore its files from a copy, or pick another model_dir"
        )


def _named_checkpoint(ckpt_dir: str) -> str | None:
    """The checkpoint ``ckpt_dir/checkpoint`` names as the latest; None if unreadable."""
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
    except (tf.errors.OpError, ValueError):
        state = None
    if state is None or not state.model_checkpoint_path:
        return None
    return os.path.join(ckpt_dir, state.model_checkpoint_path)


_CHECKPOINT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def checkpoints_on_disk(ckpt_dir: str) -> list[str]:
    """The prefixes of the checkpoints in ``ckpt_dir`` (their .index files), newest first."""
    if not tf.io.gfile.isdir(ckpt_dir):
        return []
    steps = [
        int(m.group(1))
        for m in map(_CHECKPOINT_INDEX.match, tf.io.gfile.listdir(ckpt_dir))
        if m
    ]
    return [
        os.path.join(ckpt_dir, f"ckpt-{step}") for step in sorted(steps, reverse=True)
    ]


def unreadable(prefix: str) -> str | None:
    """Why the checkpoint at ``prefix`` cannot be read back, or None if it can.

    Every tensor is read: a data file cut short by a full disk or a crash of
    the file system fails only there, not when the index is opened.
    """
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        dtypes = reader.get_variable_to_dtype_map()
        for key in reader.get_variable_to_shape_map():
            if dtypes[key] == tf.variant:
                # A tf.data iterator's state (lowtf.data.Stream): NumPy has no
                # such dtype, so TensorFlow's own restore op reads it.
                tf.raw_ops.RestoreV2(
                    prefix=prefix,
                    tensor_names=[key],
                    shape_and_slices=[""],
                    dtypes=[tf.variant],
                )
            else:
                reader.get_tensor(key)
    except Exception as error:  # noqa: BLE001 (damaged files raise OpError, IndexError, ...)
        return f"{type(error).__name__}: {_first_line(error)}"
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:300]


def _mismatch(state, path) -> str | None:
    """How the checkpoint at ``path`` differs from ``state``'s variables, or None."""
    # A local scratch file, not one in model_dir: nothing is written there
    # before every check has passed.
    with tempfile.TemporaryDirectory() as scratch:
        ours = _variable_specs(state.write(os.path.join(scratch, "probe")))
    theirs = _variable_specs(path)
    for key in sorted(ours.keys() | theirs.keys()):
        if key not in theirs:
            return f"{key} is not in the checkpoint"
        if key not in ours:
            return f"the checkpoint has {key}, which this run does not"
        if ours[key] != theirs[key]:
            return f"{key} is {theirs[key]} in the checkpoint but {ours[key]} here"
    return None


def _variable_specs(path) -> dict:
    """``{variable key: "dtype[shape]"}`` of the checkpoint at ``path``."""
    # Not tf.train.load_checkpoint: it takes a path that is a directory to
    # mean its latest checkpoint, and ram:// (TF 2.21) takes any prefix of a
    # file's name, a checkpoint's prefix too, for a directory.
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    shapes, dtypes = (
        reader.get_variable_to_shape_map(),
        reader.get_variable_to_dtype_map(),
    )
    specs = {}
    for key, shape in shapes.items():
        if key.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/")):
            continue  # bookkeeping, not state
        name = key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
        # A tf.data iterator's state is a vector whose length depends on
        # what its buffers hold: only its kind must match.
        dtype = dtypes[key].name
        specs[name] = dtype if dtypes[key] == tf.variant else f"{dtype}{list(shape)}"
    return specs
