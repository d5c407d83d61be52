"""Scaling out with TensorFlow's own engine, ``tf.distribute``.

lowtf adds no distribution of its own: :func:`make_strategy` returns one of
TensorFlow's strategies, and the library code that is made inside its
``scope()`` (model, optimizer, :class:`~lowtf.TrainStep`,
:class:`~lowtf.InMemoryBatches`, :class:`~lowtf.Evaluator`) runs under it:

* ``"default"``: no distribution, one device.
* ``"mirrored"``: ``tf.distribute.MirroredStrategy``, one replica per local
  GPU (or the CPU), all-reduce inside the machine.
* ``"multi_worker"``: ``tf.distribute.MultiWorkerMirroredStrategy``, one
  process per machine, the cluster and this process's place in it read from
  the ``TF_CONFIG`` environment variable, e.g. for worker 0 of two::

      {"cluster": {"worker": ["host0:12345", "host1:12345"]},
       "task": {"type": "worker", "index": 0}}

Every worker runs the same program on the same data; the train step gives
each replica its slice of the global batch. Only the chief (the ``"chief"``
task, else worker 0) may write to the model directory, yet saving a
checkpoint can involve collective ops (batch-norm moving statistics are
averaged across workers when saved), so every worker must *call* save: the
others write to a scratch copy that they delete again (:func:`write_dir`,
:func:`remove_write_dir`), the pattern of TensorFlow's multi-worker tutorial.
Reading (resume, restoring the best snapshot) is from the chief's files on
every worker, so the model directory must be on a file system all workers
share (NFS, GCS, ...).

``MultiWorkerMirroredStrategy`` must be made at the start of the program,
before any other TensorFlow op runs.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from lowtf import _checks

STRATEGIES = ("default", "mirrored", "multi_worker")

_EXAMPLE = (
    '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def tf_config(environ=None) -> dict:
    """The parsed and checked ``TF_CONFIG``, or ``{}`` when it is not set.

    Args:
      environ: the environment to read (default ``os.environ``).

    Raises:
      ValueError: TF_CONFIG is not JSON, has no ``cluster`` with ``worker``
        addresses, or its ``task`` is not one of the cluster's tasks.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"TF_CONFIG ({text!r}) is not JSON ({e}); set it like {_EXAMPLE}"
        )
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG ({text!r}) must be a JSON object like {_EXAMPLE}")
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster.get("worker"):
        raise ValueError(
            f"TF_CONFIG ({text!r}) needs a `cluster` with a `worker` list of "
            f"host:port addresses, like {_EXAMPLE}"
        )
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            f"TF_CONFIG ({text!r}) needs a `task` with `type` and `index`, like {_EXAMPLE}"
        )
    kind, index = task["type"], task["index"]
    if (
        kind not in cluster
        or not isinstance(index, int)
        or not 0 <= index < len(cluster[kind])
    ):
        raise ValueError(
            f"TF_CONFIG task {task} is not in its cluster {cluster}: `type` must name "
            f"one of its jobs and `index` a position in that job's address list"
        )
    return config


def make_strategy(
    name: str = "default", *, devices=None, timeout_seconds: float | None = None
) -> tf.distribute.Strategy:
    """One of TensorFlow's strategies, by name.

    Args:
      name: ``"default"`` (no distribution), ``"mirrored"`` or
        ``"multi_worker"`` (see the module docstring).
      devices: for ``"mirrored"``, the devices to mirror on (default: every
        local GPU, else the CPU).
      timeout_seconds: for ``"multi_worker"``, how long one collective op
        may wait for the other workers before it fails with
        ``tf.errors.DeadlineExceededError`` (default None: no limit). For a
        worker that hangs without dying; one that dies is seen without it
        (see :func:`lost_worker`). TensorFlow keeps one sleeping thread per
        collective op for this long: at 85 steps/s (about 700 collective ops
        per second) 300 s piled up some 15,000 threads and aborted the run.

    Raises:
      ValueError: an unknown name, or ``"multi_worker"`` without TF_CONFIG.
    """
    _checks.one_of("strategy", name, STRATEGIES)
    if name == "default":
        if devices is not None or timeout_seconds is not None:
            raise ValueError(
                "`devices` and `timeout_seconds` need a `strategy` other than 'default'"
            )
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if not tf_config():
        # Without TF_CONFIG the strategy would train alone, in silence.
        raise ValueError(
            "`strategy` ('multi_worker') needs the TF_CONFIG environment variable "
            f"naming the cluster and this worker, e.g. TF_CONFIG='{_EXAMPLE}'; "
            "use 'mirrored' for the devices of one machine"
        )
    if timeout_seconds is not None:
        _checks.positive("timeout_seconds", timeout_seconds)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=timeout_seconds
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def task(strategy=None) -> tuple[str | None, int]:
    """This process's ``(task type, task index)``; ``(None, 0)`` outside a cluster."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy=None) -> bool:
    """Whether this process writes checkpoints, snapshots and summaries.

    The ``"chief"`` task if the cluster has one, else worker 0; always True
    for one process (the default strategy or ``MirroredStrategy``).
    """
    strategy = strategy or tf.distribute.get_strategy()
    kind, index = task(strategy)
    if kind is None or kind == "chief":
        return True
    jobs = strategy.cluster_resolver.cluster_spec().jobs
    return kind == "worker" and index == 0 and "chief" not in jobs


def write_dir(path: str, strategy=None) -> str:
    """Where this process writes what belongs at ``path``.

    ``path`` itself on the chief; on another worker a scratch twin,
    ``<parent>/workertemp_<index>/<name>``, to delete with
    :func:`remove_write_dir` once written.
    """
    if is_chief(strategy):
        return path
    # Not os.path.normpath: it turns "gs://bucket" into "gs:/bucket".
    path = path.rstrip("/") if "://" in path else os.path.normpath(path)
    _, index = task(strategy)
    parent, name = os.path.split(path)
    return os.path.join(parent, f"workertemp_{index}", name)


def remove_write_dir(path: str, strategy=None) -> None:
    """Deletes a non-chief worker's scratch copy of ``path``; no-op on the chief."""
    if is_chief(strategy):
        return
    scratch = write_dir(path, strategy)
    if tf.io.gfile.isdir(scratch):
        tf.io.gfile.rmtree(scratch)
    elif tf.io.gfile.exists(scratch):
        tf.io.gfile.remove(scratch)
    parent = os.path.dirname(scratch)
    if tf.io.gfile.isdir(parent) and not tf.io.gfile.listdir(parent):
        tf.io.gfile.rmtree(parent)


def summary_writer(logdir: str, strategy=None):
    """A ``tf.summary`` file writer on the chief, a no-op writer elsewhere."""
    if is_chief(strategy):
        return tf.summary.create_file_writer(logdir)
    return tf.summary.create_noop_writer()


def barrier(strategy=None) -> None:
    """Waits until every worker gets here (an all-reduce of a scalar).

    Call it on every worker, e.g. before reading files the chief wrote.
    Trivial (no waiting) within one process.
    """
    strategy = strategy or tf.distribute.get_strategy()
    _replica_sum(strategy, tf.ones([])).numpy()


def any_worker(flag: bool, strategy=None) -> bool:
    """Whether ``flag`` is True on any worker (``flag`` itself in one process).

    A stop request (SIGTERM) reaches workers at different steps; agreeing on
    it keeps them stopping at the same step. Across processes it is an
    all-reduce: call it on every worker at the same point.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if task(strategy)[0] is None:
        return bool(flag)
    return float(_replica_sum(strategy, tf.constant(float(bool(flag))))) > 0


@tf.function
def _replica_sum(strategy, value):
    # In a tf.function: strategy.run outside one warns of eager overhead.
    per_replica = strategy.run(tf.identity, args=(value,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


def lost_worker(error: BaseException, strategy=None) -> bool:
    """Whether ``error`` means that another worker stopped or cannot be reached.

    Under ``MultiWorkerMirroredStrategy`` TensorFlow (2.21) aborts every
    collective op of a worker once another one is gone, and the next op run
    raises (``tests/test_distribute.py`` kills a ``bin/train`` worker):

    * ``tf.errors.UnavailableError``: the coordination service missed the
      dead worker's heartbeats (about 10 s), or the connection to it broke
      (at once when the chief died);
    * ``tf.errors.DeadlineExceededError``: a collective op outlived
      ``timeout_seconds`` of :func:`make_strategy`.

    The worker cannot go on (its collectives stay aborted): save nothing
    more, exit, and run every worker again to resume from the latest
    checkpoint. Always False outside a cluster, where these errors mean
    something else.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if task(strategy)[0] is None:
        return False
    return isinstance(
        error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)
    )


class WorkerLost(Exception):
    """Another worker of a multi_worker run stopped or cannot be reached.

    Its message is :func:`lost_worker_message`'s one line.
    """


def lost_worker_message(
    error: BaseException,
    strategy=None,
    *,
    checkpoint_dir: str | None = None,
    timeout_seconds: float | None = None,
) -> str:
    """The one line that says which worker gave up, why, and how to resume.

    Args:
      error: the error for which :func:`lost_worker` holds.
      strategy: the run's strategy (default: the current one).
      checkpoint_dir: where the run's latest checkpoints are, to name the
        one a rerun resumes from (default None: not named).
      timeout_seconds: the ``timeout_seconds`` of :func:`make_strategy`,
        named when it is what ran out (default None).
    """
    kind, index = task(strategy)
    reason = error_gist(error)
    if (
        isinstance(error, tf.errors.DeadlineExceededError)
        and timeout_seconds is not None
    ):
        reason += f" (collective timeout {timeout_seconds:g} s)"
    message = (
        f"{kind} {index} lost contact with the other workers "
        f"({type(error).__name__}: {reason}): a worker stopped or is unreachable. "
        f"Stop every worker still running, then run the same command on every "
        f"worker again"
    )
    if checkpoint_dir is None:
        return message
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        return f"{message}; training resumes from the latest checkpoint, {latest}"
    return f"{message}; training resumes from the start (no checkpoint was saved yet)"


# Lines of a TensorFlow error message that are about the graph or gRPC, not
# about what went wrong.
_NOISE = (
    "Graph execution error",
    "Detected at node",
    "File ",
    "[[",
    "Additional GRPC",
    ":UNKNOWN",
    "The error",
)


def error_gist(error: BaseException) -> str:
    """The gist of a TensorFlow error: its message less the graph and gRPC details.

    At most its first two meaningful lines, 300 characters, e.g.
    "Collective has timed out during execution.", or "Error reported from
    /job:worker/task:1: The following tasks are unhealthy (stopped sending
    heartbeats): /job:worker/replica:0/task:1". Any other error: its message.
    """
    text = str(getattr(error, "message", error))
    lines = [line.strip() for line in text.splitlines()]
    lines = [
        line.removeprefix("Collective ops is aborted by: ")
        for line in lines
        if line and not line.startswith(_NOISE)
    ]
    return " ".join(lines[:2])[:300]


def describe(strategy=None) -> str:
    """One line for the log.

    E.g. ``MultiWorkerMirroredStrategy: 2 replica(s), worker 0 (chief)``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    name = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"  # the class is CollectiveAllReduceStrategy
    text = f"{name}: {strategy.num_replicas_in_sync} replica(s)"
    kind, index = task(strategy)
    if kind is not None:
        text += f", {kind} {index}" + (" (chief)" if is_chief(strategy) else "")
    return text
