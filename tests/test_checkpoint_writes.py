"""Who writes a replicated array into a checkpoint: small ones whole by one replica, large
ones by every replica a slice (``training.checkpoints``), and either kind restores."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from conftest import tiny_config

from data.device import replicate
from experiments import checkpoint_benchmark
from training import checkpoints, parallel, steps


def _slices_cut_by_a_save(monkeypatch, tmp_path, state):
    """How many slices Orbax cuts (``jax.lax.slice_in_dim``) while saving ``state``."""
    cut = []
    real = jax.lax.slice_in_dim

    def counting(*args, **kwargs):
        cut.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jax.lax, "slice_in_dim", counting)
    saver = checkpoints.Checkpointer(tmp_path, 1)
    saver.save(0, state)
    saver.manager.wait_until_finished()
    monkeypatch.setattr(jax.lax, "slice_in_dim", real)
    return len(cut)


def test_small_arrays_are_written_whole_and_large_ones_by_every_replica(monkeypatch, tmp_path):
    mesh = parallel.make_mesh()
    state = replicate(steps.create_train_state(tiny_config()), mesh)
    assert _slices_cut_by_a_save(monkeypatch, tmp_path / "small", state) == 0
    n = jax.device_count()
    large = replicate({"w": jnp.ones((n * checkpoints.REPLICA_SLICE_MIN_BYTES // 4,))}, mesh)
    assert _slices_cut_by_a_save(monkeypatch, tmp_path / "large", large) == n


def test_a_checkpoint_written_by_every_replica_restores_what_one_replica_wrote(tmp_path):
    """One replica writes each small array (``checkpoints._whole_small_arrays``); checkpoints
    that Orbax's default wrote, each replica a slice, restore to the same arrays."""
    state = replicate(steps.create_train_state(tiny_config()), parallel.make_mesh())
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=True), override=True)
        every = checkpoints.Checkpointer(tmp_path / "every", 1)
        every.save(0, state)
        every.manager.wait_until_finished()
    finally:
        checkpoints._whole_small_arrays()
    one = checkpoints.Checkpointer(tmp_path / "one", 1)
    one.save(0, state)
    one.manager.wait_until_finished()
    for got in (checkpoints.Checkpointer(tmp_path / d, 1).restore(0, state)
                for d in ("every", "one")):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
            assert a.sharding == b.sharding and np.array_equal(np.asarray(a), np.asarray(b))



def test_the_checkpoint_benchmark_times_both_handlers_and_leaves_the_projects(capsys):
    argv = ["--config", "configs/digits.py:resnet-8", "--saves", "2"]
    assert checkpoint_benchmark.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["handler"] for line in lines] == ["orbax default", "small arrays whole"]
    assert all(line["devices"] == jax.device_count() and line["first_save_ms"] > 0
               and line["median_save_ms"] > 0 for line in lines)
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    assert handler._min_slice_bytes_for_replica_parallel == checkpoints.REPLICA_SLICE_MIN_BYTES
