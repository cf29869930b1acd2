"""Tests of the architecture variants and layer knobs: pre-activation, WRN, stochastic depth,
initialisations, activations, dropout."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_run, unrolled_and_scanned
from flax import nnx

import models
from models.activations import PRELU_INIT, RRELU_RANGE, Activation
from models.resnet import survival_probabilities
from models.summary import count_params


def abstract(**cfg):
    return nnx.eval_shape(lambda: models.build_model({"scan_blocks": True, **cfg}))


@pytest.mark.parametrize(
    "cfg,published_m,rel",
    [
        (dict(family="cifar", depth=164, preact=True), 1.7, 0.01),  # He et al. 2016
        (dict(family="cifar", depth=1001, preact=True), 10.2, 0.015),
        (dict(family="wrn", depth=28, width_factor=10), 36.5, 0.005),  # Zagoruyko & Komodakis
        (dict(family="wrn", depth=40, width_factor=4), 8.9, 0.01),
    ],
)
def test_parameter_counts_match_the_published_ones(cfg, published_m, rel):
    assert count_params(abstract(**cfg)) / 1e6 == pytest.approx(published_m, rel=rel)


def test_published_bottleneck_depths_default_to_bottleneck_blocks_and_projections():
    spec = models.spec_from_config(dict(family="cifar", depth=164, preact=True))
    assert (spec.block, spec.stage_sizes, spec.shortcut) == ("bottleneck", (18, 18, 18), "B")
    assert models.spec_from_config(dict(family="cifar", depth=110)).block == "basic"
    wrn = models.spec_from_config(dict(family="wrn", depth=28, width_factor=10))
    assert (wrn.widths, wrn.stage_sizes, wrn.preact, wrn.name) == (
        (160, 320, 640), (4, 4, 4), True, "wrn-28-10")


def test_imagenet_nets_with_the_cifar_stem_keep_32x32_detail():
    model = nnx.eval_shape(lambda: models.build_model(dict(family="imagenet", depth=18,
                                                           stem="cifar")))  # shapes only
    model.eval()
    _, feats = nnx.eval_shape(lambda m, x: m(x, return_features=True), model,
                              jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert [f.shape[1:3] for f in feats["block_outputs"][::2]] == [(32, 32), (16, 16), (8, 8),
                                                                   (4, 4)]
    assert model.stem.conv.kernel.shape == (3, 3, 3, 64)
    assert not model.stem.max_pool


def _bn(bn, x):
    return (x - bn.mean[...]) / jnp.sqrt(bn.var[...] + 1e-5) * bn.scale[...] + bn.bias[...]


def _randomise_bn(model, seed):
    """Non-trivial BatchNorm statistics and affine parameters, so the test sees their order."""
    key = jax.random.key(seed)
    for path, var in nnx.iter_graph(model):
        bn_leaf = path and path[-1] in ("mean", "var", "scale", "bias")
        if isinstance(var, nnx.BatchStat | nnx.Param) and bn_leaf:
            key, sub = jax.random.split(key)
            noise = jax.random.uniform(sub, var[...].shape, minval=0.5, maxval=1.5)
            var[...] = noise if path[-1] in ("var", "scale") else noise - 1.0


def test_a_preactivation_block_computes_bn_relu_conv_and_a_clean_identity():
    model = models.build_model(dict(family="cifar", depth=20, preact=True, widths=(4, 8, 16),
                                    in_channels=1))
    _randomise_bn(model, 0)
    model.eval()
    block = model.stages[0].blocks[1]  # identity shortcut
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    conv = lambda c, h: jax.lax.conv_general_dilated(  # noqa: E731
        h, c.kernel[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = conv(block.conv1, jax.nn.relu(_bn(block.pre.bn, x)))
    expected = x + conv(block.conv2, jax.nn.relu(_bn(block.mid.bn, h)))
    np.testing.assert_allclose(block(x)[0], expected, rtol=1e-4, atol=1e-4)
    # The net ends with BN-ReLU before the pooling; the CIFAR pre-act stem is a bare conv.
    assert model.final is not None and model.stem.bn is None


def test_preactivation_projection_takes_the_preactivated_input():
    model = models.build_model(dict(family="cifar", depth=11, block="bottleneck", preact=True,
                                    widths=(2, 4, 8), in_channels=1))
    _randomise_bn(model, 1)
    model.eval()
    block = model.stages[1].blocks[0]  # 8 -> 16 channels, stride 2: a 1x1 conv projection
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 8))
    pre = jax.nn.relu(_bn(block.pre.bn, x))
    projected = jax.lax.conv_general_dilated(pre, block.shortcut.kernel[...], (2, 2), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    shortcut = nnx.jit(lambda b, x: b(x)[0] - b.branch(x))(block, x)  # one program
    np.testing.assert_allclose(shortcut, projected, rtol=1e-4, atol=1e-4)


def test_plain_preactivation_net_has_the_residual_nets_layers():
    res = models.build_model(dict(family="cifar", depth=20, preact=True))
    plain = models.build_model(dict(family="cifar", depth=20, preact=True, plain=True))
    assert count_params(res) == count_params(plain)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    res.eval()
    plain.eval()
    forward = nnx.jit(lambda m, x: m(x))  # one program, not one per op
    assert not np.allclose(forward(res, x), forward(plain, x))


@pytest.mark.parametrize("cfg", [dict(preact=True), dict(depth=29, block="bottleneck",
                                                         preact=True)])
def test_scanned_preactivation_nets_compute_what_unrolled_ones_do(cfg):
    unrolled, scanned = unrolled_and_scanned(**cfg)
    for m in (unrolled, scanned):
        m.eval()
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    forward = nnx.jit(lambda model, x: model(x))  # one program, not one per op
    np.testing.assert_allclose(forward(unrolled, x), forward(scanned, x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- stochastic depth


def test_survival_probabilities_decay_linearly_to_the_last_block():
    p = survival_probabilities(54, 0.5)
    assert p[-1] == pytest.approx(0.5) and p[0] == pytest.approx(1 - 0.5 / 54)
    np.testing.assert_allclose(np.diff(p), -0.5 / 54)


def test_stochastic_depth_keeps_or_drops_the_whole_branch_and_scales_it_at_test_time():
    model = models.build_model(dict(family="cifar", depth=8, widths=(4, 8, 16), in_channels=1,
                                    stochastic_depth=True))
    block = model.stages[0].blocks[0]
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (4, 8, 8, 4)))
    branch = block.branch(x)  # train mode: batch statistics, as in the calls below
    kept = []
    for i in range(200):
        y = block(x, jax.random.key(i), 0.3)[0]
        full, dropped = jax.nn.relu(x + branch), jax.nn.relu(x)
        is_full = bool(np.allclose(y, full, atol=1e-5))
        assert is_full or np.allclose(y, dropped, atol=1e-6)
        kept.append(is_full)
    assert 0.2 < np.mean(kept) < 0.4  # Bernoulli(0.3) over 200 draws
    block.eval()
    np.testing.assert_allclose(block(x, None, 0.3)[0], jax.nn.relu(x + 0.3 * block.branch(x)),
                               rtol=1e-5, atol=1e-5)


def test_scanned_stochastic_depth_draws_what_the_unrolled_net_draws():
    unrolled, scanned = unrolled_and_scanned(stochastic_depth=True, survival_last=0.2)
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    forward = nnx.jit(lambda m, x, rng: m(x, rng=rng))  # one program, not one per op
    outs = [[np.asarray(forward(m, x, jax.random.key(k))) for k in range(4)]
            for m in (unrolled, scanned)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(outs[0][0], outs[0][1])  # different keys, different draws
    with pytest.raises(ValueError, match="random key"):
        unrolled(x)


# --------------------------------------------------------------------------- init, activations


def _kernels(model):
    return [v[...] for path, v in nnx.iter_graph(model)
            if isinstance(v, nnx.Param) and path and path[-1] == "kernel"]


@pytest.mark.parametrize("init,mode", [("he", "fan_in"), ("he", "fan_out"),
                                       ("xavier", "fan_in"), ("small", "fan_in")])
def test_initialisations_have_their_published_scales(init, mode):
    model = models.build_model(dict(family="cifar", depth=20, init=init, init_mode=mode))
    conv = model.stages[2].blocks[1].unit1.conv.kernel[...]  # 3x3x64x64
    n = 3 * 3 * 64
    expected = {"he": math.sqrt(2 / n), "xavier": math.sqrt(1 / n), "small": 0.01}[init]
    assert float(jnp.std(conv)) == pytest.approx(expected, rel=0.05)
    stem = model.stem.conv.kernel[...]  # 3x3x3x16: fan-in 27, fan-out 144
    if init == "he":
        fan = 27 if mode == "fan_in" else 144
        assert float(jnp.std(stem)) == pytest.approx(math.sqrt(2 / fan), rel=0.2)


def test_zero_initialisation_cannot_break_the_symmetry():
    model = models.build_model(dict(family="cifar", depth=8, widths=(4, 8, 16), in_channels=1,
                                    init="zeros"))
    assert all(not np.any(k) for k in _kernels(model))
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
    y = jax.random.randint(jax.random.key(1), (8,), 0, 10)

    def loss(m):
        return jnp.mean(-jax.nn.log_softmax(m(x))[jnp.arange(8), y])

    grads = nnx.jit(nnx.grad(loss))(model)  # one compilation, not one per op
    kernel_grads = [g[...] for path, g in nnx.iter_graph(grads) if path and path[-1] == "kernel"]
    assert all(not np.any(g) for g in kernel_grads)  # no kernel ever moves


def test_activations_compute_their_formulas():
    x = jnp.array([[-2.0, -0.5, 0.0, 1.5]])
    np.testing.assert_allclose(Activation("relu", 4)(x), [[0, 0, 0, 1.5]])
    np.testing.assert_allclose(Activation("leaky_relu", 4, slope=0.1)(x),
                               [[-0.2, -0.05, 0, 1.5]], rtol=1e-6)
    np.testing.assert_allclose(Activation("prelu", 4)(x), [[-2 * PRELU_INIT, -0.5 * PRELU_INIT,
                                                            0, 1.5]], rtol=1e-6)
    np.testing.assert_allclose(Activation("tanh", 4)(x), np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(Activation("sigmoid", 4)(x), 1 / (1 + np.exp(-np.asarray(x))),
                               rtol=1e-6)
    rrelu = Activation("rrelu", 4)
    neg = -jnp.ones((1000,))
    slopes = -np.asarray(rrelu(neg, jax.random.key(0)))
    lo, hi = RRELU_RANGE
    assert slopes.min() >= lo and slopes.max() <= hi and np.std(slopes) > 0.03
    rrelu.deterministic = True
    np.testing.assert_allclose(rrelu(neg), -(lo + hi) / 2, rtol=1e-6)


def test_relu_gradient_matches_jax_and_saves_only_a_mask():
    x = jnp.array([-2.0, -0.5, 0.0, 1e-8, 1.5])
    act = Activation("relu", 5)
    g = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    ours = jax.vjp(act, x)[1](g)[0]
    np.testing.assert_array_equal(ours, jax.vjp(jax.nn.relu, x)[1](g)[0])
    np.testing.assert_array_equal(ours, [0, 0, 0, 4, 5])
    # Inside a scan over layers every residual is stacked: only the boolean mask may be
    # kept, not jax.nn.relu's full-size zeros.
    def saved(f):
        return [leaf.dtype for leaf in jax.tree.leaves(jax.vjp(f, x)[1]) if leaf.shape == x.shape]

    assert saved(act) == [jnp.bool_]
    assert jnp.float32 in saved(jax.nn.relu)  # what this avoids


def test_prelu_slopes_are_learned_per_channel():
    model = models.build_model(dict(family="cifar", depth=8, widths=(4, 8, 16), in_channels=1,
                                    activation="prelu"))
    slope = model.stages[0].blocks[0].act1.prelu_slope
    assert slope[...].shape == (4,)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(model)  # one program
    assert np.any(grads["stages"][0]["blocks"][0]["act1"]["prelu_slope"][...] != 0)


def test_dropout_before_the_classifier_only_in_training():
    model = models.build_model(dict(family="cifar", depth=8, widths=(4, 8, 16), in_channels=1,
                                    head_dropout=0.5))
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    forward = nnx.jit(lambda m, x, rng: m(x, rng=rng))  # one program, not one per op
    a, b = forward(model, x, jax.random.key(1)), forward(model, x, jax.random.key(2))
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x),
                               forward(model, x, jax.random.key(1)))


@pytest.mark.parametrize(
    "cfg,message",
    [
        (dict(family="cifar", depth=20, plain=True, stochastic_depth=True), "plain net"),
        (dict(family="cifar", depth=20, stochastic_depth=True, survival_last=0.0), r"\(0, 1\]"),
        (dict(family="cifar", depth=48, block="bottleneck"), r"9n\+2"),
        (dict(family="cifar", depth=1001, block="basic"), r"6n\+2"),
        (dict(family="cifar", depth=164, block="basic", preact=True, width_factor=2),
         "width_factor"),
        (dict(family="wrn", depth=28), None),
        (dict(family="wrn", depth=27, width_factor=2), r"6n\+4"),
        (dict(family="wrn", depth=28, width_factor=2, block="bottleneck"), "basic blocks"),
        (dict(family="imagenet", depth=50, block="basic"), "bottleneck blocks"),
        (dict(family="cifar", depth=20, init="glorot"), "he, xavier, small, zeros"),
        (dict(family="cifar", depth=20, activation="gelu"), "relu, leaky_relu, prelu"),
        (dict(family="cifar", depth=20, head_dropout=1.0), r"\[0, 1\)"),
    ],
)
def test_impossible_combinations_are_one_line_errors(cfg, message):
    if message is None:  # a valid config (k defaults to 1)
        models.validate_config(cfg)
        return
    with pytest.raises(ValueError, match=message) as err:
        models.validate_config(cfg)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- studies and report


def test_card_study_puts_imagenet_blocks_with_the_cifar_stem_beside_the_cifar_family():
    from experiments import sweep

    runs = sweep.expand("configs/degradation.py:card", [])
    nets = {(r["model.depth"], r["model.plain"]): r for r in runs}
    assert sorted(nets) == sorted((str(d), str(p)) for d in (18, 34, 56, 110)
                                  for p in (True, False))
    for (depth, _), r in nets.items():
        imagenet = depth in ("18", "34")
        assert (r.get("model.family"), r.get("model.stem")) == (
            ("imagenet", "cifar") if imagenet else (None, None))
        assert ("schedule.warmup_until_error" in r) == (depth == "110")


def _fake_run(study, name, test_error, train_error=0.01, **model):

    run = make_run(study, name, depth=model.pop("depth"), plain=model.pop("plain", False),
                   train_errors=[0.5, train_error], test_errors=[0.5, test_error])
    config = json.loads((run / "config.json").read_text())
    config["model"].update(model, num_classes=10)
    (run / "config.json").write_text(json.dumps(config))


def test_report_labels_follow_the_architecture_and_rank_nets_of_one_depth(tmp_path):
    from experiments.study import build_rows, load_runs
    from experiments.verdicts import verdicts

    study = tmp_path / "study"
    _fake_run(study, "r164", 0.060, depth=164)
    _fake_run(study, "pre164", 0.055, depth=164, preact=True)
    _fake_run(study, "sd164", 0.058, depth=164, stochastic_depth=True)
    _fake_run(study, "r18", 0.070, depth=18, family="imagenet", stem="cifar")
    _fake_run(study, "p18", 0.080, train_error=0.05, depth=18, plain=True, family="imagenet",
              stem="cifar")
    _fake_run(study, "zeros", 0.9, train_error=0.89, depth=20, plain=True, init="zeros")
    rows = {r.label: r for r in build_rows(load_runs(str(study)))}
    assert set(rows) == {"ResNet-164", "pre-act ResNet-164", "ResNet-164 + stoch. depth",
                         "ResNet-18", "plain-18", "plain-20"}
    assert rows["pre-act ResNet-164"].paper_error == 5.46  # He et al. 2016, Table 3
    assert rows["ResNet-164"].paper_error == 5.93
    assert rows["ResNet-18"].paper_error is None  # not a published net on CIFAR-10
    found = verdicts(list(rows.values()))
    assert ("Depth 164 (residual), by final test error (no validation split: ranked on the "
            "test set): pre-act ResNet-164 5.5%, ResNet-164 + stoch. depth 5.8%, "
            "ResNet-164 6.0%.") in found
    # With a validation split, the ranking is on it, never on the test set.
    for label, val in (("ResNet-164", 4.0), ("pre-act ResNet-164", 6.0),
                       ("ResNet-164 + stoch. depth", 5.0)):
        rows[label].val_error = val
    assert ("Depth 164 (residual), by final validation error: ResNet-164 4.0%, "
            "ResNet-164 + stoch. depth 5.0%, pre-act ResNet-164 6.0%.") in verdicts(
                list(rows.values()))
    assert "plain-20 fails to learn: final training error 89.0% (chance: 90.0%)." in found
    assert any(v.startswith("At depth 18 the residual net beats the plain net") for v in found)


def test_published_errors_of_the_follow_ups():
    from experiments.paper import published_test_error

    assert published_test_error("cifar10", {"family": "wrn", "depth": 28,
                                            "width_factor": 10}) == 4.00
    assert published_test_error("cifar10", {"depth": 110, "stochastic_depth": True}) == 5.25
    assert published_test_error("cifar10", {"depth": 1001, "preact": True}) == 4.92
    assert published_test_error("cifar10", {"depth": 110}) == 6.43  # the 2015 paper, Table 6
    assert published_test_error("cifar10", {"depth": 110, "plain": True}) is None
