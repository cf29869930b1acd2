"""End-to-end runs of the architecture variants and layer knobs, and the dead-unit metric."""

import numpy as np
from conftest import read_metrics, tiny_config, tiny_run

import train


def test_dead_units_are_logged_at_every_evaluation_and_zero_init_kills_every_unit(
        tmp_path, tmp_path_factory):
    train.train_and_evaluate(tiny_config(**{"model.init": "zeros"}), str(tmp_path / "zeros"))
    zeros, he = read_metrics(tmp_path / "zeros"), read_metrics(tiny_run(tmp_path_factory)[0])
    assert [("dead_units" in m) for m in zeros] == [("test_error" in m) for m in zeros]
    assert all(m["dead_units"] == 1.0 for m in zeros if "dead_units" in m)
    assert all(0.0 <= m["dead_units"] < 0.5 for m in he if "dead_units" in m)
    assert zeros[-1]["train_error"] > 0.8  # the symmetry is never broken: nothing learns


def test_saturating_activations_log_no_dead_units(tmp_path):
    train.train_and_evaluate(tiny_config(**{"model.activation": "tanh"}), str(tmp_path))
    lines = read_metrics(tmp_path)
    assert not any("dead_units" in m for m in lines)
    assert np.isfinite(lines[-1]["train_loss"])


def test_random_layers_draw_from_seed_and_step_only(tmp_path):
    """Stochastic depth, dropout and RReLU: a rerun makes the same draws, another seed does not."""
    knobs = {"model.preact": True, "model.stochastic_depth": True, "model.head_dropout": 0.2,
             "model.activation": "rrelu"}
    runs = [("a", 0), ("b", 0), ("c", 1)]
    for name, seed in runs:
        train.train_and_evaluate(tiny_config(seed=seed, **knobs), str(tmp_path / name))
    a, b, c = (read_metrics(tmp_path / name) for name, _ in runs)
    assert [m["train_loss"] for m in a] == [m["train_loss"] for m in b]
    assert [m["train_loss"] for m in a] != [m["train_loss"] for m in c]
    assert a[-1]["train_loss"] < a[0]["train_loss"]  # it learns


def test_a_wide_resnet_trains(tmp_path):
    summary = train.train_and_evaluate(
        tiny_config(**{"model.family": "wrn", "model.depth": "10", "model.widths": "None",
                       "model.width_factor": "1", "model.block_dropout": "0.3"}),
        str(tmp_path))
    assert summary["name"] == "wrn-10-1"
    lines = read_metrics(tmp_path)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
