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
each replica its slice of the global batch. The exception is a
:class:`lowtf.data.Stream` made from a function of a
``tf.distribute.InputContext`` (:func:`lowtf.data.tfrecord_stream`'s files):
with several workers, each worker reads its own shards
(``distribute_datasets_from_function``) and each replica its own batch. Only the chief (the ``"chief"``
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
import signal
import socket
import struct
import threading
import time

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
    name: str = "default",
    *,
    devices=None,
    timeout_seconds: float | None = None,
    startup_timeout: float | None = None,
    log=None,
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
      startup_timeout: for ``"multi_worker"``, seconds to wait for the other
        workers to start (:func:`wait_for_workers`); default None: no limit.
      log: for ``"multi_worker"``, called with a line naming the workers
        not started yet, at once and every 30 s while it waits (default
        None: silent).

    Raises:
      ValueError: an unknown name, or ``"multi_worker"`` without TF_CONFIG.
      WorkerLost: ``"multi_worker"``: a worker did not start within
        ``startup_timeout``, or SIGTERM or SIGINT came while waiting.
    """
    _checks.one_of("strategy", name, STRATEGIES)
    if name != "multi_worker" and (startup_timeout is not None or log is not None):
        raise ValueError("`startup_timeout` and `log` need `strategy` 'multi_worker'")
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
    wait_for_workers(timeout=startup_timeout, log=log)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=timeout_seconds
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


# How often a worker waiting for the others looks for them, and says so.
_POLL_SECONDS, _SAY_SECONDS = 0.5, 30.0


def wait_for_workers(*, timeout: float | None = None, log=None, environ=None) -> None:
    """Waits until every other worker of ``TF_CONFIG``'s cluster has started.

    ``MultiWorkerMirroredStrategy`` waits for the others inside TensorFlow's
    C++ start-up, holding the Python interpreter: a worker whose peers never
    start waits there silently, forever, and its SIGTERM handler (the
    coordination service's) ignores SIGTERM. So each worker first waits here,
    in Python: it listens on its own address (so that the others see it
    started) and connects to each other worker's address until all accept;
    once it hands the port to TensorFlow's server, that server accepts
    instead. Only TCP connections are made; no file is written.

    Args:
      timeout: seconds to wait at most (default None: no limit).
      log: called with one line naming the workers not started yet, at once
        and every 30 s (default None: silent).
      environ: the environment whose TF_CONFIG to read (default ``os.environ``).

    Raises:
      WorkerLost: a worker did not start within ``timeout``, or SIGTERM or
        SIGINT came while waiting (one line, naming the workers waited for).
    """
    if timeout is not None:
        _checks.positive("startup_timeout", timeout)
    config = tf_config(environ)
    if not config:
        return
    cluster, me = config["cluster"], (config["task"]["type"], config["task"]["index"])
    tasks = [
        (kind, index, address)
        for kind in ("chief", "worker")
        for index, address in enumerate(cluster.get(kind, []))
    ]
    others = [t for t in tasks if t[:2] != me]
    if not others or me not in [t[:2] for t in tasks]:
        return
    who = f"{me[0]} {me[1]} of {len(tasks)}"
    signals = []
    restore = _catch_stop_signals(signals)
    listener = _listen(cluster[me[0]][me[1]])
    start = time.monotonic()
    said = None
    try:
        while True:
            _accept_all(listener)
            missing = [t for t in others if not _accepts(t[2])]
            if not missing:
                return
            names = ", ".join(
                f"{kind} {index} ({address})" for kind, index, address in missing
            )
            waited = time.monotonic() - start
            if signals:
                raise WorkerLost(
                    f"{who} stopped by {signals[0]} while waiting for {names} to start; "
                    "nothing was written"
                )
            if timeout is not None and waited >= timeout:
                raise WorkerLost(
                    f"{who} gave up after {timeout:g} s waiting for {names} to start "
                    "(startup timeout); nothing was written: start every worker with "
                    "the same cluster, or wait longer"
                )
            if log is not None and (said is None or waited - said >= _SAY_SECONDS):
                said = waited
                limit = f"; giving up in {_clock(timeout - waited)}" if timeout else ""
                log(f"{who}: waiting for {names} to start{limit}")
            time.sleep(_POLL_SECONDS)
    finally:
        if listener is not None:
            listener.close()
        restore()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _listen(address: str):
    """A socket listening on this worker's port, or None if it is taken."""
    try:
        _, port = _split_address(address)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("", port))
        listener.listen(64)
        listener.setblocking(False)
        return listener
    except (OSError, ValueError):
        return None  # TensorFlow's server start will name the problem


def _accept_all(listener) -> None:
    """Accepts and resets the other workers' probes (no TIME_WAIT on this port)."""
    while listener is not None:
        try:
            connection, _ = listener.accept()
        except OSError:  # BlockingIOError: none pending
            return
        # Linger on, 0 s: the close resets the connection.
        connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        connection.close()


def _accepts(address: str) -> bool:
    """Whether a worker's address accepts a TCP connection."""
    try:
        with socket.create_connection(_split_address(address), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _catch_stop_signals(received: list):
    """Records SIGTERM and SIGINT in ``received``; returns what restores the handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # handlers can only be set from the main thread
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(
            signum, lambda number, frame: received.append(signal.Signals(number).name)
        )

    def restore():
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def task(strategy=None) -> tuple[str | None, int]:
    """This process's ``(task type, task index)``; ``(None, 0)`` outside a cluster."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def num_workers(strategy=None) -> int:
    """The processes of the cluster that hold replicas (chief and workers); 1 outside one."""
    strategy = strategy or tf.distribute.get_strategy()
    if task(strategy)[0] is None:
        return 1
    spec = strategy.cluster_resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


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
