"""Packs (training/pack.py): K runs stepped as one program equal each run stepped alone.

Each packed run is compared with the lone run of its config, built as
``train.py`` builds it (``conftest.run_parts``: the data-parallel step over 4
fake devices, one chunk of steps in a ``fori_loop``). Tolerance: the pack
runs the same operations on the same numbers, but in another program: under
'map' XLA may fuse each run's step differently inside the loop over runs,
and under 'vmap' the convolutions of the K runs become one grouped
convolution that sums in another order. Either moves float32 results by a
few units in the last place per step (measured: at most 1e-6 after 5 steps
under 'vmap', none under 'map'), so the checks allow 1e-5.
"""

import functools
import json

import jax
import numpy as np
import pytest
from conftest import run_parts, tiny_config

from training import dispatch, pack, steps

STEPS = 5  # one chunk: log_every_steps of TINY
# Stochastic depth draws from the layer stream of the seed, so the traced seed reaches it too.
BASE = {"model.stochastic_depth": True}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _config(**overrides):
    return tiny_config(**{**BASE, **overrides})


@functools.cache
def _alone(seed: int, lr: float):
    """A lone run's state and each step's loss after one chunk."""
    parts = run_parts(_config(seed=seed, **{"optimizer.lr": lr}))
    state, sums = parts.chunk(parts.state, 0)
    return jax.device_get(state), dispatch.read_chunk_sums(jax.device_get(sums))["losses"]


# One pack serves both equivalence tests (one compilation per strategy): three seeds,
# then seed 0 again with another learning rate.
RUNS = ((0, 0.1), (1, 0.1), (2, 0.1), (0, 0.02))


@functools.cache
def _packed(strategy):
    """The pack of ``RUNS`` after one chunk (the training loop's program), each run's losses."""
    configs = [_config(seed=seed, **{"optimizer.lr": lr}) for seed, lr in RUNS]
    pack.check_packable(configs)
    parts = run_parts(configs[0])
    program = pack.Packed(configs, parts.sched, parts.mesh, parts.feed, start=0,
                          strategy=strategy)
    state, sums = program.chunk(program.initial([steps.create_train_state(c) for c in configs]),
                                0)
    assert int(state.step) == STEPS
    return jax.device_get(state), [view.sums["losses"] for view in program.views(state, sums)]


def _assert_same_run(strategy, i):
    """Run ``i`` of the pack ended where the lone run of its config did."""
    packed, losses = _packed(strategy)
    state, alone_losses = _alone(*RUNS[i])
    np.testing.assert_allclose(losses[i], alone_losses, **TOL)
    mine = pack.unpack(packed, i)
    for got, want in ((mine.params, state.params), (mine.batch_stats, state.batch_stats),
                      (mine.opt_state, state.opt_state)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got, want)
    assert int(mine.step) == int(state.step) == STEPS


@pytest.mark.parametrize("strategy", pack.STRATEGIES)
def test_a_pack_of_seeds_equals_each_seed_alone(strategy):
    for i in range(3):
        _assert_same_run(strategy, i)
    losses = _packed(strategy)[1]
    assert losses[0] != losses[1]  # each run its own initial weights and batches


@pytest.mark.parametrize("strategy", pack.STRATEGIES)
def test_a_pack_of_learning_rates_equals_each_lr_alone(strategy):
    packed, losses = _packed(strategy)
    np.testing.assert_array_equal(packed.hparams.lr, np.float32([lr for _, lr in RUNS]))
    for i in (0, 3):
        _assert_same_run(strategy, i)
    assert losses[0][0] == losses[3][0]  # one seed: the same first batch and weights
    assert losses[0][1:] != losses[3][1:]


@pytest.mark.parametrize("key,value", [
    ("seed", 7), ("data_seed", 3), ("optimizer.lr", 0.5), ("optimizer.momentum", 0.5),
    ("optimizer.weight_decay", 0.0), ("schedule.decay_factor", 0.2),
    ("schedule.warmup_lr", 0.05)])
def test_pack_keys_may_differ_inside_a_pack(key, value):
    a, b = tiny_config(), tiny_config(**{key: value})
    assert a.to_dict() != b.to_dict()  # the key does differ
    assert pack.check_packable([a, b]) is None  # no error: one program serves both
    assert pack.group_key(a) == pack.group_key(b)  # and the sweep launcher packs them


@pytest.mark.parametrize("key,value", [
    ("model.depth", 20), ("model.widths", "(4,8,32)"), ("model.family", "wrn"),
    ("dataset", "cifar10"), ("batch_size", 64), ("model.dtype", "bfloat16"),
    ("num_steps", 40), ("batch_norm", "sync"), ("model.plain", True),
    ("log_every_steps", 10), ("optimizer.nesterov", True)])
def test_every_other_key_splits_packs_with_a_one_line_error(key, value):
    with pytest.raises(ValueError) as e:
        pack.check_packable([tiny_config(), tiny_config(), tiny_config(**{key: value})])
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"runs 0 and 2 of a pack differ in {key} (")
    assert "only seed, optimizer.lr," in message


def test_the_first_differing_key_is_named():
    with pytest.raises(ValueError, match=r"differ in batch_size \(32 vs 64\)"):
        pack.check_packable([tiny_config(), tiny_config(**{"model.depth": 20,
                                                           "batch_size": 64})])


def test_a_data_seed_that_selects_the_data_splits_packs():
    a, b = (tiny_config(val_examples=100, data_seed=s) for s in (0, 1))
    with pytest.raises(ValueError, match=r"differ in data_seed \(0 vs 1\), which selects"):
        pack.check_packable([a, b])
    pack.check_packable([a, tiny_config(val_examples=100, seed=1)])


def test_bad_strategies_and_seeds_are_one_line_errors():
    with pytest.raises(ValueError, match="pack strategy must be one of vmap, map"):
        pack.make_packed_step(tiny_config(), None, None, strategy="pmap")
    with pytest.raises(ValueError, match="must fit int32"):
        pack.check_packable([tiny_config(seed=2**31)])


def test_benchmark_times_a_pack_and_counts_every_runs_images(capsys):
    from experiments import benchmark

    code = benchmark.main(["--config", "configs/digits.py:resnet-8", "--batch-size", "8",
                           "--steps", "1", "--repeats", "1", "--pack", "2"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pack"] == 2 and result["pack_strategy"] == pack.default_strategy()
    assert result["images_per_sec"] == pytest.approx(2 * 8 / (result["step_ms"] / 1e3),
                                                     rel=1e-2)
