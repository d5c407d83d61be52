"""The compiled training step, one batch or N steps per call.

One step, all inside one ``tf.function`` (XLA by default):

1. forward pass in training mode (dropout on, batch statistics);
2. cross-entropy from the logits, averaged over the *global* batch;
3. the regularization losses gathered and added by hand, once per step;
4. gradients and the optimizer update (any Keras optimizer or schedule);
5. the max-norm assign ops, ``var.assign(clip_by_norm(var, r, axes))``, after
   OR-ing into a per-unit flag the units each cap binds
   (:meth:`lowtf.MaxNorm.bound`): :meth:`TrainStep.maxnorm_clipped_fraction`.

Frozen layers (``layer.trainable = False``, :func:`lowtf.train.freeze`) get
no gradient, no optimizer update, no regularization loss and no max-norm op,
and a frozen batch norm normalizes with its moving statistics. The optimizer
is built on every variable that could train, so its slots and the
checkpoint's layout do not depend on what is frozen. A change of the
``trainable`` flags is picked up at the next call and costs one retrace.

It returns ``cross_entropy``, ``regularization_loss``, ``total_loss`` and
``accuracy`` as separate scalars, so monitoring can use the cross-entropy
alone. :meth:`TrainStep.run` runs N steps in one compiled call (a
``tf.range`` loop in the graph, N a tensor, batches sampled in the graph from
an :class:`InMemoryBatches` or read from a :class:`lowtf.data.Stream`'s
``tf.data`` iterator), which removes the per-call Python overhead that
dominates small models. XLA cannot compile the iterator op, so with a stream
the loop and the read are a plain graph and each step inside it is compiled
by XLA (BUILD_NOTES.md has the measurements).

Under ``tf.distribute`` the arithmetic is already right: the cross-entropy
of each replica is summed and divided by the global batch size, and the
regularization loss is divided by the number of replicas, so the all-reduced
gradient is that of one global step with the penalty added once.
XLA cannot compile a function that spans several devices (``strategy.run``,
the all-reduce, mirrored variables), so under a strategy only each replica's
forward and backward pass is compiled, once per device; the all-reduce, the
optimizer update and max-norm run as ordinary graph ops around it. A
:class:`lowtf.data.Stream` read per worker (``MultiWorkerMirroredStrategy``,
a function of an ``InputContext``) gives ``strategy.run`` each replica's own
batch instead of a global batch to split.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import tensorflow as tf

from lowtf import _checks, nn, random
from lowtf.augment import mix as mix_lib
from lowtf.data import InMemoryBatches, checks, streams
from lowtf.nn import constraints, losses, regularizers
from lowtf.train import evaluator
from lowtf.train import swa as swa_lib
from lowtf.train import metrics as metrics_lib
from lowtf.train.metrics import STEP_METRICS, SUMMED_METRICS


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Advanced knobs of :class:`TrainStep`.

    Attributes:
      jit_compile: compile the step with XLA (default True). False runs it
        as a plain ``tf.function`` graph; both give the same numbers.
        ``"auto"`` picks by :func:`auto_jit_compile`: XLA, except for a
        model with convolutions on a machine without a GPU, where a graph
        runs a step about as fast and compiles faster (about 2 s against
        3-7 s under XLA).
      run_eagerly: no ``tf.function`` at all, for debugging (default False).
      loss: ``"auto"`` (default: sigmoid for 1 logit, else softmax),
        ``"softmax"`` or ``"sigmoid"``.
      seed: seed of the per-step random keys (dropout masks), default 0.
      require_regularization: raise if the model has no regularization loss
        (set when the user asked for L1/L2, so that a model which drops them
        never trains unregularized in silence). Default False.
      require_constraints: raise if no variable carries a constraint
        (default False).
      label_smoothing: smooth the training targets by this much, in [0, 1)
        (default 0: off), as Keras' ``CategoricalCrossentropy`` /
        ``BinaryCrossentropy(label_smoothing=)``; the training loss only:
        evaluations report the plain cross-entropy.
      mixup: Beta(alpha, alpha) shape of mixup (default 0: off), see
        :mod:`lowtf.augment.mix`.
      cutmix: Beta shape of CutMix (default 0: off); images, or flat
        examples with ``image_shape``. With both, each step does one of them.
      image_shape: ``(h, w, c)`` of flat examples, for CutMix (default None).
      ema: momentum of an exponential moving average of the trained weights
        (Polyak averaging), in [0, 1) (default 0: off). After every step
        ``average = ema * average + (1 - ema) * weight`` (the first step
        copies the weight), as Keras' optimizers do with ``use_ema=True,
        ema_momentum=ema``, but after the max-norm op. :func:`lowtf.fit`
        evaluates, snapshots as best, restores and so exports the averaged
        weights, as Keras' ``SwapEMAWeights``; the averages are in the
        checkpoint with the step.
      swa_from: stochastic weight averaging (Izmailov et al. 2018) from this
        global step on (default None: off), see :mod:`lowtf.train.swa`.
        :func:`lowtf.fit` adds the weights to an equal-weight running mean
        at each evaluation at or after this step (a loop of your own calls
        :meth:`TrainStep.update_swa`), recomputes the batch-norm statistics
        of the mean in one pass over the training rows, and evaluates,
        snapshots as best, restores and so exports the mean from then on
        (before it, the weights themselves). The mean, its count and its
        statistics are in the checkpoint with the step. A field of the
        step's, not of ``TrainConfig``, although fit's evaluations set its
        cadence: its state is the step's, beside ``ema``'s averages and
        swapped in by the same :meth:`TrainStep.averaged_weights`, and a
        population takes it per member as it takes ``ema``. Not with
        ``ema``; with batch norm, only on in-memory data and one device.
    """

    jit_compile: bool | str = True
    run_eagerly: bool = False
    loss: str = "auto"
    seed: int = 0
    require_regularization: bool = False
    require_constraints: bool = False
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    image_shape: tuple | None = None
    ema: float = 0.0
    swa_from: int | None = None

    def __post_init__(self):
        # Not one_of: `1 in (True, False)` holds, and "no" is a truthy flag.
        _checks.boolean("jit_compile", self.jit_compile, also=("auto",))
        _checks.boolean("run_eagerly", self.run_eagerly)
        _checks.one_of("loss", self.loss, losses.HEADS)
        _checks.non_negative_int("seed", self.seed)
        _checks.boolean("require_regularization", self.require_regularization)
        _checks.boolean("require_constraints", self.require_constraints)
        _checks.rate("label_smoothing", self.label_smoothing)
        mix_lib.check_alpha("mixup", self.mixup)
        mix_lib.check_alpha("cutmix", self.cutmix)
        if self.image_shape is not None:
            _checks.image_shape("image_shape", self.image_shape)
        _checks.rate("ema", self.ema)
        if self.swa_from is not None:
            _checks.positive_int("swa_from", self.swa_from)
            if self.ema:
                raise ValueError(
                    f"`ema` ({self.ema}) and `swa_from` ({self.swa_from}) are two "
                    "averages of the weights and only one can be evaluated: drop one"
                )

    @property
    def soft_targets(self) -> bool:
        """Whether the training loss takes soft targets (smoothing or mixing)."""
        return bool(self.label_smoothing or self.mixup or self.cutmix)


class TrainStep(tf.Module):
    """A compiled training step to call from your own loop.

    >>> step = lowtf.TrainStep(model, tf.keras.optimizers.Adam(1e-3))
    >>> for x, y in dataset:
    ...     metrics = step(x, y)   # dict of scalar tensors, see STEP_METRICS

    Args:
      model: a lowtf module or any ``tf.Module``/Keras model called as
        ``model(x, training=...)`` that returns logits.
      optimizer: a Keras optimizer (with a learning-rate schedule or not).
      data: optional :class:`InMemoryBatches` or :class:`lowtf.data.Stream`;
        required by :meth:`run`.
      augment: optional callable ``augment(x) -> x`` applied to every
        training batch inside the compiled step (never at inference), e.g.
        ``lowtf.augment.parse("translate:1,rotate:10")``. It runs under the
        step's random key (:func:`lowtf.random.step_key`), so its draws are
        stateless: reproducible from ``options.seed``, new at every step.
        Default None.
      options: :class:`StepOptions`.
    """

    def __init__(
        self, model, optimizer, *, data=None, augment=None, options=StepOptions()
    ):
        super().__init__(name="train_step")
        if augment is not None and not callable(augment):
            raise ValueError(
                f"`augment` ({augment!r}) must be a callable x -> x, e.g. "
                "lowtf.augment.parse('translate:1')"
            )
        self._augment = augment
        self.model = model
        self.optimizer = optimizer
        self.data = data
        self.options = options
        self._strategy = tf.distribute.get_strategy()
        methods = ("build", "apply_gradients")
        if not all(callable(getattr(optimizer, m, None)) for m in methods):
            raise ValueError(
                f"`optimizer` ({optimizer!r}) must be a Keras optimizer, e.g. "
                "tf.keras.optimizers.Adam(1e-3)"
            )
        _check_optimizer_strategy(optimizer, self._strategy)
        if data is not None:  # refused here, before a trainer writes anything
            checks.check_shardable(
                "`data.batch_size`", data.batch_size, self._strategy
            )
        self._built = False
        self._head = None
        self._num_logits = None
        self._constrained = []
        self.maxnorm_bound = []  # made by build(), one flag per constrained weight
        self._averaged = []
        self._bn_pass = None
        self._distributed = tf.distribute.has_strategy()
        # Batches read per replica (lowtf.data.Stream read per worker), not
        # global batches to split among the replicas.
        self._per_replica_data = isinstance(data, streams.Stream) and data.per_worker
        if options.jit_compile == "auto":
            options = dataclasses.replace(options, jit_compile=evaluator.auto_jit_compile(model))
            self.options = options
        jit = options.jit_compile and not options.run_eagerly
        # The forward and backward pass is XLA-compiled iff jit (see below).
        self._xla = bool(jit)
        # Under a tf.distribute strategy XLA compiles the replica's forward and
        # backward pass only (see the module docstring); else the whole step.
        distributed = self._distributed
        # Under XLA a batch's rows of the shuffle are cheaper to compute than
        # to gather from a permutation rebuilt each epoch; in a graph, not.
        self._rows_per_batch = jit and not distributed
        # What trains now, set by build(): kept out of the checkpoint (a plain
        # object, not tracked), whose layout must not depend on what is frozen.
        self._trained = _Trained()
        self._version = None  # nn.base.trainability_version() the list was read at
        self._retired_traces = 0
        self._make_functions()

    def _make_functions(self) -> None:
        """(Re)makes the compiled functions; a new list of variables needs new ones."""
        options, distributed = self.options, self._distributed
        jit = options.jit_compile and not options.run_eagerly
        self._gradients = self._forward_backward
        # The step inside run()'s loop: the loop's own under XLA, except with
        # a stream, whose iterator op XLA cannot compile (see _steps).
        self._batch_step = self._one_step
        if options.run_eagerly:
            self._one, self._many = self._one_step, self._steps
        else:
            whole = options.jit_compile and not distributed
            compile_ = {"jit_compile": whole, "reduce_retracing": True}
            self._one = tf.function(self._one_step, **compile_)
            if isinstance(self.data, streams.Stream):
                self._many = tf.function(self._steps, reduce_retracing=True)
                if whole:
                    self._batch_step = self._one
            else:
                self._many = tf.function(self._steps, **compile_)
            if jit and distributed:
                self._gradients = tf.function(
                    self._forward_backward, jit_compile=True, reduce_retracing=True
                )

    # -- public API ---------------------------------------------------------

    def __call__(self, x, y) -> dict:
        """Runs one step on one (global) batch; returns the STEP_METRICS.

        Every batch is checked on the host before the compiled call: its
        shapes and dtype, its labels (class indices below the number of
        logits for a softmax head, 0 or 1 for a sigmoid head) and its
        features (no NaN or Inf). Under XLA a bad label or feature gives a
        NaN loss or a wrong one, not an error. The checks read NumPy arrays
        and tensors in host memory in place (a comparison and a count over
        the labels, an isfinite and a count over the features); a batch
        already on an accelerator, or a symbolic one (the step called inside
        your own ``tf.function``), is not read back and goes unchecked. They
        take 6 us in a hot loop, but between steps NumPy runs with cold
        caches: measured on a loaded 2-core CPU, they add 50-75 us to a tiny
        MLP's 0.5-0.8 ms call (batch 500), a constant cost that larger models
        dilute. :meth:`run` checks its data
        once and has no per-step cost.

        Raises:
          ValueError: a bad batch, naming the argument and the bad value.
        """
        host_x, host_y = x, y
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        checks.check_batch(x, y)
        checks.check_shardable("the global batch", x.shape[0], self._strategy)
        self.build(x)
        self._sync_trainable()
        checks.check_features(x, self._x_spec)
        host_y = checks.on_host(host_y, y)
        if host_y is not None and self._num_logits is not None:
            checks.check_labels(host_y, self._head, self._num_logits, "y")
        host_x = checks.on_host(host_x, x)
        if host_x is not None:
            checks.check_finite(host_x, "x")
        return self._one(x, y)

    def run(self, num_steps) -> dict:
        """Runs ``num_steps`` steps on batches from ``data`` in one call.

        Returns the STEP_METRICS averaged over those steps. ``num_steps`` enters
        as a tensor, so calling with another value does not retrace.

        Raises:
          lowtf.DataError: a streamed batch could not be read (a corrupt
            record, one that does not parse), or holds NaN/Inf features or
            labels the head cannot take; none of the call's steps is kept
            (the step, the weights and the stream's position are those of the
            last completed call, except on a corrupt record, which the stream
            has read past).
        """
        if self.data is None:
            raise ValueError("`run` needs the step to be built with `data=`")
        _checks.positive_int("num_steps", num_steps)
        checks.check_shardable(
            "`data.batch_size`", self.data.batch_size, self._strategy
        )
        self.build(self.data.example()[0])
        self._sync_trainable()
        if not isinstance(self.data, streams.Stream):
            return self._many(tf.constant(num_steps, tf.int64))
        self.data.start()  # a per-worker stream's iterator, after any restore
        try:
            return self._many(tf.constant(num_steps, tf.int64))
        except tf.errors.OpError as error:
            reason = self.data.read_error(error)
            if reason is None:
                raise
            raise reason from None

    @property
    def step(self) -> tf.Variable:
        """The global step: the optimizer's ``iterations``, lowtf's one step counter.

        ``apply_gradients`` advances it once per step, also under a strategy;
        dropout keys, learning-rate schedules, evaluations and checkpoints all
        read this one variable.
        """
        iterations = self.optimizer.iterations
        return getattr(iterations, "value", iterations)  # Keras 3 wraps a tf.Variable

    @property
    def trace_count(self) -> int:
        """How many times the compiled functions were traced."""
        if self.options.run_eagerly:
            return 0
        current = (self._one, self._many)
        return self._retired_traces + sum(
            f.experimental_get_tracing_count() for f in current
        )

    @property
    def trained_variables(self) -> tuple:
        """The variables the step differentiates and updates: frozen layers' are not.

        Empty before :meth:`build`.
        """
        if not self._built:
            return ()
        self._sync_trainable()
        return tuple(self._trained.variables)

    @property
    def head(self) -> str:
        """The resolved loss head, ``"softmax"`` or ``"sigmoid"``."""
        return self._head

    @property
    def num_logits(self) -> int | None:
        """Logits per example, from the model's output; None before :meth:`build`."""
        return self._num_logits

    def build(self, x) -> None:
        """Makes the model's and optimizer's variables and checks the options."""
        if self._built:
            return
        with self._strategy.scope():
            logits = self.model(x[:1], training=False)
            self._head = losses.resolve_head(self.options.loss, logits.shape)
            self._num_logits = logits.shape[-1]  # static, as the model ran eagerly
            # The optimizer gets every variable that could train, frozen or
            # not, so that its slots (and the checkpoint's layout) stay the
            # same when layers are unfrozen; a frozen variable's slots are
            # never updated, as it never gets a gradient.
            trainable = _trainable_by_construction(self.model)
            if not trainable:
                raise ValueError("the model has no trainable variables")
            self.optimizer.build(trainable)
        self._read_trainable()
        if self.options.ema:
            # Tracked, so in the checkpoint with the step: one average per
            # variable the optimizer was built on, as Keras keeps them.
            with self._strategy.scope():
                self.averages = [
                    tf.Variable(v.read_value(), trainable=False, name="average")
                    for v in trainable
                ]
            self._averaged_pairs = list(zip(trainable, self.averages))
        if self.options.swa_from is not None:
            self._build_swa(trainable)
        # Tracked (so in the checkpoint, as before frozen layers existed): every
        # pair; the step applies those of self._trained.
        self._constrained = _lowtf_constraints(self.model, include_frozen=True)
        # Per max-norm weight (another constraint is any callable), which units
        # its cap bound at some step since the last reset (the diagnostic);
        # tracked, so a resumed run reports what an uninterrupted one does.
        self._capped = _Capped(
            [
                (var, constraint)
                for var, constraint in self._constrained
                if isinstance(constraint, constraints.MaxNorm)
            ]
        )
        with self._strategy.scope():
            self.maxnorm_bound = [
                tf.Variable(
                    tf.zeros(constraint.bound(var).shape, tf.bool),
                    trainable=False,
                    name="maxnorm_bound",
                )
                for var, constraint in self._capped.pairs
            ]
        self._check_requirements()
        if self.data is not None and not isinstance(self.data, streams.Stream):
            # Once, on the whole training set: under XLA an out-of-range label
            # gives a NaN loss, not an error. A stream's batches are checked
            # as they come (_next_batch).
            checks.check_labels(
                np.asarray(self.data.y), self._head, int(logits.shape[-1]), "data.y"
            )
        if self._distributed:
            self._averaged = _replica_averaged(self.model)
        # Later batches must match the first, checked before the traced call:
        # a relaxed retrace would otherwise fail deep inside the graph.
        self._x_spec = tf.TensorSpec([None, *x.shape[1:]], x.dtype)
        self._built = True

    def _read_trainable(self) -> None:
        """Reads which variables train now (frozen layers' ones do not)."""
        self._version = nn.base.trainability_version()
        variables = nn.trainable_variables(self.model)
        if not variables:
            raise ValueError(
                "every layer of the model is frozen, so nothing would train: "
                "unfreeze some (lowtf.train.unfreeze(model), or freeze fewer)"
            )
        self._trained.variables = variables
        self._trained.constraints = _lowtf_constraints(self.model)

    def _sync_trainable(self) -> None:
        """Picks up a change of layers' ``trainable`` flags since the last call.

        A compiled function holds the list of variables it was traced with, so
        a new list (e.g. :func:`lowtf.train.unfreeze`) makes new functions:
        one more trace, at the next call. Checking costs one integer
        comparison per call while nothing changes.
        """
        if self._version == nn.base.trainability_version():
            return
        before = [v.ref() for v in self._trained.variables]
        self._read_trainable()
        if [v.ref() for v in self._trained.variables] == before:
            return
        if not self.options.run_eagerly:
            self._retired_traces = self.trace_count
        self._make_functions()

    # -- traced internals ---------------------------------------------------

    def _steps(self, num_steps):
        totals = {name: tf.zeros([]) for name in SUMMED_METRICS}
        # A while loop on a counter, not `for _ in tf.range(n)`: XLA would take
        # the range's length as a compile-time constant and recompile per n.
        i = tf.constant(0, tf.int64)
        while i < num_steps:
            x, y = self._next_batch()
            if self._per_replica_data:
                # A per-worker stream gives each replica its own batch.
                metrics = self._batch_step(x, y, split=False)
            else:
                metrics = self._batch_step(x, y)
            totals = {name: totals[name] + metrics[name] for name in SUMMED_METRICS}
            i += 1
        return metrics_lib.means_of_sums(totals, num_steps)

    def _next_batch(self):
        if not isinstance(self.data, streams.Stream):
            return self.data.next(per_batch=self._rows_per_batch)
        # Read and checked in the graph around the XLA-compiled step: under
        # XLA a NaN feature or a bad label gives a NaN loss, not an error.
        x, y = self.data.next()
        high = 1 if self._head == "sigmoid" else self._num_logits - 1
        if self._per_replica_data:  # per-replica values: checked on each replica
            return self._strategy.run(streams.assert_batch, args=(x, y, high))
        return streams.assert_batch(x, y, high)

    def _one_step(self, x, y, split=True):
        key = random.make_key(self.options.seed, self.step)
        per_replica = self._strategy.run(
            self._replica_step, args=(x, y, key), kwargs={"split": split}
        )
        metrics = {
            name: self._strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for name, value in per_replica.items()
        }
        # Max-norm runs in cross-replica context, after the all-reduced update:
        # every copy of a mirrored variable gets the same clipped value.
        self._flag_bound()
        constraints.apply_constraints(self._trained.constraints)
        if self.options.ema:
            self._update_averages()
        # Batch-norm moving statistics are per-replica (ON_READ) variables;
        # averaged after every step, every copy holds the replicas' mean, so
        # evaluation, checkpoints and resumed runs all see the same values.
        for var in self._averaged:
            var.assign(var.read_value())
        return metrics

    def _flag_bound(self):
        """ORs into each flag the units whose cap binds now (before the clip)."""
        trained = {var.ref() for var, _ in self._trained.constraints}
        for (var, constraint), flag in zip(self._capped.pairs, self.maxnorm_bound):
            if var.ref() in trained:  # a frozen layer's cap is not applied
                flag.assign(tf.logical_or(flag, constraint.bound(var)))

    def _update_averages(self):
        """Moves each average towards its weight (Keras' EMA update)."""
        swa_lib.ema_update(self._averaged_pairs, self.step, self.options.ema)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within it the model holds the averaged weights (``ema``); else a no-op.

        The weights and their averages are swapped in and out, as Keras'
        ``SwapEMAWeights`` does around an evaluation: a best snapshot saved
        inside holds the averaged weights.
        """
        if self._built and self.options.swa_from is not None:
            with self.swa.swapped():
                yield
            return
        if not self.options.ema or not self._built:
            yield
            return
        self._swap_averages()
        try:
            yield
        finally:
            self._swap_averages()

    def update_swa(self) -> None:
        """Adds the current weights to SWA's running mean (``swa_from``).

        Then, for a model with batch norm, recomputes the mean's moving
        statistics in one pass over the training rows
        (:class:`lowtf.train.swa.BatchNormPass`). :func:`lowtf.fit` calls it
        at each evaluation from ``swa_from`` on; :meth:`averaged_weights`
        swaps the mean in once it holds a point.
        """
        if self.options.swa_from is None or not self._built:
            raise ValueError(
                "`update_swa` needs a built step made with StepOptions(swa_from=...)"
            )
        self.swa.add()
        if self._bn_pass is not None:
            with self.swa.swapped():
                self._bn_pass(self._training_batches())

    def _build_swa(self, trainable) -> None:
        """Makes SWA's mean (tracked, so checkpointed) and its batch-norm pass."""
        keras_bn = isinstance(self.model, tf.keras.layers.Layer) and any(
            isinstance(layer, tf.keras.layers.BatchNormalization)
            for layer in nn.base.keras_layers(self.model)
        )
        if keras_bn:
            raise ValueError(
                "`swa_from` recomputes batch-norm statistics with lowtf's BatchNorm; "
                "this Keras model has BatchNormalization layers: build it with "
                "lowtf layers, or drop `swa_from`"
            )
        if swa_lib.batch_norm_layers(self.model):
            if not isinstance(self.data, InMemoryBatches) or self._distributed:
                raise ValueError(
                    f"`swa_from` ({self.options.swa_from}) on a model with batch norm "
                    "recomputes its statistics over the training rows: it needs "
                    "in-memory data (not a stream, not data=None) on one device"
                )
            self._bn_pass = swa_lib.BatchNormPass(self.model)
        with self._strategy.scope():
            self.swa = swa_lib.WeightAverage(
                trainable, swa_lib.batch_norm_statistics(self.model)
            )

    def _training_batches(self):
        """The training rows in order, ``batch_size`` at a time, the tail left out."""
        x, size = self.data.x, self.data.batch_size
        for start in range(0, int(x.shape[0]) - size + 1, size):
            yield x[start : start + size]

    def maxnorm_clipped_fraction(self) -> float | None:
        """The fraction of capped units whose max-norm cap bound since the last reset.

        A unit counts when its cap clipped it at any step since
        :meth:`reset_maxnorm_bound` (or the start); a frozen layer's units
        count, never clipped. None when no weight carries a lowtf
        :class:`~lowtf.MaxNorm`.
        """
        if not self.maxnorm_bound:
            return None
        bound = capped = 0
        for (var, constraint), flag in zip(self._capped.pairs, self.maxnorm_bound):
            cap = constraint.capped(var).numpy()
            bound += int(np.count_nonzero(flag.numpy() & cap))
            capped += int(np.count_nonzero(cap))
        return bound / capped if capped else None

    def reset_maxnorm_bound(self) -> None:
        """Clears the flags :meth:`maxnorm_clipped_fraction` counts (after an evaluation)."""
        for flag in self.maxnorm_bound:
            flag.assign(tf.zeros_like(flag))

    def _swap_averages(self):
        swa_lib.swap(self._averaged_pairs)

    def _replica_step(self, x, y, key, split=True):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        if replicas > 1:
            if split:  # a global batch; a per-worker stream's is the replica's own
                x, y = evaluator.shard(x, y, context.replica_id_in_sync_group, replicas)
            # Each replica draws its own dropout masks.
            key = random.fold_in(key, context.replica_id_in_sync_group)
        grads, metrics = self._gradients(x, y, key, replicas)
        # In replica context a Keras optimizer all-reduces (sums) the gradients
        # and updates every copy of the mirrored variables identically.
        # Only the variables that train: a frozen one's slots stay untouched.
        self.optimizer.apply_gradients(zip(grads, self._trained.variables))
        return metrics

    def _forward_backward(self, x, y, key, replicas):
        global_batch = tf.cast(tf.shape(x)[0] * replicas, tf.float32)
        variables = self._trained.variables
        options = self.options
        with tf.GradientTape() as tape, nn.compiled_by_xla(self._xla):
            with random.step_key(key):
                if self._augment is not None:
                    x = self._augment(x)
                soft = None
                if options.soft_targets:
                    soft = losses.targets(
                        self._head, y, self._num_logits, options.label_smoothing
                    )
                if options.mixup or options.cutmix:
                    x, soft = mix_lib.mix(
                        x,
                        soft,
                        key,
                        mixup_alpha=options.mixup,
                        cutmix_alpha=options.cutmix,
                        image_shape=options.image_shape,
                    )
                logits = self.model(x, training=True)
            logits = tf.cast(logits, tf.float32)
            if soft is None:
                per_example = losses.cross_entropy(self._head, logits, y)
            else:
                per_example = losses.soft_cross_entropy(self._head, logits, soft)
            cross_entropy = tf.reduce_sum(per_example) / global_batch
            regularization = regularizers.total_regularization_loss(self.model)
            # Added by hand, and scaled so that the replicas' sum adds it once.
            loss = cross_entropy + regularization / replicas
        grads = tape.gradient(loss, variables)
        if soft is None:
            hits = losses.correct(self._head, logits, y)
        else:  # against the mixed (or smoothed) targets' argmax
            hits = losses.soft_correct(self._head, logits, soft)
        accuracy = tf.reduce_sum(hits) / global_batch
        return grads, {
            "cross_entropy": cross_entropy,
            "regularization_loss": regularization / replicas,
            "total_loss": loss,
            "accuracy": accuracy,
        }

    def _check_requirements(self):
        # Frozen layers count: their penalty is left out while they are frozen,
        # yet the model does carry the regularization that was asked for.
        if self.options.require_regularization and not _any_regularized(self.model):
            raise ValueError(
                "regularization was requested but the model has no regularization "
                "loss: give its kernels a regularizer (e.g. lowtf.l2(1e-4)) or "
                "turn regularization off"
            )
        if self.options.require_constraints and not (
            _lowtf_constraints(self.model, include_frozen=True)
            or _keras_constraints(self.model)
        ):
            raise ValueError(
                "a constraint (max-norm) was requested but no variable of the model "
                "carries one: give its kernels `kernel_constraint=lowtf.max_norm(r)`"
            )


class _Capped:
    """The (variable, MaxNorm) pairs the diagnostic flags; not a Trackable, so unsaved."""

    def __init__(self, pairs):
        self.pairs = pairs


class _Trained:
    """The variables and constraints that train now; not a Trackable, so unsaved."""

    def __init__(self):
        self.variables = ()
        self.constraints = []


def _check_optimizer_strategy(optimizer, strategy):
    # A Keras optimizer captures the strategy current when it is made and
    # updates the variables through it: made outside the scope, it would
    # treat mirrored variables as plain ones.
    # Its step counter tells: a variable made in the strategy's scope.
    iterations = getattr(optimizer, "iterations", None)
    iterations = getattr(iterations, "value", iterations)
    if iterations is not None and not strategy.extended.variable_created_in_scope(iterations):
        raise ValueError(
            "the optimizer was made under another tf.distribute strategy than the "
            "TrainStep: make the model, the optimizer and the TrainStep (or call "
            "lowtf.fit) all inside `with strategy.scope():`"
        )


def _lowtf_constraints(model, include_frozen=False):
    if isinstance(model, tf.keras.layers.Layer):
        return []  # Keras optimizers apply a Keras variable's own constraint.
    # Frozen layers' weights are left out: clipping would be their only change.
    return constraints.constrained_weights(model, include_frozen=include_frozen)


def _any_regularized(model) -> bool:
    if isinstance(model, tf.keras.layers.Layer):
        return bool(regularizers.regularization_losses(model))
    return bool(regularizers.regularized_weights(model, include_frozen=True))


def _trainable_by_construction(model) -> list:
    """Every variable made trainable, frozen layers' included (see ``build``)."""
    if isinstance(model, tf.keras.layers.Layer):
        return list(model.trainable_variables)
    return [v for v in model.variables if v.trainable]


def _replica_averaged(model):
    """The model's ON_READ variables with MEAN aggregation (moving statistics)."""
    return [
        v
        for v in model.variables
        if isinstance(v, tf.distribute.DistributedValues)
        and v.synchronization == tf.VariableSynchronization.ON_READ
        and v.aggregation == tf.VariableAggregation.MEAN
    ]


def _keras_constraints(model):
    if not isinstance(model, tf.keras.layers.Layer):
        return []
    return [v for v in model.trainable_variables if getattr(v, "constraint", None)]


def as_numpy(metrics: dict) -> dict:
    """Converts a metrics dict of scalar tensors to Python floats."""
    return {name: float(np.asarray(value)) for name, value in metrics.items()}
