"""Tests of the training engine: run files, resume after a kill, BatchNorm modes, TFDS path."""

import json
import os
import signal
import subprocess

import jax
import numpy as np
import pytest
from conftest import (
    TINY,
    checkpoint_steps,
    copy_run,
    env_with_devices,
    load_json,
    read_metrics,
    run_parts,
    tiny_argv,
    tiny_config,
    tiny_run,
    train_cmd,
    wait_until,
    without_timing,
)

import train
from training import command_line, measure, schedule


def test_a_run_writes_a_complete_run_directory(tmp_path_factory):
    tmp_path, result = tiny_run(tmp_path_factory)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # what train.py printed
    lines = read_metrics(tmp_path)
    assert [m["step"] for m in lines] == [5, 10, 15, 20]
    assert [("test_error" in m) for m in lines] == [False, True, False, True]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learns
    assert all(0 <= m["train_error"] <= 1 for m in lines)
    saved = load_json(tmp_path / "summary.json")
    assert saved == summary
    assert summary["status"] == "finished" and summary["name"] == "resnet-14"
    assert summary["final_test_error"] == lines[-1]["test_error"]
    assert summary["best_test_error"] == min(lines[1]["test_error"], lines[3]["test_error"])
    assert load_json(tmp_path / "config.json")["model"]["depth"] == 14
    blocks = load_json(tmp_path / "layer_responses.json")["blocks"]
    assert [b["stage"] for b in blocks] == [0, 0, 1, 1, 2, 2] and all(b["std"] > 0 for b in blocks)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_steps_epochs_and_boundaries_are_derived_from_the_final_config():
    c = tiny_config(num_epochs=3.0)
    s = schedule.derive_schedule(c, num_train=1437)
    assert s.steps_per_epoch == 1437 // 32 and s.total_steps == 3 * (1437 // 32)
    assert s.boundaries == (round(0.5 * s.total_steps), round(0.75 * s.total_steps))
    c = tiny_config(**{"schedule.boundaries_epochs": "(1, 2)"})
    assert schedule.derive_schedule(c, 1437).boundaries == (44, 88)
    c = tiny_config(**{"schedule.boundaries_steps": "(7, 9)", "batch_size": 64})
    s = schedule.derive_schedule(c, 1437)
    assert s.boundaries == (7, 9) and s.steps_per_epoch == 22
    lrs = [float(schedule.learning_rate(c, s, step, False)) for step in (0, 6, 7, 8, 9, 19)]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_cosine_and_warmup_schedules():
    c = tiny_config(**{"schedule.name": "cosine", "schedule.warmup_steps": 4})
    s = schedule.derive_schedule(c, 1437)
    lr = lambda step: float(schedule.learning_rate(c, s, step, False))  # noqa: E731
    np.testing.assert_allclose([lr(0), lr(1), lr(3)], [0.025, 0.05, 0.1], rtol=1e-5)
    np.testing.assert_allclose(lr(12), 0.1 * 0.5 * (1 + np.cos(np.pi * 8 / 16)), rtol=1e-5)
    np.testing.assert_allclose(lr(20), 0.0, atol=1e-7)


@pytest.mark.parametrize("threshold,warm", [(0.0, True), (1.01, False)])
def test_warmup_until_training_error_is_below_a_threshold(tmp_path, threshold, warm):
    """The paper's ResNet-110 rule: LR 0.01 until a batch's training error is below X."""
    c = tiny_config(num_steps=5, **{"schedule.warmup_until_error": threshold,
                                    "schedule.decay_factor": 1.0, "layer_responses": False})
    train.train_and_evaluate(c, str(tmp_path))
    lr = read_metrics(tmp_path)[-1]["lr"]
    assert lr == pytest.approx(0.01 if warm else 0.1)


def _final_params(workdir):
    from training.checkpoints import Checkpointer

    ckpt = Checkpointer(workdir, keep=3)
    step = ckpt.latest_step()
    restored = ckpt.manager.restore(step)
    return step, [np.asarray(x) for x in jax.tree.leaves(restored)]


def _last_logged_step(workdir):
    """The step of the last whole line of a metrics file being written (0 if none)."""
    try:
        text = (workdir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    whole = text[:text.rfind("\n") + 1].splitlines()
    return json.loads(whole[-1])["step"] if whole else 0


def _kill_when(workdir, written, what):
    """Starts the tiny run (checkpoints every 5 steps) and SIGKILLs it once ``written()``."""
    proc = subprocess.Popen(train_cmd(workdir, "--config.checkpoint_every_steps=5"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(written, proc=proc, what=what)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (workdir / "summary.json").exists(), f"the run had finished when {what}"


def test_killed_run_resumes_to_the_same_parameters_and_metrics(tmp_path, tmp_path_factory):
    """SIGKILL three times, then resume: the run ends as if never interrupted.

    The kills strike when the run has written something, not after a guessed
    sleep: during start-up and compilation (its config.json is written, no
    step taken), right as its first checkpoint lands (a save may be in
    flight), and between steps (a metrics line beyond its resume point).
    """
    full, _ = tiny_run(tmp_path_factory)  # trained in one go (checkpoints every 10 steps)
    killed = tmp_path / "killed"
    _kill_when(killed, lambda: (killed / "config.json").exists(), "config.json appeared")
    assert checkpoint_steps(killed) == []
    _kill_when(killed, lambda: checkpoint_steps(killed) != [], "a checkpoint appeared")
    resumed_from = checkpoint_steps(killed)[-1]
    _kill_when(killed, lambda: _last_logged_step(killed) > resumed_from,
               "a metrics line after the checkpoint appeared")
    out = subprocess.run(train_cmd(killed, "--config.checkpoint_every_steps=5"),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert without_timing(read_metrics(killed)) == without_timing(read_metrics(full))
    step_a, params_a = _final_params(full)
    step_b, params_b = _final_params(killed)
    assert step_a == step_b == 20
    for a, b in zip(params_a, params_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_a_checkpoint_and_the_rerun_finishes(tmp_path, capsys):
    """SIGTERM right after the first log line: a checkpoint, exit 143; the rerun resumes."""
    steps = 40  # a log line every 5 steps: the signal lands long before the end
    cmd = train_cmd(tmp_path, f"--config.num_steps={steps}", "--config.checkpoint_every_steps=20")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until((tmp_path / "metrics.jsonl").exists, proc=proc, what="the first metrics line")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "checkpoint saved" in err
    saved = checkpoint_steps(tmp_path)
    assert saved and saved[-1] % 5 == 0 and saved[-1] < steps
    assert read_metrics(tmp_path)[-1]["step"] == saved[-1]
    assert train.main(cmd[2:]) == 0  # the same command, run again
    said = capsys.readouterr().out.splitlines()
    assert said[:4] == [
        "loading digits ...", "data: digits, 1,437 training examples (in memory)",
        f"resuming from step {saved[-1]} of {steps} "
        f"(checkpoint {tmp_path / 'checkpoints' / str(saved[-1])})",
        f"compiling the training step of resnet-14 ({said[3].split('(')[1].split()[0]} "
        f"parameters); the first log line follows at step {saved[-1] + 5}"], said[:5]
    assert said[4].startswith(f"step {saved[-1] + 5}/{steps} ")
    logged = [m["step"] for m in read_metrics(tmp_path)]
    assert logged == list(range(5, steps + 1, 5))  # every logged step exactly once


def test_a_finished_run_run_again_says_so_and_writes_nothing(tmp_path, tmp_path_factory,
                                                            capsys):
    shared, result = tiny_run(tmp_path_factory)
    assert result.code == 0
    first = result.stdout.splitlines()
    assert first[0] == "loading digits ..." and not any("resuming" in x for x in first)
    tmp_path = copy_run(shared, tmp_path / "run")
    argv = tiny_argv(tmp_path)
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
             if p.is_file()}
    assert train.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    summary = load_json(tmp_path / "summary.json")
    assert out[0] == (f"already finished: {tmp_path} (step 20, final test error "
                      f"{100 * summary['final_test_error']:.2f}%); nothing to do")
    assert json.loads(out[1]) == summary and len(out) == 2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
            if p.is_file()} == files
    # another config is not "finished": it is refused as before
    assert train.main([*argv, "--config.num_steps=30"]) == 2


SHORT = {"num_steps": 4, "log_every_steps": 1, "eval_every_steps": 4,
         "checkpoint_every_steps": 4, "layer_responses": False}


def _losses(workdir, batch_norm, devices=None):
    """Each step's loss of a 4-step run: in this process (4 devices) or in one of ``devices``."""
    if devices is None:
        assert jax.device_count() == 4
        train.train_and_evaluate(tiny_config(batch_norm=batch_norm, **SHORT), str(workdir))
    else:
        out = subprocess.run(train_cmd(workdir, *(f"--config.{k}={v}" for k, v in SHORT.items()),
                                       f"--config.batch_norm={batch_norm}"),
                             env=env_with_devices(devices), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    return np.array([m["train_loss"] for m in read_metrics(workdir)])


def test_sync_batchnorm_matches_one_device_and_per_device_differs(tmp_path):
    one = _losses(tmp_path / "one", "per_device", devices=1)
    sync = _losses(tmp_path / "sync", "sync")
    per_device = _losses(tmp_path / "per", "per_device")
    np.testing.assert_allclose(sync, one, rtol=2e-5)
    assert np.abs(per_device - one).max() > 1e-3


def test_cifar10_end_to_end_through_the_real_tfds_path(tmp_path):
    import tensorflow_datasets as tfds

    c = command_line.load_config("configs/cifar10.py:resnet-8", {
        **TINY, "num_steps": "4", "log_every_steps": "2", "eval_every_steps": "4",
        "checkpoint_every_steps": "4", "val_examples": "16"})
    with tfds.testing.mock_data(num_examples=96):
        summary = train.train_and_evaluate(c, str(tmp_path))
    lines = read_metrics(tmp_path)
    assert summary["status"] == "finished" and lines[-1]["step"] == 4
    assert 0 <= lines[-1]["test_error"] <= 1 and "val_error" in lines[-1]
    assert summary["final_val_error"] == lines[-1]["val_error"]


IMAGENET_TINY = {
    "model.widths": "(4,8,16,32)", "batch_size": "8", "eval_batch_size": "8",
    "augment.crop_size": "24", "augment.scale_range": "(24,32)", "num_steps": "4",
    "log_every_steps": "2", "eval_every_steps": "4", "checkpoint_every_steps": "4",
}


def test_imagenet_streaming_eval_counts_every_example_once():
    """20 validation images, eval batches of 8 over 4 devices: padding must not count."""
    import jax.numpy as jnp
    import tensorflow_datasets as tfds

    from data.feeds import StreamingFeed
    from training import parallel

    def count_and_label_sum(state, batch):
        return jnp.stack([batch["mask"].sum(), (batch["label"] * batch["mask"]).sum()])

    c = command_line.load_config("configs/imagenet.py:resnet-18", IMAGENET_TINY)
    with tfds.testing.mock_data(num_examples=20):
        feed = StreamingFeed(c, parallel.make_mesh())
        labels = np.concatenate([b["label"] for b in tfds.as_numpy(
            tfds.load("imagenet2012", split="validation", batch_size=8))])
        count, label_sum = measure.reduce_split(feed, "test", count_and_label_sum, None)
    assert feed.num_train == 20
    assert count == 20 and label_sum == labels.sum()


def test_imagenet_end_to_end_through_the_streaming_tfds_path(tmp_path):
    import tensorflow_datasets as tfds

    c = command_line.load_config("configs/imagenet.py:resnet-18",
                                   {**IMAGENET_TINY, "layer_responses": "True",
                                    # 2 images per device at 1x1 in the last stage: keep
                                    # BN statistics global and steps small to stay finite.
                                    "batch_norm": "sync", "optimizer.lr": "0.01"})
    with tfds.testing.mock_data(num_examples=20):
        summary = train.train_and_evaluate(c, str(tmp_path))
    lines = read_metrics(tmp_path)
    assert summary["status"] == "finished" and [m["step"] for m in lines] == [2, 4]
    assert 0 <= lines[-1]["test_error"] <= 1 and np.isfinite(lines[-1]["train_loss"])
    assert 0 <= lines[-1]["dead_units"] <= 1  # measured on the stream's first test batch
    # 20 test images: the error is a whole number of them.
    assert lines[-1]["test_error"] * 20 == pytest.approx(round(lines[-1]["test_error"] * 20))
    blocks = load_json(tmp_path / "layer_responses.json")["blocks"]
    assert len(blocks) == 8 and all(0 < b["std"] < 1e3 for b in blocks)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.model.depth=57"], "6n+2"),
        (["--config.model.shortcut=D"], "allowed: A, B, C"),
        (["--config.optimizer.lr=-0.1"], "optimizer.lr must be a positive"),
        (["--config.optimizer.lr=nan"], "optimizer.lr must be a positive"),
        (["--config.optimizer.weight_decay=-1"], "weight_decay must be >= 0"),
        (["--config.num_steps=0"], "num_steps must be positive"),
        (["--config.batch_size=30"], "does not divide evenly across 4 devices"),
        (["--config.dataset=mnist"], "known: digits, cifar10"),
        (["--config.no_such_key=1"], "unknown config key 'no_such_key'"),
        (["--config.model.depth=abc"], "bad value 'abc'"),
        (["--config.eval_every_steps=7"], "multiple of log_every_steps"),
        (["--config.model.plain=True", "--config.model.shortcut=B"], "plain"),
        (["--config.model.family=imagenet", "--config.model.depth=40"], "18, 34, 50, 101, 152"),
    ],
)
def test_bad_input_is_one_error_line_and_no_run_directory(tmp_path, capsys, args, message):
    workdir = tmp_path / "run"
    code = train.main(["--config", "configs/digits.py:resnet-20", "--workdir", str(workdir),
                       *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not workdir.exists()


def test_resuming_with_a_different_config_is_refused(tmp_path, tmp_path_factory, capsys):
    workdir = copy_run(tiny_run(tmp_path_factory)[0], tmp_path / "run")
    (workdir / "summary.json").unlink()  # stopped, not finished: it would resume
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert train.main(tiny_argv(workdir, **{"optimizer.lr": 0.2})) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr: 0.1 -> 0.2" in err and "--allow-config-change" in err
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("loop_on_device", [False, True])
def test_training_loop_moves_nothing_between_host_and_device(loop_on_device):
    """In-memory data: after compilation, steps run under transfer_guard('disallow')."""
    parts = run_parts(tiny_config(loop_on_device=loop_on_device))
    state, chunk = parts.state, parts.chunk
    state, sums = chunk(state, 0)  # compiles
    with jax.transfer_guard("disallow"):
        state, sums = chunk(state, 5)
        state, sums = chunk(state, 10)
        jax.block_until_ready((state, sums))
        with pytest.raises(Exception, match="host-to-device"):  # the guard is armed
            jax.jit(lambda a: a + 1)(np.ones(3))
    assert int(state.step) == 15
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(sums))


def test_steps_and_evaluations_compile_once():
    """After the first chunk and the first evaluation, nothing is compiled again.

    Counted as lowerings to XLA: each program is lowered once, whether XLA
    then compiles it or the persistent cache has it already.
    """
    compiles = []

    def on_event(name, seconds, **kwargs):
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            compiles.append(seconds)

    parts = run_parts(tiny_config())
    state, chunk = parts.state, parts.chunk
    evaluate = lambda state: measure.evaluate(parts.feed, state)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        state, _ = chunk(state, 0)
        first = evaluate(state)
        after_first = len(compiles)
        for step in (5, 10):
            state, sums = chunk(state, step)
            later = evaluate(state)
        jax.block_until_ready((state, sums))
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert after_first > 0  # the listener sees compilations
    assert len(compiles) == after_first
    assert later["test_error"] is not None and first.keys() == later.keys()


def test_divergence_stops_the_run_and_keeps_what_was_written(tmp_path, capsys):
    """LR 0.1 for 10 steps, then 1e5: the loss blows up after the step-10 checkpoint."""
    argv = tiny_argv(tmp_path, num_steps=40, checkpoint_every_steps=5,
                     **{"schedule.boundaries_steps": "(10,)", "schedule.decay_factor": 1e6})
    code = train.main(argv)
    err = capsys.readouterr().err
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: diverged: loss is not finite at step ")
    bad_step = int(last.split("at step ")[1].split(";")[0])
    assert 10 <= bad_step < 40 and "last good checkpoint: step" in last
    summary = load_json(tmp_path / "summary.json")
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == bad_step
    steps = [m["step"] for m in read_metrics(tmp_path)]
    assert steps[:2] == [5, 10] and all(s <= bad_step for s in steps)
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert 10 in saved and all(s <= bad_step for s in saved)
    good = int(last.rsplit("step ", 1)[1])
    assert good in saved


def test_a_workdir_that_cannot_be_written_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = train.main(["--config", "configs/digits.py:resnet-20",
                       "--workdir", str(blocker / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write the run")


def test_an_unprepared_dataset_offline_is_one_error_line_saying_how_to_prepare_it(
        tmp_path, monkeypatch, capsys):
    """The real TFDS download path runs (no missing module) and fails on the network.

    Name resolution is refused and urllib3's retry back-off (about 200 s in
    all) is skipped, so this takes seconds, not minutes.
    """
    import socket

    import urllib3

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(urllib3.util.retry.Retry, "sleep", lambda self, response=None: None)
    workdir = tmp_path / "run"
    code = train.main(["--config", "configs/cifar10.py:resnet-20", "--workdir", str(workdir),
                       "--config.data_dir", str(tmp_path / "tfds")])
    err = capsys.readouterr().err.strip().splitlines()
    # TFDS's download progress bars come first; the run ends on the one error line.
    assert code == 2 and [line for line in err if line.startswith("error")] == err[-1:], err
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: dataset cifar10 is not prepared")
    assert f"tfds build cifar10 --data_dir {tmp_path / 'tfds'}" in err[-1]
    assert "ModuleNotFoundError" not in err[-1] and "ImportError" not in err[-1]
    assert not workdir.exists()
