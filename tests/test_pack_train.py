"""Packed runs through ``train.py --run DIR KEY=VALUE ...`` (``train.train_pack``).

Every packed run must be an ordinary run: its own directory and files, the
numbers its config gives when trained alone (compared line by line, timing
aside: under the CPU's 'map' strategy each run's step is the lone run's
program, so the numbers agree to float32 rounding), a divergence of its
own, and an exact resume after the pack is killed mid-way, even when the
runs' newest checkpoints are of different steps.
"""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    TINY,
    checkpoint_steps,
    load_json,
    read_metrics,
    tiny_run,
    wait_until,
    without_timing,
)

import train
from training import exits

SEEDS = (0, 1, 2)


def _shared_args():
    return ["--config", "configs/digits.py:resnet-14",
            *(f"--config.{k}={v}" for k, v in TINY.items())]


def _pack_args(runs):
    """``--run DIR KEY=VALUE ...`` for each (dir, overrides) of ``runs``."""
    out = _shared_args()
    for workdir, overrides in runs:
        out += ["--run", str(workdir), *(f"{k}={v}" for k, v in overrides.items())]
    return out


def _assert_same_numbers(got_dir, want_dir):
    """Two runs' metric lines agree: same steps and errors, losses to float32 rounding."""
    got, want = without_timing(read_metrics(got_dir)), without_timing(read_metrics(want_dir))
    assert [g["step"] for g in got] == [w["step"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in g:
            np.testing.assert_allclose(g[key], w[key], rtol=1e-5, atol=1e-6, err_msg=key)
    summary = load_json(os.path.join(got_dir, "summary.json"))
    alone = load_json(os.path.join(want_dir, "summary.json"))
    assert summary["final_test_error"] == alone["final_test_error"]
    assert summary["final_train_error"] == pytest.approx(alone["final_train_error"], abs=1e-6)


def _alone(tmp_path_factory, seed, lr=None):
    """The lone run of one seed (and learning rate), trained once per test session."""
    overrides = {**({"seed": seed} if seed else {}), **({"optimizer.lr": lr} if lr else {})}
    workdir, result = tiny_run(tmp_path_factory, **overrides)
    return str(workdir), result.code


def test_a_pack_of_three_seeds_ends_where_each_seed_alone_ends(tmp_path, tmp_path_factory, capsys):
    runs = [(tmp_path / f"seed={s}", {"seed": s}) for s in SEEDS]
    assert train.main(_pack_args(runs)) == 0
    out = capsys.readouterr().out
    assert "3 runs in one pack" in out
    for (workdir, _), seed in zip(runs, SEEDS, strict=True):
        assert load_json(workdir / "config.json")["seed"] == seed
        summary = load_json(workdir / "summary.json")
        assert summary["status"] == "finished" and summary["steps"] == 20
        assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
        alone, code = _alone(tmp_path_factory, seed)
        assert code == 0
        _assert_same_numbers(workdir, alone)
    # Each its own run: different seeds, different numbers.
    losses = [read_metrics(w)[0]["train_loss"] for w, _ in runs]
    assert len(set(losses)) == 3


def test_a_diverging_run_stops_while_the_others_go_on(tmp_path, tmp_path_factory, capsys):
    runs = [(tmp_path / "lr=0.1", {"optimizer.lr": 0.1}), (tmp_path / "lr=1e6",
                                                           {"optimizer.lr": 1e6})]
    assert train.main(_pack_args(runs)) == exits.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: diverged: ")
    good, bad = (load_json(w / "summary.json") for w, _ in runs)
    assert good["status"] == "finished"
    _assert_same_numbers(runs[0][0], _alone(tmp_path_factory, 0)[0])  # 0.1: the default lr
    alone_bad, code = _alone(tmp_path_factory, 0, 1e6)
    assert code == exits.EXIT_DIVERGED
    want = load_json(os.path.join(alone_bad, "summary.json"))
    assert bad["status"] == "diverged"
    assert bad["diverged_at_step"] == want["diverged_at_step"] < 20
    assert _lines(runs[1][0]) == _lines(alone_bad)  # those logged before it diverged


def _lines(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    return without_timing(read_metrics(workdir)) if os.path.exists(path) else []


def test_a_killed_pack_resumes_every_run_exactly(tmp_path, tmp_path_factory):
    """SIGKILL after the first checkpoint; one run also loses its newest one (a kill mid-save).

    That run starts behind the others (from an older checkpoint, or from
    scratch), and the others wait for it: all end as if trained alone.
    """
    runs = [(tmp_path / f"seed={s}", {"seed": s}) for s in SEEDS]
    args = [*_pack_args(runs), "--config.checkpoint_every_steps=5"]
    proc = subprocess.Popen([sys.executable, "train.py", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _checkpoints(runs[0][0]), proc=proc, what="the first checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for newest in _checkpoints(runs[2][0])[-1:]:
        shutil.rmtree(runs[2][0] / "checkpoints" / str(newest))
    assert _checkpoints(runs[2][0])[-1:] < _checkpoints(runs[0][0])[-1:]
    assert train.main(args) == 0
    for (workdir, _), seed in zip(runs, SEEDS, strict=True):
        assert [line["step"] for line in read_metrics(workdir)] == [5, 10, 15, 20]
        _assert_same_numbers(workdir, _alone(tmp_path_factory, seed)[0])


def _checkpoints(workdir):
    return checkpoint_steps(workdir)


@pytest.mark.parametrize("second,message", [
    ({"model.depth": 8}, "runs 0 and 1 of a pack differ in model.depth (14 vs 8)"),
    ({"dataset": "cifar10"}, "runs 0 and 1 of a pack differ in dataset ('digits' vs"),
])
def test_runs_that_cannot_share_a_program_are_bad_input(tmp_path, capsys, second, message):
    runs = [(tmp_path / "a", {}), (tmp_path / "b", second)]
    assert train.main(_pack_args(runs)) == exits.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_a_streamed_dataset_does_not_pack(tmp_path, capsys):
    args = ["--config", "configs/imagenet.py:resnet-18", "--run", str(tmp_path / "a"), "seed=0",
            "--run", str(tmp_path / "b"), "seed=1"]
    assert train.main(args) == exits.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a pack needs a dataset held in memory" in err[0], err
    assert not os.path.exists(tmp_path / "a")


@pytest.mark.parametrize("args,message", [
    (["--workdir", "W", "--run", "X"], "give either --workdir DIR"),
    ([], "give either --workdir DIR"),
    (["--run", "X", "seed=1", "--run", "X", "seed=2"], "is given twice"),
    (["--run", "X", "seed"], "'seed' must look like KEY=VALUE"),
])
def test_bad_pack_command_lines_are_one_error_line(capsys, args, message):
    assert train.main([*_shared_args()[:2], *args]) == exits.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
