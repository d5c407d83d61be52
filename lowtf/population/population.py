"""A population: K models of one architecture trained together in one compiled step.

The members are ordinary lowtf models (:func:`lowtf.mlp`, :func:`lowtf.cnn`,
or any tree of :mod:`lowtf.nn` layers), one per member, built with the
member's seed. :func:`lowtf.nn.stack` turns them into one model with a
leading member axis on every variable: one compiled product per layer for
all members, each member's own dropout rate and masks, L1/L2 scales and
max-norm cap. Each member also has its own training and validation rows of
one shared data set, batch order, augmentation draws, learning rate (and
weight decay), metrics and early stopping; the members share the
architecture, the optimizer's kind (and its schedule's shape) and the global
step. One step gathers a ``[K, B, ...]`` batch (member ``k``'s rows), runs
the stacked model, sums the members' losses (their parameters are disjoint,
so member ``k``'s gradient is that of its own loss alone) and applies one
optimizer update to the stacked variables.

Why member ``k`` equals its single run (its model, ``StepOptions(seed=s)``,
``TrainConfig(seed=s)`` on ``x[train_rows[k]]``, with ``s = seeds[k]`` and
an optimizer of rate ``learning_rate[k]``): its initial weights are those of
its own model, copied; its batches come from the same
:func:`lowtf.random.permute` of its rows keyed by ``make_key(s, epoch)``
(the tail of each epoch dropped, as :class:`lowtf.InMemoryBatches`); its
dropout masks from the same hash under ``fold_in(make_key(s, step), layer
seed)`` (:func:`lowtf.random.member_words`), its augmentation under
``make_key(s, step)``. An element-wise optimizer (SGD, momentum, Adam,
AdamW, RMSprop, Adagrad, ... without a global ``clipnorm``) applied to
stacked variables does, slot for slot, what K optimizers would do, and its
update is linear in the learning rate, so member ``k``'s update is the
shared rate's update scaled by ``learning_rate[k] / rate``. The batched
products and that scaling may round differently from K separate runs, so
the match is to float tolerance, not bit for bit.

A member whose patience has run out stops changing: after every step its
slices of the weights, moving statistics, optimizer slots and data position
are put back to their values before the step, while the others go on.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import tensorflow as tf

from lowtf import _checks, nn, random
from lowtf.augment import mix as mix_lib
from lowtf import models as models_lib
from lowtf.data import checks
from lowtf.nn import constraints, losses, regularizers
from lowtf.population import members
from lowtf.train import early_stopping, rundir
from lowtf.train import evaluator as evaluator_lib
from lowtf.train import metrics as metrics_lib
from lowtf.train import swa as swa_lib
from lowtf.train.metrics import MONITORS, STEP_METRICS, SUMMED_METRICS


# The most steps one compiled call of Population.run takes (the size of its
# per-call random tables); a longer run takes several calls.
CALL_STEPS = 1000


class Population:
    """K models of one architecture, trained in one compiled step.

    >>> pop = lowtf.Population(
    ...     x, y, models=lambda k: lowtf.cnn(dropout=[0.0, 0.3][k], seed=k),
    ...     train_rows=[t0, t1], val_rows=[v0, v1], seeds=[0, 1],
    ...     learning_rate=[1e-3, 3e-3], optimizer=tf.keras.optimizers.Adam(1e-3))
    >>> metrics = pop.run(100)    # STEP_METRICS, each a [K] array
    >>> record = pop.evaluate()   # per-member evaluation, early stopping
    >>> best = pop.member(0)      # member 0's model with its best weights

    The data set ``(x, y)`` is held once; each member holds row indices into
    it. Every per-member argument takes one value per member (a list or
    array of length K) or one number for all.

    Args:
      x: features ``[n, ...]`` (float32), shared by every member.
      y: labels ``[n]`` (class indices, or 0/1 for two classes).
      train_rows: K arrays of row indices, member k's training rows (at
        least ``batch_size`` each).
      val_rows: K arrays of row indices, member k's validation rows (at
        least one each, none among its training rows).
      seeds: K seeds; ``len(seeds)`` is the population size K. Member k's
        seed keys its batch order, dropout masks and augmentation, as
        ``TrainConfig(seed=)`` and ``StepOptions(seed=)`` do for a single
        run; with the MLP arguments below it also seeds its initial weights
        (``lowtf.mlp(seed=)``).
      optimizer: a Keras optimizer of element-wise updates (SGD, Adam,
        AdamW, RMSprop, ...); its kind, settings and schedule are shared.
        The step is traced without AutoGraph: a custom schedule or
        optimizer must branch on tensors with ``tf.cond``, not Python
        ``if`` (Keras' own are fine).
      models: the members' models: a callable ``k -> model`` (member k's
        model, built with its own seed and hyper-parameters, e.g.
        ``lowtf.cnn(seed=seeds[k], dropout=rates[k])``) or a sequence of K
        models. They must share one architecture (see
        :func:`lowtf.nn.stack`) and may differ in anything that does not
        change a shape: initial weights, dropout rate, L1/L2 scales,
        max-norm cap. Default None: lowtf.mlp members built from the MLP
        arguments below.
      learning_rate: per member, its learning rate (default None: the
        optimizer's for every member). Member k's update is the optimizer's
        scaled by ``learning_rate[k] / r``, with ``r`` the optimizer's rate
        or its schedule's ``initial_learning_rate``: a schedule's shape is
        shared, each member scales its base rate.
      weight_decay: per member, decoupled weight decay (default None: the
        optimizer's own, if any). Each step every trained variable of
        member k shrinks by ``learning_rate_k(step) * weight_decay[k]`` of
        itself before the update, as Keras' AdamW does; the optimizer's own
        ``weight_decay`` must then be unset.
      augment: an augmentation callable as for :class:`lowtf.TrainStep`
        (e.g. :func:`lowtf.augment.parse`), applied to each member's batch
        under its own key, or K of them (None for a member that is not
        augmented): each member its own ops and strengths (default None).
      label_smoothing: per member, the training targets' smoothing in
        [0, 1) (default 0), as ``StepOptions(label_smoothing=)``.
      mixup, cutmix: per member, the Beta shape of mixup and CutMix
        (default 0: off), as ``StepOptions``; CutMix of flat examples needs
        ``image_shape``. Each member mixes its own batch under its own key.
      image_shape: ``(h, w, c)`` of flat examples, for CutMix (default None).
      ema: per member, the momentum of an exponential moving average of its
        weights, as ``StepOptions(ema=)`` (default 0: off). Evaluations,
        best weights and :meth:`member` (``"best"``) use the averages.
      swa_from: per member, the step from which :meth:`evaluate` adds its
        weights to an equal-weight running mean (stochastic weight
        averaging, as ``StepOptions(swa_from=)``), recomputing that mean's
        batch-norm statistics over its training rows (default 0: off).
        Evaluations, best weights and :meth:`member` (``"best"``) then use
        the mean. A member takes ``ema`` or ``swa_from``, not both.
      model: MLP members only (``models=None``): a preset name or hidden
        widths, as :func:`lowtf.mlp` (default ``"small"``).
      num_classes: MLP members: classes (default 2: one sigmoid logit).
      activation: MLP members: hidden activation (default ``"elu"``).
      batchnorm: MLP members: batch norm before each hidden activation
        (default False).
      maxnorm_output: MLP members: also cap the output layer (default False).
      l1, l2: MLP members: per-member kernel penalty scales (default 0).
      dropout: MLP members: per-member dropout rate (default 0).
      maxnorm: MLP members: per-member max-norm cap (default 0: off).
      batch_size: examples per member per step (default 128).
      monitor: the metric early stopping watches, one of
        :data:`lowtf.train.metrics.MONITORS` (default ``"val_cross_entropy"``).
      mode: ``"auto"`` (default), ``"min"`` or ``"max"``.
      patience: per member, steps without improvement after which it stops
        (default 1000).
      min_delta: per member, smallest change that counts as an improvement
        (default 0).
      eval_batch_size: validation rows per member per evaluation call
        (default 4096).
      jit_compile: XLA (default True) or a plain ``tf.function`` graph
        (False); ``"auto"`` picks as :class:`lowtf.TrainStep` does.

    Raises:
      ValueError: a per-member vector of another length than K, members of
        different architectures, a member without validation rows or with
        fewer training rows than ``batch_size``, validation rows among a
        member's training rows, a row index outside ``x``, bad labels or
        features, or a ``tf.distribute`` strategy in scope (populations
        train on one device).
    """

    def __init__(
        self,
        x,
        y,
        *,
        train_rows,
        val_rows,
        seeds,
        optimizer,
        models=None,
        learning_rate=None,
        weight_decay=None,
        augment=None,
        label_smoothing=0.0,
        mixup=0.0,
        cutmix=0.0,
        image_shape=None,
        ema=0.0,
        swa_from=0,
        model="small",
        num_classes: int = 2,
        activation: str = "elu",
        batchnorm: bool = False,
        maxnorm_output: bool = False,
        l1=0.0,
        l2=0.0,
        dropout=0.0,
        maxnorm=0.0,
        batch_size: int = 128,
        monitor: str = "val_cross_entropy",
        mode: str = "auto",
        patience: int = 1000,
        min_delta: float = 0.0,
        eval_batch_size: int = 4096,
        jit_compile=True,
    ):
        if tf.distribute.has_strategy():
            raise ValueError(
                "a lowtf Population trains on one device and is refused under a "
                "tf.distribute strategy; build it outside `strategy.scope()`"
            )
        seeds = list(np.asarray(seeds).reshape(-1).tolist())
        if not seeds:
            raise ValueError("`seeds` is empty: give one seed per member")
        size = len(seeds)
        for k, s in enumerate(seeds):
            _checks.non_negative_int(f"seeds[{k}]", s)
        self.size = size
        self.seeds = np.asarray(seeds, np.int64)
        _checks.positive_int("batch_size", batch_size)
        _checks.positive_int("eval_batch_size", eval_batch_size)
        _checks.one_of("monitor", monitor, MONITORS)
        _checks.boolean("jit_compile", jit_compile, also=("auto",))
        self.monitor = monitor
        self.mode = early_stopping.resolve_mode(monitor, mode)
        # One model's early stopping with K members: the rule and its state.
        self.stopping = early_stopping.EarlyStopping(
            monitor=monitor,
            mode=self.mode,
            patience=members.vector("patience", patience, size, _checks.positive_int),
            min_delta=members.vector(
                "min_delta", min_delta, size, _checks.non_negative
            ),
            size=size,
            name="population_stopping",
        )
        self.batch_size = batch_size
        methods = ("build", "apply_gradients")
        if not all(callable(getattr(optimizer, m, None)) for m in methods):
            raise ValueError(
                f"`optimizer` ({optimizer!r}) must be a Keras optimizer, e.g. "
                "tf.keras.optimizers.Adam(1e-3)"
            )
        self.optimizer = optimizer
        self.augment = augment
        self._augments = _member_augments(augment, size)
        self.label_smoothing = members.vector(
            "label_smoothing", label_smoothing, size, _checks.rate
        )
        self.mixup = members.vector("mixup", mixup, size, mix_lib.check_alpha)
        self.cutmix = members.vector("cutmix", cutmix, size, mix_lib.check_alpha)
        self.image_shape = image_shape
        self.ema = members.vector("ema", ema, size, _checks.rate)
        self.swa_from = members.vector(
            "swa_from", swa_from, size, _checks.non_negative_int
        ).astype(np.int64)
        both = np.flatnonzero(self.ema * self.swa_from)
        if both.size:
            k = both[0]
            raise ValueError(
                f"member {k} has `ema` ({self.ema[k]}) and `swa_from` "
                f"({self.swa_from[k]}): two averages of its weights, of which only "
                "one can be evaluated; give it one (0 turns either off)"
            )
        self._soft = bool(
            np.any(self.label_smoothing) or np.any(self.mixup) or np.any(self.cutmix)
        )

        # The data, held once and checked once, as InMemoryBatches does.
        x_t, y_t = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        checks.check_batch(x_t, y_t)
        if x_t.shape.rank < 2 or x_t.dtype != tf.float32:
            raise ValueError(
                f"`x` must be float32 features [n, ...], got {x_t.dtype.name} "
                f"{x_t.shape}; cast with x.astype(np.float32)"
            )
        checks.check_finite(np.asarray(x), "x")
        n = int(x_t.shape[0])
        self.x, self.y = x_t, y_t
        self.train_rows = members.rows("train_rows", train_rows, size, n)
        self.val_rows = members.rows("val_rows", val_rows, size, n)
        members.check_no_leak(self.train_rows, self.val_rows)
        for k, r in enumerate(self.train_rows):
            if len(r) < batch_size:
                raise ValueError(
                    f"`train_rows[{k}]` has {len(r)} rows, fewer than `batch_size` "
                    f"({batch_size}); give member {k} more rows or lower batch_size"
                )

        self._members = self._member_models(
            models,
            dict(
                model=model,
                num_classes=num_classes,
                activation=activation,
                batchnorm=batchnorm,
                maxnorm_output=maxnorm_output,
                l1=l1,
                l2=l2,
                dropout=dropout,
                maxnorm=maxnorm,
            ),
        )
        logits = self._members[0](self.x[:1], training=False)
        self.num_logits = int(logits.shape[-1])
        self.head = losses.resolve_head("auto", logits.shape)
        checks.check_labels(np.asarray(y), self.head, self.num_logits, "y")
        self.model = nn.stack(self._members, name="population")
        self._variables = list(self.model.variables)
        self._trainable = list(nn.trainable_variables(self.model))
        if not self._trainable:
            raise ValueError("the members' models have no trainable variables")
        self._constrained = constraints.constrained_weights(self.model)
        self._rates = self._learning_rates(learning_rate)
        self._decay = self._weight_decays(weight_decay)
        self.optimizer.build(self._trainable)
        self.state = _State(self._variables, size, self.stopping)
        if jit_compile == "auto":
            jit_compile = evaluator_lib.auto_jit_compile(self._members[0])
        self._jit = bool(jit_compile)
        sizes = [len(r) for r in self.train_rows]
        self._train_sizes = tf.constant(sizes, tf.int64)
        width = max(sizes)
        padded = np.zeros([size, width], np.int64)
        for k, r in enumerate(self.train_rows):
            padded[k, : len(r)] = r
        self._train_flat = tf.constant(padded.reshape(-1))
        self._train_starts = tf.constant(np.arange(size)[:, None] * width, tf.int64)
        self._offsets = tf.range(batch_size, dtype=tf.int64)
        # The random tables of one call (see _tables): every epoch a call of
        # CALL_STEPS steps can reach, with a margin for a mid-epoch start.
        batches = min(len(r) // batch_size for r in self.train_rows)
        self._min_batches = batches
        self._table_epochs = CALL_STEPS // batches + 3
        # Dropout's and noise's words are drawn only when some member uses them.
        self._dropout = any(
            (isinstance(m, nn.Dropout) and np.any(np.asarray(m.rate) > 0))
            or (isinstance(m, nn.GaussianNoise) and np.any(np.asarray(m.stddev) > 0))
            for m in self.model.submodules
        )
        # Everything a stopped member must keep: its slices of the weights and
        # moving statistics, of the optimizer's slots (any optimizer variable
        # with a leading member axis) and its data position.
        slots = [
            _tf_variable(v)
            for v in optimizer.variables
            if len(v.shape) >= 1 and v.shape[0] == size
        ]
        self._eval_batch_size = eval_batch_size
        # The weights' moving averages (checkpointed in the state), per member.
        self._ema_pairs = []
        if np.any(self.ema):
            self.state.averages = [
                tf.Variable(v.read_value(), trainable=False, name="average")
                for v in self._trainable
            ]
            self._ema_pairs = list(zip(self._trainable, self.state.averages))
        averages = [average for _, average in self._ema_pairs]
        # Per max-norm weight, which of each member's units its cap bound since
        # the last evaluation (checkpointed; a stopped member's stay as they
        # are). Not in _frozen: a subset whose members are uncapped has fewer
        # (see _transfers).
        self._capped = [
            (var, c)
            for var, c in self._constrained
            if isinstance(c, constraints.MaxNorm)
        ]
        self.state.maxnorm_bound = [
            tf.Variable(
                tf.zeros(c.bound(var).shape, tf.bool), trainable=False, name="bound"
            )
            for var, c in self._capped
        ]
        self._frozen = [
            *self._variables, *averages, *slots, self.state.epoch, self.state.cursor
        ]  # fmt: skip
        # SWA's mean (checkpointed in the state) and its batch-norm pass; they
        # change at evaluations only, so a subset's training needs neither.
        self._bn_pass = None
        if np.any(self.swa_from):
            self.state.swa = swa_lib.WeightAverage(
                self._trainable,
                swa_lib.batch_norm_statistics(self.model),
                members=size,
            )
            if swa_lib.batch_norm_layers(self.model):
                self._bn_pass = swa_lib.BatchNormPass(self.model)
        for v in slots:
            if not isinstance(v, tf.Variable):  # copied by row in load/store_members
                raise ValueError(
                    f"`optimizer` ({type(optimizer).__name__}) keeps its slot "
                    f"{v.name!r} as a {type(v).__name__}, not a tf.Variable; use a "
                    "Keras optimizer on the TensorFlow backend"
                )
        self._val_index, self._val_weight = _padded_rows(self.val_rows, eval_batch_size)
        # No AutoGraph: the step's only loop is an explicit tf.while_loop, and
        # converting every function it calls took seconds of each trace.
        compile_ = {
            "jit_compile": self._jit,
            "reduce_retracing": True,
            "autograph": False,
        }
        self._many = tf.function(self._steps, **compile_)
        self._val_sums = tf.function(self._validation_sums, **compile_)

    # -- the embeddable API ------------------------------------------------

    @property
    def step(self) -> tf.Variable:
        """The global step: the shared optimizer's ``iterations``."""
        iterations = self.optimizer.iterations
        return getattr(iterations, "value", iterations)

    @property
    def stopped(self) -> np.ndarray:
        """``[K]`` bools: which members' patience ran out (they no longer change)."""
        return self.state.stop_step.numpy() >= 0

    @property
    def done(self) -> bool:
        """Whether every member has stopped."""
        return bool(self.stopped.all())

    @property
    def best_step(self) -> np.ndarray:
        return self.state.best_step.numpy()

    @property
    def best_value(self) -> np.ndarray:
        return self.state.best_value.numpy()

    @property
    def stop_step(self) -> np.ndarray:
        """``[K]``: the step at which each member stopped, -1 while it trains."""
        return self.state.stop_step.numpy()

    @property
    def trace_count(self) -> int:
        """How many times the compiled training function was traced."""
        return self._many.experimental_get_tracing_count()

    @property
    def checkpointed(self) -> dict:
        """``{name: trackable}``: all the state, under the names its checkpoints use."""
        return {"model": self.model, "optimizer": self.optimizer, "state": self.state}

    @property
    def checkpoint(self) -> tf.train.Checkpoint:
        """All the state: stacked weights, best weights, optimizer, stopping, positions."""
        return tf.train.Checkpoint(**self.checkpointed)

    @property
    def variables(self) -> list:
        """Every variable the checkpoint holds: weights, best weights, state, optimizer."""
        return [*self._variables, *self.state.variables, *self.optimizer.variables]

    def run(self, num_steps: int) -> dict[str, np.ndarray]:
        """Runs ``num_steps`` steps in one compiled call (per ``CALL_STEPS``).

        ``num_steps`` enters as a tensor: another value does not retrace.
        More than :data:`CALL_STEPS` steps take several calls.

        Returns:
          The :data:`lowtf.train.metrics.STEP_METRICS`, each a ``[K]`` array
          of that member's means over those steps (a stopped member's are
          those of its frozen weights).
        """
        _checks.positive_int("num_steps", num_steps)
        calls = []
        while num_steps > 0:
            n = min(num_steps, CALL_STEPS)
            # Stopped members are held (each step puts their state back) only
            # once there are any: the copies cost ~7% of a large model's step.
            freeze = bool(self.stopped.any())
            means = self._many(tf.constant(n, tf.int64), *self._tables(n), freeze)
            means = {name: means[name].numpy() for name in STEP_METRICS}
            self.state.add_means(means, n)
            calls.append((n, means))
            num_steps -= n
        if len(calls) == 1:
            return calls[0][1]
        total = sum(n for n, _ in calls)
        return {
            name: (
                sum(n * m[name].astype(np.float64) for n, m in calls) / total
            ).astype(np.float32)
            for name in STEP_METRICS
        }

    def evaluate(self, *, update: bool = True) -> dict[str, np.ndarray]:
        """Evaluates every member on its validation rows; updates early stopping.

        The training metrics are each member's means over the steps since the
        previous evaluation (NaN at step 0), as :func:`lowtf.fit` reports them.

        Args:
          update: update each training member's early stopping (best value,
            best step, best weights, patience) and restart the training
            means (default True); a training member whose weights, training
            means or validation cross-entropy are NaN or Inf is stopped as
            diverged first (see :meth:`stop_non_finite`). False only reads.

        Returns:
          The fields of :class:`lowtf.train.metrics.Evaluation` (``step`` an
          int, the others ``[K]`` float64 arrays), plus ``stopped``,
          ``diverged`` (after this update) and ``improved``, ``[K]`` bools.
        """
        step = int(self.step.numpy())
        if update:
            self._update_swa(step)
        ce, hits = np.zeros(self.size), np.zeros(self.size)
        with self.averaged_weights():
            for index, weight in zip(self._val_index, self._val_weight):
                c, h = self._val_sums(index, weight)
                ce += c.numpy()
                hits += h.numpy()
        counts = np.array([len(r) for r in self.val_rows], np.float64)
        train = self.state.means()
        # What must be finite: the validation loss, and the training means
        # once there are any (at step 0 there are none, NaN by design).
        checked = {"val_cross_entropy": ce / counts, **(train or {})}
        nan = np.full(self.size, math.nan)
        clipped = nan
        if train is None:
            regularization = self._penalties().numpy().astype(np.float64)
            train = {"cross_entropy": nan, "accuracy": nan, "total_loss": nan}
        else:
            regularization = train["regularization_loss"]
            clipped = self.maxnorm_clipped_fraction()
        record = {
            "step": step,
            "train_cross_entropy": train["cross_entropy"],
            "train_accuracy": train["accuracy"],
            "val_cross_entropy": ce / counts,
            "val_accuracy": hits / counts,
            "regularization_loss": regularization,
            "total_loss": train["total_loss"],
            "learning_rate": self._member_rates(),
            "maxnorm_clipped_fraction": clipped,
        }
        improved = np.zeros(self.size, bool)
        if update:
            # First: a broken member's value must not count as its best.
            self.stop_non_finite(checked)
            with self.averaged_weights():  # the best weights are the averaged ones
                improved = self._update_stopping(step, record[self.monitor])
            self.state.reset_means()
            for flag in self.state.maxnorm_bound:  # the diagnostic's interval ends
                flag.assign(tf.zeros_like(flag))
        record["improved"] = improved
        record["stopped"] = self.stopped
        record["diverged"] = self.diverged
        return record

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within it the stacked model holds the members' averages (``ema``, SWA).

        A no-op without ``ema`` or ``swa_from``; a member whose ``ema`` is 0
        has averages equal to its weights, and one whose SWA mean holds no
        point yet keeps its weights.
        """
        with contextlib.ExitStack() as stack:
            if self._ema_pairs:
                self._swap_averages()
                stack.callback(self._swap_averages)
            if np.any(self.swa_from):
                stack.enter_context(self.state.swa.swapped())
            yield

    def _update_swa(self, step: int) -> None:
        """Adds the weights of the training members due (``swa_from``) to their means.

        Then recomputes the batch-norm statistics of those means, each
        member over its own training rows (see :mod:`lowtf.train.swa`).
        """
        due = (self.swa_from > 0) & (step >= self.swa_from) & ~self.stopped
        if not due.any():
            return
        swa = self.state.swa
        swa.add(due)
        if self._bn_pass is None:
            return
        size = self.batch_size
        counts = np.array([len(r) // size for r in self.train_rows])
        batches, weights = [], []
        for j in range(int(counts.max())):
            # A member with fewer batches repeats its first, counted for nothing.
            rows = np.stack(
                [
                    r[j * size : (j + 1) * size] if j < n else r[:size]
                    for r, n in zip(self.train_rows, counts)
                ]
            )
            batches.append(tf.gather(self.x, rows))
            weights.append((j < counts).astype(np.float64))
        with swa.swapped(due):
            self._bn_pass(batches, weights=weights, members=due)

    def maxnorm_clipped_fraction(self) -> np.ndarray:
        """Per member, the fraction of its capped units max-norm clipped since the last evaluation.

        A unit counts when its cap bound at any step of the interval
        (:meth:`lowtf.MaxNorm.bound`); ``[K]`` float64, NaN for a member
        without a cap (no max-norm, or caps of 0).
        """
        bound = np.zeros(self.size)
        capped = np.zeros(self.size)
        for (var, c), flag in zip(self._capped, self.state.maxnorm_bound):
            cap = c.capped(var).numpy()
            units = tuple(range(1, cap.ndim))  # every axis but the member's
            bound += np.sum(flag.numpy() & cap, axis=units)
            capped += np.sum(cap, axis=units)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(capped > 0, bound / np.maximum(capped, 1), np.nan)

    def _swap_averages(self):
        swa_lib.swap(self._ema_pairs)

    def member(self, k: int, *, weights: str = "best"):
        """Member ``k`` as a plain lowtf model, with its hyper-parameters.

        With ``models`` given as a callable (or the MLP arguments), a fresh
        model is built for it; given as a sequence, member ``k``'s own
        model object receives the weights and is returned.

        Args:
          k: the member, ``0 <= k < K``.
          weights: ``"best"`` (default: its weights at its best evaluation,
            bit for bit) or ``"latest"`` (its current weights).

        Returns:
          A built model that :class:`lowtf.Evaluator`, :class:`lowtf.TrainStep`,
          checkpoints and the rest of lowtf accept.

        Raises:
          ValueError: a bad ``k``, or ``weights="best"`` for a member that
            was never evaluated (it has no best weights yet: evaluate first,
            or ask for ``weights="latest"``).
        """
        if not isinstance(k, (int, np.integer)) or not 0 <= k < self.size:
            raise ValueError(f"`k` ({k!r}) must be a member index in [0, {self.size})")
        _checks.one_of("weights", weights, ("best", "latest"))
        k = int(k)
        if weights == "best" and self.state.best_step.numpy()[k] < 0:
            raise ValueError(
                f"member {k} has no best weights yet: it was never evaluated. Call "
                "evaluate() (or fit the population) first, or ask for "
                "weights='latest'"
            )
        model = self._build_member(k)
        source = self.state.best if weights == "best" else self._variables
        targets = list(model.variables)
        for var, value in zip(targets, source, strict=True):
            var.assign(value[k])
        return model

    def _build_member(self, k: int):
        """Member ``k``'s single model, built (its own object for a sequence)."""
        model = self._factory(k)
        model(self.x[:1], training=False)  # makes its variables
        return model

    def _member_models(self, models, mlp: dict) -> list:
        """The K single models, built, from ``models`` or the MLP arguments."""
        size = self.size
        if models is None:
            l1 = members.vector("l1", mlp["l1"], size, _checks.non_negative)
            l2 = members.vector("l2", mlp["l2"], size, _checks.non_negative)
            rate = members.vector("dropout", mlp["dropout"], size, _checks.rate)
            cap = members.vector("maxnorm", mlp["maxnorm"], size, _checks.non_negative)
            shared = {n: mlp[n] for n in ("num_classes", "activation", "batchnorm")}
            shared["maxnorm_output"] = mlp["maxnorm_output"]
            units = models_lib.hidden_units(mlp["model"])

            def factory(k):
                return models_lib.mlp(
                    units,
                    l1=float(l1[k]),
                    l2=float(l2[k]),
                    dropout=float(rate[k]),
                    maxnorm=float(cap[k]),
                    seed=int(self.seeds[k]),
                    **shared,
                )

        elif callable(models):
            factory = models
        else:
            given = list(models)
            if len(given) != size:
                raise ValueError(
                    f"`models` has {len(given)} models but the population has {size} "
                    "members (the length of `seeds`); give one model per member"
                )
            factory = given.__getitem__
        self._factory = factory
        return [self._build_member(k) for k in range(size)]

    def _learning_rates(self, learning_rate):
        """Each member's rate over the optimizer's (``[K]`` float32), or None."""
        self.learning_rate = None
        if learning_rate is None:
            return None
        rates = members.vector("learning_rate", learning_rate, self.size, _checks.positive)
        base = _base_rate(self.optimizer)
        if base is None:
            raise ValueError(
                f"per-member `learning_rate` needs the optimizer's base rate: a "
                f"number or a schedule with `initial_learning_rate`, not "
                f"{self.optimizer.get_config().get('learning_rate')!r}"
            )
        self.learning_rate = rates
        scales = rates / base
        if np.all(scales == 1.0):
            return None  # the optimizer's own update, with no scaling at all
        return tf.constant(scales, tf.float32)

    def _weight_decays(self, weight_decay):
        """Each member's decoupled weight decay (``[K]`` float32), or None."""
        self.weight_decay = None
        if weight_decay is None:
            return None
        decays = members.vector("weight_decay", weight_decay, self.size, _checks.non_negative)
        if getattr(self.optimizer, "weight_decay", None):
            raise ValueError(
                f"per-member `weight_decay` replaces the optimizer's own "
                f"({self.optimizer.weight_decay}); make the optimizer without it"
            )
        self.weight_decay = decays
        return tf.constant(decays, tf.float32)

    def _member_rates(self) -> np.ndarray:
        """Each member's learning rate at the current step, ``[K]`` float64."""
        rate = np.full(self.size, _learning_rate(self.optimizer))
        return rate if self._rates is None else rate * self._rates.numpy()

    def _penalties(self) -> tf.Tensor:
        """Each member's regularization loss, ``[K]``."""
        total = regularizers.total_regularization_loss(self.model)
        return tf.zeros([self.size]) + tf.cast(total, tf.float32)

    def subset(self, indices) -> Population:
        """A population of the members at ``indices``, for training only.

        Its members have the hyper-parameters, rows and seeds of these
        members, and a fresh optimizer of the same configuration; their
        state (weights, optimizer slots and step, data positions, stopped
        flags) is copied in with :meth:`load_members` before each use and
        written back with :meth:`store_members`. Member ``i`` of the subset
        then takes the steps member ``indices[i]`` would take here: the same
        keys (seed and global step), batches and update. What
        :func:`~lowtf.population.fit_population` trains on once most members
        have stopped, so that they are no longer computed.
        """
        idx = [int(k) for k in indices]
        if (
            not idx
            or len(set(idx)) != len(idx)
            or not all(0 <= k < self.size for k in idx)
        ):
            raise ValueError(
                f"`indices` ({indices!r}) must be distinct member indices in [0, {self.size})"
            )
        pick = lambda v: None if v is None else np.asarray(v)[idx]  # noqa: E731
        optimizer = type(self.optimizer).from_config(self.optimizer.get_config())
        return Population(
            self.x,
            self.y,
            train_rows=[self.train_rows[k] for k in idx],
            val_rows=[self.val_rows[k] for k in idx],
            seeds=pick(self.seeds),
            optimizer=optimizer,
            # Built models: their values are overwritten by load_members.
            models=[self._members[k] for k in idx],
            learning_rate=pick(self.learning_rate),
            weight_decay=pick(self.weight_decay),
            augment=(
                self.augment
                if self.augment is None or callable(self.augment)
                else [self._augments[k] for k in idx]
            ),
            label_smoothing=pick(self.label_smoothing),
            mixup=pick(self.mixup),
            cutmix=pick(self.cutmix),
            image_shape=self.image_shape,
            ema=pick(self.ema),
            batch_size=self.batch_size,
            monitor=self.monitor,
            mode=self.mode,
            patience=pick(self.patience),
            min_delta=pick(self.min_delta),
            eval_batch_size=self._eval_batch_size,
            jit_compile=self._jit,
        )

    def _flags_by_weight(self) -> dict:
        """``{index of a max-norm weight in the model's variables: its flags}``."""
        where = {var.ref(): i for i, var in enumerate(self._variables)}
        return {
            where[var.ref()]: flag
            for (var, _), flag in zip(self._capped, self.state.maxnorm_bound)
        }

    def _training_state(self) -> list:
        """The per-member variables a step changes, and the stopped flags."""
        return [*self._frozen, self.state.stop_step]

    def load_members(self, sub: Population, indices) -> None:
        """Copies the training state of the members at ``indices`` into ``sub``."""
        self._transfers(sub)[0](tf.constant(indices, tf.int64))

    def store_members(self, sub: Population, indices) -> None:
        """Writes ``sub``'s training state (and the step) back to ``indices``."""
        self._transfers(sub)[1](tf.constant(indices, tf.int64))

    def _transfers(self, sub: Population):
        """The load and store functions between this population and ``sub``.

        One graph call each (a gather or a scatter per variable), made once
        per pair: run after every call of a compacted fit, eager copies
        cost some 25 ms each way.
        """
        cached = sub.__dict__.get("_transfer_fns")
        if cached is not None and cached[0] is self:
            return cached[1:]
        pairs = list(zip(self._training_state(), sub._training_state()))
        # The max-norm flags by their weight's place in the (same) architecture.
        flags = self._flags_by_weight()
        pairs += [
            (flags[position], flag) for position, flag in sub._flags_by_weight().items()
        ]

        # Two ops per variable (a gather or a scatter of rows and an assign or
        # a read): each op costs its trace about a millisecond.
        def load(idx):
            for src, dst in pairs:
                dst.assign(src.sparse_read(idx))
            sub.optimizer.iterations.assign(self.optimizer.iterations)

        def store(idx):
            for dst, src in pairs:
                dst.scatter_update(tf.IndexedSlices(src.read_value(), idx))
            self.optimizer.iterations.assign(sub.optimizer.iterations)

        graph = {"autograph": False, "reduce_retracing": True}
        cached = (self, tf.function(load, **graph), tf.function(store, **graph))
        sub.__dict__["_transfer_fns"] = cached
        return cached[1:]

    # -- early stopping, per member ----------------------------------------

    def _update_stopping(self, step: int, value) -> np.ndarray:
        """Early stopping of each training member; returns who improved."""
        rule = self.stopping.update_members(step, value, active=~self.stopped)
        if rule.improved.any():
            mask = tf.constant(rule.improved)
            for var, best_var in self._with_best():
                best_var.assign(tf.where(_expand(mask, var), var, best_var))
        s = self.state
        s.stop_step.assign(np.where(rule.stopped, step, s.stop_step.numpy()))
        return rule.improved

    @property
    def patience(self) -> np.ndarray:
        """``[K]``: each member's patience, in steps."""
        return self.stopping.patience

    @property
    def min_delta(self) -> np.ndarray:
        """``[K]``: the smallest change that counts as each member's improvement."""
        return self.stopping.min_delta

    @property
    def start_from_step(self) -> int:
        """No member stops at a step below this (default 0); its best is tracked."""
        return self.stopping.start_from_step

    @start_from_step.setter
    def start_from_step(self, value: int) -> None:
        _checks.non_negative_int("start_from_step", value)
        self.stopping.start_from_step = int(value)

    @property
    def baseline(self) -> np.ndarray | None:
        """``[K]`` values an improvement must beat to restart a member's patience.

        None (default): any improvement does. Set a number for all members,
        K numbers, or None; the best is tracked all the same.
        """
        return self.stopping.baseline

    @baseline.setter
    def baseline(self, value) -> None:
        if value is not None:
            value = members.vector("baseline", value, self.size, _checks.finite)
            value = value.astype(np.float64)
        self.stopping.baseline = value

    @property
    def diverged(self) -> np.ndarray:
        """``[K]`` bools: who was stopped for NaN/Inf weights or metrics."""
        return self.state.diverged.numpy()

    def stop_non_finite(self, metrics: dict | None = None) -> np.ndarray:
        """Stops the training members whose weights or ``metrics`` hold a NaN or Inf.

        Such a member is marked :attr:`diverged` and stopped at the current
        step, as if its patience had run out, and the others go on. Its
        slices of the weights (and moving statistics) go back to its best
        weights (its initial ones if it has none), its optimizer slots and
        running training means to zero, so that no checkpoint holds a
        non-finite value; :meth:`member` gives its best weights as for any
        stopped member.

        Args:
          metrics: ``{name: [K] values}`` checked beside the weights, e.g. a
            call's step metrics (default None: the weights alone).

        Returns:
          ``[K]`` bools: the members stopped by this call.
        """
        active = ~self.stopped
        bad = active & ~self._finite_members()
        for values in (metrics or {}).values():
            bad |= active & ~np.isfinite(np.asarray(values, np.float64))
        if not bad.any():
            return bad
        s = self.state
        s.diverged.assign(s.diverged.numpy() | bad)
        step = int(self.step.numpy())
        s.stop_step.assign(np.where(bad, step, s.stop_step.numpy()))
        s.clear_means(bad)
        best = {var.ref(): best_var for var, best_var in self._with_best()}
        # A diverged member's averages restart from its best weights too.
        best.update({avg.ref(): best[var.ref()] for var, avg in self._ema_pairs})
        # SWA's mean too (not in _frozen: it changes at evaluations only).
        swa = self.state.swa.pairs() if np.any(self.swa_from) else []
        best.update({copy.ref(): best[var.ref()] for var, copy in swa})
        mask = tf.constant(bad)
        for var in [*self._frozen, *(copy for _, copy in swa)]:
            if var.dtype.is_floating:
                source = best.get(var.ref())
                value = tf.zeros_like(var) if source is None else source
                var.assign(tf.where(_expand(mask, var), value, var))
        return bad

    def describe(self) -> dict:
        """What defines the population: the settings a resumed run must share.

        ``members`` holds, per member, its model (its layers and their
        hyper-parameters, as :func:`lowtf.train.rundir.describe_model` gives
        them), seed, weight decay and the content hashes of its training and
        validation rows; beside it the shared data's content hash, the
        optimizer (less its learning rate), the augmentation, the batch size
        and what early stopping monitors. The learning rates are not part of
        it: like a single run's, they may change on a resume.
        """
        decay = self.weight_decay
        return {
            "members": [
                {
                    "model": rundir.describe_model(self._members[k]),
                    "seed": int(self.seeds[k]),
                    # Only when set, as a single run's optional settings.
                    **({} if decay is None else {"weight_decay": float(decay[k])}),
                    **{
                        name: float(values[k])
                        for name, values in (
                            ("label_smoothing", self.label_smoothing),
                            ("mixup", self.mixup),
                            ("cutmix", self.cutmix),
                            ("ema", self.ema),
                        )
                        if values[k]
                    },
                    **({"swa_from": int(self.swa_from[k])} if self.swa_from[k] else {}),
                    # By content, whatever integer type the rows came in.
                    **{
                        name: rundir.fingerprint(np.asarray(rows[k], np.int64))
                        for name, rows in (
                            ("train_rows", self.train_rows),
                            ("val_rows", self.val_rows),
                        )
                    },
                }
                for k in range(self.size)
            ],
            "data": rundir.fingerprint(self.x.numpy(), self.y.numpy()),
            "optimizer": rundir.describe_optimizer(self.optimizer),
            "augment": _describe_augments(self._augments),
            "batch_size": self.batch_size,
            "monitor": self.monitor,
            "mode": self.mode,
        }

    def _with_best(self):
        """(variable, its best copy) for every stacked variable of the model."""
        return zip(self._variables, self.state.best)

    def _finite_members(self) -> np.ndarray:
        """``[K]`` bools: whose floating-point training state is all finite.

        One graph call over every variable a stopped member keeps (weights,
        moving statistics, optimizer slots), made once.
        """
        finite = self.__dict__.get("_finite_fn")
        if finite is None:
            floating = [v for v in self._frozen if v.dtype.is_floating]

            def all_finite():
                ok = tf.ones([self.size], tf.bool)
                for v in floating:
                    axes = list(range(1, len(v.shape)))
                    ok &= tf.reduce_all(tf.math.is_finite(v), axis=axes)
                return ok

            finite = self._finite_fn = tf.function(all_finite, autograph=False)
        return finite().numpy()

    # -- traced internals --------------------------------------------------

    def _tables(self, num_steps: int):
        """The random numbers of the next ``num_steps`` steps, drawn on the host.

        Member k's single run draws its batch order from
        ``permute(..., make_key(seed, epoch))`` and its dropout keys from
        ``fold_in(make_key(seed, step), layer seed)``; these are the same
        philox words (:func:`lowtf.random.permutation_patterns`,
        :func:`lowtf.random.fold_in_words`) for the epochs and steps the call
        can reach, so the compiled step holds no philox: per member, the
        patterns of ``_table_epochs`` epochs from its current one, and one
        dropout word per step from the current step (zeros when no member
        drops out).
        """
        seeds = self.seeds[:, None]
        epoch = self.state.epoch.numpy()
        reach = min(num_steps // self._min_batches + 3, self._table_epochs)
        epochs = epoch[:, None] + np.arange(reach)
        patterns = np.zeros([self.size, self._table_epochs], np.int64)
        patterns[:, :reach] = random.permutation_patterns(
            np.stack(np.broadcast_arrays(seeds, epochs), axis=-1)
        )
        words = np.zeros([self.size, CALL_STEPS], np.int64)
        step = int(self.step.numpy())
        if self._dropout:
            steps = step + np.arange(num_steps)[None, :]
            words[:, :num_steps] = random.fold_in_words(
                np.stack(np.broadcast_arrays(seeds, steps), axis=-1)
            )
        return (
            tf.constant(patterns),
            tf.constant(epoch),
            tf.constant(words),
            tf.constant(step, tf.int64),
        )

    def _steps(self, num_steps, patterns, first_epoch, words, first_step, freeze):
        tables = (patterns, first_epoch, words, first_step)

        def body(i, totals):
            metrics = self._one_step(*tables, freeze=freeze)
            return i + 1, {
                name: totals[name] + metrics[name] for name in SUMMED_METRICS
            }

        # A counter loop, not tf.range: XLA would recompile per num_steps.
        _, totals = tf.while_loop(
            lambda i, _: i < num_steps,
            body,
            (
                tf.constant(0, tf.int64),
                {name: tf.zeros([self.size]) for name in SUMMED_METRICS},
            ),
        )
        return metrics_lib.means_of_sums(totals, num_steps)

    def _one_step(self, patterns, first_epoch, words, first_step, *, freeze=True):
        active = tf.logical_not(self.state.stop_step >= 0)
        before = [tf.convert_to_tensor(v) for v in self._frozen] if freeze else []
        # Each member's fold_in word of make_key(seed, step) (see _tables).
        words = tf.gather(words, self.step - first_step, axis=1)
        x, y = self._next_batch(patterns, first_epoch)
        variables = self._trainable
        batch = tf.cast(self.batch_size, tf.float32)
        with tf.GradientTape() as tape, nn.compiled_by_xla(self._jit):
            if any(a is not None for a in self._augments):
                x = self._augmented(x)
            soft = None
            if self._soft:
                x, soft = self._mixed(x, y)
            with random.member_words(words):
                logits = self.model(x, training=True)
            logits = tf.cast(logits, tf.float32)
            if soft is None:
                per_example = self._per_example(losses.cross_entropy, logits, y)
            else:
                per_example = self._per_example(losses.soft_cross_entropy, logits, soft)
            cross_entropy = tf.reduce_sum(per_example, axis=1) / batch
            regularization = self._penalties()
            total = cross_entropy + regularization
            # Disjoint parameters: the sum's gradient is each member's own.
            loss = tf.reduce_sum(total)
        grads = tape.gradient(loss, variables)
        self._update(grads, variables)
        for (var, c), flag in zip(self._capped, self.state.maxnorm_bound):
            # Before the clip; a stopped member's flags stay as they are.
            bound = tf.logical_and(c.bound(var), _expand(active, flag))
            flag.assign(tf.logical_or(flag, bound))
        constraints.apply_constraints(self._constrained)
        if self._ema_pairs:  # each member's own momentum
            swa_lib.ema_update(self._ema_pairs, self.step, self.ema.astype(np.float32))
        for var, old in zip(self._frozen, before):  # none without `freeze`
            var.assign(tf.where(_expand(active, old), var, old))
        if soft is None:
            hits = self._per_example(losses.correct, logits, y)
        else:  # against the mixed (or smoothed) targets' argmax
            hits = self._per_example(losses.soft_correct, logits, soft)
        accuracy = tf.reduce_sum(hits, 1) / batch
        return {
            "cross_entropy": cross_entropy,
            "regularization_loss": regularization,
            "total_loss": total,
            "accuracy": accuracy,
        }

    def _augmented(self, x):
        """Member k's batch augmented under its own step key, as its single run's."""
        out = []
        for k, augment in enumerate(self._augments):
            if augment is None:
                out.append(x[k])
                continue
            with random.step_key(random.make_key(self.seeds[k], self.step)):
                out.append(augment(x[k]))
        return tf.stack(out)

    def _mixed(self, x, y):
        """Each member's soft targets (its smoothing) and mixed batch, as its single run's."""
        eps = tf.constant(self.label_smoothing, tf.float32)
        eps = tf.reshape(eps, [-1, 1] if self.head == "sigmoid" else [-1, 1, 1])
        soft = losses.targets(self.head, y, self.num_logits, eps)
        xs, targets = [], []
        for k in range(self.size):
            x_k, soft_k = x[k], soft[k]
            if self.mixup[k] or self.cutmix[k]:
                x_k, soft_k = mix_lib.mix(
                    x_k,
                    soft_k,
                    random.make_key(self.seeds[k], self.step),
                    mixup_alpha=float(self.mixup[k]),
                    cutmix_alpha=float(self.cutmix[k]),
                    image_shape=self.image_shape,
                )
            xs.append(x_k)
            targets.append(soft_k)
        return tf.stack(xs), tf.stack(targets)

    def _update(self, grads, variables):
        """The optimizer's update, with each member's weight decay and rate.

        The update of an element-wise optimizer is linear in its rate, so
        member k's is the shared update times ``scales[k]``; the decoupled
        decay comes first, as Keras applies an AdamW's.
        """
        scales, decays = self._rates, self._decay
        if decays is not None:
            rate = tf.cast(self.optimizer.learning_rate, tf.float32)
            if scales is not None:
                rate = rate * scales
            for var in variables:
                var.assign_sub(var * _expand(decays, var) * _expand(rate, var))
        if scales is None:
            self.optimizer.apply_gradients(zip(grads, variables))
            return
        start = [v.read_value() for v in variables]
        self.optimizer.apply_gradients(zip(grads, variables))
        for var, old in zip(variables, start):
            var.assign(old + _expand(scales, var) * (var - old))

    def _per_example(self, fn, logits, y):
        """``fn(head, logits, y)`` over ``[K, B, ...]`` as a ``[K, B]`` tensor.

        ``y`` holds labels ``[K, B]`` or soft targets ``[K, B(, logits)]``.
        """
        flat = tf.reshape(logits, [-1, self.num_logits])
        rows = tf.shape(logits)[:2]
        labels = tf.reshape(y, tf.concat([[-1], tf.shape(y)[2:]], 0))
        return tf.reshape(fn(self.head, flat, labels), rows)

    def _next_batch(self, patterns, first_epoch):
        """Each member's next batch of its rows, ``[K, B, features]`` and ``[K, B]``."""
        s = self.state
        # InMemoryBatches: the incomplete tail of an epoch is dropped.
        wrap = s.cursor + self.batch_size > self._train_sizes
        epoch = tf.where(wrap, s.epoch + 1, s.epoch)
        cursor = tf.where(wrap, tf.zeros_like(s.cursor), s.cursor)
        # All members' positions in one pass: row k is the permute of its rows,
        # under the pattern of make_key(seed, epoch) (see _tables).
        pattern = tf.gather(patterns, epoch - first_epoch, batch_dims=1)
        position = random.permute_batch(
            cursor[:, None] + self._offsets, [len(r) for r in self.train_rows], pattern
        )
        # Member k's rows sit at k * width in the padded [K, width] index.
        rows = tf.gather(self._train_flat, position + self._train_starts)
        s.epoch.assign(epoch)
        s.cursor.assign(cursor + self.batch_size)
        return tf.gather(self.x, rows), tf.gather(self.y, rows)

    def _validation_sums(self, index, weight):
        with nn.compiled_by_xla(self._jit):
            logits = self.model(tf.gather(self.x, index), training=False)
        logits = tf.cast(logits, tf.float32)
        y = tf.gather(self.y, index)
        keep = weight > 0  # padding rows count for nothing, even with an Inf loss
        ce = self._per_example(losses.cross_entropy, logits, y)
        hits = self._per_example(losses.correct, logits, y)
        zeros = tf.zeros_like(ce)
        return (
            tf.reduce_sum(tf.where(keep, ce, zeros), axis=1),
            tf.reduce_sum(tf.where(keep, hits, zeros), axis=1),
        )


class _State(tf.Module):
    """Per-member state beside the weights, all ``[K]`` variables (checkpointed)."""

    def __init__(self, variables: list, size: int, stopping):
        super().__init__(name="population_state")
        local = dict(trainable=False)
        # The early-stopping state, under the names checkpoints have held it.
        self.best_value, self.best_step = stopping.best_value, stopping.best_step
        self.patience_from, self.last_step = stopping.patience_from, stopping.last_step
        self.best = [
            tf.Variable(v, name=v.name.split(":")[0] + "/best", **local)
            for v in variables
        ]
        self.epoch = tf.Variable(tf.zeros([size], tf.int64), name="epoch", **local)
        self.cursor = tf.Variable(tf.zeros([size], tf.int64), name="cursor", **local)
        self.stop_step = tf.Variable(
            tf.fill([size], tf.constant(-1, tf.int64)), **local
        )
        self.sums = tf.Variable(
            tf.zeros([len(STEP_METRICS), size], tf.float64), **local
        )
        self.count = tf.Variable(tf.constant(0, tf.int64), **local)
        # Who was stopped for NaN/Inf (Population.stop_non_finite).
        self.diverged = tf.Variable(tf.zeros([size], tf.bool), name="diverged", **local)

    def add_means(self, means: dict, num_steps: int) -> None:
        values = np.stack(
            [np.asarray(means[n], np.float64) * num_steps for n in STEP_METRICS]
        )
        self.sums.assign_add(values)
        self.count.assign_add(num_steps)

    def means(self) -> dict | None:
        count = int(self.count.numpy())
        if not count:
            return None
        return dict(zip(STEP_METRICS, self.sums.numpy() / count))

    def reset_means(self) -> None:
        self.sums.assign(tf.zeros_like(self.sums))
        self.count.assign(0)

    def clear_means(self, mask: np.ndarray) -> None:
        """Zeroes the running sums of the members in ``mask`` (a NaN stays out)."""
        self.sums.assign(np.where(mask[None, :], 0.0, self.sums.numpy()))


def _member_augments(augment, size: int) -> list:
    """``augment`` as K callables or None: one for all members, or one each."""
    if augment is None or callable(augment):
        return [augment] * size
    listed = isinstance(augment, (list, tuple))
    if not listed or not all(a is None or callable(a) for a in augment):
        raise ValueError(
            f"`augment` ({augment!r}) must be a callable x -> x, e.g. "
            "lowtf.augment.parse('translate:1'), or a list of one (or None) per member"
        )
    if len(augment) != size:
        raise ValueError(
            f"`augment` has {len(augment)} entries but the population has {size} "
            "members; give one callable (or None) per member, or one for all"
        )
    return list(augment)


def _describe_augments(augments: list):
    """run.json's ``augment``: None, the one augmentation, or each member's."""
    texts = [None if a is None else repr(a) for a in augments]
    if len(set(texts)) == 1:
        return texts[0]
    return texts


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 optimizer slot (the slot itself otherwise).

    Read in the step and copied between a population and its subsets: a
    Keras variable converts to a tensor through Python on every use, which
    took some 5 ms of each trace per slot.
    """
    inner = getattr(variable, "value", None)
    return inner if isinstance(inner, tf.Variable) else variable


def _expand(mask, like):
    """A ``[K]`` mask shaped to broadcast over a ``[K, ...]`` tensor."""
    rank = len(like.shape)
    return tf.reshape(mask, [-1] + [1] * (rank - 1))


def _padded_rows(val_rows, chunk: int):
    """Validation rows as ``[K, chunk]`` blocks (index and 0/1 weight), padded.

    All blocks have one shape, so the evaluation compiles once.
    """
    longest = max(len(r) for r in val_rows)
    chunk = min(chunk, longest)
    width = -(-longest // chunk) * chunk
    index = np.zeros([len(val_rows), width], np.int64)
    weight = np.zeros([len(val_rows), width], np.float32)
    for k, r in enumerate(val_rows):
        index[k, : len(r)] = r
        weight[k, : len(r)] = 1.0
    return (
        [tf.constant(index[:, i : i + chunk]) for i in range(0, width, chunk)],
        [tf.constant(weight[:, i : i + chunk]) for i in range(0, width, chunk)],
    )


def _base_rate(optimizer) -> float | None:
    """The optimizer's rate, or its schedule's initial rate; None if it has neither."""
    rate = optimizer.get_config().get("learning_rate")
    if isinstance(rate, dict):  # a serialized schedule
        rate = rate.get("config", {}).get("initial_learning_rate")
    try:
        return float(rate)
    except (TypeError, ValueError):
        return None


def _learning_rate(optimizer) -> float:
    try:
        return float(np.asarray(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return math.nan
