"""Tests of lowtf.augment: exact shifts, ranges, seeding, XLA, the spec, the step hook."""

import json

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import augment, random

SEED = tf.constant([3, 7], tf.int64)

# One spec per op, with magnitudes large enough to move pixels visibly.
OP_SPECS = {
    "translate": "translate:2",
    "rotate": "rotate:30",
    "zoom": "zoom:0.3",
    "flip": "flip@1",
    "brightness": "brightness:0.3",
    "contrast": "contrast:0.5",
    "noise": "noise:0.2",
}
ALL_OPS = (
    "translate:1,rotate:15,zoom:0.2,brightness:0.1,contrast:0.2,noise:0.05,flip@0.5"
)


def images(n=16, size=8, seed=0):
    """Blobs on a zero background, values in [0, 1]: digit-like."""
    rs = np.random.RandomState(seed)
    x = rs.rand(n, size, size, 1).astype(np.float32)
    x[:, :2], x[:, -2:], x[:, :, :2], x[:, :, -2:] = 0, 0, 0, 0
    return x


def shifted(x, dy, dx):
    """numpy reference: image moved down dy and right dx, zeros uncovered."""
    out = np.zeros_like(x)
    h, w = x.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_op_specs_cover_every_op():
    assert set(OP_SPECS) == set(augment.OPS)


@pytest.mark.parametrize("name", sorted(OP_SPECS))
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (0.0, 16.0)])
def test_each_op_keeps_shape_and_value_range(name, value_range):
    low, high = value_range
    x = images() * high
    pipeline = augment.parse(OP_SPECS[name], value_range=value_range)
    y = pipeline(x, seed=SEED).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= low and y.max() <= high
    assert np.abs(y - x).max() > 0.01 * high  # It did change the images.


def test_shift_by_one_pixel_moves_the_image_by_exactly_one_pixel():
    x = images(4)
    down = augment.shift(x, dy=[1, 1, 1, 1], dx=[0, 0, 0, 0]).numpy()
    np.testing.assert_array_equal(down[:, 1:], x[:, :-1])
    np.testing.assert_array_equal(down[:, 0], 0)
    left = augment.shift(x, dy=[0, 0, 0, 0], dx=[-1, -1, -1, -1]).numpy()
    np.testing.assert_array_equal(left[:, :, :-1], x[:, :, 1:])
    np.testing.assert_array_equal(left[:, :, -1], 0)


def test_random_translation_is_an_exact_whole_pixel_shift():
    x = images(64)
    y = augment.translate(x, SEED, max_shift=1).numpy()
    seen = set()
    for xi, yi in zip(x, y):
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if np.array_equal(yi, shifted(xi, dy, dx))
        ]
        assert matches, "output is not an exact shift of its input"
        seen.add(matches[0])
    assert len(seen) == 9  # Every shift in -1..1 x -1..1 is drawn.


def test_translation_fills_with_the_low_end_of_the_range():
    x = np.full([2, 4, 4, 1], 5.0, np.float32)
    y = augment.shift(x, [2, 2], [0, 0], fill=-1.0).numpy()
    np.testing.assert_array_equal(y[:, :2], -1.0)
    np.testing.assert_array_equal(y[:, 2:], 5.0)


def test_affine_sampler_rotates_a_quarter_turn_exactly():
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    quarter = tf.constant([[[0.0, 1.0], [-1.0, 0.0]]])
    y = augment.affine(x, quarter).numpy()
    np.testing.assert_allclose(y[0, :, :, 0], np.rot90(x[0, :, :, 0]), atol=1e-5)
    identity = augment.affine(x, tf.eye(2)[None]).numpy()
    np.testing.assert_array_equal(identity, x)


def test_zero_magnitudes_and_zero_probability_are_the_identity():
    x = images(8)
    for spec in ("rotate:0", "zoom:0", "translate:0", "rotate:30@0", "noise:0"):
        np.testing.assert_allclose(augment.parse(spec)(x, seed=SEED), x, atol=1e-6)


def test_probability_picks_that_share_of_the_images():
    x = images(400, size=6)
    y = augment.parse("flip@0.3")(x, seed=SEED).numpy()
    flipped = np.all(y == x[:, :, ::-1], axis=(1, 2, 3)) & ~np.all(
        y == x, axis=(1, 2, 3)
    )
    assert 0.22 < flipped.mean() < 0.38


def test_flip_mirrors_left_right():
    x = images(4)
    np.testing.assert_array_equal(augment.flip(x, SEED, prob=1.0), x[:, :, ::-1])


def test_noise_and_brightness_have_their_magnitudes():
    x = np.full([200, 8, 8, 1], 0.5, np.float32)
    noise = augment.noise(x, SEED, stddev=0.05).numpy() - 0.5
    assert abs(noise.mean()) < 0.002 and 0.047 < noise.std() < 0.053
    delta = augment.brightness(x, SEED, max_delta=0.2).numpy() - 0.5
    per_image = delta[:, 0, 0, 0]
    np.testing.assert_allclose(
        delta, per_image[:, None, None, None] * np.ones_like(delta), atol=1e-6
    )
    assert np.abs(per_image).max() <= 0.2 + 1e-6 and np.abs(per_image).max() > 0.15


def test_same_seed_same_output_other_seed_other_output():
    x = images()
    pipeline = augment.parse(ALL_OPS)
    a = pipeline(x, seed=SEED).numpy()
    np.testing.assert_array_equal(pipeline(x, seed=SEED), a)
    assert not np.allclose(pipeline(x, seed=[3, 8]), a)


def test_inside_a_step_key_each_step_draws_anew_and_repeats_when_rerun():
    x = images()
    pipeline = augment.parse("translate:1,rotate:10")
    outputs = []
    for step in (0, 1, 0):
        with random.step_key(random.make_key(5, step)):
            outputs.append(pipeline(x).numpy())
    np.testing.assert_array_equal(outputs[0], outputs[2])
    assert not np.allclose(outputs[0], outputs[1])
    with pytest.raises(ValueError, match="needs a `seed`"):
        pipeline(x)


@pytest.mark.parametrize("spec", [ALL_OPS, *OP_SPECS.values()])
@pytest.mark.e2e
def test_eager_graph_and_xla_agree(spec):
    # One generator (lowtf.random): the draws are the same in every mode.
    x = images(32)
    pipeline = augment.parse(spec)

    def run(images_):
        return pipeline(images_, seed=SEED)

    eager = run(x).numpy()
    graph = tf.function(run)(x).numpy()
    xla = tf.function(run, jit_compile=True)(x).numpy()
    assert not np.allclose(eager, x)
    np.testing.assert_allclose(graph, eager, rtol=0, atol=1e-6)
    # XLA may fuse a multiply-add or evaluate sin, cos and log its own way.
    np.testing.assert_allclose(xla, eager, rtol=0, atol=1e-5)


def test_exact_ops_agree_bit_for_bit_in_every_mode():
    x = images(32)
    exact = augment.parse("translate:2,flip@0.5")
    eager = exact(x, seed=SEED).numpy()
    for jit in (False, True):
        fn = tf.function(lambda i: exact(i, seed=SEED), jit_compile=jit)
        np.testing.assert_array_equal(fn(x), eager)


@pytest.mark.e2e
def test_inside_a_step_key_every_mode_augments_alike():
    x = images(16)
    pipeline = augment.parse(ALL_OPS)

    def run(images_, step):
        with random.step_key(random.make_key(5, step)):
            return pipeline(images_)

    step = tf.constant(3, tf.int64)
    eager = run(x, step).numpy()
    for jit in (False, True):
        got = tf.function(run, jit_compile=jit)(x, step).numpy()
        np.testing.assert_allclose(got, eager, rtol=0, atol=1e-5)


def test_inference_is_the_identity():
    x = images()
    assert augment.parse(ALL_OPS)(x, seed=SEED, training=False) is not None
    np.testing.assert_array_equal(
        augment.parse(ALL_OPS)(x, seed=SEED, training=False), x
    )
    np.testing.assert_array_equal(augment.parse("none")(x, seed=SEED), x)


def test_flat_rows_are_augmented_as_images_and_flattened_back():
    x = images(8)
    flat = x.reshape(8, 64)
    pipeline = augment.parse("translate:1,rotate:10", image_shape=(8, 8, 1))
    y = pipeline(flat, seed=SEED).numpy()
    assert y.shape == (8, 64)
    np.testing.assert_array_equal(y, pipeline(x, seed=SEED).numpy().reshape(8, 64))


def test_standardized_inputs_are_augmented_in_raw_pixels():
    raw = np.round(images(8) * 16).reshape(8, 64)
    mean, std = raw.mean(0), raw.std(0) + 1.0
    kwargs = {"image_shape": (8, 8, 1), "value_range": (0, 16)}
    standardized = augment.parse("translate:1", mean=mean, std=std, **kwargs)
    plain = augment.parse("translate:1", **kwargs)
    y = standardized((raw - mean) / std, seed=SEED).numpy() * std + mean
    np.testing.assert_allclose(y, plain(raw, seed=SEED), atol=1e-4)


def test_height_width_features_with_image_shaped_statistics():
    # An npz of MNIST-format images arrives as [n, h, w], its statistics [h, w].
    raw = np.round(images(8) * 255)[..., 0]
    mean, std = raw.mean(0), raw.std(0) + 1.0
    kwargs = {"image_shape": (8, 8, 1), "value_range": (0, 255)}
    standardized = augment.parse("rotate:20", mean=mean, std=std, **kwargs)
    y = standardized((raw - mean) / std, seed=SEED).numpy()
    assert y.shape == raw.shape
    expected = augment.parse("rotate:20", **kwargs)(raw[..., None], seed=SEED).numpy()[
        ..., 0
    ]
    np.testing.assert_allclose(y * std + mean, expected, atol=1e-3)


def test_works_in_a_tf_data_pipeline():
    x = images(12)
    pipeline = augment.parse("translate:1,noise:0.05")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4).enumerate()
    ds = ds.map(lambda i, xb: pipeline(xb, seed=random.make_key(9, i)))
    batches = np.concatenate(list(ds.as_numpy_iterator()))
    again = np.concatenate(list(ds.as_numpy_iterator()))
    np.testing.assert_array_equal(batches, again)
    assert batches.shape == x.shape and not np.allclose(batches, x)


def test_spec_round_trip():
    spec = "translate:2,rotate:12.5@0.5,zoom:0.1,flip,brightness:0.1,contrast:0.2,noise:0.05"
    pipeline = augment.parse(spec)
    assert pipeline.spec == spec
    assert [op.name for op in pipeline.ops][:3] == ["translate", "rotate", "zoom"]
    assert pipeline.ops[1] == augment.Op("rotate", 12.5, 0.5)
    assert pipeline.ops[3].prob == 0.5  # flip's default probability
    assert "flip" not in augment.parse("translate:1,rotate:10").spec  # never by default


@pytest.mark.parametrize(
    "spec, message",
    [
        ("shear:3", "unknown augmentation op 'shear'.*known ops: translate"),
        ("translate:1.5", "whole number of pixels"),
        ("translate:-1", "whole number of pixels"),
        ("rotate:ten", "not a number"),
        ("rotate:200", r"\[0, 180\]"),
        ("rotate", "needs a magnitude"),
        ("zoom:1.5", r"\[0, 1\)"),
        ("noise:-0.1", ">= 0"),
        ("flip:1", "takes no magnitude"),
        ("rotate:10@1.5", r"probability.*\[0, 1\]"),
        ("translate:1,,rotate:10", "empty term"),
        (3, "must be a string"),
    ],
)
def test_bad_specs_raise_one_readable_error(spec, message):
    with pytest.raises(ValueError, match=message):
        augment.parse(spec)


def test_bad_pipeline_arguments():
    with pytest.raises(ValueError, match="image_shape"):
        augment.parse("translate:1", image_shape=(8, 8))
    with pytest.raises(ValueError, match="value_range"):
        augment.parse("translate:1", value_range=(1, 0))
    with pytest.raises(ValueError, match="both `mean` and `std`"):
        augment.parse("translate:1", mean=np.zeros(64))
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        augment.translate(np.zeros([4, 64], np.float32), SEED)
    with pytest.raises(ValueError, match="`augment`"):
        lowtf.TrainStep(
            lowtf.mlp("tiny"), tf.keras.optimizers.SGD(), augment="translate:1"
        )


def _digit_problem():
    x = images(64).reshape(64, 64)
    y = np.arange(64, dtype=np.int32) % 4
    return x, y


def _train(seed, augment_fn, steps=3, jit=True):
    x, y = _digit_problem()
    model = lowtf.mlp((16,), num_classes=4, seed=1)
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.SGD(0.1),
        data=lowtf.InMemoryBatches(x, y, 16),
        augment=augment_fn,
        options=lowtf.StepOptions(seed=seed, jit_compile=jit),
    )
    step.run(steps)
    return model.layers[0].kernel.numpy(), model.layers[0].bias.numpy(), step


@pytest.mark.e2e
def test_step_hook_is_reproducible_and_seeded():
    pipeline = augment.parse("translate:1,rotate:10", image_shape=(8, 8, 1))
    # Under XLA (the default): the same seed trains bit for bit the same.
    first, _, step = _train(0, pipeline)
    again, _, _ = _train(0, pipeline)
    np.testing.assert_array_equal(first, again)
    assert step.trace_count == 1
    # Another seed, or no augmentation, trains differently (graph mode: cheaper).
    seeded, _, _ = _train(0, pipeline, jit=False)
    other, _, _ = _train(1, pipeline, jit=False)
    plain, _, _ = _train(0, None, jit=False)
    assert np.abs(seeded - other).max() > 1e-4
    assert np.abs(seeded - plain).max() > 1e-4


@pytest.mark.e2e
def test_step_hook_applies_to_training_batches_only():
    # A hook that blanks the batch: the first layer's kernel then gets zero
    # gradient in training, while inference still sees the real inputs.
    blank = lambda x: tf.zeros_like(x)
    x, _y = _digit_problem()
    kernel, bias, step = _train(0, blank, jit=False)
    initial = lowtf.mlp((16,), num_classes=4, seed=1)
    initial(x[:1])
    np.testing.assert_array_equal(kernel, initial.layers[0].kernel.numpy())
    assert np.abs(bias).max() > 1e-4  # the biases did train
    logits = step.model(x, training=False).numpy()
    assert np.std(logits, axis=0).max() > 1e-3  # inference is not blanked


@pytest.mark.e2e
def test_a_job_trains_the_cnn_with_augmentation(tmp_path):
    # What bin/train runs (its flags are run_job's config), in process.
    from lowtf.job import run as job

    config = job.JobConfig(
        model="cnn", augment="translate:1,rotate:10", train_size=64, batch_size=32,
        max_steps=4, eval_every=2, model_dir=str(tmp_path / "run"),
    )  # fmt: skip
    job.run_job(config, log=lambda line: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "cnn" and summary["augment"] == "translate:1,rotate:10"
    assert summary["last_step"] == 4 and 0 <= summary["test_accuracy"] <= 1
