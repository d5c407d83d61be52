"""Step-level benchmarks: lowtf's step, Keras ``Model.fit``, the matmul ceiling.

What is timed is one training step: forward pass, cross-entropy plus the
regularization losses added by hand, the optimizer update and the max-norm
assign, on batches drawn in memory. For each :class:`Config` it reports the
median time per step over repeats after a warm-up, the spread, and
separately the first call's trace + compile time and the number of traces.

Beside it, in the same run and interleaved repeat by repeat (so that a busy
machine disturbs both sides alike), the Keras peer: a ``tf.keras`` model
with the same layers, initial weights, ``kernel_regularizer``, ``Dropout``
and ``MaxNorm`` constraints, the same optimizer and batch size, trained with
``Model.fit`` on the same in-memory arrays; every ``jit_compile`` x
``steps_per_execution`` variant is timed and the best one is the peer.

The machine's ceiling is a large float32 matrix product's FLOP/s; each
configuration's achieved FLOP/s counts the forward and backward
multiply-adds of its Dense and Conv2D layers only (2 FLOPs each).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time

import numpy as np
import tensorflow as tf

from lowtf import _checks, layers, models, step

MODELS = (*models.PRESETS, "cnn")
REGULARIZATION = ("full", "dropout", "none")
MODES = ("xla", "graph", "auto")
DATA_SIZE = 10_000  # rows, as the Higgs tutorial's N_TRAIN
L2, DROPOUT, MAXNORM, LEARNING_RATE = 1e-4, 0.5, 3.0, 1e-3


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration.

    Attributes:
      model: an MLP preset (tiny, small, medium, large) or ``"cnn"`` (the
        default :func:`lowtf.cnn` on 8x8 images, 10 classes).
      batch_size: examples per step, default 500.
      regularization: ``"full"`` (L2 1e-4 on every kernel, dropout 0.5 after
        every hidden layer, max-norm 3 on hidden kernels; default),
        ``"dropout"`` (dropout only) or ``"none"``.
      mode: ``"xla"`` (default), ``"graph"`` (``tf.function`` without XLA)
        or ``"auto"`` (:func:`lowtf.step.auto_jit_compile` decides).
      steps_per_call: steps per ``TrainStep.run`` call, default 100.
    """

    model: str = "tiny"
    batch_size: int = 500
    regularization: str = "full"
    mode: str = "xla"
    steps_per_call: int = 100

    def __post_init__(self):
        _checks.one_of("model", self.model, MODELS)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.one_of("regularization", self.regularization, REGULARIZATION)
        _checks.one_of("mode", self.mode, MODES)
        _checks.positive_int("steps_per_call", self.steps_per_call)
        if self.batch_size > DATA_SIZE:
            raise ValueError(
                f"`batch_size` ({self.batch_size}) exceeds the {DATA_SIZE} rows"
            )

    @property
    def peer_key(self) -> tuple:
        """Configurations sharing this key share one Keras peer."""
        return (self.model, self.batch_size, self.regularization)


def configs(
    *,
    models=MODELS,
    batch_sizes=(500,),
    regularization=("full", "none"),
    modes=("xla", "graph"),
    steps_per_call=(100,),
) -> list[Config]:
    """Every combination of the arguments, as :class:`Config` objects."""
    out = []
    for model in models:
        for batch in batch_sizes:
            for reg in regularization:
                for mode in modes:
                    for spc in steps_per_call:
                        config = Config(model, batch, reg, mode, spc)
                        if config not in out:
                            out.append(config)
    return out


def make_data(model: str, seed: int = 0):
    """Synthetic in-memory data: Higgs-shaped for MLPs, 8x8 images for the CNN."""
    rs = np.random.RandomState(seed)
    if model == "cnn":
        x = rs.rand(DATA_SIZE, *models.CNN_INPUTS["digits"]).astype(np.float32)
        return x, rs.randint(0, 10, DATA_SIZE).astype(np.int32)
    x = rs.randn(DATA_SIZE, 28).astype(np.float32)
    return x, (x[:, 0] + rs.randn(DATA_SIZE) > 0).astype(np.float32)


def make_model(model: str, regularization: str, seed: int = 0) -> layers.Sequential:
    """The lowtf model of a configuration (see :class:`Config`)."""
    full = regularization == "full"
    switches = dict(
        l2=L2 if full else 0.0,
        dropout=DROPOUT if regularization != "none" else 0.0,
        maxnorm=MAXNORM if full else 0.0,
        seed=seed,
    )
    if model == "cnn":
        return models.cnn("digits", num_classes=10, **switches)
    return models.mlp(model, num_classes=2, **switches)


def _input_shape(model: str) -> tuple:
    return models.CNN_INPUTS["digits"] if model == "cnn" else (28,)


def dense_flops(model: layers.Sequential, input_shape, batch_size: int) -> dict:
    """Forward and backward FLOPs of a built model's Dense and Conv2D layers.

    A layer's forward pass costs ``2 * batch * outputs * fan_in`` FLOPs; the
    backward pass as much again for the kernel's gradient and, for every
    layer but the first, as much for the input's gradient. Biases,
    activations, pooling and the optimizer are not counted.
    """
    x = tf.zeros([1, *input_shape])
    forward = backward = 0
    first = True
    for layer in model.layers:
        y = layer(x, training=False)
        if isinstance(layer, (layers.Dense, layers.Conv2D)):
            fan_in = math.prod(layer.kernel.shape[:-1])
            macs = batch_size * math.prod(y.shape[1:]) * fan_in
            forward += 2 * macs
            backward += 2 * macs if first else 4 * macs
            first = False
        x = y
    return {"forward": forward, "backward": backward, "total": forward + backward}


def keras_peer(model: layers.Sequential, input_shape) -> tf.keras.Model:
    """A ``tf.keras`` model with the same layers and initial weights."""
    keras = tf.keras
    names = {fn: name for name, fn in layers._ACTIVATIONS.items() if name}
    model(tf.zeros([1, *input_shape]), training=False)  # builds the variables
    stack = [keras.Input(input_shape)]
    weights = []
    for layer in model.layers:
        if isinstance(layer, (layers.Dense, layers.Conv2D)):
            args = dict(
                activation=names.get(layer.activation, "linear"),
                use_bias=layer.use_bias,
                kernel_regularizer=_keras_regularizer(
                    _attached(layer._lowtf_regularizers, layer.kernel)
                ),
                kernel_constraint=_keras_constraint(
                    _attached(layer._lowtf_constraints, layer.kernel), layer.kernel
                ),
            )
            if isinstance(layer, layers.Dense):
                stack.append(keras.layers.Dense(layer.units, **args))
            else:
                stack.append(
                    keras.layers.Conv2D(
                        layer.filters,
                        layer.kernel_size,
                        strides=layer.strides,
                        padding=layer.padding.lower(),
                        **args,
                    )
                )
            values = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
            weights.append((stack[-1], [v.numpy() for v in values]))
        elif isinstance(layer, layers.Dropout):
            stack.append(keras.layers.Dropout(layer.rate))
        elif isinstance(layer, layers.MaxPool2D):
            stack.append(
                keras.layers.MaxPooling2D(
                    layer.pool_size,
                    strides=layer.strides,
                    padding=layer.padding.lower(),
                )
            )
        elif isinstance(layer, layers.Flatten):
            stack.append(keras.layers.Flatten())
        elif isinstance(layer, layers.Reshape):
            stack.append(keras.layers.Reshape(layer.shape))
        else:
            raise ValueError(
                f"no Keras peer for layer {layer.name} ({type(layer).__name__})"
            )
    peer = keras.Sequential(stack)
    for keras_layer, values in weights:
        keras_layer.set_weights(values)
    return peer


def _attached(pairs, var):
    """The regularizer or constraint recorded for ``var``, or None."""
    return next((value for v, value in pairs if v is var), None)


def _keras_regularizer(regularizer):
    if regularizer is None:
        return None
    return tf.keras.regularizers.L1L2(l1=regularizer.l1, l2=regularizer.l2)


def _keras_constraint(constraint, kernel):
    if constraint is None:
        return None
    axes = constraint.norm_axes(kernel.shape.rank)
    return tf.keras.constraints.MaxNorm(constraint.max_value, axis=axes)


def _loss_and_accuracy(num_logits: int):
    keras = tf.keras
    if num_logits == 1:
        return keras.losses.BinaryCrossentropy(
            from_logits=True
        ), keras.metrics.BinaryAccuracy(threshold=0.0)
    return (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        keras.metrics.SparseCategoricalAccuracy(),
    )


_JIT = {"xla": True, "graph": False, "auto": "auto"}


class _BlockTimer:
    """Times blocks of ``_call()``s, each of which runs ``steps`` steps."""

    steps = 1
    calls = 1

    def _call(self):
        raise NotImplementedError

    def calibrate(self, min_time: float) -> float:
        """Sets the calls per repeat so one lasts ``min_time``; returns seconds per step."""
        start = time.perf_counter()
        self._call()
        call_s = time.perf_counter() - start
        self.calls = max(1, math.ceil(min_time / call_s))
        return call_s / self.steps

    def repeat(self) -> float:
        """One timed repeat; returns seconds per step."""
        start = time.perf_counter()
        for _ in range(self.calls):
            self._call()
        return (time.perf_counter() - start) / (self.calls * self.steps)


class LowtfRunner(_BlockTimer):
    """Builds a lowtf TrainStep for a config and times blocks of steps."""

    def __init__(self, config: Config, data):
        self.config = config
        self.steps = config.steps_per_call
        self.model = make_model(config.model, config.regularization)
        self.step = step.TrainStep(
            self.model,
            tf.keras.optimizers.Adam(LEARNING_RATE),
            data=step.InMemoryBatches(*data, config.batch_size),
            options=step.StepOptions(jit_compile=_JIT[config.mode]),
        )
        self.xla = bool(self.step.options.jit_compile)
        start = time.perf_counter()
        self._call()
        self.first_call_s = time.perf_counter() - start

    def _call(self):
        loss = self.step.run(self.steps)["total_loss"].numpy()  # waits for the step
        if not np.isfinite(loss):
            raise FloatingPointError(f"{self.config}: the loss is not finite")


class DotsRunner(_BlockTimer):
    """The step's matrix products alone, with a plain SGD update: a bound.

    Per call, ``steps`` iterations of: the forward products ``h @ W`` of every
    Dense layer of ``model``, then the backward ones (``h.T @ g`` for every
    kernel, ``g @ W.T`` for every layer but the first), and ``W -= lr * dW``,
    which carries each product into the next iteration so that XLA can
    neither hoist nor drop it. No bias, activation, dropout, loss,
    regularization or Adam: what is left of a training step when only its
    dense-layer FLOPs (those :func:`dense_flops` counts) remain. A step can
    approach this time but not beat it.
    """

    def __init__(
        self, model: layers.Sequential, batch_size: int, *, xla: bool, steps: int
    ):
        self.xla, self.steps = xla, steps
        dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
        self.kernels = kernels = [tf.Variable(layer.kernel) for layer in dense]
        x = tf.random.stateless_normal([batch_size, kernels[0].shape[0]], seed=[5, 6])

        def products(n):
            i = tf.constant(0, tf.int64)
            while i < n:
                activations = [x]
                for kernel in kernels:
                    activations.append(tf.matmul(activations[-1], kernel))
                grad = activations[-1]
                for index in reversed(range(len(kernels))):
                    kernel_grad = tf.matmul(activations[index], grad, transpose_a=True)
                    if index:
                        grad = tf.matmul(grad, kernels[index], transpose_b=True)
                    kernels[index].assign_sub(1e-9 * kernel_grad)
                i += 1
            return kernels[0][0, 0]

        self._fn = tf.function(products, jit_compile=xla)
        self._call()  # traces and compiles

    def _call(self):
        self._fn(tf.constant(self.steps, tf.int64)).numpy()


class KerasRunner:
    """The Keras peer in one (jit_compile, steps_per_execution) variant."""

    def __init__(
        self, config: Config, data, *, jit_compile: bool, steps_per_execution: int
    ):
        self.jit_compile = jit_compile
        self.steps_per_execution = steps_per_execution
        self.batch_size = config.batch_size
        self.steps_per_epoch = DATA_SIZE // config.batch_size
        # Whole batches only, as lowtf's epochs: a partial last batch would
        # add a step's time to each epoch that the division does not count.
        rows = self.steps_per_epoch * self.batch_size
        self.data = tuple(array[:rows] for array in data)
        lowtf_model = make_model(config.model, config.regularization)
        self.model = keras_peer(lowtf_model, _input_shape(config.model))
        loss, accuracy = _loss_and_accuracy(self.model.output_shape[-1])
        self.model.compile(
            optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
            loss=loss,
            metrics=[accuracy],
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        self.epochs = 1
        start = time.perf_counter()
        self._fit()
        self.first_call_s = time.perf_counter() - start

    def _fit(self) -> list[float]:
        timer = _EpochTimer()
        self.model.fit(
            *self.data,
            batch_size=self.batch_size,
            epochs=self.epochs,
            shuffle=True,
            verbose=0,
            callbacks=[timer],
        )
        return timer.seconds

    def calibrate(self, min_time: float) -> float:
        """Sets the epochs per timed fit; returns seconds per step, roughly."""
        self.epochs = 1
        epoch_s = self._fit()[0]
        self.epochs = 1 + max(1, math.ceil(min_time / epoch_s))
        return epoch_s / self.steps_per_epoch

    def repeat(self) -> float:
        """One timed ``fit``; the median epoch after its first, per step."""
        seconds = self._fit()[1:]
        return float(np.median(seconds)) / self.steps_per_epoch

    @property
    def name(self) -> str:
        return f"jit={self.jit_compile},spe={self.steps_per_execution}"


class _EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def summarize(per_step: list[float]) -> dict:
    """Median, spread and rates of per-step times (seconds)."""
    values = np.asarray(per_step)
    median = float(np.median(values))
    q25, q75 = np.percentile(values, [25, 75])
    return {
        "median_ms": median * 1e3,
        "min_ms": float(values.min()) * 1e3,
        "max_ms": float(values.max()) * 1e3,
        "iqr_pct": float(100 * (q75 - q25) / median),
        "repeats": len(values),
    }


def matmul_ceiling(size: int = 2048, repeats: int = 7, min_time: float = 0.3) -> dict:
    """FLOP/s of a ``[size, size] @ [size, size]`` float32 product, with and without XLA.

    The ceiling is the best repeat of the better mode: a limit, so the
    fastest observation rather than a typical one. Each timed call runs
    a loop of products inside one function (each on a different right-hand
    side, so XLA cannot hoist it out of the loop).
    """
    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4]) / math.sqrt(size)
    result = {"size": size}
    for mode in ("xla", "graph"):

        def products(n, a=a, b=b):
            acc = tf.zeros([size, size])
            i = tf.constant(0)
            while i < n:
                acc += tf.matmul(a, b + tf.cast(i, tf.float32))
                i += 1
            return acc

        fn = tf.function(products, jit_compile=mode == "xla")
        fn(tf.constant(1)).numpy()
        start = time.perf_counter()
        fn(tf.constant(1)).numpy()
        n = max(1, math.ceil(min_time / (time.perf_counter() - start)))
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(tf.constant(n)).numpy()
            rates.append(2 * size**3 * n / (time.perf_counter() - start))
        result[f"{mode}_gflops"] = float(np.median(rates)) / 1e9
        result[f"{mode}_best_gflops"] = float(np.max(rates)) / 1e9
    result["gflops"] = max(result["xla_best_gflops"], result["graph_best_gflops"])
    return result


def run(
    configs: list[Config],
    *,
    repeats: int = 7,
    min_time: float = 0.3,
    keras: bool = True,
    keras_steps_per_execution=(1, None),
    keras_for=("full", "none"),
    keras_jit=(True, False),
    ceiling_size: int = 2048,
    log=print,
) -> dict:
    """Benchmarks ``configs`` (and their Keras peers); returns a JSON-ready dict.

    Configurations with the same model, batch size and regularization form a
    group: its lowtf runners and Keras variants are built and warmed up, then
    timed in turn, one repeat of each per round, ``repeats`` rounds.

    Args:
      configs: the configurations.
      repeats: timed repeats per configuration (default 7).
      min_time: seconds per repeat, at least (default 0.3).
      keras: time the Keras peers (default True).
      keras_steps_per_execution: the Keras values tried; None means one epoch.
      keras_for: the regularization settings whose groups get a Keras peer.
      keras_jit: the Keras ``jit_compile`` values tried.
      ceiling_size: matrix size of the ceiling (default 2048); 0 skips it.
      log: progress callback taking one string.
    """
    _checks.positive_int("repeats", repeats)
    _checks.positive("min_time", min_time)
    if not configs:
        raise ValueError("`configs` is empty: give at least one configuration")
    report = {
        "machine": machine(),
        "settings": dict(repeats=repeats, min_time=min_time),
    }
    ceilings = []
    if ceiling_size:
        log(f"matmul ceiling ({ceiling_size}x{ceiling_size} float32) ...")
        ceilings.append(matmul_ceiling(ceiling_size, repeats, min_time))
    groups: dict = {}
    for config in configs:
        groups.setdefault(config.peer_key, []).append(config)
    results, bounds = [], []
    for key, members in groups.items():
        log(f"group model={key[0]} batch={key[1]} regularization={key[2]} ...")
        peer = keras and key[2] in keras_for
        variants = (
            [(j, s) for j in keras_jit for s in keras_steps_per_execution]
            if peer
            else []
        )
        # One matmul bound per model and batch size; convolutions have none.
        bound = key[0] != "cnn" and not any(b["config"][:2] == key[:2] for b in bounds)
        rows, bound_row = _run_group(members, repeats, min_time, variants, bound)
        results.extend(rows)
        if bound_row:
            bounds.append(bound_row)
    if ceiling_size:
        # Measured again at the end, so that a busy start does not set it.
        log("matmul ceiling again ...")
        ceilings.append(matmul_ceiling(ceiling_size, repeats, min_time))
        report["ceiling"] = max(ceilings, key=lambda c: c["gflops"])
        report["ceiling"]["measurements"] = [c["gflops"] for c in ceilings]
    ceiling = report.get("ceiling", {}).get("gflops")
    for row in results:
        row["lowtf"]["gflops"] = row["flops"]["total"] / row["lowtf"]["median_ms"] / 1e6
        if ceiling:
            row["lowtf"]["ceiling_fraction"] = row["lowtf"]["gflops"] / ceiling
        if row.get("keras"):
            row["speedup_vs_keras"] = (
                row["keras"]["median_ms"] / row["lowtf"]["median_ms"]
            )
    for bound in bounds:
        for mode in ("xla", "graph"):
            row = bound[mode]
            row["gflops"] = bound["flops"]["total"] / row["median_ms"] / 1e6
            if ceiling:
                row["ceiling_fraction"] = row["gflops"] / ceiling
    report["results"] = results
    report["matmul_bounds"] = bounds
    report["regularization_cost"] = regularization_cost(results)
    return report


def regularization_cost(results) -> list[dict]:
    """The share of a step spent on L2 and max-norm: "full" against "dropout"."""
    times = {}
    for row in results:
        c = row["config"]
        key = (c["model"], c["batch_size"], c["mode"], c["steps_per_call"])
        times.setdefault(key, {})[c["regularization"]] = row["lowtf"]["median_ms"]
    out = []
    for (model, batch, mode, spc), by_reg in times.items():
        if "full" in by_reg and "dropout" in by_reg:
            full, dropout = by_reg["full"], by_reg["dropout"]
            out.append(
                dict(
                    model=model,
                    batch_size=batch,
                    mode=mode,
                    steps_per_call=spc,
                    full_ms=full,
                    dropout_only_ms=dropout,
                    share=(full - dropout) / full,
                )
            )
    return out


def _run_group(members, repeats, min_time, keras_variants, bound):
    first = members[0]
    data = make_data(first.model)
    runners = [(c, LowtfRunner(c, data)) for c in members]
    steps_per_epoch = DATA_SIZE // first.batch_size
    variants = {(jit, steps_per_epoch if s is None else s) for jit, s in keras_variants}
    peers = [
        KerasRunner(first, data, jit_compile=jit, steps_per_execution=spe)
        for jit, spe in sorted(variants, reverse=True)
    ]
    model = runners[0][1].model
    dots = {}
    if bound:
        for mode in ("xla", "graph"):
            dots[mode] = DotsRunner(
                model, first.batch_size, xla=mode == "xla", steps=first.steps_per_call
            )
    timed = [r for _, r in runners] + peers + list(dots.values())
    estimates = {id(r): r.calibrate(min_time) for r in timed}
    # A Keras variant 5x slower than the best one cannot be the peer: it is
    # reported from its calibration epoch only, which saves minutes (XLA's
    # CPU convolutions inside a multi-step loop take about a second a step).
    fastest = min((estimates[id(p)] for p in peers), default=0)
    slow = [p for p in peers if estimates[id(p)] > 5 * fastest]
    timed = [r for r in timed if r not in slow]
    samples = {id(r): [] for r in timed}
    for _ in range(repeats):
        for runner in timed:
            samples[id(runner)].append(runner.repeat())
    flops = dense_flops(model, _input_shape(first.model), first.batch_size)
    keras_rows = []
    for peer in peers:
        if peer in slow:
            row = {
                "median_ms": estimates[id(peer)] * 1e3,
                "repeats": 0,
                "excluded": "over 5x the best",
            }
        else:
            row = summarize(samples[id(peer)])
        row.update(variant=peer.name, first_call_s=peer.first_call_s)
        keras_rows.append(row)
    best = min(keras_rows, key=lambda r: r["median_ms"]) if keras_rows else None
    results = []
    for config, runner in runners:
        row = summarize(samples[id(runner)])
        steps_per_s = 1e3 / row["median_ms"]
        row.update(
            steps_per_s=steps_per_s,
            examples_per_s=steps_per_s * config.batch_size,
            first_call_s=runner.first_call_s,
            traces=runner.step.trace_count,
            xla=runner.xla,
        )
        results.append(
            {
                "config": dataclasses.asdict(config),
                "flops": flops,
                "lowtf": row,
                "keras": best,
                "keras_variants": keras_rows,
            }
        )
    bound_row = None
    if dots:
        bound_row = {"config": (first.model, first.batch_size), "flops": flops}
        bound_row.update({mode: summarize(samples[id(r)]) for mode, r in dots.items()})
    return results, bound_row


def machine() -> dict:
    """TensorFlow and Keras versions, CPU model and core count."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [
                line.split(":", 1)[1].strip()
                for line in f
                if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else "",
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
    }


def table(report: dict) -> str:
    """The report as a fixed-width text table."""
    head = (
        f"{'model':<7}{'batch':>6} {'reg':<8}{'mode':<11}{'spc':>5}"
        f"{'ms/step':>9}{'iqr%':>6}{'steps/s':>9}{'ex/s':>10}{'compile s':>10}{'tr':>3}"
        f"{'GFLOP/s':>9}{'ceil%':>6}{'keras ms':>9}{'keras best':>18}{'x keras':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in report["results"]:
        c, lo, k = row["config"], row["lowtf"], row.get("keras")
        compile_s = lo["first_call_s"] - lo["median_ms"] / 1e3 * c["steps_per_call"]
        ceiling = (
            f"{100 * lo['ceiling_fraction']:>6.1f}"
            if "ceiling_fraction" in lo
            else f"{'':>6}"
        )
        peer = (
            f"{k['median_ms']:>9.3f}{k['variant']:>18}{row['speedup_vs_keras']:>8.2f}"
            if k
            else ""
        )
        mode = c["mode"]
        if mode == "auto":  # shows what the rule chose
            mode = f"auto({'xla' if lo['xla'] else 'graph'})"
        lines.append(
            f"{c['model']:<7}{c['batch_size']:>6} {c['regularization']:<8}{mode:<11}"
            f"{c['steps_per_call']:>5}{lo['median_ms']:>9.3f}{lo['iqr_pct']:>6.1f}"
            f"{lo['steps_per_s']:>9.0f}{lo['examples_per_s']:>10.0f}{compile_s:>10.2f}"
            f"{lo['traces']:>3}{lo['gflops']:>9.1f}{ceiling}{peer}"
        )
    for cost in report.get("regularization_cost", []):
        lines.append(
            f"regularization (L2 + max-norm) {cost['model']} {cost['mode']}: "
            f"{cost['full_ms']:.3f} ms with, {cost['dropout_only_ms']:.3f} ms with dropout "
            f"only: {100 * cost['share']:.1f}% of a step"
        )
    for bound in report.get("matmul_bounds", []):
        model, batch = bound["config"]
        best = min(
            (
                row["lowtf"]["median_ms"],
                row["config"]["regularization"],
                row["config"]["mode"],
            )
            for row in report["results"]
            if (row["config"]["model"], row["config"]["batch_size"]) == (model, batch)
        )
        modes = ", ".join(
            f"{mode} {bound[mode]['median_ms']:.3f} ms"
            + (
                f" ({100 * bound[mode]['ceiling_fraction']:.1f}% of the ceiling)"
                if "ceiling_fraction" in bound[mode]
                else ""
            )
            for mode in ("xla", "graph")
        )
        fastest = min(bound["xla"]["median_ms"], bound["graph"]["median_ms"])
        lines.append(
            f"matmul bound {model} batch {batch} (its dense products + SGD, nothing else): "
            f"{modes}; the fastest step ({best[1]} {best[2]}) takes {best[0] / fastest:.2f}x"
        )
    if "ceiling" in report:
        ce = report["ceiling"]
        lines.append(
            f"ceiling: {ce['size']}x{ce['size']} float32 matmul, best repeat "
            f"{ce['gflops']:.1f} GFLOP/s (medians: xla {ce['xla_gflops']:.1f}, "
            f"graph {ce['graph_gflops']:.1f}; at start and end: "
            + ", ".join(f"{g:.1f}" for g in ce["measurements"])
            + ")"
        )
    return "\n".join(lines)
