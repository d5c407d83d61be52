"""Streamed training data: throughput against in-memory batches, and bounded memory.

Run from the repository root::

    python -m lowtf.bench.streams throughput   # steps/s, in memory vs streamed (~15 min)
    python -m lowtf.bench.streams memory       # peak RSS streaming 200k vs 2M CSV rows

``throughput`` times the medium MLP (64x3, elu, one logit; no
regularization) at batch 500 on the same 100,000 Higgs-shaped synthetic rows
fed several ways, each a :class:`lowtf.TrainStep` with ``run(100)``, under
XLA and in a plain graph: in memory (:class:`lowtf.InMemoryBatches`); a
Python loop calling ``step(x, y)`` on a ``tf.data`` pipeline's batches; and
streamed (:class:`lowtf.data.Stream`) from an in-memory ``tf.data`` pipeline,
from 8 TFRecord shards with the tf.data options tried (parallel interleave
and AUTOTUNE, sequential reads, a cache of the records, no prefetch, a
per-record parse), and from a gzip CSV file (lowtf's lines decoded by
``tf.io.decode_csv``, and the tutorial's ``CsvDataset``). Each source is
timed alone, made afresh and dropped after (a pipeline left alive fills its
buffers while the others run, and would then be read for free): one
draining repeat, then ``--repeats`` repeats of ``--min_time`` seconds of
consecutive calls; the whole sequence runs ``--rounds`` times and the median
repeat is reported, with the pipeline alone (batches/s read with no step)
beside.

``higgs_csv PATH --rows N`` writes one such file (default 2,000,000
rows; the one ``memory`` uses), for ``bin/train --dataset=higgs --stream``
at full scale (README, BENCHMARKS.md)::

    python -m lowtf.bench.streams higgs_csv /tmp/higgs-2000000.csv.gz

``memory`` writes Higgs-shaped gzip CSV files (label, then 28 features) of
each size in ``--rows`` once (kept in ``--work_dir``), then, in a fresh
process per size, computes the standardization statistics in one streaming
pass and trains the medium MLP with :func:`lowtf.fit` for one pass over the
file (batch 500, the first 1,000 rows held out for validation); it reports
the process's peak resident memory (``ru_maxrss``) and the time.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH = 500
STEPS = 100
ROWS = 100_000
SHARDS = 8


def _higgs_rows(n, seed):
    from lowtf.data import datasets

    x, y = datasets.synthetic(n, seed=seed)
    return x, y


# -- throughput --------------------------------------------------------------


def _tfrecord_pipeline(pattern, variant):
    """The TFRecord pipeline of a variant, built from tf.data ops as lowtf's is."""
    import tensorflow as tf

    from lowtf.data import tfrecords as tfr

    if variant == "tfrecord":
        return tfr.tfrecord(pattern, batch_size=BATCH, feature_shape=(28,), seed=1)
    files = sorted(tf.io.gfile.glob(pattern))
    spec = {
        "features": tf.io.FixedLenFeature([28], tf.float32),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return parsed["features"], tf.cast(parsed["label"], tf.int32)

    names = (
        tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=1).repeat()
    )
    parallel = variant != "tfrecord-sequential"
    records = names.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(files) if parallel else 1,
        num_parallel_calls=tf.data.AUTOTUNE if parallel else None,
        deterministic=True if parallel else None,
    )
    if variant == "tfrecord-cache":
        # The records of one pass, cached in memory: later epochs skip the files.
        records = (
            tf.data.Dataset.from_tensor_slices(files)
            .interleave(tf.data.TFRecordDataset, cycle_length=len(files))
            .cache()
            .repeat()
        )
    records = records.shuffle(10_000, seed=1)
    if variant == "tfrecord-per-record-parse":
        # One parse op per record, then batched: what a per-example map does.
        one = lambda r: parse(tf.expand_dims(r, 0))
        batches = records.map(one, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        batches = batches.batch(BATCH, drop_remainder=True)
    else:
        batches = records.batch(BATCH, drop_remainder=True).map(
            parse, num_parallel_calls=tf.data.AUTOTUNE
        )
    if variant != "tfrecord-no-prefetch":
        batches = batches.prefetch(tf.data.AUTOTUNE)
    return batches


def _sources(work_dir, x, y):
    """name -> a function making that source (InMemoryBatches or a Stream)."""
    import tensorflow as tf

    import lowtf
    from lowtf.data import csv_files

    pattern = os.path.join(work_dir, "train-*")
    if not tf.io.gfile.glob(pattern):
        lowtf.data.write_tfrecords(x, y, work_dir, "train", shards=SHARDS)
    csv_path = os.path.join(work_dir, "rows.csv.gz")
    if not os.path.exists(csv_path):
        _write_csv(csv_path, x, y)

    def slices():
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(10_000, seed=1)
        return lowtf.data.Stream(ds.batch(BATCH, drop_remainder=True))

    def fixed():
        # 20 batches cached and replayed: the cost of the stream itself.
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(
            BATCH, drop_remainder=True
        )
        return lowtf.data.Stream(ds.take(20).cache())

    def own_loop():
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(10_000, seed=1)
        return ds.batch(BATCH, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)

    sources = {
        "in-memory": lambda: lowtf.InMemoryBatches(x, y, BATCH, seed=1),
        "own loop: step(x, y), tensor slices": own_loop,
        "stream: 20 cached batches": fixed,
        "stream: tensor slices, shuffle 10k": slices,
    }
    for variant in (
        "tfrecord",
        "tfrecord-sequential",
        "tfrecord-cache",
        "tfrecord-no-prefetch",
        "tfrecord-per-record-parse",
    ):
        sources[f"stream: {variant}"] = lambda v=variant: lowtf.data.Stream(
            _tfrecord_pipeline(pattern, v)
        )
    sources["stream: csv.gz (decode_csv), shuffle 10k"] = lambda: lowtf.data.Stream(
        csv_files.csv_dataset(csv_path, batch_size=BATCH, seed=1)
    )

    def csv_dataset_op():
        # The tutorial's reader, the alternative: CsvDataset, repacked in blocks.
        lines = tf.data.experimental.CsvDataset(
            csv_path, [tf.float32] * 29, compression_type="GZIP"
        ).repeat()
        rows = lines.batch(10_000).map(lambda *c: (tf.stack(c[1:], axis=1), c[0]))
        rows = rows.unbatch().shuffle(10_000, seed=1)
        return lowtf.data.Stream(rows.batch(BATCH, drop_remainder=True))

    sources["stream: csv.gz (CsvDataset), shuffle 10k"] = csv_dataset_op
    return sources


class _Timed:
    """A TrainStep on one source, timed in blocks of run(STEPS)."""

    def __init__(self, name, source, jit):
        import tensorflow as tf

        import lowtf

        self.name, self.jit = name, jit
        model = lowtf.mlp("medium", seed=0)
        # A tf.data.Dataset is iterated by a Python loop calling step(x, y).
        self.own_loop = iter(source) if isinstance(source, tf.data.Dataset) else None
        self.step = lowtf.TrainStep(
            model,
            tf.keras.optimizers.Adam(1e-3),
            data=None if self.own_loop is not None else source,
            options=lowtf.StepOptions(jit_compile=jit),
        )
        start = time.perf_counter()
        self._call()
        self.first_s = time.perf_counter() - start
        self.times = []

    def _call(self):
        if self.own_loop is not None:
            # The loop a user writes around step(x, y): one call per batch.
            for _ in range(STEPS):
                metrics = self.step(*next(self.own_loop))
            metrics["total_loss"].numpy()
            return
        self.step.run(STEPS)["total_loss"].numpy()

    def repeat(self, min_time):
        """Consecutive calls for at least ``min_time`` s; records seconds per step."""
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_time:
            self._call()
            calls += 1
        self.times.append((time.perf_counter() - start) / (calls * STEPS))


def _pipeline_rate(source, seconds=2.0) -> float | None:
    """Batches per second of a stream's pipeline alone (no step); None in memory."""
    import tensorflow as tf

    from lowtf.data import Stream

    if not isinstance(source, Stream):
        return None
    next_batch = tf.function(source.next)
    next_batch()  # the shuffle buffer fills first
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next_batch()[1].numpy()
        count += 1
    return count / (time.perf_counter() - start)


def throughput(args) -> dict:
    x, y = _higgs_rows(ROWS, seed=0)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="lowtf-streams-")
    os.makedirs(work_dir, exist_ok=True)
    sources = _sources(work_dir, x, y)
    names = [
        n for n in sources if not args.only or any(o in n for o in args.only.split(","))
    ]
    times = {}
    for round_ in range(args.rounds):
        for jit in (True, False):
            for name in names:
                # One source at a time, made afresh and dropped after: a
                # pipeline kept alive fills its buffers while the others
                # are timed, and its next repeat would read them for free.
                runner = _Timed(name, sources[name](), jit)
                for _ in range(args.repeats + 1):  # the first drains the start-up
                    runner.repeat(min_time=args.min_time)
                key = (name, jit)
                times.setdefault(key, []).extend(runner.times[1:])
                print(
                    f"  round {round_ + 1}: {name} ({'xla' if jit else 'graph'}) "
                    f"{1e3 * statistics.median(runner.times[1:]):.3f} ms/step, first "
                    f"call {runner.first_s:.1f} s",
                    flush=True,
                )
                del runner
                gc.collect()
    rates = {name: _pipeline_rate(sources[name]()) for name in names}
    rows = []
    for (name, jit), repeats in times.items():
        median = statistics.median(repeats)
        rows.append(
            {
                "source": name,
                "mode": "xla" if jit else "graph",
                "ms_per_step": median * 1e3,
                "steps_per_s": 1 / median,
                "spread": (max(repeats) - min(repeats)) / median,
                "pipeline_batches_per_s": rates[name],
            }
        )
    return {"rows": rows, "batch": BATCH, "rows_in_data": ROWS, "steps_per_call": STEPS}


def _print_throughput(result):
    base = {
        r["mode"]: r["steps_per_s"]
        for r in result["rows"]
        if r["source"] == "in-memory"
    }
    print(
        f"\n{'source':38s} {'mode':5s} {'ms/step':>8s} {'steps/s':>8s} {'vs mem':>7s} {'spread':>7s} {'pipe b/s':>9s}"
    )
    for r in result["rows"]:
        vs = r["steps_per_s"] / base[r["mode"]] if r["mode"] in base else float("nan")
        pipe = r["pipeline_batches_per_s"]
        pipe = f"{pipe:9.0f}" if pipe else f"{'-':>9s}"
        print(
            f"{r['source']:38s} {r['mode']:5s} {r['ms_per_step']:8.3f} "
            f"{r['steps_per_s']:8.0f} {vs:7.2f} {r['spread']:7.0%} {pipe}"
        )


# -- memory ------------------------------------------------------------------


def _write_csv(path, x, y, chunk=100_000):
    """A Higgs-shaped CSV (label, then the features), gzip'd, written in chunks."""
    scratch = path + ".tmp"
    with gzip.open(scratch, "wt", compresslevel=1) as f:
        for start in range(0, len(y), chunk):
            block = np.column_stack(
                [y[start : start + chunk], x[start : start + chunk]]
            )
            np.savetxt(f, block, fmt="%.7g", delimiter=",")
    os.replace(scratch, path)


def _write_big_csv(path, rows, chunk=100_000):
    """``rows`` synthetic Higgs-shaped rows, drawn chunk by chunk (bounded memory).

    One teacher for every chunk, as :func:`lowtf.data.synthetic` draws it (a
    two-layer tanh net, labels drawn from its sigmoid); the features of each
    chunk are drawn from their own seed.
    """
    if os.path.exists(path):
        return
    teacher = np.random.default_rng(0)
    w1 = teacher.standard_normal((28, 32)) / np.sqrt(28)
    w2 = teacher.standard_normal(32) * 1.5
    scratch = path + ".tmp"
    with gzip.open(scratch, "wt", compresslevel=1) as f:
        for i, start in enumerate(range(0, rows, chunk)):
            rs = np.random.default_rng(i + 1)
            x = rs.standard_normal((min(chunk, rows - start), 28)).astype(np.float32)
            logits = np.tanh(x @ w1 * 2.0) @ w2
            y = rs.random(len(x)) < 1.0 / (1.0 + np.exp(-logits))
            np.savetxt(f, np.column_stack([y, x]), fmt="%.7g", delimiter=",")
    os.replace(scratch, path)


def _memory_child(path, rows, model_dir) -> dict:
    """One streamed fit over the file; runs in its own process (see memory())."""
    import tensorflow as tf

    import lowtf

    start = time.perf_counter()
    held_out = 1_000
    stats = lowtf.data.csv_statistics(path, skip=held_out)
    stats_s = time.perf_counter() - start
    validation = lowtf.data.csv_dataset(
        path, batch_size=BATCH, statistics=stats, take=held_out, training=False
    )
    train = lowtf.data.csv_stream(
        path, batch_size=BATCH, statistics=stats, skip=held_out
    )
    steps = (rows - held_out) // BATCH
    start = time.perf_counter()
    result = lowtf.fit(
        lowtf.mlp("medium", seed=0),
        tf.keras.optimizers.Adam(1e-3),
        train=train,
        validation=validation,
        model_dir=model_dir,
        config=lowtf.TrainConfig(
            max_steps=steps,
            eval_every=max(steps // 4, 1),
            checkpoint_every=max(steps // 2, 1),
        ),
        log=lambda line: None,
    )
    return {
        "rows": rows,
        "file_bytes": os.path.getsize(path),
        "steps": steps,
        "stats_s": stats_s,
        "fit_s": time.perf_counter() - start,
        "best_val_cross_entropy": result.best_value,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def memory(args) -> dict:
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="lowtf-streams-")
    os.makedirs(work_dir, exist_ok=True)
    runs = []
    for rows in (int(r) for r in args.rows.split(",")):
        path = os.path.join(work_dir, f"higgs-{rows}.csv.gz")
        start = time.perf_counter()
        _write_big_csv(path, rows)
        print(
            f"  {path}: {os.path.getsize(path) / 1e6:.0f} MB ({time.perf_counter() - start:.0f} s to write)",
            flush=True,
        )
        model_dir = tempfile.mkdtemp(prefix="run-", dir=work_dir)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "lowtf.bench.streams",
                "_memory_child",
                path,
                str(rows),
                model_dir,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            check=False,
        )
        if out.returncode:
            raise SystemExit(f"the child run failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print("  " + json.dumps(runs[-1]), flush=True)
    return {"runs": runs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--repeats", type=int, default=3, help="timed repeats per round")
    t.add_argument("--min_time", type=float, default=1.0, help="seconds per repeat")
    t.add_argument(
        "--only", default="", help="comma-separated substrings of source names"
    )
    t.add_argument("--work_dir", default="")
    t.add_argument("--json", default="")
    m = sub.add_parser("memory")
    m.add_argument("--rows", default="200000,2000000")
    m.add_argument("--work_dir", default="")
    m.add_argument("--json", default="")
    h = sub.add_parser(
        "higgs_csv",
        help="write a synthetic HIGGS-format csv.gz (label, 28 features) for "
        "bin/train --dataset=higgs --stream at full scale",
    )
    h.add_argument("path")
    h.add_argument("--rows", type=int, default=2_000_000)
    c = sub.add_parser("_memory_child")
    c.add_argument("path")
    c.add_argument("rows", type=int)
    c.add_argument("model_dir")
    args = parser.parse_args(argv)
    if args.what == "higgs_csv":
        started = time.monotonic()
        _write_big_csv(args.path, args.rows)
        size = os.path.getsize(args.path)
        print(f"{args.path}: {args.rows:,} rows, {size / 1e6:.0f} MB ({time.monotonic() - started:.0f} s)")
        return 0
    if args.what == "_memory_child":
        print(json.dumps(_memory_child(args.path, args.rows, args.model_dir)))
        return 0
    from lowtf.bench.report import machine

    result = throughput(args) if args.what == "throughput" else memory(args)
    result["machine"] = machine()
    result["load_average"] = os.getloadavg()
    if args.what == "throughput":
        _print_throughput(result)
    else:
        base = result["runs"][0]["peak_rss_mb"]
        for run in result["runs"]:
            print(
                f"{run['rows']:>10,} rows  {run['file_bytes'] / 1e6:7.0f} MB file  "
                f"peak RSS {run['peak_rss_mb']:7.0f} MB ({run['peak_rss_mb'] - base:+.0f})  "
                f"stats {run['stats_s']:.0f} s  fit {run['fit_s']:.0f} s ({run['steps']} steps)"
            )
    print(f"load average {result['load_average']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
