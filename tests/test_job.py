"""Tests of lowtf.job: JobConfig's checks, the layering, and run_job in process, on tiny runs."""

import ast
import gzip
import json
import os
import re
import types

import _fixtures  # tests/_fixtures.py; pytest puts tests/ on sys.path
import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import distribute, nn, sweep
from lowtf.job import run as job
from lowtf.train import metrics, summaries

BIN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "train"
)
# Synthetic data (28 features, 2 classes), the tiny MLP (16 units), no XLA.
TINY = {
    "dataset": "synthetic",
    "train_size": 200,
    "validation_size": 100,
    "model": "tiny",
    "xla": False,
    "batch_size": 50,
    "max_steps": 60,
    "eval_every": 20,
    "steps_per_call": 20,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("job") / "run")
    lines = []
    config = job.JobConfig(**TINY, model_dir=model_dir)
    result = job.run_job(
        config, flags_text="--model=tiny\n--max_steps=60\n", log=lines.append
    )
    return model_dir, result, lines


@pytest.mark.e2e
def test_run_job_writes_summary_flags_and_curves(tiny_run):
    model_dir, result, lines = tiny_run
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert list(summary) == list(job.SUMMARY_FIELDS)
    assert summary == result.as_dict()
    assert (
        summary["train_size"],
        summary["validation_size"],
        summary["test_size"],
    ) == (200, 100, 500)
    assert (
        summary["dataset"] == "synthetic"
        and summary["model"] == "tiny"
        and summary["augment"] is None
    )
    assert summary["num_parameters"] == 28 * 16 + 16 + 16 + 1
    # Patience (1000) never ran out: the run went to max_steps, evaluating every 20.
    assert summary["stop_reason"] == "max_steps" and summary["last_step"] == 60
    assert summary["best_step"] % 20 == 0 and 0 <= summary["best_step"] <= 60
    history = summaries.read_history(os.path.join(model_dir, "history.csv"))
    assert [row["step"] for row in history] == [0, 20, 40, 60]
    best = min(history, key=lambda row: row["val_cross_entropy"])
    assert summary["best_step"] == best["step"]
    assert summary["best_value"] == pytest.approx(best["val_cross_entropy"], rel=1e-6)
    # The best snapshot was restored before the final evaluations.
    assert summary["validation_cross_entropy"] == pytest.approx(
        summary["best_value"], rel=1e-5
    )
    assert (
        isinstance(summary["test_accuracy"], float)
        and 0 <= summary["test_accuracy"] <= 1
    )
    assert 0 < summary["test_cross_entropy"] < 2
    with open(os.path.join(model_dir, "flags.txt")) as f:
        assert f.read() == "--model=tiny\n--max_steps=60\n"
    image = tf.io.decode_png(
        tf.io.read_file(os.path.join(model_dir, "curves.png"))
    ).numpy()
    assert image.ndim == 3 and image.shape[-1] == 3 and image.std() > 0
    assert not any(name.endswith(".tmp") for name in os.listdir(model_dir))
    assert (
        lines[0]
        == "synthetic: 200 train / 100 validation / 500 test; features 28; 2 classes"
    )
    assert lines[1] == f"model tiny, adam lr 0.001; writing to {model_dir}"
    assert lines[-1].endswith(f"test accuracy {summary['test_accuracy']:.4f}")


@pytest.mark.e2e
def test_run_job_resumes_and_keeps_the_flags_text(tiny_run):
    model_dir, first, _ = tiny_run
    lines = []
    config = job.JobConfig(**{**TINY, "max_steps": 80}, model_dir=model_dir)
    result = job.run_job(config, log=lines.append)  # no flags_text: flags.txt stays
    assert any(
        line.startswith("resuming from ") and "at step 60" in line for line in lines
    )
    assert result.last_step == 80 and result.best_step % 20 == 0
    assert result.best_value <= first.best_value
    with open(os.path.join(model_dir, "flags.txt")) as f:
        assert f.read() == "--model=tiny\n--max_steps=60\n"


@pytest.mark.e2e
def test_run_job_augments_digit_images_for_an_mlp(tmp_path):
    config = job.JobConfig(
        hidden=[16], augment="translate:1", train_size=100, xla=False,
        batch_size=50, max_steps=4, eval_every=2, model_dir=str(tmp_path / "run"),
    )  # fmt: skip
    result = job.run_job(config, log=lambda line: None)
    assert result.model == "16" and result.augment == "translate:1"
    assert result.num_parameters == 64 * 16 + 16 + 16 * 10 + 10
    assert (
        result.last_step == 4 and result.train_size == 100 and result.num_classes == 10
    )
    assert 0 <= result.test_accuracy <= 1


# A resume whose settings define another run (bin/train's flags, as JobConfig
# fields) is refused naming the setting; bin/train prints it as one line with
# status 2 (tests/test_bin_train.py checks that for one of them).
DEFINING = [
    (
        {"activation": "relu"},
        "(--activation: elu in the run, relu now); pick another --model_dir",
    ),
    ({"dropout": 0.2}, "(--dropout: 0 in the run, 0.2 now)"),
    ({"seed": 3}, "(--seed: 0 in the run, 3 now)"),
    ({"batch_size": 25}, "(--batch_size: 50 in the run, 25 now)"),
    (
        {"data_seed": 1, "l2": 1e-4},
        "(--data_seed: 0 in the run, 1 now; --l2: 0 in the run, 0.0001 now)",
    ),
]


@pytest.mark.e2e
def test_a_resume_with_another_defining_setting_is_refused_and_changes_nothing(
    tmp_path,
):
    model_dir = str(tmp_path / "run")
    job.run_job(job.JobConfig(**TINY, model_dir=model_dir), log=lambda line: None)
    before = _fixtures.tree_digest(model_dir)
    for change, listed in DEFINING:
        config = job.JobConfig(**{**TINY, **change}, model_dir=model_dir)
        with pytest.raises(ValueError, match="belongs to another run") as raised:
            job.run_job(config, log=lambda line: None)
        assert listed in str(raised.value), (change, str(raised.value))
        assert _fixtures.tree_digest(model_dir) == before, change


# Each combination that bin/train refuses with status 2, and the one line it prints.
REFUSED = [
    ({"model": "small", "hidden": (8,)}, "give --model or --hidden, not both"),
    ({"model": "medium", "hidden": [8]}, "give --model or --hidden, not both"),
    (
        {"weight_decay": 0.01},
        "--weight_decay is the decoupled decay of AdamW; add --optimizer=adamw (not adam) or use --l2",
    ),
    (
        {"collective_timeout": 30.0},
        "--collective_timeout bounds how long a worker waits for the others, so it "
        "needs --strategy=multi_worker (not default); drop it",
    ),
    (
        {"strategy": "mirrored", "collective_timeout": 30.0},
        (
            "--collective_timeout bounds how long a worker waits for the others, so it "
            "needs --strategy=multi_worker (not mirrored); drop it"
        ),
    ),
    (
        {"monitor": "regularization_loss"},
        "--monitor=regularization_loss needs a penalty to watch",
    ),
    # Single values that absl's bounds refuse in bin/train.
    ({"dropout": 1.0}, "`dropout` (1.0) must be in [0, 1)"),
    ({"learning_rate": 0.0}, "`learning_rate` (0.0) must be > 0"),
    ({"l2": float("nan")}, "`l2` (nan) must be a finite number"),
    (
        {"collective_timeout": float("inf"), "strategy": "multi_worker"},
        "`collective_timeout` (inf)",
    ),
    ({"hidden": (8, 0)}, "`hidden[1]` (0) must be a positive integer"),
    (
        {"model": "huge"},
        "`model` ('huge') must be one of 'tiny', 'small', 'medium', 'large', 'cnn'",
    ),
    ({"batch_size": 0}, "`batch_size` (0) must be a positive integer"),
    ({"monitor": "loss"}, "`monitor` ('loss') must be one of 'train_cross_entropy'"),
    ({"augment": "spin:3"}, "unknown augmentation op 'spin'"),
    ({"xla": 1}, "`xla` (1) must be True or False"),
    # The data flags, before any data are read.
    ({"data_path": "rows.csv"}, "--data_path=rows.csv is not read by --dataset=digits (its data are embedded); add --dataset=csv"),
    ({"data_path": "x.npz"}, "; add --dataset=npz"),
    ({"dataset": "csv"}, "--dataset=csv reads a file: add --data_path=FILE"),
    ({"label_column": "y"}, "--label_column is for --dataset=csv only, not digits; drop it"),
    ({"dataset": "synthetic", "model": "cnn"}, "--model=cnn needs images: --dataset=digits"),
    ({"train_size": 1300}, "--train_size (1300) + --validation_size (300) exceed the 1,497 digits rows"),
    # More rows cannot help on digits: no --train_size advice (except below 1,197).
    ({"batch_size": 5000}, "--batch_size (5000) exceeds the 1,197 training examples of digits; lower it to at most 1197"),
    ({"batch_size": 500, "train_size": 300}, "lower it to at most 300 or raise --train_size"),
    ({"dataset": "synthetic", "batch_size": 5000}, "lower it to at most 2000 or raise --train_size"),
    ({"dataset": "synthetic", "cutmix": 1.0}, "--cutmix=1.0 needs images: --dataset=digits"),
    ({"mixup": 3.0}, "`mixup` (3.0) must be at most 2"),
    ({"ema": 1.0}, "`ema` (1.0) must be in [0, 1)"),
    ({"startup_timeout": 20.0}, "--startup_timeout bounds how long a worker waits for the others to start, so it needs --strategy=multi_worker (not default); drop it"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs,message", REFUSED, ids=[str(k) for k, _ in REFUSED])
def test_job_config_refuses(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        job.JobConfig(**kwargs)
    if "batch_size" in kwargs and "digits" in message:
        assert ("raise --train_size" in str(raised.value)) == ("train_size" in kwargs)


def test_job_config_accepts_what_bin_train_accepts():
    assert (
        job.JobConfig(monitor="regularization_loss", l1=1e-5).monitor
        == "regularization_loss"
    )
    assert job.JobConfig(optimizer="adamw", weight_decay=0.01).weight_decay == 0.01
    assert (
        job.JobConfig(
            strategy="multi_worker", collective_timeout=5.0
        ).collective_timeout
        == 5.0
    )
    with pytest.raises(TypeError):  # keyword-only
        job.JobConfig("digits")


def test_default_model_dir_names_what_the_run_is():
    def named(**kwargs):
        return os.path.relpath(job.JobConfig(**kwargs).resolved_model_dir, "runs")

    assert named() == "digits-medium"
    assert (
        named(dataset="higgs", data_path="H.csv.gz", hidden=[512, 512])
        == "higgs-512x512"
    )
    assert job.JobConfig(model="cnn", model_dir="out").resolved_model_dir == "out"
    # Each defining flag off its default, in flag order; defaults spelled out
    # and what a resume may change leave the name as it is.
    assert named(model="small", l2=1e-4, maxnorm=3.0, dropout=0.2) == (
        "digits-small-dropout0.2-l2_0.0001-maxnorm3"
    )
    assert named(model="medium", activation="elu", max_steps=50, learning_rate=0.01,
                 patience=10, xla=False, data_seed=3) == "digits-medium"  # fmt: skip
    assert named(model="cnn", activation="relu") == "digits-cnn"
    assert named(batchnorm=True, optimizer="adamw", weight_decay=1e-4) == (
        "digits-medium-batchnorm-optimizer_adamw-weight_decay0.0001"
    )
    assert named(model="cnn", augment="translate:1,rotate:10", seed=2) == (
        "digits-cnn-augment_translate1+rotate10-seed2"
    )
    # A path, or a long name: a hash of the defining flags instead.
    transfer = named(init_from="runs/pre", freeze=2)
    assert re.fullmatch(r"digits-medium-[0-9a-f]{8}", transfer)
    assert transfer != named(init_from="runs/other", freeze=2)
    long = dict(l1=1e-5, l2=1e-4, dropout=0.25, maxnorm=2.5, batchnorm=True, seed=7)
    assert re.fullmatch(r"digits-medium-[0-9a-f]{8}", named(**long))
    assert named(**long) != named(**{**long, "seed": 8})


def test_default_sweep_dir_names_what_the_sweep_is():
    def named(search="grid", trials=0, folds=1, sweep_dir=None, **given):
        config = sweep.config.from_flags(
            {k: [v] for k, v in given.items()},
            search=search, trials=trials, folds=folds, sweep_dir=sweep_dir,
        )  # fmt: skip
        return os.path.relpath(config.resolved_sweep_dir, "sweeps")

    assert named(model="tiny,small") == "digits-tiny+small"
    grid = named(model="small,medium", l2="0,1e-4,1e-3", dropout="0,0.2")
    assert grid == "digits-small+medium-dropout_0+0.2-l2_0+0.0001+0.001"
    # Two sweeps of one architecture that differ in anything: two directories.
    assert named(model="small,medium", l2="0,1e-4", dropout="0,0.2") != grid
    assert named(l2="0,1e-4", folds=3) == "digits-medium-l2_0+0.0001-folds3"
    tpe = named(search="tpe", trials=16, l2="1e-4..1e-2:log")
    assert tpe == "digits-medium-l2_0.0001..0.01log-search_tpe-trials16"
    assert named(search="tpe", trials=17, l2="1e-4..1e-2:log") != tpe
    long = dict(label_smoothing="0,0.1", mixup="0,0.2", cutmix="0,1", input_noise="0,0.3", ema="0,0.99")
    assert re.fullmatch(r"digits-medium-[0-9a-f]{8}", named(**long))
    assert named(**long) != named(**long, max_steps="2000")
    assert named(**long, sweep_dir="out") == "../out"


def test_a_model_dir_of_another_run_is_refused_in_flag_terms(tmp_path):
    config = job.JobConfig(model="small", l2=1e-4)
    model_dir = str(tmp_path)
    assert job.recorded_flags(config, model_dir) == json.loads(
        json.dumps(config.defining_flags())
    )  # nothing there: recorded as this run's
    flags = dict(config.defining_flags(), l2=0.0, batchnorm=True, train_size=300)
    lowtf.train.rundir.write_record(model_dir, {"identity": {"flags": flags}})
    os.mkdir(tmp_path / "ckpt")  # a run trained there
    with pytest.raises(ValueError) as raised:
        job.recorded_flags(config, model_dir)
    assert str(raised.value) == (
        f"--model_dir={model_dir} belongs to another run (--batchnorm: on in the run, "
        "off now; --l2: 0 in the run, 0.0001 now; --train_size: 300 in the run, unset "
        "now); pick another --model_dir"
    )
    # A run recorded before its flags were: fit compares its identity as before.
    lowtf.train.rundir.write_record(model_dir, {"identity": {"batch_size": 128}})
    assert job.recorded_flags(config, model_dir) is None


def tree(path):
    return sorted(
        os.path.relpath(os.path.join(root, name), path)
        for root, _, names in os.walk(path)
        for name in names
    )


@pytest.mark.e2e
def test_unusable_model_dir_is_refused_before_anything_is_written(tmp_path, tiny_run):
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused = {
        str(
            afile / "run"
        ): f"--model_dir ({afile / 'run'}) is under {afile}, a file; pick a directory",
        str(afile): f"--model_dir ({afile}) is a file; pick a directory",
        os.path.join(
            os.path.dirname(lowtf.__file__), "runs"
        ): "is inside the lowtf package",
    }
    for model_dir, message in refused.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            job.run_job(job.JobConfig(**TINY, model_dir=model_dir), flags_text="x\n")
    assert afile.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["afile"]
    assert not os.path.exists(os.path.join(os.path.dirname(lowtf.__file__), "runs"))
    # The README's first run, from the checkout's root, is not in the package.
    checkout = os.path.dirname(os.path.dirname(lowtf.__file__))
    job.check_model_dir(os.path.join(checkout, "runs", "digits-medium"))
    # A batch larger than the training set, or another network on a model
    # directory: refused before flags.txt (or anything else) is written.
    model_dir, _, _ = tiny_run
    before = {
        name: os.path.getmtime(os.path.join(model_dir, name))
        for name in tree(model_dir)
    }
    with pytest.raises(
        ValueError,
        match=re.escape("--batch_size (201) exceeds the 200 training examples"),
    ):
        job.run_job(
            job.JobConfig(**{**TINY, "batch_size": 201}, model_dir=model_dir),
            flags_text="x\n",
        )
    with pytest.raises(
        ValueError, match=re.escape("(--model: tiny in the run, small now)")
    ):
        job.run_job(
            job.JobConfig(**{**TINY, "model": "small"}, model_dir=model_dir),
            flags_text="x\n",
        )
    assert {
        name: os.path.getmtime(os.path.join(model_dir, name))
        for name in tree(model_dir)
    } == before
    with pytest.raises(
        ValueError, match=re.escape("--model=cnn needs images: --dataset=digits")
    ):
        job.run_job(
            job.JobConfig(**{**TINY, "model": "cnn"}, model_dir=str(tmp_path / "cnn"))
        )
    assert not (tmp_path / "cnn").exists()


def test_a_refusal_before_the_directory_exists_keeps_its_own_message(
    tmp_path, monkeypatch
):
    def refuse(self):
        raise ValueError("the lock was refused")

    monkeypatch.setattr(lowtf.train.rundir.RunLock, "acquire", refuse)
    with pytest.raises(ValueError, match="the lock was refused"):
        job.run_job(job.JobConfig(**TINY, model_dir=str(tmp_path / "new")))
    assert not (tmp_path / "new").exists()


def _worker(index):
    """A stand-in strategy whose cluster resolver says this is worker ``index``."""
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": ["a:1", "b:1"]}),
        task_type="worker",
        task_id=index,
    )
    return types.SimpleNamespace(cluster_resolver=resolver, num_replicas_in_sync=2)


def test_worker_lost_message(tmp_path):
    timed_out = tf.errors.DeadlineExceededError(
        None,
        None,
        "Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at:\n"
        '  File "bin/train", line 1\n'
        "Collective ops is aborted by: Collective has timed out during execution.\n"
        "Additional GRPC error information: {...}\n"
        "\t [[{{node CollectiveReduceV2}}]]",
    )
    assert (
        distribute.error_gist(timed_out) == "Collective has timed out during execution."
    )
    ckpt_dir = str(tmp_path / "ckpt")
    message = distribute.lost_worker_message(
        timed_out, _worker(0), checkpoint_dir=ckpt_dir, timeout_seconds=5.0
    )
    assert message == (
        "worker 0 lost contact with the other workers (DeadlineExceededError: Collective "
        "has timed out during execution. (collective timeout 5 s)): a worker stopped or "
        "is unreachable. Stop every worker still running, then run the same command on "
        "every worker again; training resumes from the start (no checkpoint was saved yet)"
    )
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=tf.Variable(1.0)),
        ckpt_dir,
        max_to_keep=1,
        checkpoint_name="ckpt",
    )
    latest = manager.save(checkpoint_number=150)
    unavailable = tf.errors.UnavailableError(
        None,
        None,
        "Error reported from /job:worker/task:0: stopped sending heartbeats\nThe error could be",
    )
    message = distribute.lost_worker_message(
        unavailable, _worker(1), checkpoint_dir=ckpt_dir
    )
    assert message.startswith(
        "worker 1 lost contact with the other workers (UnavailableError: Error reported "
        "from /job:worker/task:0: stopped sending heartbeats): "
    )
    assert message.endswith(f"training resumes from the latest checkpoint, {latest}")
    assert "\n" not in message and issubclass(distribute.WorkerLost, Exception)
    assert not issubclass(
        distribute.WorkerLost, ValueError
    )  # bin/train: status 3, not 2


def test_write_text_is_atomic_on_any_file_system():
    tf.io.gfile.makedirs("ram://job")
    job.write_text("ram://job/summary.json", "old\n")
    job.write_text("ram://job/summary.json", "new\n")
    assert tf.io.gfile.listdir("ram://job") == ["summary.json"]
    with tf.io.gfile.GFile("ram://job/summary.json") as f:
        assert f.read() == "new\n"


def test_summary_fields_use_the_metric_names():
    assert set(job.EVALUATED) <= set(metrics.STEP_METRICS)
    for split in ("test", "validation"):
        for name in job.EVALUATED:
            assert f"{split}_{name}" in job.SUMMARY_FIELDS
    assert {"best_step", "best_value", "monitor", "stop_reason", "last_step"} <= set(
        job.SUMMARY_FIELDS
    )
    result = job.JobResult(**{name: None for name in job.SUMMARY_FIELDS})
    assert json.loads(result.to_json()) == dict.fromkeys(job.SUMMARY_FIELDS)


def test_job_config_choices_match_the_library():
    """lowtf.job.config spells the library's choices out (to check flags without TensorFlow)."""
    from lowtf.job import config as job_config

    assert job_config.MODELS == (*lowtf.models.PRESETS, "cnn")
    assert job_config.PRESETS == tuple(lowtf.models.PRESETS)
    assert job_config.STRATEGIES == distribute.STRATEGIES
    assert job_config.DATASETS == lowtf.data.DATASETS
    assert job_config.ACTIVATIONS == lowtf.nn.ACTIVATIONS
    assert job_config.MONITORS == metrics.MONITORS
    datasets = lowtf.data.datasets
    assert job_config.DIGITS_TEST_SIZE == datasets.DIGITS_TEST_SIZE
    assert job_config.DIGITS_VALIDATION_SIZE == datasets.DIGITS_VALIDATION_SIZE
    assert job_config.SYNTHETIC_TRAIN_SIZE == datasets.SYNTHETIC_SIZES[0]
    digits = lowtf.load_dataset("digits")
    assert sum(
        len(split[1]) for split in (digits.train, digits.validation, digits.test)
    ) == (job_config.DIGITS_ROWS)


def test_data_errors_name_the_flags(tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("".join(f"{i},{i % 2}\n" for i in range(40)))
    config = job.JobConfig(dataset="csv", data_path=str(rows), train_size=500)
    with pytest.raises(lowtf.DataError, match="lower --train_size/--validation_size"):
        job.load_data(config)


def test_the_job_is_above_training_and_export():
    """lowtf.export knows a model spec, never the job; nothing below the job imports it.

    Only the job itself, what runs it (lowtf.sweep) and lowtf's lazy top
    level name it; lowtf.train's old names for it load it when first used.
    """
    root = os.path.dirname(lowtf.__file__)
    above = ("job", "sweep")
    importers = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            part = os.path.relpath(path, root).split(os.sep)[0]
            if not name.endswith(".py") or part in above:
                continue
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                modules = []
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    modules = [node.module] + [
                        f"{node.module}.{alias.name}" for alias in node.names
                    ]
                if any(m == "lowtf.job" or m.startswith("lowtf.job.") for m in modules):
                    importers.append(os.path.relpath(path, root))
    assert importers == []
    assert "from lowtf.models import ModelSpec" in open(
        os.path.join(root, "export", "spec.py")
    ).read()


# bin/train's data formats and its snapshot, in process (tests/test_bin_train.py
# runs the binary itself): short runs off XLA.
QUICK = dict(xla=False, eval_every=50, max_steps=200, batch_size=50)


def _summary(model_dir):
    with open(os.path.join(model_dir, "summary.json")) as f:
        return json.load(f)


@pytest.mark.e2e
def test_maxnorm_holds_in_the_saved_best_snapshot(tmp_path):
    # A csv file (header, label column named) of the synthetic problem.
    x, y = lowtf.data.datasets.synthetic(900, num_features=6, seed=1)
    path = tmp_path / "data.csv"
    rows = [",".join(["kind"] + [f"f{i}" for i in range(6)])]
    rows += [",".join([str(label)] + [f"{v:.5f}" for v in row]) for label, row in zip(y, x)]
    path.write_text("\n".join(rows) + "\n")
    model_dir = str(tmp_path / "run")
    job.run_job(job.JobConfig(
        dataset="csv", data_path=str(path), label_column="kind", model="small",
        maxnorm=0.5, l2=1e-4, dropout=0.1, model_dir=model_dir, **QUICK,
    ), log=lambda line: None)  # fmt: skip
    got = _summary(model_dir)
    assert (got["train_size"], got["validation_size"], got["test_size"]) == (630, 135, 135)
    # Rebuild the network and read the best snapshot into it.
    model = lowtf.mlp("small", num_classes=2, maxnorm=0.5, l2=1e-4, dropout=0.1)
    model(tf.zeros([1, 6]))
    snapshot = lowtf.train.best_checkpoint(os.path.join(model_dir, "best"))
    assert snapshot["step"] == got["best_step"]
    tf.train.Checkpoint(model=model).read(snapshot["prefix"]).expect_partial().assert_existing_objects_matched()
    hidden = [m for m in model.submodules if isinstance(m, nn.Dense) and m.name != "logits"]
    assert len(hidden) == 2
    for dense in hidden:
        norms = lowtf.nn.unit_norms(dense.kernel).numpy()
        assert norms.max() <= 0.5 * (1 + 1e-5)
        assert norms.max() >= 0.5 * (1 - 1e-3)  # the cap is reached: it did work


@pytest.mark.e2e
def test_higgs_format(tmp_path):
    rs = np.random.RandomState(0)
    features = rs.randn(700, 28)
    labels = (features[:, 0] + 0.5 * rs.randn(700) > 0).astype(int)
    path = tmp_path / "HIGGS.csv.gz"
    with gzip.open(path, "wt") as f:
        for label, row in zip(labels, features):
            f.write(",".join([f"{label:.1f}"] + [f"{v:.6f}" for v in row]) + "\n")
    model_dir = str(tmp_path / "run")
    job.run_job(job.JobConfig(
        dataset="higgs", data_path=str(path), train_size=500, validation_size=100,
        model="tiny", model_dir=model_dir, **QUICK,
    ), log=lambda line: None)  # fmt: skip
    got = _summary(model_dir)
    assert (got["train_size"], got["validation_size"], got["test_size"]) == (500, 100, 100)
    assert got["num_classes"] == 2 and got["test_accuracy"] > 0.7
