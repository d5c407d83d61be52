"""Training batches streamed from a ``tf.data`` pipeline, resumable to the exact batch.

:class:`Stream` is the streamed counterpart of :class:`lowtf.InMemoryBatches`
for data that does not fit in memory: :meth:`lowtf.TrainStep.run` and
:func:`lowtf.fit` take either. Its iterator is a trackable object of the
step, so the one checkpoint that holds the model, the optimizer and the
global step also holds the pipeline's position (shuffle buffers, the files'
read offsets, prefetched batches): a run killed and resumed reads the same
batches as one never stopped, as long as the pipeline is deterministic.

A pipeline that cannot be saved (one with external state: a
``tf.py_function``, ``tf.numpy_function``, ``Dataset.from_generator``, a
random op without a seed) is refused when the stream is made, not at the
first checkpoint.

Under ``MultiWorkerMirroredStrategy`` a stream given as a function of a
``tf.distribute.InputContext`` is read per worker
(``strategy.distribute_datasets_from_function``): each worker calls the
function with its own input pipeline id and reads its own shards, in
per-replica batches. TensorFlow (2.21) cannot checkpoint that distributed
iterator (it is not a ``Trackable``), and the chief's checkpoint could not
hold the other workers' positions anyway; the checkpoint holds instead the
number of batches read, the same on every worker, and a resumed worker
rebuilds its pipeline and skips that many of its batches (exact for a
deterministic pipeline; the skipped records are read again, at the speed
of ``Dataset.skip``).
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import tensorflow as tf

from lowtf import _checks, distribute
from lowtf.data.readers import DataError

# The start of the message of a batch refused inside the compiled loop (see
# assert_batch); TrainStep.run turns such an error into one DataError line.
BAD_BATCH = "lowtf: bad streamed batch"


class Stream(tf.Module):
    """Training batches from a ``tf.data`` pipeline, read inside the compiled step.

    >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(10_000, seed=0)
    >>> stream = lowtf.data.Stream(ds, batch_size=500, source="my rows v1")
    >>> lowtf.fit(model, optimizer, train=stream, validation=(x_val, y_val), ...)

    The pipeline is repeated (a finite one gives epochs; an infinite one is
    left as it is), made deterministic (``tf.data.Options.deterministic``;
    an op given ``deterministic=False`` explicitly keeps its choice, and a
    resumed run then reads other batches) and prefetched. Every batch has
    ``batch_size`` examples: a fixed shape, which XLA compiles once.

    Args:
      dataset: a ``tf.data.Dataset`` of ``(x, y)`` pairs, or a function of a
        ``tf.distribute.InputContext`` that returns one. Without
        ``batch_size`` its elements are batches with a fixed batch size
        (batch with ``drop_remainder=True``); with ``batch_size`` they are
        single examples, batched here (across epoch boundaries, so no example
        is dropped). In one process (also under ``MirroredStrategy``) the
        function form is called once with one input pipeline and the
        strategy's replicas, and lowtf feeds global batches (each replica
        takes its slice), so use ``context.num_replicas_in_sync`` to pick a
        batch size that divides. Under ``MultiWorkerMirroredStrategy`` with
        several workers it is called on each worker with that worker's
        context (``num_input_pipelines`` the workers, ``input_pipeline_id``
        this one): shard there, e.g. ``files.shard(context.num_input_pipelines,
        context.input_pipeline_id)``; its batches are then *per-replica*
        batches (``context.get_per_replica_batch_size(global_batch)``), or,
        with ``batch_size``, it yields examples that are batched here per
        replica.
      batch_size: examples per global batch when ``dataset`` yields single
        examples; default None (it yields batches).
      source: a string that names the data (a file pattern and version,
        say); :func:`lowtf.fit` records it in ``run.json`` as the training
        data's identity and refuses to resume with another. Default: the
        batches' shapes and dtypes only.
      locate: optional function of no argument that finds where a read
        failed (e.g. ``"shard-3.tfrecord, record 1200: ..."``) or returns
        None; called only after a record could not be read or parsed, to
        name it in the error. :func:`lowtf.data.tfrecord_stream` passes one
        that scans the shards.
      name: module name.

    Raises:
      ValueError: a dataset that is not ``(x, y)`` pairs, batches of no fixed
        size, or a pipeline that cannot be checkpointed.
    """

    def __init__(
        self, dataset, *, batch_size=None, source=None, locate=None, name=None
    ):
        super().__init__(name=name)
        if locate is not None and not callable(locate):
            raise ValueError(f"`locate` ({locate!r}) must be a function or None")
        self._locate = locate
        if source is not None and not isinstance(source, str):
            raise ValueError(f"`source` ({source!r}) must be a string naming the data")
        self.source = source
        self.per_worker = False
        strategy = tf.distribute.get_strategy()
        if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
            if distribute.num_workers(strategy) > 1:
                self._init_per_worker(dataset, batch_size, strategy)
                return
            replicas = strategy.num_replicas_in_sync
            context = tf.distribute.InputContext(
                num_input_pipelines=1,
                input_pipeline_id=0,
                num_replicas_in_sync=replicas,
            )
            dataset = dataset(context)
        dataset = _pipeline(dataset, batch_size)
        x_spec, y_spec = dataset.element_spec
        self.batch_size = int(x_spec.shape[0])
        self.element_spec = (x_spec, y_spec)
        # Tracked: a checkpoint of the step saves the pipeline's position.
        self.iterator = iter(dataset)
        _check_checkpointable(self.iterator)

    def _init_per_worker(self, function, batch_size, strategy):
        """Each worker reads its own pipeline; the checkpoint holds the batches read."""
        self.per_worker = True
        if batch_size is not None:
            _checks.positive_int("batch_size", batch_size)
        self._function, self._batch_size = function, batch_size
        self._strategy = strategy
        _, index = distribute.task(strategy)
        context = tf.distribute.InputContext(
            num_input_pipelines=distribute.num_workers(strategy),
            input_pipeline_id=index,
            num_replicas_in_sync=strategy.num_replicas_in_sync,
        )
        # This worker's pipeline, made once now for its checks (the strategy
        # makes it again when training starts, at the restored position).
        probe = self._worker_pipeline(context)
        _check_checkpointable(iter(probe))  # refuses external state (not replayable)
        x_spec, y_spec = probe.element_spec
        self.element_spec = (x_spec, y_spec)  # of one replica's batch
        self.batch_size = int(x_spec.shape[0]) * strategy.num_replicas_in_sync
        with strategy.scope():
            # Global steps read, equal on every worker: tracked, so in the
            # chief's checkpoint. A resumed worker skips that many batches.
            self.position = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="batches_read"
            )
            # This process's iterator (made by start()) and what it has read:
            # not tracked, not saved.
            self._local = _Local(
                tf.Variable(0, dtype=tf.int64, trainable=False, name="read_here")
            )

    def _worker_pipeline(self, context, skip_steps=0):
        """The user's function for one worker, repeated, batched per replica, skipped."""
        dataset = self._function(context)
        batch_size = self._batch_size
        if batch_size is not None:
            batch_size = context.get_per_replica_batch_size(batch_size)
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        return _pipeline(dataset, batch_size, skip=skip_steps * local_replicas)

    def start(self) -> None:
        """Makes a per-worker stream's iterator at the checkpointed position.

        Called by :meth:`lowtf.TrainStep.run` before its compiled call, so
        after a resume's restore; a no-op for a stream of one pipeline.

        Raises:
          ValueError: the position was restored after this stream's iterator
            had started reading (it cannot go back).
        """
        if not self.per_worker:
            return
        position = int(self.position.numpy())
        if self._local.iterator is not None:
            read = int(self._local.read.numpy())
            if position != read:
                raise ValueError(
                    f"this per-worker stream read {read} batches but its position was "
                    f"set to {position} (a checkpoint restored after training started): "
                    "make a new Stream and TrainStep, then restore"
                )
            return
        datasets = self._strategy.distribute_datasets_from_function(
            lambda context: self._worker_pipeline(context, skip_steps=position)
        )
        self._local.iterator = iter(datasets)
        self._local.read.assign(position)

    @property
    def identity(self) -> str:
        """What :func:`lowtf.fit` records as the training data: ``source`` and the shapes."""
        x_spec, y_spec = self.element_spec
        shapes = (
            f"x {x_spec.dtype.name}{x_spec.shape.as_list()} "
            f"y {y_spec.dtype.name}{y_spec.shape.as_list()}"
        )
        if self.per_worker:
            shapes += " per replica, read per worker"
        return f"{self.source} ({shapes})" if self.source else f"stream {shapes}"

    def example(self) -> tuple[np.ndarray, np.ndarray]:
        """One all-zero ``(x, y)`` example, for building a model: the stream is not read."""
        x_spec, y_spec = self.element_spec
        return (
            np.zeros([1, *x_spec.shape[1:]], x_spec.dtype.as_numpy_dtype),
            np.zeros([1], y_spec.dtype.as_numpy_dtype),
        )

    def next(self):
        """The next ``(x, y)`` batch; inside a ``tf.function`` an iterator op.

        XLA cannot compile the iterator op: :class:`lowtf.TrainStep` calls
        this outside its XLA-compiled step (see BUILD_NOTES.md). A per-worker
        stream gives per-replica values, for ``strategy.run``, and counts
        the batch (after reading it: a stateful op runs in program order).
        """
        if not self.per_worker:
            return self.iterator.get_next()
        if self._local.iterator is None:
            raise ValueError("a per-worker stream reads only after `start()`")
        batch = self._local.iterator.get_next()
        self.position.assign_add(1)
        self._local.read.assign_add(1)
        return batch

    def read_error(self, error: tf.errors.OpError) -> DataError | None:
        """The one-line DataError for an error raised while reading a batch, or None.

        None means the error did not come from the pipeline (a failing op of
        the step itself) and should propagate unchanged.
        """
        message = error.message or ""
        if BAD_BATCH in message:
            found = re.search(re.escape(BAD_BATCH) + r"[^\n]*", message).group(0)
            # tf.debugging.Assert prints its data as "[text] [values]".
            found = found.replace("] [", " ").rstrip("]")
            return DataError(clean_message(found.removeprefix("lowtf: ")))
        if isinstance(error, tf.errors.OutOfRangeError):
            return DataError(
                "the training pipeline ran out of batches (is it empty, or filtered "
                "to nothing?); a Stream repeats a finite pipeline, so it should not end"
            )
        if "GetNext" not in message and not isinstance(error, tf.errors.DataLossError):
            return None
        where = self._locate() if self._locate is not None else None
        if where is not None:
            return DataError(f"a training record could not be read: {where}")
        return DataError(
            f"a training batch could not be read: {clean_message(message)}"
        )


class _Local:
    """A per-worker stream's own iterator and count: not a Trackable, so unsaved.

    Under ``MultiWorkerMirroredStrategy`` the iterator is not a Trackable
    anyway; under the default strategy it is, and must stay out too.
    """

    def __init__(self, read):
        self.iterator = None
        self.read = read


def _pipeline(dataset, batch_size, skip=0):
    """``dataset`` checked, repeated, batched, skipped, made deterministic, prefetched."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(  # noqa: TRY004 - an argument's value, as every check here
            f"`dataset` ({type(dataset).__name__}) must be a tf.data.Dataset of "
            "(x, y) pairs, or a function of a tf.distribute.InputContext that "
            "returns one"
        )
    _check_pairs(dataset.element_spec, batched=batch_size is None)
    if int(dataset.cardinality()) == 0:
        raise ValueError("`dataset` is empty: it has no batch to train on")
    if batch_size is not None:
        _checks.positive_int("batch_size", batch_size)
        dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
    else:
        dataset = dataset.repeat()
    _check_batch_spec(*dataset.element_spec)
    if skip:
        dataset = dataset.skip(skip)
    options = tf.data.Options()
    options.deterministic = True
    # Refuse a pipeline whose state a checkpoint cannot hold (external
    # state), rather than save one that would resume elsewhere.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.FAIL
    )
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def assert_batch(x, y, high):
    """``(x, y)`` with graph checks: finite features, labels whole and in [0, high].

    For streamed batches, checked in the graph as they come, outside XLA; an
    in-memory training set is checked once, on the host (see
    :mod:`lowtf.data.checks`). A failure stops the compiled call with an
    ``InvalidArgumentError`` whose message starts with :data:`BAD_BATCH`.
    """
    if x.dtype.is_floating:
        x = tf.debugging.check_numerics(
            x, f"{BAD_BATCH}: a feature is NaN or Inf; drop or impute those records"
        )
    labels = y if y.dtype.is_integer else tf.math.floor(y)
    valid = (labels >= 0) & (labels <= tf.cast(high, labels.dtype))
    if not y.dtype.is_integer:
        valid &= tf.equal(labels, y)  # a NaN fails this too
    bad = tf.boolean_mask(y, tf.logical_not(valid))
    assertion = tf.debugging.Assert(
        tf.reduce_all(valid),
        [
            f"{BAD_BATCH}: labels must be class indices 0..{high}; found",
            bad[:3],
        ],
        summarize=3,
    )
    with tf.control_dependencies([assertion]):
        return tf.identity(x), tf.identity(y)


def materialize(name: str, data, *, limit: int = 10_000_000):
    """``data`` as ``(x, y)`` NumPy arrays: a pair as given, a finite dataset read whole.

    Validation data is held in memory for the evaluator; a ``tf.data.Dataset``
    of ``(x, y)`` batches (or of single examples) is read once, up to
    ``limit`` examples.
    """
    if not isinstance(data, tf.data.Dataset):
        return data
    if int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            f"`{name}` is an infinite dataset (it repeats); give a finite one, e.g. "
            "without .repeat(), or (x, y) arrays"
        )
    _check_pairs(data.element_spec, batched=False, name=name)
    if data.element_spec[1].shape.rank == 0:
        data = data.batch(4096)
    xs, ys, count = [], [], 0
    try:
        for x, y in data:
            xs.append(x.numpy())
            ys.append(y.numpy())
            count += len(ys[-1])
            if count > limit:
                raise ValueError(
                    f"`{name}` holds more than {limit:,} examples; it is held in "
                    "memory for evaluation: give a smaller one"
                )
    except tf.errors.OpError as error:
        raise DataError(
            f"`{name}` could not be read: {clean_message(error.message)}"
        ) from None
    if not xs:
        raise ValueError(f"`{name}` is empty: it has no examples to evaluate on")
    return np.concatenate(xs), np.concatenate(ys)


def _check_pairs(spec, *, batched, name="dataset"):
    """Refuses elements that are not an ``(x, y)`` pair of tensors."""
    if not (
        isinstance(spec, tuple)
        and len(spec) == 2
        and all(isinstance(s, tf.TensorSpec) for s in spec)
    ):
        raise ValueError(
            f"`{name}` must yield (x, y) pairs of tensors; its elements are {spec}. "
            "Map them to pairs first, e.g. ds.map(lambda d: (d['x'], d['y']))"
        )
    y_spec = spec[1]
    if not batched and y_spec.shape.rank not in (0, 1):
        raise ValueError(
            f"`{name}` gives labels of shape {y_spec.shape}; labels are class "
            "indices, one per example"
        )


def _check_batch_spec(x_spec, y_spec):
    """Refuses batches of no fixed size, or of shapes a step cannot take."""
    if x_spec.shape.rank is None or x_spec.shape.rank < 2:
        raise ValueError(
            f"the batches' x has shape {x_spec.shape}; it must be [batch, "
            "features...]: batch the examples, or give `batch_size=`"
        )
    if y_spec.shape.rank != 1:
        raise ValueError(
            f"the batches' y has shape {y_spec.shape}; it must be a vector of labels "
            "[batch] (one-hot labels: take their argmax)"
        )
    if x_spec.shape[0] is None or y_spec.shape[0] is None:
        raise ValueError(
            f"the batches have no fixed size (x {x_spec.shape}, y {y_spec.shape}): "
            "batch with .batch(n, drop_remainder=True), or give unbatched examples "
            "and `batch_size=n`"
        )
    if not x_spec.shape[1:].is_fully_defined():
        raise ValueError(
            f"the batches' examples have no fixed shape ({x_spec.shape}); give "
            "every example the same shape (a model's weights are made for one)"
        )
    if not (x_spec.dtype.is_floating or x_spec.dtype.is_integer):
        raise ValueError(f"the batches' x is {x_spec.dtype.name}, not numbers")
    if not (y_spec.dtype.is_floating or y_spec.dtype.is_integer):
        raise ValueError(
            f"the batches' y is {y_spec.dtype.name}; labels must be class indices"
        )


def _check_checkpointable(iterator) -> None:
    """Saves the fresh iterator once: a pipeline with external state fails here."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            tf.train.Checkpoint(iterator=iterator).write(os.path.join(scratch, "probe"))
        except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as e:
            raise ValueError(
                "`dataset` cannot be checkpointed, so a resumed run could not go on "
                f"from the exact batch: {clean_message(e.message)} (an op with external "
                "state: tf.py_function, tf.numpy_function, Dataset.from_generator, "
                "or a random op without a seed; use seeded tf ops, or write the "
                "data to TFRecord files first)"
            ) from None


def clean_message(message: str) -> str:
    """TensorFlow's error message as one line, without op names and traceback.

    A graph's error reads "Graph execution error:", the Python lines where
    the op was made, then the reason and ``[[{{node ...}}]]``: the reason is
    the last line before the node.
    """
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    reasons = [
        line
        for line in lines
        if not line.startswith(
            ("Graph execution error", "Detected at node", "File ", "[[")
        )
    ]
    line = reasons[-1] if reasons else (lines[0] if lines else "(no message)")
    line = re.sub(r"\{\{.*?\}\}|\[Op:.*|\[\[.*?\]\]", "", line)
    return re.sub(r"\s+", " ", line).strip().rstrip(";:,")
