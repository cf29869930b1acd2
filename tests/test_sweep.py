"""Tests of the sweep launcher: expansion, names, dry run, skip/resume, failures, locks."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiments import sweep

STUDY_CONFIG = textwrap.dedent('''
    """A tiny study for tests."""
    from configs import digits

    def get_config(arg=None):
        return digits.get_config("resnet-20")

    def sweep(add, arg=None):
        for plain in (True, False):
            for depth in (20, 56):
                add(**{"model.depth": depth, "model.plain": plain})
''')

# Stands in for train.py in launcher tests: records its arguments, writes summary.json,
# and fails for depth 56 plain nets.
FAKE_TRAIN = textwrap.dedent('''
    import json, os, sys
    args = sys.argv[1:]
    workdir = args[args.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "calls.txt"), "a") as f:
        f.write(" ".join(args) + "\\n")
    if "--config.model.depth=56" in args and "--config.model.plain=True" in args:
        print("error: boom", file=sys.stderr)
        sys.exit(1)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({"status": "finished"}, f)
''')


@pytest.fixture
def files(tmp_path):
    config = tmp_path / "study.py"
    config.write_text(STUDY_CONFIG)
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    return config, fake


def test_expansion_of_the_file_sweep_times_command_line_lists(files):
    config, _ = files
    runs = sweep.expand(str(config), [("seed", ["0", "1"])])
    assert len(runs) == 8
    assert runs[0] == {"model.depth": "20", "model.plain": "True", "seed": "0"}
    assert runs[1] == {"model.depth": "20", "model.plain": "True", "seed": "1"}
    assert {sweep.run_name(r) for r in runs} >= {"depth=56,plain=False,seed=1"}


def test_ad_hoc_sweep_of_a_single_run_config():
    runs = sweep.expand("configs/digits.py:resnet-20",
                        [("optimizer.lr", ["0.05", "0.1"]), ("seed", ["0", "1", "2"])])
    assert len(runs) == 6 and runs[-1] == {"optimizer.lr": "0.1", "seed": "2"}
    assert sweep.expand("configs/digits.py", []) == [{}]
    assert sweep.run_name({}) == "run"


def test_run_names_are_sanitised_and_stay_in_the_study(tmp_path):
    for value in ("../../etc", "a/b", "x y'z", "..", "/abs"):
        name = sweep.run_name({"model.stem": value})
        assert "/" not in name and ".." not in name and " " not in name
        assert os.path.dirname(os.path.realpath(tmp_path / name)) == os.path.realpath(tmp_path)
    assert sweep.run_name({"a.lr": 1, "b.lr": 2}) == "a.lr=1,b.lr=2"  # ambiguous -> full key
    assert len(sweep.run_name({"k": "v" * 500})) <= sweep.MAX_NAME


def test_dry_run_prints_one_runnable_command_per_run(files, tmp_path, capsys):
    config, _ = files
    code = sweep.main([str(config), "--workdir", str(tmp_path / "s"), "--dry-run",
                       "--config.num_steps=7"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    args = shlex.split(lines[1])
    assert args[1].endswith("train.py") and args[args.index("--config") + 1] == str(config)
    assert args[args.index("--workdir") + 1] == str(tmp_path / "s" / "depth=56,plain=True")
    assert "--config.num_steps=7" in args and "--config.model.depth=56" in args
    assert not (tmp_path / "s").exists()


def _launch(config, fake, study, *extra):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", str(config), "--workdir",
                           str(study), "--train-script", str(fake), "--no-report", *extra],
                          capture_output=True, text=True)


def test_failures_do_not_stop_the_study_and_finished_runs_are_skipped(files, tmp_path):
    config, fake = files
    study = tmp_path / "study"
    out = _launch(config, fake, study, "--workers", "2")
    assert out.returncode == 1
    assert "3 finished" in out.stdout and "1 failed" in out.stdout
    assert "failed: depth=56,plain=True: error: boom" in out.stdout
    failed = json.loads((study / "depth=56,plain=True" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "error: boom"
    out = _launch(config, fake, study)
    calls = {d.name: len((d / "calls.txt").read_text().splitlines())
             for d in study.iterdir() if d.is_dir()}
    assert calls == {"depth=20,plain=True": 1, "depth=20,plain=False": 1,
                     "depth=56,plain=False": 1, "depth=56,plain=True": 2}
    assert out.stdout.count("[skip]") == 3
    assert json.loads((study / "sweep.json").read_text())["runs"][0]["name"] == \
        "depth=20,plain=True"


def test_a_live_lock_skips_the_run_and_a_stale_one_is_taken_over(files, tmp_path):
    config, fake = files
    study = tmp_path / "study"
    live, stale = study / "depth=20,plain=True", study / "depth=20,plain=False"
    live.mkdir(parents=True)
    stale.mkdir()
    import socket

    host = socket.gethostname()
    (live / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": host}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (stale / ".lock").write_text(json.dumps({"pid": int(dead), "host": host}))
    out = _launch(config, fake, study)
    assert "[locked] depth=20,plain=True" in out.stdout
    assert not (live / "calls.txt").exists()
    assert (stale / "calls.txt").exists() and not (stale / ".lock").exists()
    assert sweep.acquire_lock(str(study / "new"))
    assert not sweep.acquire_lock(str(study / "new"))  # held by this live process
    sweep.release_lock(str(study / "new"))
    assert not (study / "new" / ".lock").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["configs/nope.py"], "does not exist"),
        (["configs/digits.py", "--sweep", "seed"], "must look like key=v1,v2"),
        (["configs/digits.py", "--sweep", "no_key=1,2"], "unknown config key 'no_key'"),
        (["configs/digits.py", "--workers", "0"], "--workers must be >= 1"),
        (["configs/degradation.py:mnist"], "unknown study 'mnist'"),
        (["configs/digits.py", "--config.model.depth=57"], "6n+2"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", *args, "--workdir",
                          str(tmp_path / "s")], capture_output=True, text=True)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and message in err[0], out.stderr
    assert not (tmp_path / "s").exists()


def test_real_sweep_runs_train_py_and_writes_the_report(tmp_path):
    study = tmp_path / "study"
    tiny = ["--config.model.widths=(4,8,16)", "--config.batch_size=32",
            "--config.num_steps=4", "--config.log_every_steps=2",
            "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"]
    out = subprocess.run([sys.executable, "-m", "experiments.sweep",
                          "configs/digits.py:resnet-8", "--workdir", str(study),
                          "--sweep", "model.plain=True,False", *tiny],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("plain=True", "plain=False"):
        summary = json.loads((study / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 4
    assert (study / "results.md").exists() and (study / "curves.png").exists()
    assert "plain-8" in Path(study / "results.md").read_text()


def _alive(pid):
    """True while ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_launcher_leaves_no_orphan_and_a_rerun_resumes_its_run(tmp_path):
    import signal
    import time

    from conftest import TINY, read_metrics

    study = tmp_path / "study"
    args = [*(f"--config.{k}={v}" for k, v in TINY.items()), "--config.num_steps=400",
            "--config.checkpoint_every_steps=20", "--config.layer_responses=False"]
    cmd = [sys.executable, "-m", "experiments.sweep", "configs/digits.py:resnet-14",
           "--workdir", str(study), "--no-report", *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = study / "run" / ".train.lock"
    deadline = time.time() + 120
    while not (study / "run" / "metrics.jsonl").exists():
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.1)
    trainer = int(lock.read_text())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 60
    while _alive(trainer):  # the parent-death SIGTERM: checkpoint, then exit
        assert time.time() < deadline, "the trainer outlived its launcher"
        time.sleep(0.1)
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[finished] run" in out.stdout
    steps = [m["step"] for m in read_metrics(study / "run")]
    assert steps == list(range(5, 401, 5))  # every logged step once: no second trainer
