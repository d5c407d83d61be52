"""lowtf.nn.stack: K models as one stacked model, member k computing model k.

Member ``k`` of a stacked model must equal model ``k`` to float tolerance (a
batched product need not round as a single one does, on any processor);
copies (stack, unstack), dropout masks and the units a max-norm leaves alone
must be bit for bit.
"""

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf import random
from lowtf.nn import _xla_cpu, constraints

K = 3
SEEDS = (1, 2, 3)  # the models' seeds (weights, layer seeds)
RUN_SEEDS = (11, 12, 13)  # each member's run seed: its step keys
DROPOUT = (0.3, 0.0, 0.5)  # member 1's model has no Dropout layers at all
L2 = (1e-3, 0.0, 3e-4)
MAXNORM = (2.0, 0.0, 1.0)
STEP = 7
BATCH = 5
TOL = dict(rtol=1e-5, atol=1e-5)


def _mlp(k, **changes):
    kwargs = dict(
        num_classes=3,
        batchnorm=True,
        dropout=DROPOUT[k],
        l2=L2[k],
        maxnorm=MAXNORM[k],
        maxnorm_output=True,
        seed=SEEDS[k],
    )
    return lowtf.mlp(changes.pop("hidden", (16, 8)), **{**kwargs, **changes})


def _cnn(k, **changes):
    kwargs = dict(
        num_classes=3,
        filters=(4,),
        dense=(8,),
        batchnorm=True,
        dropout=DROPOUT[k],
        l2=L2[k],
        maxnorm=MAXNORM[k],
        seed=SEEDS[k],
    )
    return lowtf.cnn("digits", **{**kwargs, **changes})


# 64 features: the mlp's first kernel [64, 16] takes total's blocks under XLA.
BUILDERS = {"mlp": _mlp, "cnn": _cnn}
KINDS = pytest.mark.parametrize("kind", sorted(BUILDERS))


def _inputs(seed=0):
    return tf.random.stateless_normal([K, BATCH, 64], [seed, 5])


def _members(kind):
    """K built models of one architecture with non-default batch-norm state."""
    x = _inputs()
    models = [BUILDERS[kind](k) for k in range(K)]
    for k, model in enumerate(models):
        model(x[k, :1])
        for i, var in enumerate(model.variables):
            name = var.name.split("/")[-1].split(":")[0]
            noise = tf.random.stateless_uniform(var.shape, [k, i], -0.5, 0.5)
            if name in ("gamma", "moving_variance"):
                var.assign(noise + 1.0)
            elif name in ("beta", "moving_mean", "bias"):
                var.assign(noise)
    return models, x


def _snapshot(models):
    return [[v.numpy() for v in m.variables] for m in models]


def _words(step=STEP):
    keys = np.array([[seed, step] for seed in RUN_SEEDS], np.int64)
    return tf.constant(random.fold_in_words(keys))


def _single_outputs(models, x, step=STEP):
    """Each model's training output (under its own step key), then its inference."""
    training, inference = [], []
    for k, model in enumerate(models):
        with random.step_key(random.make_key(RUN_SEEDS[k], step)):
            training.append(model(x[k], training=True).numpy())
        inference.append(model(x[k], training=False).numpy())
    return np.stack(training), np.stack(inference)


def _both(stacked):
    def both(x, words):
        with random.member_words(words):
            training = stacked(x, training=True)
        return training, stacked(x, training=False)

    return both


def _xla(fn):
    def traced(*args):
        with lowtf.nn.compiled_by_xla():
            return fn(*args)

    return tf.function(traced, jit_compile=True)


MODES = {"eager": lambda f: f, "graph": tf.function, "xla": _xla}


@KINDS
@pytest.mark.parametrize("mode", sorted(MODES))
def test_member_k_computes_model_k_in_training_and_inference(kind, mode):
    models, x = _members(kind)
    stacked = lowtf.nn.stack(models)  # before the models' own training moves them
    want_training, want_inference = _single_outputs(models, x)
    training, inference = MODES[mode](_both(stacked))(x, _words())
    assert training.shape == (K, BATCH, 3)
    np.testing.assert_allclose(training.numpy(), want_training, **TOL)
    np.testing.assert_allclose(inference.numpy(), want_inference, **TOL)
    # Each member moved its own batch-norm statistics as its model did.
    norms = [m for m in stacked.submodules if isinstance(m, lowtf.BatchNorm)]
    for k, model in enumerate(models):
        singles = [m for m in model.submodules if isinstance(m, lowtf.BatchNorm)]
        assert len(singles) == len(norms) > 0
        for layer, single in zip(norms, singles):
            for name in ("moving_mean", "moving_variance"):
                np.testing.assert_allclose(
                    getattr(layer, name)[k].numpy(),
                    getattr(single, name).numpy(),
                    **TOL,
                )
    # The masks were this step's: another step's drop other units of member 0
    # and none of member 1 (rate 0), whose output is the same bits again.
    with random.member_words(_words(STEP + 1)):
        again = stacked(x, training=True).numpy()
    assert not np.allclose(again[0], training[0])
    np.testing.assert_allclose(again[1], training[1].numpy(), **TOL)


@KINDS
def test_stack_copies_every_variable_and_unstack_copies_it_back(kind):
    models, x = _members(kind)
    stacked = lowtf.nn.stack(models)
    before = _snapshot(models)
    assert len(stacked.variables) == len(models[0].variables)
    for k, values in enumerate(before):
        for var, value in zip(stacked.variables, values):
            assert np.array_equal(var[k].numpy(), value)
    # Its own variables: training the stack leaves the models as they were.
    for var in stacked.trainable_variables:
        var.assign(var * 1.5 + 0.25)
    assert all(np.array_equal(a, b) for a, b in zip(_snapshot(models)[0], before[0]))
    for k, model in enumerate(models):  # member 1's model has no Dropout layers
        assert lowtf.nn.unstack(stacked, k, model) is model
        for var, stacked_var in zip(model.variables, stacked.variables):
            assert np.array_equal(var.numpy(), stacked_var[k].numpy())
    np.testing.assert_allclose(
        stacked(x).numpy()[2], models[2](x[2]).numpy(), **TOL
    )


@KINDS
def test_per_member_settings_and_names(kind):
    models, _ = _members(kind)
    stacked = lowtf.nn.stack(models, name="population")
    assert stacked.name == "population" and stacked.members == K
    layers = stacked.layers
    dropouts = [m for m in layers if isinstance(m, lowtf.Dropout)]
    assert dropouts and all(d.rate == DROPOUT for d in dropouts)
    assert [m.name for m in layers if not isinstance(m, lowtf.Dropout)] == [
        m.name for m in models[1].layers
    ]
    dense = [m for m in layers if isinstance(m, lowtf.Dense)]
    assert dense[0].kernel_regularizer == lowtf.Regularizer(l2=L2)
    assert dense[0].kernel_constraint.max_value == MAXNORM
    assert all(m.members == K for m in stacked.submodules)
    # Frozen layers stay frozen.
    models[0].layers[0].trainable = False
    with pytest.raises(ValueError, match="trainable"):
        lowtf.nn.stack(models)
    for model in models:
        model.layers[0].trainable = False
    frozen = lowtf.nn.stack(models)
    assert not frozen.layers[0].trainable and frozen.layers[1].trainable


@KINDS
def test_per_member_penalties_equal_each_models(kind):
    models, _ = _members(kind)
    stacked = lowtf.nn.stack(models)
    losses = lowtf.nn.regularization_losses(stacked)
    assert losses and all(loss.shape == (K,) for loss in losses)
    for k, model in enumerate(models):
        singles = lowtf.nn.regularization_losses(model)
        if not L2[k]:
            assert singles == [] and all(float(loss[k]) == 0.0 for loss in losses)
            continue
        for loss, single in zip(losses, singles):
            np.testing.assert_allclose(loss[k], single, rtol=1e-6)
    want = [float(lowtf.nn.total_regularization_loss(m)) for m in models]
    total = lowtf.nn.total_regularization_loss(stacked)
    np.testing.assert_allclose(total.numpy(), want, rtol=1e-6)
    if kind == "mlp":  # under XLA on CPU its [64, 16] kernel sums in blocks
        compiled = _xla(lambda: lowtf.nn.total_regularization_loss(stacked))()
        np.testing.assert_allclose(compiled.numpy(), want, rtol=1e-5)


def test_a_stack_without_penalties_totals_k_zeros():
    models = [lowtf.mlp("tiny", seed=k) for k in range(K)]
    for model in models:
        model(tf.zeros([1, 4]))
    total = lowtf.nn.total_regularization_loss(lowtf.nn.stack(models))
    assert total.shape == (K,) and not total.numpy().any()


@KINDS
def test_max_norm_caps_each_member_as_its_model(kind):
    models, _ = _members(kind)
    for model in models:
        for var, _ in constraints.constrained_weights(model):
            # Unit norms from far under to far over the caps (1 and 2).
            var.assign(var * np.linspace(0.2, 4.0, var.shape[-1], dtype=np.float32))
    stacked = lowtf.nn.stack(models)
    pairs = constraints.constrained_weights(stacked)
    assert len(pairs) == len(constraints.constrained_weights(models[0]))
    before = [var.numpy() for var, _ in pairs]
    lowtf.nn.apply_constraints(pairs)
    for k, model in enumerate(models):
        lowtf.nn.apply_constraints(constraints.constrained_weights(model))
        kernels = [var for var, _ in constraints.constrained_weights(model)]
        for (var, _), old, single in zip(pairs, before, kernels):
            got, unit_norms = var[k].numpy(), lowtf.nn.unit_norms(old[k]).numpy()
            if not MAXNORM[k]:  # no cap: every unit as it was, bit for bit
                assert np.array_equal(got, old[k]) and (unit_norms > 2).any()
                continue
            under = unit_norms <= MAXNORM[k]
            assert under.any() and (~under).any()
            assert np.array_equal(got[..., under], old[k][..., under])
            np.testing.assert_allclose(got, single.numpy(), rtol=1e-6, atol=1e-7)


def test_stacked_dropout_draws_each_members_mask_bit_for_bit():
    x = tf.random.stateless_normal([K, 4, 50], [1, 2])
    seeds = (501, 502, 503)
    stacked = lowtf.Dropout(DROPOUT, seed=seeds, members=K)
    with random.member_words(_words()):
        got = stacked(x, training=True).numpy()
        draws = random.uniform_members([4, 50], tf.constant(seeds, tf.int64))
    for k in range(K):
        single = lowtf.Dropout(DROPOUT[k], seed=seeds[k])
        key = random.make_key(RUN_SEEDS[k], STEP)
        with random.step_key(key):
            assert np.array_equal(got[k], single(x[k], training=True).numpy())
        own = random.uniform_from([4, 50], random.fold_in(key, seeds[k]))
        assert np.array_equal(draws[k].numpy(), own.numpy())
    assert np.array_equal(got[1], x[1].numpy())  # rate 0: the identity

    # A batch size known only at run time draws the same masks.
    signature = [tf.TensorSpec([K, None, 50]), tf.TensorSpec([K], tf.int64)]

    @tf.function(input_signature=signature)
    def unknown_batch(x, words):
        with random.member_words(words):
            return stacked(x, training=True)

    assert np.array_equal(unknown_batch(x, _words()).numpy(), got)
    assert (got[0] == 0).mean() == pytest.approx(0.3, abs=0.1)
    # Outside member_words: a stateful draw, still each member's own rate.
    fallback = stacked(x, training=True).numpy()
    assert np.array_equal(fallback[1], x[1].numpy()) and (fallback[2] == 0).any()
    assert random.uniform_members([2], tf.constant(seeds, tf.int64)) is None


def test_stacked_layers_built_directly_start_from_each_seeds_init():
    dense = lowtf.Dense(4, seed=(5, 6, 7), members=K)
    conv = lowtf.Conv2D(2, 3, seed=(5, 6, 7), members=K)
    dense(tf.zeros([K, 1, 3]))
    conv(tf.zeros([K, 1, 6, 6, 2]))
    for k, seed in enumerate((5, 6, 7)):
        single_dense = lowtf.Dense(4, seed=seed)
        single_conv = lowtf.Conv2D(2, 3, seed=seed)
        single_dense(tf.zeros([1, 3]))
        single_conv(tf.zeros([1, 6, 6, 2]))
        assert np.array_equal(dense.kernel[k].numpy(), single_dense.kernel.numpy())
        assert np.array_equal(conv.kernel[k].numpy(), single_conv.kernel.numpy())
    with pytest.raises(ValueError, match=r"`seed` \(5\) of a stack of 3 members"):
        lowtf.Dense(4, seed=5, members=K)
    with pytest.raises(ValueError, match=r"takes inputs \[3, batch, \.\.\.\]"):
        dense(tf.zeros([2, 1, 3]))
    with pytest.raises(ValueError, match="mix stacks"):
        lowtf.Sequential([dense, lowtf.Dense(2)])


def test_member_totals_sum_each_member_in_blocks_under_xla():
    t = tf.square(tf.random.stateless_normal([K, 256, 16], [3, 4]))
    want = t.numpy().astype(np.float64).sum(axis=(1, 2))
    np.testing.assert_allclose(_xla(_xla_cpu.member_totals)(t), want, rtol=2e-6)
    graph = _xla(_xla_cpu.member_totals).get_concrete_function(t).graph
    assert "MatMul" in {op.type for op in graph.get_operations()}
    np.testing.assert_allclose(_xla_cpu.member_totals(t), want, rtol=2e-6)


def _built(*models, width=64):
    """The models, each built on one example of ``width`` features."""
    for model in models:
        model(tf.zeros([1, width]))
    return list(models)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: _built(_mlp(0), _mlp(1), _mlp(2, hidden=(16, 4))),
            r"members 0 and 2 differ in dense_1\.units \(8 vs 4\): a population "
            "stacks models of one architecture",
        ),
        (
            lambda: _built(_mlp(0), _mlp(1, batchnorm=False)),
            r"members 0 and 1 differ in mlp's layer 1 \(BatchNorm 'batchnorm_0' vs "
            r"Dense 'dense_1'\)",
        ),
        (
            lambda: _built(
                _mlp(0, batchnorm=False), _mlp(1, batchnorm=False, activation="relu")
            ),
            r"members 0 and 1 differ in dense_0\.activation \(elu vs relu\)",
        ),
        (
            lambda: _built(_cnn(0), _cnn(1, filters=(3,))),
            r"members 0 and 1 differ in conv_0\.filters \(4 vs 3\)",
        ),
        (
            lambda: [*_built(_mlp(0)), *_built(_mlp(1), width=9)],
            r"members 0 and 1 differ in dense_0\.kernel's shape \(\(64, 16\) vs "
            r"\(9, 16\)\)",
        ),
        (lambda: [*_built(_mlp(0)), _mlp(1)], "call each model once on an example"),
        (lambda: [], "empty"),
    ],
)
def test_stack_refuses_other_architectures_and_unbuilt_models(make, match):
    models = make()
    with pytest.raises(ValueError, match=match):
        lowtf.nn.stack(models)


def test_unstack_refuses_another_architecture_and_a_missing_member():
    stacked = lowtf.nn.stack(_built(_mlp(0), _mlp(1)))
    (other,) = _built(_mlp(0, hidden=(16, 4)))
    with pytest.raises(ValueError, match=r"dense_1\.kernel's shape \(\(16, 8\) vs"):
        lowtf.nn.unstack(stacked, 0, other)
    with pytest.raises(ValueError, match=r"`k` \(2\) must be below the stack's 2"):
        lowtf.nn.unstack(stacked, 2, *_built(_mlp(0)))
    with pytest.raises(ValueError, match="not a stacked model"):
        lowtf.nn.unstack(other, 0, other)


def test_per_member_regularizer_and_max_norm_check_their_arguments():
    assert lowtf.Regularizer(l1=1e-4, l2=(0.0, 1e-3)).l1 == (1e-4, 1e-4)
    with pytest.raises(ValueError, match="as many"):
        lowtf.Regularizer(l1=(1e-4, 0.0), l2=(1e-3, 0.0, 0.0))
    with pytest.raises(ValueError, match="above 0"):
        lowtf.Regularizer(l2=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"takes weights \[2, \.\.\.\]"):
        lowtf.Regularizer(l2=(1e-3, 0.0))(tf.zeros([3, 4]))
    with pytest.raises(ValueError, match=r"`max_value\[0\]` \(-1\.0\)"):
        lowtf.MaxNorm((-1.0, 2.0))
    with pytest.raises(ValueError, match="needs a cap above 0"):
        lowtf.MaxNorm((0.0, 0.0))
    assert lowtf.MaxNorm((1.0, 0.0)).norm_axes(5) == [1, 2, 3]
    assert lowtf.MaxNorm((1.0, 0.0), axis=0).norm_axes(3) == [1]
