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
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import tensorflow as tf

from lowtf import _checks
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
        is dropped). The function form is called once with one input pipeline
        and the strategy's replicas: under ``tf.distribute`` lowtf feeds
        global batches (every worker reads the same stream, and each replica
        takes its slice), so use ``context.num_replicas_in_sync`` to pick a
        batch size that divides.
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
        if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            context = tf.distribute.InputContext(
                num_input_pipelines=1,
                input_pipeline_id=0,
                num_replicas_in_sync=replicas,
            )
            dataset = dataset(context)
        if not isinstance(dataset, tf.data.Dataset):
            raise ValueError(  # noqa: TRY004 - an argument's value, as every check here
                f"`dataset` ({type(dataset).__name__}) must be a tf.data.Dataset of "
                "(x, y) pairs, or a function of a tf.distribute.InputContext that "
                "returns one"
            )
        if source is not None and not isinstance(source, str):
            raise ValueError(f"`source` ({source!r}) must be a string naming the data")
        _check_pairs(dataset.element_spec, batched=batch_size is None)
        if int(dataset.cardinality()) == 0:
            raise ValueError("`dataset` is empty: it has no batch to train on")
        if batch_size is not None:
            _checks.positive_int("batch_size", batch_size)
            dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
        else:
            dataset = dataset.repeat()
        x_spec, y_spec = dataset.element_spec
        _check_batch_spec(x_spec, y_spec)
        options = tf.data.Options()
        options.deterministic = True
        # Refuse a pipeline whose state a checkpoint cannot hold (external
        # state), rather than save one that would resume elsewhere.
        options.experimental_external_state_policy = (
            tf.data.experimental.ExternalStatePolicy.FAIL
        )
        dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
        self.batch_size = int(x_spec.shape[0])
        self.element_spec = (x_spec, y_spec)
        self.source = source
        # Tracked: a checkpoint of the step saves the pipeline's position.
        self.iterator = iter(dataset)
        _check_checkpointable(self.iterator)

    @property
    def identity(self) -> str:
        """What :func:`lowtf.fit` records as the training data: ``source`` and the shapes."""
        x_spec, y_spec = self.element_spec
        shapes = (
            f"x {x_spec.dtype.name}{x_spec.shape.as_list()} "
            f"y {y_spec.dtype.name}{y_spec.shape.as_list()}"
        )
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
        this outside its XLA-compiled step (see BUILD_NOTES.md).
        """
        return self.iterator.get_next()

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
        if "IteratorGetNext" not in message and not isinstance(
            error, tf.errors.DataLossError
        ):
            return None
        where = self._locate() if self._locate is not None else None
        if where is not None:
            return DataError(f"a training record could not be read: {where}")
        return DataError(
            f"a training batch could not be read: {clean_message(message)}"
        )


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
