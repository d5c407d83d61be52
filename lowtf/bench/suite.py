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
import time

import numpy as np
import tensorflow as tf

from lowtf import _checks, nn
from lowtf.bench.configs import DATA_SIZE, Config, input_shape, make_data
from lowtf.bench.keras_peer import KerasRunner
from lowtf.bench.report import machine, regularization_cost, summarize
from lowtf.bench.runners import DotsRunner, LowtfRunner


def dense_flops(model: nn.Sequential, input_shape, batch_size: int) -> dict:
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
        if isinstance(layer, (nn.Dense, nn.Conv2D)):
            fan_in = math.prod(layer.kernel.shape[:-1])
            macs = batch_size * math.prod(y.shape[1:]) * fan_in
            forward += 2 * macs
            backward += 2 * macs if first else 4 * macs
            first = False
        x = y
    return {"forward": forward, "backward": backward, "total": forward + backward}


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
    flops = dense_flops(
        model, input_shape(first.model), first.batch_size
    )
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
