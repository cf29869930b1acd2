"""A run directory under faults: torn metrics lines, a second trainer on the same run."""

import json
import os
import signal
import subprocess

import pytest
from conftest import copy_run, read_metrics, tiny_config, tiny_run, train_cmd, wait_until

import train
from training.run_dir import MetricsLog


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_unreadable_metrics_lines_are_skipped_and_every_readable_one_kept(tmp_path, capsys):
    line = lambda step: json.dumps({"step": step, "train_loss": 1.0 / step})  # noqa: E731
    _write_lines(tmp_path / "metrics.jsonl", [
        line(5), line(10)[:12], line(15), json.dumps({"train_loss": 2.0}), "[1, 2]",
        line(20), line(15), line(25)])
    log = MetricsLog(str(tmp_path), is_writer=True)
    assert [m["step"] for m in log.read()] == [5, 15, 20, 15, 25]
    assert capsys.readouterr().err == ""  # reading alone says nothing
    log.truncate_after(20)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ")
    assert "skipped 3 unreadable line(s) (line 2, 4, 5)" in err[0]
    kept = read_metrics(tmp_path)
    assert [m["step"] for m in kept] == [5, 15, 20]  # in order, each step once, none after 20
    assert kept[1]["train_loss"] == pytest.approx(1.0 / 15)


def test_a_torn_metrics_line_loses_no_other_line_on_resume(tmp_path, tmp_path_factory, capsys):
    config = tiny_config()
    tmp_path = copy_run(tiny_run(tmp_path_factory)[0], tmp_path / "run")
    before = read_metrics(tmp_path)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # step 10, an evaluation line, cut in half
    _write_lines(path, lines)
    (tmp_path / "summary.json").unlink()  # a stopped run, not a finished one
    capsys.readouterr()
    summary = train.train_and_evaluate(config, str(tmp_path))
    err = [e for e in capsys.readouterr().err.splitlines() if e.startswith("warning")]
    assert len(err) == 1 and "(line 2)" in err[0]
    assert read_metrics(tmp_path) == [before[0], *before[2:]]
    assert summary["final_test_error"] == before[-1]["test_error"]


def test_a_second_trainer_on_a_running_run_stops_at_once_and_writes_nothing(tmp_path, capsys):
    cmd = train_cmd(tmp_path, "--config.num_steps=400", "--config.checkpoint_every_steps=200")
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def events():
            return sorted(n for n in os.listdir(tmp_path) if n.startswith("events.out"))

        wait_until(lambda: (tmp_path / "metrics.jsonl").exists() and events(), proc=first,
                   what="the first trainer's first log line")
        before = events()
        config = (tmp_path / "config.json").read_text()
        code = train.main(cmd[2:])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0] == f"error: run directory {tmp_path} is in use by process {first.pid}"
        assert events() == before  # no TensorBoard file of its own
        assert (tmp_path / "config.json").read_text() == config
        assert first.poll() is None  # the first one trains on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel released the dead trainer's lock: the run resumes.
    cmd = train_cmd(tmp_path, "--config.num_steps=10", "--allow-config-change")
    assert train.main(cmd[2:]) == 0, capsys.readouterr().err
