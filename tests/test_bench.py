"""Tests of lowtf.bench and bin/bench: structure and FLOP counts, never timings."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import bench

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bin" / "bench"


def test_dense_flops_of_the_tiny_mlp():
    model = bench.make_model("tiny", "full")
    flops = bench.dense_flops(model, (28,), 500)
    # 28 -> 16 -> 1: forward 2*B*(28*16 + 16*1); backward: both kernels'
    # gradients, and the input gradient of the second layer only.
    assert flops["forward"] == 2 * 500 * (28 * 16 + 16)
    assert flops["backward"] == 2 * 500 * 28 * 16 + 4 * 500 * 16
    assert flops["total"] == flops["forward"] + flops["backward"]


def test_dense_flops_count_convolutions_per_output_pixel():
    model = bench.make_model("cnn", "none")
    flops = bench.dense_flops(model, (8, 8, 1), 10)
    # conv 3x3x1->32 on 8x8, pool, conv 3x3x32->64 on 4x4, pool, 256->128->10.
    macs = [10 * 64 * 32 * 9, 10 * 16 * 64 * 9 * 32, 10 * 128 * 256, 10 * 10 * 128]
    assert flops["forward"] == 2 * sum(macs)
    assert flops["backward"] == 2 * macs[0] + 4 * sum(macs[1:])


def _matmul_flops(graph) -> int:
    """2 * m * k * n over the MatMul ops of a graph and of its loop bodies."""
    total = 0
    for op in graph.get_operations():
        if op.type in ("MatMul", "BatchMatMulV2"):
            a = op.inputs[0].shape
            k = a[0] if op.get_attr("transpose_a") else a[1]
            total += 2 * op.outputs[0].shape.num_elements() * k
    for function in getattr(graph, "_functions", {}).values():
        total += _matmul_flops(function.graph)
    return total


def test_matmul_bound_runs_exactly_the_products_dense_flops_counts():
    model = bench.make_model("small", "full")
    model(tf.zeros([1, 28]), training=False)
    runner = bench.DotsRunner(model, 100, xla=False, steps=3)
    graph = runner._fn.get_concrete_function(tf.TensorSpec([], tf.int64)).graph
    assert _matmul_flops(graph) == bench.dense_flops(model, (28,), 100)["total"]
    kernel = runner.kernels[0]
    before = kernel.numpy()
    assert runner.calibrate(0.001) > 0 and runner.repeat() > 0
    # Each iteration's kernel gradient feeds the next one: nothing is hoisted.
    assert not np.array_equal(kernel.numpy(), before)


def test_keras_peer_has_the_same_layers_weights_and_penalties():
    model = bench.make_model("small", "full")
    peer = bench.keras_peer(model, (28,))
    x = np.random.RandomState(0).randn(5, 28).astype(np.float32)
    np.testing.assert_allclose(
        peer(x, training=False).numpy(),
        model(x, training=False).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    dense = [layer for layer in peer.layers if isinstance(layer, tf.keras.layers.Dense)]
    assert [d.units for d in dense] == [16, 16, 1]
    assert all(d.kernel_regularizer.l2 == pytest.approx(bench.L2) for d in dense)
    # Max-norm on the hidden kernels (incoming weights, axis 0), not the output.
    assert [
        d.kernel_constraint.max_value if d.kernel_constraint else None for d in dense
    ] == [
        bench.MAXNORM,
        bench.MAXNORM,
        None,
    ]
    assert list(dense[0].kernel_constraint.axis) == [0]
    drops = [
        layer.rate
        for layer in peer.layers
        if isinstance(layer, tf.keras.layers.Dropout)
    ]
    assert drops == [bench.DROPOUT, bench.DROPOUT]
    # The penalties agree: Keras' model.losses and lowtf's gathered losses.
    keras_penalty = float(tf.add_n(peer.losses))
    assert keras_penalty == pytest.approx(
        float(lowtf.nn.total_regularization_loss(model)), rel=1e-5
    )


def test_configs_cover_every_combination():
    configs = bench.configs(
        models=("tiny", "cnn"),
        regularization=("full",),
        modes=("xla", "graph"),
        steps_per_call=(50,),
    )
    assert [(c.model, c.mode, c.steps_per_call) for c in configs] == [
        ("tiny", "xla", 50),
        ("tiny", "graph", 50),
        ("cnn", "xla", 50),
        ("cnn", "graph", 50),
    ]
    with pytest.raises(ValueError, match="mode"):
        bench.Config(mode="fast")


def test_auto_jit_compile_rule():
    assert lowtf.train.auto_jit_compile(lowtf.mlp("large")) is True
    # No GPU here: a model with convolutions runs as a plain graph.
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert lowtf.train.auto_jit_compile(lowtf.cnn("digits")) is on_gpu
    chosen = lowtf.TrainStep(
        lowtf.cnn("digits"),
        tf.keras.optimizers.Adam(),
        options=lowtf.StepOptions(jit_compile="auto"),
    )
    assert chosen.options.jit_compile is on_gpu


@pytest.mark.e2e
def test_run_reports_lowtf_keras_and_ceiling_for_a_tiny_configuration():
    configs = [
        bench.Config("tiny", 500, "full", "graph", 2),
        bench.Config("tiny", 500, "dropout", "graph", 2),
    ]
    report = bench.run(
        configs,
        repeats=2,
        min_time=0.001,
        keras_steps_per_execution=(2,),
        keras_jit=(False,),
        keras_for=("full",),
        ceiling_size=64,
        log=lambda line: None,
    )
    assert report["ceiling"]["size"] == 64 and report["ceiling"]["gflops"] > 0
    full, dropout = report["results"]
    assert full["config"]["regularization"] == "full"
    assert full["lowtf"]["traces"] == 1 and full["lowtf"]["repeats"] == 2
    assert full["flops"]["total"] == 2 * 500 * (28 * 16 + 16) * 3 - 2 * 500 * 28 * 16
    expected = full["flops"]["total"] / full["lowtf"]["median_ms"] / 1e6
    assert full["lowtf"]["gflops"] == pytest.approx(expected)
    assert full["lowtf"]["ceiling_fraction"] == pytest.approx(
        expected / report["ceiling"]["gflops"]
    )
    assert [v["variant"] for v in full["keras_variants"]] == ["jit=False,spe=2"]
    assert full["speedup_vs_keras"] == pytest.approx(
        full["keras"]["median_ms"] / full["lowtf"]["median_ms"]
    )
    assert dropout["keras"] is None  # no peer asked for this regularization
    (cost,) = report["regularization_cost"]
    assert cost["share"] == pytest.approx(
        1 - dropout["lowtf"]["median_ms"] / full["lowtf"]["median_ms"]
    )
    (bound,) = report["matmul_bounds"]
    assert bound["config"] == ("tiny", 500) and bound["flops"] == full["flops"]
    for mode in ("xla", "graph"):
        assert bound[mode]["repeats"] == 2
        assert bound[mode]["gflops"] == pytest.approx(
            full["flops"]["total"] / bound[mode]["median_ms"] / 1e6
        )
    table = bench.table(report)
    assert "x keras" in table and "matmul bound tiny batch 500" in table


def _bench(*args, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )


@pytest.mark.e2e
def test_binary_writes_table_and_json(tmp_path):
    # Without --output, --quick writes its own report (--population another):
    # no group overwrites another's bench.json.
    out = tmp_path / "bench_quick.json"
    result = _bench(
        "--quick",
        "--nokeras",
        "--modes=graph",
        "--steps_per_call=2",
        "--repeats=1",
        "--ceiling_size=0",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["bench_quick.json"]
    assert result.stdout.splitlines()[: len(bench.report.LEGEND)] == list(
        bench.report.LEGEND
    )  # what spc, iqr%, tr, ceil% ... mean, above the columns
    report = json.loads(out.read_text())
    assert [r["config"]["regularization"] for r in report["results"]] == [
        "full",
        "none",
    ]
    assert all(
        r["lowtf"]["traces"] == 1 and r["keras"] is None for r in report["results"]
    )
    assert report["command"].startswith("bin/bench --quick")
    assert "ms/step" in result.stdout


@pytest.mark.e2e
def test_binary_rejects_bad_batch_sizes_with_one_line(tmp_path):
    result = _bench("--batch_sizes=0", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "error: --batch_sizes (0) must list positive integers" in result.stderr
    assert "Traceback" not in result.stderr
    # A value absl refuses: the same one line and status.
    result = _bench("--repeats=0", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: flag --repeats=0: 0 is not a positive integer\n"


@pytest.mark.e2e
@pytest.mark.parametrize("output", ["missing/report.json", "."])
def test_binary_refuses_an_unwritable_output_before_timing(tmp_path, output):
    result = _bench("--quick", f"--output={output}", tmp_path=tmp_path)
    assert result.returncode == 2
    assert f"error: --output ({output})" in result.stderr
    assert "Traceback" not in result.stderr and "ms/step" not in result.stdout


def test_keras_peer_trains_on_whole_batches_only():
    data = bench.make_data("tiny")
    runner = bench.KerasRunner(
        bench.Config("tiny", 512, "none"),
        data,
        jit_compile=False,
        steps_per_execution=1,
    )
    assert runner.steps_per_epoch == 19 and len(runner.data[0]) == 19 * 512


def test_binary_choices_match_the_library():
    source = BENCH.read_text()
    namespace = {}
    exec(
        source.split("_MODELS = ")[0].split("from absl")[1].split("\n", 1)[1], namespace
    )
    assert namespace["MODELS"] == bench.MODELS
    assert namespace["REGULARIZATION"] == bench.REGULARIZATION
    assert namespace["MODES"] == bench.MODES


@pytest.mark.e2e
def test_binary_rejects_an_unknown_model_with_one_line(tmp_path):
    result = _bench("--models=tiny,huge", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "error: --models (tiny,huge) must list values among" in result.stderr


@pytest.mark.e2e
def test_population_group_reports_speeds_and_memory():
    # What bin/bench --population runs for each (model, K), and its table; the
    # binary's report file: test_binary_writes_table_and_json.
    from lowtf.bench import population

    record = population.run_population(
        "tiny", 2, steps=2, repeats=1, keras_runs=1, single_runs=1, batch_size=64
    )
    json.dumps(record)  # the report's record is JSON
    text = population.table([record])
    assert (record["model"], record["members"], record["batch_size"]) == ("tiny", 2, 64)
    assert (record["single_runs_timed"], record["keras_runs_timed"]) == (1, 1)
    rates = [
        record[f"{side}_member_steps_per_s"]
        for side in ("population", "single", "keras")
    ]
    assert all(np.isfinite(rate) and rate > 0 for rate in rates)
    assert record["speedup_vs_keras"] == pytest.approx(rates[0] / rates[2])
    # Memory from the shapes. The population: 10,000 x 28 float32 features
    # and float32 labels once, 9,000 + 1,000 int64 row indices per member.
    # Each single: its 9,000 training rows, labels, int64 permutation and
    # three int64 scalars (epoch, cursor, the permutation's epoch).
    assert record["data_bytes_population"] == 10_000 * 29 * 4 + 2 * 10_000 * 8
    assert record["data_bytes_singles"] == 2 * (9_000 * 29 * 4 + 9_000 * 8 + 3 * 8)
    # Tiny (28-16-1) has 481 weights per member. The population holds weights,
    # best copies and Adam's two slots of both members, Adam's step and
    # learning rate, and per member 7 stopping and data-position values and
    # the sums of the 4 step metrics (8 bytes each), and their count; per
    # member, a diverged flag and the 16 capped hidden units' max-norm flags
    # (one byte each).
    weights = 28 * 16 + 16 + 16 + 1
    assert record["variable_bytes_population"] == (
        4 * 2 * weights * 4 + 8 + 4 + 2 * (7 + 4) * 8 + 8 + 2 * (1 + 16)
    )
    # Each single: weights and Adam's two slots, its step and learning rate.
    assert record["variable_bytes_singles"] == 2 * (3 * weights * 4 + 8 + 4)
    assert "keras m-steps/s" in text
    assert "tiny K=2: 1 single runs; tiny K=2: 1 keras runs" in text


