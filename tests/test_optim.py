"""Regularisers (L2 coupled/decoupled, L1, max-norm) and the reduce-on-plateau schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import read_metrics, tiny_config
from flax import nnx

import train
from training import optimizer, param_paths, schedule

LR, WD, L1, MOMENTUM = 0.1, 0.01, 0.003, 0.9


def _params():
    """A tiny NNX parameter tree: a linear layer's kernel (3, 2) and bias (2,)."""
    _, params = nnx.split(nnx.Linear(3, 2, bias_init=nnx.initializers.normal(1.0),
                                     rngs=nnx.Rngs(0)), nnx.Param)
    return params


def _two_steps(config, grads):
    """Two SGD steps as ``Trainer.apply_gradients`` takes them (updates scaled by -lr)."""
    tx = optimizer.make_optimizer(config)
    params = _params()
    opt_state = tx.init(params)
    for g in grads:
        updates, opt_state = tx.update(g, opt_state, params)
        params = jax.tree.map(lambda p, u: p - LR * u, params, updates)
    return {k: np.asarray(params[k][...]) for k in ("kernel", "bias")}


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
@pytest.mark.parametrize("l1", [0.0, L1])
def test_weight_decay_and_l1_step_match_a_hand_computation(mode, l1):
    """Kernels only: coupled decay enters the momentum, decoupled decay does not; L1 does."""
    config = tiny_config(**{"optimizer.weight_decay": WD, "optimizer.weight_decay_on": "kernels",
                            "optimizer.weight_decay_mode": mode, "optimizer.l1": l1})
    start = {k: np.asarray(_params()[k][...], np.float64) for k in ("kernel", "bias")}
    rng = np.random.default_rng(0)
    grads = [{k: rng.normal(size=v.shape) for k, v in start.items()} for _ in range(2)]

    expected = {}
    for k, p in start.items():
        wd, lasso = (WD, l1) if k == "kernel" else (0.0, 0.0)
        m = np.zeros_like(p)
        for g in grads:
            g = g[k] + lasso * np.sign(p)
            if mode == "coupled":
                m = MOMENTUM * m + g + wd * p
                p = p - LR * m
            else:
                m = MOMENTUM * m + g
                p = p - LR * (m + wd * p)
        expected[k] = p

    got = _two_steps(config, [_as_state(g) for g in grads])
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-7)
    # The bias is neither decayed nor L1-penalised: plain momentum SGD on it.
    plain = start["bias"] - LR * grads[0]["bias"]
    plain = plain - LR * (MOMENTUM * grads[0]["bias"] + grads[1]["bias"])
    np.testing.assert_allclose(got["bias"], plain, rtol=1e-5, atol=1e-7)


def _as_state(grads):
    """Gradients as a float32 tree shaped like ``_params()``."""
    return nnx.State({k: nnx.Param(jnp.asarray(v, jnp.float32)) for k, v in grads.items()})


def test_the_papers_optimizer_state_is_unchanged_by_the_new_options():
    """Default config: chain(add_decayed_weights, trace) exactly as before (checkpoint layout)."""
    state = optimizer.make_optimizer(tiny_config()).init(_params())
    assert len(state) == 2 and isinstance(state[1], optax.TraceState)


def test_max_norm_rescales_each_units_incoming_vector_and_leaves_the_rest():
    rng = np.random.default_rng(1)
    c = 3.0
    conv = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)  # HWIO; norms about 6
    conv[..., 1] *= 0.1  # output channel 1 already inside the ball
    stacked = rng.normal(size=(2, 3, 3, 4, 5)).astype(np.float32)  # scanned blocks: (L,H,W,I,O)
    stacked[1, ..., 2] *= 0.1
    linear = rng.normal(size=(16, 3)).astype(np.float32)  # (in, out)
    linear[:, 0] *= 0.1
    bias = np.full(3, 100.0, np.float32)
    tree = {"stem": {"conv": {"kernel": conv}},
            "stages": {0: {"repeated": {"conv": {"kernel": stacked}}}},
            "head": {"kernel": linear, "bias": bias}}
    frozen = {"stem": {"conv": {"kernel": conv}}}
    out = jax.tree.map(np.asarray, optimizer.project_max_norm(tree, c))
    kept = optimizer.project_max_norm(frozen, c, skip=lambda path: path[0] == "stem")
    np.testing.assert_array_equal(kept["stem"]["conv"]["kernel"], conv)

    def check(before, after, axes, inside):
        norm_b = np.sqrt((before.astype(np.float64) ** 2).sum(axes))
        norm_a = np.sqrt((after.astype(np.float64) ** 2).sum(axes))
        assert (norm_a <= c * (1 + 1e-6)).all()
        for idx in np.ndindex(norm_b.shape):
            sel = (*idx[:-1], *([slice(None)] * len(axes)), idx[-1]) if len(idx) > 1 else (
                *([slice(None)] * len(axes)), idx[-1])
            if norm_b[idx] <= c:
                np.testing.assert_array_equal(after[sel], before[sel])  # bit for bit
            else:
                np.testing.assert_allclose(after[sel], before[sel] * c / norm_b[idx], rtol=1e-6)
        assert inside == int((norm_b <= c).sum())

    check(conv, out["stem"]["conv"]["kernel"], (0, 1, 2), inside=1)
    check(stacked, out["stages"][0]["repeated"]["conv"]["kernel"], (1, 2, 3), inside=1)
    check(linear, out["head"]["kernel"], (0,), inside=1)
    np.testing.assert_array_equal(out["head"]["bias"], bias)  # biases are not constrained


def test_max_norm_holds_for_every_kernel_after_training(tmp_path):
    c = 0.5  # well below the norms of He-initialised kernels, so every step projects
    config = tiny_config(num_steps=5, layer_responses=False, **{"optimizer.max_norm": c})
    train.train_and_evaluate(config, str(tmp_path))
    from training.checkpoints import Checkpointer

    ckpt = Checkpointer(str(tmp_path), keep=3)
    params = ckpt.manager.restore(ckpt.latest_step())["params"]
    kernels = 0
    for kp, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = param_paths.names(kp)
        if path[-1] != "kernel":
            continue
        first = 1 if "repeated" in path else 0
        norms = np.sqrt((np.asarray(p, np.float64) ** 2).sum(tuple(range(first, p.ndim - 1))))
        assert (norms <= c * (1 + 1e-5)).all()
        if path[0] != "head":  # He-initialised convolutions (norm ~1.4) all land on the sphere
            np.testing.assert_allclose(norms, c, rtol=1e-5)
        kernels += 1
    assert kernels == 14  # 13 convolutions + the classifier


# --------------------------------------------------------------------------- plateau


def test_plateau_rule_sequence():
    """patience 2, factor 10, floor 0.005: reductions after two evaluations without progress."""
    state = schedule.PlateauState.initial()
    scales, counts = [], []
    for error in (0.5, 0.4, 0.4, 0.45, 0.3, 0.3, 0.3, 0.3, 0.3, 0.2):
        state = schedule.plateau_update(state, error, factor=10, patience=2, min_scale=0.005)
        scales.append(float(state.scale))
        counts.append(int(state.since_best))
    np.testing.assert_allclose(scales, [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.005, 0.005],
                               rtol=1e-6)
    assert counts == [0, 0, 1, 0, 0, 1, 0, 1, 0, 0]
    assert float(state.best) == pytest.approx(0.2)
    # A threshold: 0.4 -> 0.37 is not an improvement of more than 0.05.
    state = schedule.PlateauState.initial()
    for error in (0.4, 0.37):
        state = schedule.plateau_update(state, error, factor=5, patience=1, threshold=0.05)
    assert float(state.scale) == pytest.approx(0.2) and float(state.best) == pytest.approx(0.4)


PLATEAU = {"schedule.name": "plateau", "val_examples": 200, "schedule.plateau_patience": 1,
           "schedule.plateau_threshold": 0.03, "eval_every_steps": 5, "num_steps": 30,
           "layer_responses": False}


def _expected_lrs(lines, base, factor, threshold):
    """The logged LR each line should show, replaying the rule on the logged val errors."""
    scale, best, expected = 1.0, np.inf, []
    for m in lines:
        expected.append(base * scale)  # the LR of the steps before this line's evaluation
        if "val_error" in m:
            if m["val_error"] < best - threshold:
                best = m["val_error"]
            else:  # patience 1: one evaluation without improvement is enough
                scale /= factor
    return expected


def test_plateau_schedule_end_to_end_and_resume(tmp_path):
    """The logged LR drops right after each non-improving evaluation; a resume continues it."""
    full, part = tmp_path / "full", tmp_path / "part"
    train.train_and_evaluate(tiny_config(**PLATEAU), str(full))
    lines = read_metrics(full)
    assert all("val_error" in m for m in lines)  # evaluations every logged step
    lrs = [m["lr"] for m in lines]
    np.testing.assert_allclose(lrs, _expected_lrs(lines, 0.1, 10.0, 0.03), rtol=1e-6)
    assert lrs[-1] < lrs[0]  # the rule did fire (else this test would check nothing)
    # Stopped at step 15 and resumed to 30: the plateau state came back from the checkpoint.
    train.train_and_evaluate(tiny_config(**{**PLATEAU, "num_steps": 15,
                                            "checkpoint_every_steps": 15}), str(part))
    train.train_and_evaluate(tiny_config(**PLATEAU), str(part), allow_config_change=True)
    timing = ("images_per_sec", "elapsed_s")
    assert [{k: v for k, v in m.items() if k not in timing} for m in read_metrics(part)] == [
        {k: v for k, v in m.items() if k not in timing} for m in lines]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.schedule.name=plateau"], "set val_examples > 0"),
        (["--config.schedule.name=plateau", "--config.val_examples=100",
          "--config.schedule.plateau_factor=1"], "plateau_factor must be > 1"),
        (["--config.schedule.name=plateau", "--config.val_examples=100",
          "--config.schedule.plateau_patience=0"], "plateau_patience must be >= 1"),
        (["--config.optimizer.weight_decay_mode=adamw"], "'coupled' or 'decoupled'"),
        (["--config.optimizer.l1=-1"], "optimizer.l1 must be >= 0"),
        (["--config.optimizer.max_norm=0"], "optimizer.max_norm must be positive"),
    ],
)
def test_bad_regulariser_or_schedule_is_one_error_line(tmp_path, capsys, args, message):
    workdir = tmp_path / "run"
    code = train.main(["--config", "configs/digits.py:resnet-20", "--workdir", str(workdir),
                       *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not workdir.exists()
