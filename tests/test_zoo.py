"""Tests of the zoo beyond the ResNets: exact parameter counts, the computations that define
each family (grouped convolutions, dense concatenation, fractal joins and drop-path), the
``python -m models`` summaries, one-line errors, and a training step on digits per family."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

import models
from data import datasets
from models.summary import count_params
from training import measure, schedule, steps


def abstract(**cfg):
    return models.abstract_model({"num_classes": 1000, **cfg})


# torchvision's counts (``sum(p.numel() for p in model.parameters())``, aux heads off).
@pytest.mark.parametrize("cfg,params", [
    (dict(family="alexnet", depth=8, layout="torchvision"), 61_100_840),
    (dict(family="vgg", depth=11), 132_863_336),
    (dict(family="vgg", depth=13), 133_047_848),
    (dict(family="vgg", depth=16), 138_357_544),
    (dict(family="vgg", depth=19), 143_667_240),
    (dict(family="vgg", depth=19, bn=True), 143_678_248),
    (dict(family="googlenet", depth=22, layout="torchvision"), 6_624_904),
    (dict(family="squeezenet", depth=18, version="1.0"), 1_248_424),
    (dict(family="squeezenet", depth=18, version="1.1"), 1_235_496),
    (dict(family="densenet", depth=121), 7_978_856),
    (dict(family="densenet", depth=169), 14_149_480),
    (dict(family="densenet", depth=201), 20_013_928),
    (dict(family="densenet", depth=161), 28_681_000),
    (dict(family="resnext", depth=50, scan_blocks=True), 25_028_904),
    (dict(family="resnext", depth=101, cardinality=32, group_width=8, scan_blocks=True),
     88_791_336),
])
def test_imagenet_parameter_counts_equal_torchvision(cfg, params):
    assert count_params(abstract(**cfg)) == params


# The papers' own layouts where torchvision's differs: AlexNet's two GPU groups and LRN
# (Caffe's bvlc_alexnet has these 60,965,224), GoogLeNet with biases, 5x5 convs, no BN.
@pytest.mark.parametrize("cfg,params", [
    (dict(family="alexnet", depth=8), 60_965_224),
    (dict(family="googlenet", depth=22), 6_998_552),
    (dict(family="googlenet", depth=22, aux_heads=True, layout="torchvision"), 13_004_888),
])
def test_paper_layouts_where_torchvision_differs(cfg, params):
    assert count_params(abstract(**cfg)) == params


# CIFAR (10 classes): our exact counts, and the papers' rounded ones (millions; ResNeXt-29
# 16x64d's 68.1M is our 68.155M rounded down).
@pytest.mark.parametrize("cfg,params,paper_m", [
    (dict(family="densenet", depth=40), 1_019_722, 1.0),  # DenseNet (L=40, k=12)
    (dict(family="densenet", depth=100, block="bottleneck"), 769_162, 0.8),  # BC, k=12
    (dict(family="densenet", depth=190, block="bottleneck", growth_rate=40), 25_624_430,
     25.6),
    (dict(family="resnext", depth=29, scan_blocks=True), 34_426_698, 34.4),  # 8x64d
    (dict(family="resnext", depth=29, cardinality=16, scan_blocks=True), 68_155_210, 68.1),
    (dict(family="nin", depth=9), 966_986, 0.97),  # Caffe's NIN_cifar10 (paper: no count)
])
def test_cifar_parameter_counts_match_the_papers(cfg, params, paper_m):
    n = count_params(abstract(**{**cfg, "num_classes": 10}))
    assert n == params
    assert abs(n / 1e6 - paper_m) < 0.06  # the paper's figure, to its last digit


def test_fractalnet_counts_and_depths():
    # 5 blocks of 64-512 channels; the paper's 20-layer net is C=3 (it gives 38.6M; the
    # layout it states, and the authors' generator, give the count below: README.md).
    spec = models.spec_from_config(dict(family="fractal", depth=20))
    assert (spec.columns, spec.widths, spec.label) == (3, (64, 128, 256, 512, 512),
                                                       "FractalNet-20 (C=3)")
    assert count_params(abstract(family="fractal", depth=20, num_classes=10)) == 33_724_618
    assert models.spec_from_config(dict(family="fractal", depth=40)).columns == 4
    assert models.spec_from_config(dict(family="fractal", depth=48, widths=(16, 32, 64))
                                    ).columns == 5


def _conv(x, w, groups=1, stride=1):
    pad = (w.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x, w, (stride,) * 2, ((pad, pad),) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def test_grouped_convolution_is_a_plain_convolution_per_group():
    from models.resnext import GroupedConvBN

    opts = models.layer_options_from_config({})
    unit = GroupedConvBN(8, 12, 3, 2, 4, opts, rngs=nnx.Rngs(0))
    unit.eval()
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
    w = np.asarray(unit.conv.kernel[...])
    assert w.shape == (3, 3, 2, 12)  # each output channel sees its group's 2 inputs only
    # Reference: split the channels into 4 groups, one ordinary convolution each.
    ref = np.concatenate([np.asarray(_conv(x[..., 2 * g:2 * g + 2], w[..., 3 * g:3 * g + 3],
                                           stride=2)) for g in range(4)], -1)
    np.testing.assert_allclose(np.asarray(unit.conv(x)), ref, rtol=1e-5, atol=1e-5)
    # ResNeXt-50's 3x3 is 32 groups of 4 in the first stage, doubling with the stage.
    model = abstract(family="resnext", depth=50)
    convs = [model.stages[i].blocks[0].unit2.conv for i in range(4)]
    assert [c.feature_group_count for c in convs] == [32] * 4
    assert [c.kernel.shape for c in convs] == [(3, 3, 4 * 2 ** i, 128 * 2 ** i)
                                               for i in range(4)]
    assert [c.strides for c in convs] == [1, 2, 2, 2]  # the stride is on the grouped 3x3


def test_dense_block_concatenates_every_earlier_output():
    from models.densenet import DenseStage

    opts = models.layer_options_from_config({})
    stage = DenseStage(5, 3, 4, True, None, opts, rngs=nnx.Rngs(0))
    stage.eval()
    graphdef, state = nnx.split(stage)
    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 5))

    @jax.jit
    def outputs(state, x):
        stage = nnx.merge(graphdef, state)
        y, _, responses, _ = stage(x)
        # Reference: layer i sees the concatenation of the input and layers 0..i-1.
        feats = [x]
        for layer in stage.layers:
            feats.append(layer(jnp.concatenate(feats, -1))[0])
        return y, responses, jnp.concatenate(feats, -1)

    y, responses, reference = outputs(state, x)
    assert y.shape == (2, 4, 4, 5 + 3 * 4)
    np.testing.assert_array_equal(np.asarray(y[..., :5]), np.asarray(x))  # passed on as is
    np.testing.assert_allclose(np.asarray(y), np.asarray(reference), rtol=1e-5, atol=1e-5)
    assert [o.shape[-1] for o in responses] == [4, 4, 4]
    assert [layer.reduce.kernel.shape[2] for layer in stage.layers] == [5, 9, 13]


def _fractal(**kw):
    cfg = dict(family="fractal", depth=6, widths=(2, 3, 3), in_channels=1, num_classes=3)
    return models.build_model({**cfg, **kw}, seed=0)


def _apply(model, train):
    """``model(x, rng=key)`` as one compiled function of (x, key), in train or eval mode."""
    model.train() if train else model.eval()
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, x, key: nnx.merge(graphdef, state)(x, rng=key))
    return lambda x, key: fn(state, x, key)


def test_fractal_drop_path_is_off_at_test_and_on_in_training():
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
    model = _fractal(drop_path=0.5, global_drop_path=0.5)
    at_test = _apply(model, False)
    outs = {np.asarray(at_test(x, jax.random.key(k))).tobytes() for k in range(3)}
    assert len(outs) == 1  # every path, whatever the key (the mean joins: the next test)
    in_training = _apply(model, True)
    outs = {np.asarray(in_training(x, jax.random.key(k))).tobytes() for k in range(8)}
    assert len(outs) > 1
    with pytest.raises(ValueError, match="random key"):
        model(x)


def test_fractal_join_is_the_mean_and_global_drop_path_keeps_one_column():
    model = _fractal(depth=12, widths=(2, 3, 3))
    model.eval()
    graphdef, state = nnx.split(model.stages[0])  # C=3 columns of 1, 2 and 4 units
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 1))

    @jax.jit
    def outputs(state, x):
        block = nnx.merge(graphdef, state)
        cols = block.columns
        # Unrolled f3(x) = join(conv(x), f2(f2(x))), f2(z) = join(conv(z), conv(conv(z))): the
        # joins that meet at one depth are one join, the mean of every column there (the
        # paper's Fig. 1 and the authors' code).
        j1 = (cols[1][0](x) + cols[2][1](cols[2][0](x))) / 2
        want = (cols[0][0](x) + cols[1][1](j1) + cols[2][3](cols[2][2](j1))) / 3
        got = block(x)[1][0]  # the block's joined output, before its max-pool
        block.deterministic = False  # drop-path applies in training only (BN stays in eval)
        alone, chains = [], []
        for c in range(3):  # global drop-path on column c: that column alone, a plain chain
            drop = (0.0, jnp.asarray(True), jnp.asarray(c))
            alone.append(block(x, jax.random.key(c), drop=drop)[1][0])
            chain = x
            for unit in cols[c]:
                chain = unit(chain)
            chains.append(chain)
        return got, want, alone, chains

    got, want, alone, chains = outputs(state, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    for a, c in zip(alone, chains, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(alone[0]), np.asarray(alone[2]))


@pytest.mark.parametrize("argv,params,name", [
    (["resnext", "50"], 25_028_904, "resnext-50-32x4d"),
    (["vgg", "19", "--bn"], 143_678_248, "vgg-19-bn"),
    (["alexnet", "8"], 60_965_224, "alexnet"),
    (["googlenet", "22"], 6_998_552, "googlenet"),
])
def test_summary_cli_for_the_zoo(argv, params, name, capsys):
    from test_models import _summary_table

    from models.__main__ import main

    assert main(argv) == 0
    rows, totals, last = _summary_table(capsys.readouterr().out)
    assert (last["params"], last["name"]) == (params, name)
    assert sum(r[-2] for r in rows) == params and sum(r[-1] for r in rows) == totals[1]


def test_multiply_adds_of_the_imagenet_zoo_match_torchvision():
    from models.summary import network_totals

    # torchvision's documented GFLOPS (multiply-adds) for vgg16 and alexnet.
    for cfg, gmacs in ((dict(family="vgg", depth=16), 15.47),
                       (dict(family="alexnet", depth=8, layout="torchvision"), 0.71)):
        assert network_totals(abstract(**cfg), 224)[1] / 1e9 == pytest.approx(gmacs, abs=0.01)


@pytest.mark.parametrize("argv,message", [
    (["vgg", "17"], "vgg depth must be one of 11, 13, 16, 19"),
    (["densenet", "41"], r"3n\+4"),
    (["resnext", "30"], r"9n\+2"),
    (["fractal", "21"], r"B \* 2\^\(C-1\)"),
    (["squeezenet", "18", "--version", "2.0"], "1.0, 1.1"),
    (["vgg", "16", "--layout", "torchvision"], "not available for vgg"),
    (["densenet", "121", "--cardinality", "4"], "model.cardinality=4 is not available"),
])
def test_zoo_cli_rejects_what_a_family_does_not_have_in_one_line(argv, message, capsys):
    from models.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert __import__("re").search(message, err)


@pytest.mark.parametrize("cfg,message", [
    (dict(family="densenet", depth=40, stochastic_depth=True), "has none"),
    (dict(family="fractal", depth=20, plain=True), "model.plain=True is not available"),
    (dict(family="vgg", depth=11, head_dropout=0.5), "published dropout"),
    (dict(family="nin", depth=9, widths=(8,)), "not available for nin"),
    (dict(family="fractal", depth=20, drop_path=1.0), r"drop_path must be in \[0, 1\)"),
])
def test_knobs_that_do_not_apply_are_one_line_errors(cfg, message):
    with pytest.raises(ValueError, match=message) as e:
        models.validate_config(cfg)
    assert "\n" not in str(e.value)


# Tiny digits versions (8x8x1, 10 classes) of every family. AlexNet, VGG, GoogLeNet and
# SqueezeNet keep their ImageNet layouts (their pools stop at one pixel), thin
# (model.widths, model.width_scale); GoogLeNet has its auxiliary heads.
TINY_ZOO = {
    "resnext": {"model.family": "resnext", "model.depth": "11", "model.widths": "(4,8,16)",
                "model.cardinality": "2", "model.group_width": "2"},
    "densenet": {"model.family": "densenet", "model.depth": "10", "model.widths": "None",
                 "model.block": "bottleneck", "model.growth_rate": "4",
                 "model.block_dropout": "0.2"},
    "fractal": {"model.family": "fractal", "model.depth": "6", "model.widths": "(4,8,8)",
                "model.drop_path": "0.15", "model.global_drop_path": "0.5"},
    "vgg": {"model.family": "vgg", "model.depth": "11", "model.widths": "(4,4,8,8,8)",
            "model.fc_width": "16", "model.bn": "true"},
    "alexnet": {"model.family": "alexnet", "model.depth": "8", "model.widths": "(4,8,8,8,8)",
                "model.fc_width": "16"},
    "nin": {"model.family": "nin", "model.depth": "9", "model.widths": "None",
            "model.width_scale": "0.05"},
    "googlenet": {"model.family": "googlenet", "model.depth": "22", "model.widths": "None",
                  "model.aux_heads": "true", "model.width_scale": "0.01"},
    "squeezenet": {"model.family": "squeezenet", "model.depth": "18", "model.widths": "None",
                   "model.version": "1.1", "model.width_scale": "0.125"},
}
# A compiled training step costs 3-8 s per network on XLA:CPU: the nets of the connectivity
# study run one (and the study trains them for 600 steps); the others trace theirs
# (jax.eval_shape: the whole step, gradients and update included, without compiling it).
# Every net runs its evaluation on the test digits.
COMPILED_STEP = ("densenet", "fractal")  # the connectivity study's new patterns


@pytest.fixture(scope="module")
def digits():
    """The digits splits as the feeds normalise them (pixels in [0, 1] minus the mean image)."""
    data = datasets.load_in_memory(tiny_config())

    def batch(split, n):
        x = jnp.asarray(split.images[:n], jnp.float32) / 255.0 - data.mean_image
        return {"image": x, "label": jnp.asarray(split.labels[:n]), "mask": jnp.ones((n,))}

    return batch(data.train, 32), batch(data.test, 360), len(data.train.labels)


@pytest.mark.parametrize("family", list(TINY_ZOO))
def test_every_family_trains_a_step_and_evaluates_on_digits(family, digits):
    """train.py's train and eval steps (``training.steps``) on one device; the data-parallel
    loop around them is the same for every network (tests/test_train.py)."""
    train_batch, test_batch, num_train = digits
    config = tiny_config(**TINY_ZOO[family], **{"optimizer.lr": 0.01})
    # Initialised in one compiled program, not op by op: this test reads no initial value.
    state = jax.jit(lambda: steps.create_train_state(config))()
    step = functools.partial(steps.train_step, config=config,
                             sched=schedule.derive_schedule(config, num_train))
    if family in COMPILED_STEP:
        before = [np.asarray(a) for a in jax.tree.leaves(state.params)]
        state, metrics = jax.jit(step)(state, train_batch)
        assert int(state.step) == 1 and math.isfinite(float(metrics["loss"]))
        after = jax.tree.leaves(state.params)
        assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    else:
        new, metrics = jax.eval_shape(step, state, train_batch)
        shapes = lambda tree: [(a.shape, a.dtype) for a in jax.tree.leaves(tree)]  # noqa: E731
        assert shapes(new.params) == shapes(state.params) and metrics["loss"].shape == ()
    weights = []  # the classifiers the loss trains (traced: no compilation)

    def heads(state):
        out = models.training_logits(state.model(train=True), train_batch["image"],
                                     jax.random.key(0))
        weights.extend(w for w, _ in out)
        return [logits for _, logits in out]

    shapes = jax.eval_shape(heads, state)
    assert weights == ([1.0, 0.3, 0.3] if family == "googlenet" else [1.0])
    assert all(s.shape == (32, 10) for s in shapes)
    sums = measure.eval_metrics("test", jax.jit(steps.eval_step)(state, test_batch))
    assert 0.0 <= sums["test_error"] <= 1.0 and math.isfinite(sums["test_loss"])
    if family in ("densenet", "fractal"):  # Fig. 7's responses: one per layer, per block
        spec = models.spec_from_config(config.model)
        sums = jax.jit(measure.response_sums)(state, test_batch)
        assert set(sums) == {"mean", "mean_square", "count"}
        for value in map(np.asarray, sums.values()):
            assert value.shape == (sum(spec.stage_sizes),) and np.all(np.isfinite(value))
