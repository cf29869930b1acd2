"""Tests of the model zoo: published parameter counts, Table 1 multiply-adds, behaviour."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import unrolled_and_scanned
from flax import nnx

import models
from models.shortcuts import IdentityShortcut
from models.summary import count_macs, count_params


def abstract_model(**cfg):
    return nnx.eval_shape(lambda: models.build_model(cfg))


def small_cifar(seed=0, **kw):
    cfg = dict(family="cifar", depth=8, widths=(4, 8, 16), num_classes=3, in_channels=1, **kw)
    return models.build_model(cfg, seed=seed)


@pytest.mark.parametrize(
    "depth,params",
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962),
     (1202, 19_421_274)],
)
def test_cifar_parameter_counts_match_the_published_ones(depth, params):
    # Real models up to 110 layers (nnx.eval_shape grows quadratically with the number of
    # blocks). ResNet-1202 is built as the configs build it, its blocks stacked
    # (scan_blocks), which keeps every count
    # (test_scanned_networks_keep_the_published_parameter_and_multiply_add_counts), and
    # abstractly: its stacked blocks are few modules, and their values would only cost time.
    for plain in (False, True):
        stacked = depth > 110
        cfg = dict(family="cifar", depth=depth, plain=plain, num_classes=10, scan_blocks=stacked)
        model = abstract_model(**cfg) if stacked else models.build_model(cfg)
        assert count_params(model) == params


@pytest.mark.parametrize(
    "depth,params",
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160),
     (152, 60_192_808)],
)
def test_imagenet_parameter_counts_match_torchvision(depth, params):
    model = abstract_model(family="imagenet", depth=depth, shortcut="B", num_classes=1000)
    assert count_params(model) == params


def _macs(model, size, channels=3):
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        m.eval()
        return m(x)

    return count_macs(forward, state, x)


@pytest.mark.parametrize(
    "depth,paper", [(18, 1.8e9), (34, 3.6e9), (50, 3.8e9), (101, 7.6e9), (152, 11.3e9)]
)
def test_imagenet_multiply_adds_within_3_percent_of_table_1(depth, paper):
    macs = _macs(abstract_model(family="imagenet", depth=depth, num_classes=1000), 224)
    assert abs(macs - paper) / paper < 0.03


@pytest.mark.parametrize("depth,approx", [(20, 41e6), (56, 125e6), (110, 253e6)])
def test_cifar_multiply_adds(depth, approx):
    macs = _macs(abstract_model(family="cifar", depth=depth), 32)
    assert abs(macs - approx) / approx < 0.02


def test_option_a_shortcut_is_subsample_and_zero_pad():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    y = IdentityShortcut(4, 10, stride=2)(x)
    expected = np.zeros((2, 4, 4, 10), np.float32)
    expected[..., 3:7] = np.asarray(x)[:, ::2, ::2, :]  # 6 new channels: 3 before, 3 after
    np.testing.assert_array_equal(np.asarray(y), expected)
    np.testing.assert_array_equal(np.asarray(IdentityShortcut(4, 4, 1)(x)), np.asarray(x))


def _zero_last_bn(block):
    last = block.unit2.bn
    last.scale[...] = jnp.zeros_like(last.scale[...])
    last.bias[...] = jnp.zeros_like(last.bias[...])


def test_plain_net_has_no_path_that_skips_a_block():
    """Silencing one block's branch cuts a plain net's input off; a residual net still sees it."""
    x1 = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    x2 = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    for plain in (True, False):
        model = small_cifar(plain=plain)
        model.eval()
        _zero_last_bn(model.stages[1].blocks[0])
        same = np.allclose(np.asarray(model(x1)), np.asarray(model(x2)))
        assert same == plain


def test_plain_and_residual_nets_have_the_same_layers():
    plain, res = small_cifar(plain=True), small_cifar(plain=False)
    shapes = lambda m: jax.tree.map(lambda a: a.shape, nnx.state(m, nnx.Param))  # noqa: E731
    assert shapes(plain) == shapes(res)
    # Same seed: the very same weights, so the only difference is the shortcut.
    pairs = zip(jax.tree.leaves(nnx.state(plain)), jax.tree.leaves(nnx.state(res)), strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batchnorm_train_and_eval_modes_differ_as_they_should():
    model = small_cifar()
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 8, 8, 4))
    unit = model.stages[0].blocks[0].unit1
    before = np.asarray(unit.bn.mean[...]).copy()
    model.train()
    y_train = np.asarray(unit(x))
    # Training mode normalises with the batch's own statistics ...
    np.testing.assert_allclose(y_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y_train.std(axis=(0, 1, 2)), 1.0, atol=1e-2)
    # ... and moves the running averages towards them (momentum 0.9).
    batch_mean = np.asarray(unit.conv(x)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        np.asarray(unit.bn.mean[...]), 0.9 * before + 0.1 * batch_mean, rtol=1e-4, atol=1e-5
    )
    model.eval()
    running = np.asarray(unit.bn.mean[...]).copy()
    y_eval = np.asarray(unit(x))
    np.testing.assert_array_equal(np.asarray(unit.bn.mean[...]), running)  # eval: no update
    var = np.asarray(unit.bn.var[...])
    expected = (np.asarray(unit.conv(x)) - running) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(y_train, y_eval)


def test_same_seed_same_parameters_and_different_seed_different():
    leaves = lambda m: [np.asarray(a) for a in jax.tree.leaves(nnx.state(m, nnx.Param))]  # noqa: E731
    a, b, c = leaves(small_cifar(seed=0)), leaves(small_cifar(seed=0)), leaves(small_cifar(seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("mode,fan", [("fan_in", 3 * 3 * 64), ("fan_out", 3 * 3 * 64)])
def test_he_normal_initialisation(mode, fan):
    model = models.build_model(dict(family="cifar", depth=56, init_mode=mode))
    kernel = np.asarray(model.stages[2].blocks[1].unit1.conv.kernel[...])
    assert abs(kernel.std() - np.sqrt(2.0 / fan)) / np.sqrt(2.0 / fan) < 0.05


def test_zero_init_residual_makes_residual_blocks_identity_at_start():
    model = small_cifar(zero_init_residual=True)
    model.eval()
    block = model.stages[0].blocks[0]
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 8, 8, 4)))
    np.testing.assert_allclose(np.asarray(block(x)[0]), np.asarray(x), atol=1e-6)
    assert not np.any(np.asarray(small_cifar().stages[0].blocks[0].unit2.bn.scale[...]) == 0)


@pytest.mark.parametrize("where,strides", [("first", (2, 1)), ("middle", (1, 2))])
def test_bottleneck_stride_placement(where, strides):
    model = abstract_model(family="imagenet", depth=50, bottleneck_stride=where)
    block = model.stages[1].blocks[0]
    assert (block.unit1.conv.strides, block.unit2.conv.strides) == strides


def test_shortcut_options_b_and_c_project_where_they_should():
    def projections(option):
        model = abstract_model(family="imagenet", depth=18, shortcut=option)
        return [not isinstance(b.shortcut, IdentityShortcut)
                for s in model.stages for b in s.blocks]

    assert projections("A") == [False] * 8
    assert projections("B") == [False, False, True, False, True, False, True, False]
    assert projections("C") == [True] * 8


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    model = small_cifar(dtype="bfloat16")
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    forward = nnx.jit(lambda m, x: m(x, return_features=True))  # one program, not one per op
    logits, feats = forward(model, jnp.ones((2, 8, 8, 1)))
    assert logits.dtype == jnp.float32
    assert feats["block_outputs"][0].dtype == jnp.bfloat16


def test_features_hand_back_every_block_and_its_branch_response():
    model = small_cifar()
    model.eval()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    logits, feats = model(x, return_features=True)
    assert len(feats["block_outputs"]) == len(feats["branch_responses"]) == 3
    assert [f.shape for f in feats["block_outputs"]] == [
        (2, 8, 8, 4), (2, 4, 4, 8), (2, 2, 2, 16)]
    block = model.stages[2].blocks[0]
    np.testing.assert_allclose(
        np.asarray(feats["branch_responses"][2]),
        np.asarray(block.branch(feats["block_outputs"][1])), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(x)), rtol=1e-6)


@pytest.mark.parametrize(
    "cfg,message",
    [
        (dict(family="cifar", depth=57), r"6n\+2"),
        (dict(family="imagenet", depth=40), "18, 34, 50, 101, 152"),
        (dict(family="cifar", depth=20, shortcut="D"), "allowed: A, B, C"),
        (dict(family="cifar", depth=20, plain=True, shortcut="A"), "plain net"),
        (dict(family="mobilenet", depth=16), "allowed: cifar, imagenet"),
        (dict(family="cifar", depth=20, dtype="float64"), "float32, bfloat16"),
        (dict(family="cifar", depth=20, widths=(16, 32)), "one entry per stage"),
    ],
)
def test_bad_architectures_fail_at_construction_with_one_line(cfg, message):
    with pytest.raises(ValueError, match=message) as e:
        models.build_model(cfg)
    assert "\n" not in str(e.value)


def _summary_table(stdout):
    """(layer rows, total row, JSON line) of ``python -m models``'s output."""
    lines = stdout.strip().splitlines()
    assert lines[1].split()[0] in ("layer", "part")
    total = lines[-2].split()
    assert total[0] == "total"
    parse = lambda words: (*words[:-3], words[-3], int(words[-2].replace(",", "")),  # noqa: E731
                           int(words[-1].replace(",", "")))
    rows = [parse(line.split()) for line in lines[2:-2]]
    return rows, (int(total[1].replace(",", "")), int(total[2].replace(",", ""))), \
        json.loads(lines[-1])


def test_summary_cli_prints_every_layer_adding_up_to_the_totals_and_rejects_bad_depth():
    out = subprocess.run([sys.executable, "-m", "models", "cifar", "20"],
                         capture_output=True, text=True, check=True)
    rows, (params, macs), last = _summary_table(out.stdout)
    assert last == {**last, "family": "cifar", "depth": 20, "plain": False, "shortcut": "A",
                    "params": 269_722, "macs": macs, "name": "resnet-20"}
    assert "flops" not in last and abs(macs - 41e6) / 41e6 < 0.02
    assert params == 269_722
    # The rows add up to the totals, which are counted over the whole traced network.
    assert sum(r[-2] for r in rows) == params and sum(r[-1] for r in rows) == macs
    names = [r[0] for r in rows]
    assert names[:2] == ["stem.conv", "stem.bn"] and names[-1] == "head"
    assert rows[-1][1:] == ("dense", "10", 650, 640)
    convs = [r for r in rows if r[1] == "conv"]
    assert len(convs) + 1 == 20  # the depth: weighted layers, the classifier included
    assert all(r[1] == "bn" for r in rows if r[0].endswith(".bn"))
    assert rows[2] == ("stages.0.blocks.0.unit1.conv", "conv", "3x3/1", "32x32x16",
                       16 * 16 * 9, 32 * 32 * 16 * 16 * 9)
    shortcuts = [r for r in rows if r[0].endswith(".shortcut")]
    assert len(shortcuts) == 9 and all(r[-2:] == (0, 0) for r in shortcuts)
    assert shortcuts[3][1:4] == ("identity", "/2", "+16ch")  # stage 2's first block
    assert shortcuts[3][-3] == "16x16x32"
    bad = subprocess.run([sys.executable, "-m", "models", "cifar", "57"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,layers,projections", [
    (["cifar", "8", "--plain"], 7 + 7 + 1, 0),  # 7 conv + 7 BN rows, the head
    (["cifar", "8", "--shortcut", "C", "--preact"], 7 + 7 + 3 + 1, 3),  # bare 1x1 conv shortcuts
    (["cifar", "8", "--shortcut", "B"], 2 + 3 * 4 + 1 + 2 * 2 + 1, 2),  # conv+BN projections
    (["cifar", "11", "--block", "bottleneck"], 2 + 3 * 6 + 3 * 2 + 1, 3),  # B: 16 -> 64 too
])
def test_summary_rows_add_up_to_the_totals_for_other_nets(argv, layers, projections, capsys):
    from models.__main__ import main

    assert main(argv) == 0
    rows, (params, macs), last = _summary_table(capsys.readouterr().out)
    assert len(rows) == layers
    assert (sum(r[-2] for r in rows), sum(r[-1] for r in rows)) == (params, macs)
    assert (last["params"], last["macs"]) == (params, macs)
    assert len([r for r in rows if ".shortcut" in r[0] and r[1] == "conv"]) == projections
    assert main([*argv, "--stages"]) == 0
    stages, totals, _ = _summary_table(capsys.readouterr().out)
    assert [r[0] for r in stages][:2] == ["stem", "stage1"] and totals == (params, macs)
    assert (sum(r[-2] for r in stages), sum(r[-1] for r in stages)) == (params, macs)


def test_layer_rows_cover_prelu_parameters_and_restore_the_layer_classes():
    from models.summary import layer_rows, network_totals

    calls = (nnx.Conv.__call__, nnx.Linear.__call__)
    model = small_cifar(activation="prelu")
    rows = layer_rows(model, 8)
    assert (nnx.Conv.__call__, nnx.Linear.__call__) == calls
    assert [r.kind for r in rows].count("prelu") == 7  # one per activation: stem, 2 per block
    assert (sum(r.params for r in rows), sum(r.macs for r in rows)) == network_totals(model, 8)
    assert count_params(model) == network_totals(model, 8)[0]
    with pytest.raises(ValueError, match="scan_blocks=False"):
        layer_rows(models.build_model(dict(family="cifar", depth=14, scan_blocks=True)), 32)


# --------------------------------------------------------------- how blocks run: scan, remat, conv


@pytest.mark.parametrize("k,stride,size", [(3, 1, 8), (3, 2, 8), (3, 2, 7), (1, 2, 8), (7, 2, 15)])
def test_canonical_conv_gradients_equal_xla_ones(k, stride, size):
    from models.conv import NHWC, conv_general_dilated

    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    w = jax.random.normal(jax.random.key(1), (k, k, 3, 5))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    pad = ((k - 1) // 2,) * 2

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride,) * 2, (pad, pad),
                                                 dimension_numbers=dn)))

    want = jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
    got = jax.grad(loss(conv_general_dilated), (0, 1))(x, w)
    for g, h in zip(got, want, strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5)


def test_canonical_conv_backward_has_only_nhwc_hwio_convolutions():
    """The point of the custom VJP: XLA:CPU runs these fast inside loops."""
    from models.conv import NHWC, conv_general_dilated

    x = jnp.ones((2, 8, 8, 3))
    w = jnp.ones((3, 3, 3, 4))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    grad = jax.grad(lambda x, w: conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                                      dimension_numbers=dn).sum(), (0, 1))
    convs = [e for e in jax.make_jaxpr(grad)(x, w).jaxpr.eqns
             if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == 2
    assert all(e.params["dimension_numbers"] == dn for e in convs)


@pytest.mark.parametrize("plain", [False, True])
def test_a_scanned_network_computes_what_the_unrolled_one_does(plain):
    unrolled, scanned = unrolled_and_scanned(plain=plain)
    x = jax.random.normal(jax.random.key(2), (6, 8, 8, 1))

    def loss(model, x):
        return jnp.mean(jnp.square(model(x)))

    # Compiled, not op by op (one program instead of hundreds); train mode: BN stats update.
    grads = [nnx.jit(nnx.grad(loss))(m, x) for m in (unrolled, scanned)]
    features = nnx.jit(lambda model, x: model(x, return_features=True))
    la, fa = features(unrolled, x)
    lb, fb = features(scanned, x)
    # Two programs: float32 sums may be ordered differently (more so by the suite's fast-
    # compiling XLA:CPU emitters, conftest), and a plain net carries that to every block.
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)
    for key in ("block_outputs", "branch_responses"):
        assert len(fa[key]) == len(fb[key]) == 9
        for a, b in zip(fa[key], fb[key], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The last block of stage 3 is the second entry of its stack.
    a_block, b_stack = unrolled.stages[2].blocks[2], scanned.stages[2].repeated
    np.testing.assert_allclose(a_block.unit1.bn.mean[...], b_stack.unit1.bn.mean[...][1],
                               rtol=1e-5, atol=1e-6)
    ga = grads[0]["stages"][2]["blocks"][2]["unit2"]["conv"]["kernel"][...]
    gb = grads[1]["stages"][2]["repeated"]["unit2"]["conv"]["kernel"][...][1]
    np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6)


def _scan_unrolls(model, x):
    """(length, unroll) of every scan in the model's forward pass."""
    from models.summary import iter_eqns

    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x).jaxpr
    return [(e.params["length"], e.params["unroll"]) for e, _ in iter_eqns(jaxpr)
            if e.primitive.name == "scan"]


def test_an_unrolled_scan_computes_what_the_loop_does_with_the_same_parameters():
    cfg = dict(family="cifar", depth=20, widths=(4, 8, 16), num_classes=3, in_channels=1,
               scan_blocks=True)
    loop = models.build_model({**cfg, "scan_unroll": 1}, seed=0)
    unrolled = models.build_model({**cfg, "scan_unroll": "full"}, seed=1)
    assert jax.tree.structure(nnx.state(loop)) == jax.tree.structure(nnx.state(unrolled))
    nnx.update(unrolled, nnx.state(loop))  # same layout: a checkpoint loads either way
    x = jax.random.normal(jax.random.key(4), (4, 8, 8, 1))
    assert _scan_unrolls(loop, x) == [(2, 1)] * 3
    assert _scan_unrolls(unrolled, x) == [(2, 2)] * 3  # the whole stage
    loss = lambda m: jnp.sum(jnp.sin(m(x)))  # noqa: E731
    grad = nnx.jit(nnx.grad(loss))  # one program each, not one per op
    for g, h in zip(jax.tree.leaves(grad(loop)), jax.tree.leaves(grad(unrolled)), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-6)


def test_auto_scan_unroll_unrolls_short_stages_on_accelerators_only():
    from models.resnet import AUTO_UNROLL_MAX_BLOCKS, resolve_scan_unroll

    assert resolve_scan_unroll("auto", 17, "cpu") == 1  # the loop is faster on CPU
    assert resolve_scan_unroll("auto", 17, "gpu") is True  # ResNet-110: unrolled
    assert resolve_scan_unroll("auto", AUTO_UNROLL_MAX_BLOCKS, "tpu") is True
    assert resolve_scan_unroll("auto", 199, "gpu") == 1  # ResNet-1202: compile time
    assert resolve_scan_unroll(4, 199, "gpu") == 4  # explicit settings are kept
    assert resolve_scan_unroll(True, 17, "cpu") is True


@pytest.mark.parametrize("value", ["sometimes", "0", "-2", "1.5"])
def test_a_bad_scan_unroll_is_a_one_line_error(value):
    with pytest.raises(ValueError, match="model.scan_unroll must be"):
        models.build_model(dict(family="cifar", depth=20, scan_blocks=True, scan_unroll=value))


def test_rematerialised_blocks_give_the_same_gradients():
    plain_model = small_cifar(scan_blocks=True)
    remat_model = small_cifar(scan_blocks=True, remat_blocks=True)
    nnx.update(remat_model, nnx.state(plain_model))
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
    loss = lambda m: jnp.sum(jnp.sin(m(x)))  # noqa: E731
    grad = nnx.jit(nnx.grad(loss))  # one program each, not one per op
    for g, h in zip(jax.tree.leaves(grad(plain_model)), jax.tree.leaves(grad(remat_model)),
                    strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-6)
    # and the backward pass really recomputes: a remat (checkpoint) region is traced
    graphdef, state = nnx.split(remat_model)
    jaxpr = jax.make_jaxpr(lambda s: nnx.grad(lambda m: loss(m))(nnx.merge(graphdef, s)))(state)
    from jax.extend.core.primitives import remat_p

    from models.summary import iter_eqns

    assert any(e.primitive is remat_p for e, _ in iter_eqns(jaxpr.jaxpr))


def test_scanned_program_size_does_not_grow_with_depth():
    """What makes ResNet-1202 compile like ResNet-20: one block body per stage."""
    from models.summary import iter_eqns

    def program(depth):
        model = models.build_model(dict(family="cifar", depth=depth, scan_blocks=True))
        graphdef, state = nnx.split(model)
        x = jnp.zeros((1, 32, 32, 3))
        jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x).jaxpr
        eqns = list(iter_eqns(jaxpr))
        return len(eqns), sum(t for e, t in eqns if e.primitive.name == "conv_general_dilated")

    (size_20, convs_20), (size_1202, convs_1202) = program(20), program(1202)
    assert size_1202 == size_20
    assert (convs_20, convs_1202) == (19, 1201)  # executed convolutions do grow


def test_scanned_networks_keep_the_published_parameter_and_multiply_add_counts():
    model = models.build_model(dict(family="cifar", depth=110, scan_blocks=True))
    assert count_params(model) == 1_727_962
    unrolled = models.build_model(dict(family="cifar", depth=110))
    assert _macs(model, 32) == _macs(unrolled, 32)
