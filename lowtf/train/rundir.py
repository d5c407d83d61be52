"""A model directory belongs to one run: its lock, its identity, its traces.

* :class:`RunLock`: an exclusive lock for the life of a run, a file
  ``<model_dir>/lock`` created atomically and naming its owner
  (:func:`this_process`: host, pid, start time, boot and pid namespace). A
  second run on the directory, in this process or another, is refused with
  one line naming the holder; a lock whose holder is gone
  (:func:`owner_state`, which a restart that reuses its pid does not fool)
  is taken over.
* :func:`identity` and :func:`differences`: the settings that define a run
  (the model's layers, the optimizer, the data's content hash, seeds, batch
  size), recorded in ``<model_dir>/run.json`` when the run starts and
  compared when it is resumed, so that a resume is the same run or is
  refused, setting by setting.
* :func:`run_kind`: which kind of run (one model, a population) owns a
  directory, so that one kind never resumes the other's.
* :func:`traces`: what an earlier run left in a directory, so that a run
  never starts from step 0 over another run's files.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import os
import socket
import threading

import numpy as np
import tensorflow as tf

from lowtf import _files
from lowtf.nn.base import keras_layers
from lowtf.train.summaries import history_header

LOCK = "lock"
RECORD = "run.json"
# What a run leaves in its model directory once it has trained: a directory
# holding any of them is never started from step 0 again. (run.json alone,
# written before step 0, is not one.)
TRACES = ("ckpt", "best", "history.csv", "summary.json")
# Characters TensorFlow's checkpoint and file functions read as glob patterns.
GLOB_CHARACTERS = "[]*?"


def check_path(model_dir: str) -> None:
    """Refuses a ``model_dir`` that TensorFlow would read as a glob pattern.

    ``tf.train.latest_checkpoint`` and the checkpoint readers glob their
    paths: a directory named ``run[1]`` trains, then cannot find its own
    best snapshot. Refused at start, before anything runs.
    """
    bad = sorted({c for c in os.fspath(model_dir) if c in GLOB_CHARACTERS})
    if bad:
        raise ValueError(
            f"`model_dir` ({model_dir!r}) contains {' '.join(bad)}, which TensorFlow's "
            "checkpoint functions read as a glob pattern; pick a name without "
            f"{''.join(GLOB_CHARACTERS)}"
        )


def traces(model_dir: str) -> list[str]:
    """The files and folders of an earlier run found in ``model_dir``."""
    if not tf.io.gfile.isdir(model_dir):
        return []
    found = set(tf.io.gfile.listdir(model_dir))
    # gfile lists folders with a trailing slash on some file systems.
    found |= {name.rstrip("/") for name in found}
    return [name for name in TRACES if name in found]


# -- who owns a lock (or a sweep's trial) ----------------------------------------

# owner_state's answers, this_process and owner_state live in lowtf._processes
# (they read /proc, never a model directory).
from lowtf._processes import GONE, RUNNING, SELF, owner_state, this_process  # noqa: F401

# -- the lock --------------------------------------------------------------------

# The locks this process holds: normalized path -> (pid, thread id, the frame
# that acquired it). Guarded by _HELD_GUARD.
_HELD: dict = {}
_HELD_GUARD = threading.Lock()


def remove_if_made_empty(model_dir: str, existed: bool) -> None:
    """Removes ``model_dir`` if a failed start made it (it did not exist) and left it empty.

    Checked with ``isdir`` first: a directory never made (a refusal before
    the lock) must not turn into a listing error that hides the real one.
    """
    if (
        not existed
        and tf.io.gfile.isdir(model_dir)
        and not tf.io.gfile.listdir(model_dir)
    ):
        tf.io.gfile.rmtree(model_dir)


class RunLock:
    """An exclusive lock on a model directory, held for the life of a run.

    Use it as a context manager. On a local disk the lock file is created
    with ``O_CREAT | O_EXCL`` (atomic); on other TensorFlow file systems
    (gs://, ...) by writing a unique file and renaming it without overwrite,
    which is as close as those systems allow. The file names the holder as
    :func:`this_process` does; a lock whose holder is gone (see
    :func:`owner_state`) is taken over with one log line.

    One holder per directory in a process too: an acquire from another
    thread, or a second one at the holder's own level, is refused. Only a
    call made from inside the holder (``run_job`` holding the directory
    calls ``fit``, which acquires it again) nests: it is let through
    without holding, and releasing it does nothing.

    Args:
      model_dir: the directory (made if missing).
      log: called with one line when a stale lock is taken over.
    """

    def __init__(self, model_dir: str, log=print):
        self.model_dir = os.fspath(model_dir)
        self.path = os.path.join(self.model_dir, LOCK)
        self.log = log
        self.held = False

    def __enter__(self) -> RunLock:
        self._acquire(inspect.currentframe().f_back)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock, or raises ValueError naming the run that holds it."""
        self._acquire(inspect.currentframe().f_back)

    def _acquire(self, caller) -> None:
        tf.io.gfile.makedirs(self.model_dir)
        owner = this_process()
        key = self._key()
        for _ in range(2):  # a second try after taking over a stale lock
            with _HELD_GUARD:
                held = _HELD.get(key)
                if held is not None and held[0] == owner["pid"]:
                    self._nest(held, caller)
                    return
                if self._create(json.dumps(owner) + "\n"):
                    _HELD[key] = (owner["pid"], threading.get_ident(), caller)
                    self.held = True
                    return
            holder = self.holder()
            state = owner_state(holder)
            if state == RUNNING:
                raise self._busy(f"pid {holder.get('pid')} on {holder.get('host')}")
            # SELF: a lock no RunLock of this process holds, left by this
            # process (a release that could not delete it): stale as well.
            what = f"pid {holder['pid']}, not running" if holder else "unreadable"
            self.log(f"taking over the stale lock {self.path} ({what})")
            try:
                tf.io.gfile.remove(self.path)
            except tf.errors.NotFoundError:
                pass  # released meanwhile
        raise ValueError(
            f"could not take the lock {self.path}; another run took it first"
        )

    def _nest(self, held, caller) -> None:
        """Lets a call made from inside the holder through; refuses any other."""
        _, thread, frame = held
        inside = False
        if thread == threading.get_ident():
            # Strictly below the frame that acquired it: run_job -> fit, not
            # two acquires side by side in one function.
            outer = caller.f_back if caller is not None else None
            while outer is not None and not inside:
                inside, outer = outer is frame, outer.f_back
        holder = self.holder()
        if holder is not None and owner_state(holder) != SELF:
            # The file names another run (rewritten under us): it is the holder.
            raise self._busy(f"pid {holder.get('pid')} on {holder.get('host')}")
        if not inside:
            mine = thread == threading.get_ident()
            where = "this thread" if mine else "another thread"
            raise self._busy(f"{where} of this process, pid {os.getpid()}")

    def _busy(self, who: str) -> ValueError:
        return ValueError(
            f"`model_dir` ({self.model_dir!r}) is in use by another run ({who}, "
            f"{self.path}); wait for it to finish, or pick another model_dir"
        )

    def _key(self) -> str:
        return self.path if "://" in self.path else os.path.realpath(self.path)

    def release(self) -> None:
        """Removes the lock file if this object holds it."""
        if self.held:
            self.held = False
            with _HELD_GUARD:
                _HELD.pop(self._key(), None)
            if tf.io.gfile.exists(self.path):
                tf.io.gfile.remove(self.path)

    def holder(self) -> dict | None:
        """The lock's owner (a :func:`this_process` record), or None if unreadable."""
        try:
            with tf.io.gfile.GFile(self.path) as f:
                owner = json.loads(f.read())
        except (tf.errors.OpError, ValueError):
            return None
        if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
            return None
        return owner

    def _create(self, text: str) -> bool:
        if "://" not in self.path:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        # Not named lock.*: TensorFlow's ram:// file system takes a file whose
        # name starts with the target's for the target itself.
        temporary = os.path.join(
            self.model_dir,
            f"claim-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}.tmp",
        )
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(text)
        try:
            tf.io.gfile.rename(temporary, self.path, overwrite=False)
            return True
        except tf.errors.AlreadyExistsError:
            tf.io.gfile.remove(temporary)
            return False


# -- the run's identity -------------------------------------------------------


def fingerprint(*arrays) -> str:
    """A content hash of arrays (shape, dtype and bytes): the data's identity."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def describe_model(model) -> list[str]:
    """One line per layer: its kind and the settings that define the network."""
    if isinstance(model, tf.keras.layers.Layer):
        lines = []
        for layer in keras_layers(model)[1:] or [model]:
            config = {k: v for k, v in layer.get_config().items() if k != "name"}
            lines.append(f"{type(layer).__name__} {json.dumps(config, sort_keys=True, default=str)}")
        return lines
    lines = []
    for module in (model, *model.submodules):
        if isinstance(module, tf.Variable) or not hasattr(module, "call"):
            continue
        settings = {}
        for key in ("units", "filters", "kernel_size", "strides", "padding", "rate",
                    "use_bias", "momentum", "epsilon", "shape", "pool_size"):
            if hasattr(module, key):
                settings[key] = getattr(module, key)
        activation = getattr(module, "activation", None)
        if activation is not None:
            settings["activation"] = getattr(activation, "__name__", repr(activation))
        for key in ("kernel_regularizer", "bias_regularizer", "kernel_constraint"):
            value = getattr(module, key, None)
            if value is not None:
                settings[key] = repr(value)
        if settings or type(module).__name__ not in ("Sequential",):
            lines.append(f"{type(module).__name__} {json.dumps(settings, sort_keys=True, default=str)}")
    return lines


def describe_optimizer(optimizer) -> dict:
    """The optimizer's class and its Keras config, less what may change on resume."""
    config = dict(optimizer.get_config())
    for key in ("name", "learning_rate"):
        config.pop(key, None)
    return {"class": type(optimizer).__name__, **config}


def identity(*, model, optimizer, train, validation, settings: dict) -> dict:
    """The settings that define a run; a resume must match every one.

    Args:
      model: the network (lowtf module tree or Keras model).
      optimizer: the Keras optimizer.
      train, validation: the ``(x, y)`` arrays, identified by content hash.
      settings: other defining settings (seeds, batch size, monitor, ...).
    """
    return {
        "model": describe_model(model),
        "optimizer": json.loads(json.dumps(describe_optimizer(optimizer), default=str)),
        "train_data": fingerprint(*train),
        "validation_data": fingerprint(*validation),
        **json.loads(json.dumps(settings, default=str)),
    }


def differences(recorded: dict, current: dict) -> list[str]:
    """Each defining setting that differs, as ``name: recorded X, now Y``.

    The model's layers are matched as sequences: a layer added or removed
    (dropout turned on, say) is one line, and a changed layer names only the
    settings that changed, not every later layer.
    """
    lines = []
    for key in sorted(set(recorded) | set(current)):
        before, now = recorded.get(key), current.get(key)
        if before == now:
            continue
        if key == "model" and isinstance(before, list) and isinstance(now, list):
            lines += _layer_differences(before, now)
            continue
        if key == "members" and isinstance(before, list) and isinstance(now, list):
            lines += _member_differences(before, now)
            continue
        lines.append(f"{key}: recorded {before!r}, now {now!r}")
    return lines


def _member_differences(before: list, now: list) -> list[str]:
    """A population's members compared one by one (``member 1 seed: ...``)."""
    if len(before) != len(now):
        return [f"members: recorded {len(before)}, now {len(now)}"]
    lines = []
    for k, (a, b) in enumerate(zip(before, now)):
        if isinstance(a, dict) and isinstance(b, dict):
            lines.extend(f"member {k} {line}" for line in differences(a, b))
        elif a != b:
            lines.append(f"member {k}: recorded {a!r}, now {b!r}")
    return lines


def _layer_differences(before: list[str], now: list[str]) -> list[str]:
    """The differences of two :func:`describe_model` lists, layer by layer."""
    lines = []
    matcher = difflib.SequenceMatcher(a=before, b=now, autojunk=False)
    for kind, i1, i2, j1, j2 in matcher.get_opcodes():
        if kind == "equal":
            continue
        # In a changed stretch, a layer of the same kind is the same layer
        # changed; the others were added or removed.
        left = list(range(i1, i2))
        for j in range(j1, j2):
            same = [i for i in left if _kind(before[i]) == _kind(now[j])]
            if not same:
                lines.append(f"model layer {j}: recorded none, now {now[j]}")
                continue
            while left[0] != same[0]:
                i = left.pop(0)
                lines.append(f"model layer {i}: recorded {before[i]}, now none")
            lines.append(_layer_change(left.pop(0), before[same[0]], now[j]))
        lines += [f"model layer {i}: recorded {before[i]}, now none" for i in left]
    return lines


def _kind(line: str) -> str:
    return line.partition(" ")[0]


def _layer_change(index: int, before: str, now: str) -> str:
    """One changed layer, naming only the settings that differ when it can."""
    kind_a, _, text_a = before.partition(" ")
    kind_b, _, text_b = now.partition(" ")
    try:
        a, b = json.loads(text_a), json.loads(text_b)
    except ValueError:
        a = b = None
    if kind_a != kind_b or not isinstance(a, dict) or not isinstance(b, dict):
        return f"model layer {index}: recorded {before}, now {now}"
    changed = [
        f"{key} recorded {json.dumps(a.get(key))}, now {json.dumps(b.get(key))}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]
    return f"model layer {index} {kind_a}: {'; '.join(changed)}"


def read_record(model_dir: str) -> dict | None:
    """``run.json`` of ``model_dir``, or None; a damaged one is a ValueError."""
    path = os.path.join(model_dir, RECORD)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            record = json.loads(f.read())
    except (ValueError, UnicodeDecodeError, tf.errors.OpError) as error:
        raise ValueError(
            f"{path} cannot be read ({type(error).__name__}); it records which run "
            "owns this model_dir: restore it from a copy, or pick another model_dir"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        raise ValueError(
            f"{path} is not a lowtf run record (no 'identity' object); restore it "
            "from a copy, or pick another model_dir"
        )
    return record


def run_kind(model_dir: str) -> str | None:
    """Which kind of run owns ``model_dir``: ``"population"``, ``"single"`` or None.

    Read from run.json's identity; a directory written before run.json
    existed is judged by its history.csv's header (a population's starts
    with ``member``). None: no run has recorded itself there.

    Raises:
      ValueError: run.json is damaged (see :func:`read_record`).
    """
    record = read_record(model_dir)
    if record is not None:
        kind = record["identity"].get("kind")
        return "population" if kind == "population" else "single"
    try:
        text = _files.read_text(os.path.join(model_dir, "history.csv"))
    except (UnicodeDecodeError, tf.errors.OpError):
        return None  # refused by the loop's own checks of the file
    header = history_header(text or "")
    if not header:
        return None
    return "population" if header[0] == "member" else "single"


def write_record(model_dir: str, record: dict) -> None:
    """Writes ``run.json`` atomically (a temporary file renamed over it)."""
    _files.write_atomically(
        os.path.join(model_dir, RECORD), json.dumps(record, indent=2, sort_keys=True) + "\n"
    )
