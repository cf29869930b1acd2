"""Tests of the sweep launcher: expansion, names, dry run, skip/resume, failures, locks,
what the console shows."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import launch_sweep

from experiments import sweep, sweep_console

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

# Stands in for train.py in launcher tests: records its arguments, prints a start-up line
# and two progress lines as train.py does off a terminal, writes summary.json, and fails
# for depth 56 plain nets.
FAKE_TRAIN = textwrap.dedent('''
    import json, os, sys
    args = sys.argv[1:]
    workdir = args[args.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "calls.txt"), "a") as f:
        f.write(" ".join(args) + "\\n")
    print("data: fake")
    print("step 1/2 loss=0.5 err=0.1 img/s=10")
    print("step 2/2 loss=0.4 err=0.0 img/s=10")
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


def test_failures_do_not_stop_the_study_and_finished_runs_are_skipped(files, tmp_path):
    config, fake = files
    study = tmp_path / "study"
    out = launch_sweep(config, fake, study, "--workers", "2")
    assert out.returncode == 1
    assert "3 finished" in out.stdout and "1 failed" in out.stdout
    assert "failed: depth=56,plain=True: error: boom" in out.stdout
    failed = json.loads((study / "depth=56,plain=True" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "error: boom"
    out = launch_sweep(config, fake, study)
    calls = {d.name: len((d / "calls.txt").read_text().splitlines())
             for d in study.iterdir() if d.is_dir()}
    assert calls == {"depth=20,plain=True": 1, "depth=20,plain=False": 1,
                     "depth=56,plain=False": 1, "depth=56,plain=True": 2}
    assert out.stdout.count("[skip]") == 3
    assert json.loads((study / "sweep.json").read_text())["runs"][0]["name"] == \
        "depth=20,plain=True"


def test_off_a_terminal_each_run_names_its_log_and_ends_before_the_next_starts(files,
                                                                             tmp_path):
    config, fake = files
    study = tmp_path / "study"
    out = launch_sweep(config, fake, study)  # one worker: the runs go one after the other
    names = ["depth=20,plain=True", "depth=56,plain=True", "depth=20,plain=False",
             "depth=56,plain=False"]
    ends = ["[finished]", "[failed]", "[finished]", "[finished]"]
    events = [line.split(" ", 2)[:2] for line in out.stdout.splitlines()
              if line.startswith("[") and not line.startswith("[progress]")]
    assert events == [e for name, end in zip(names, ends, strict=True)
                      for e in (["[start]", name], [end, name])], out.stdout
    for name in names:
        log = os.path.join(os.path.realpath(study), name, "train.log")
        assert f"[start] {name} (log: {log})\n" in out.stdout
        assert "step 2/2 loss=0.4" in Path(log).read_text()


def test_the_log_reader_takes_the_last_whole_step_line_of_the_new_bytes(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("step 40/40 loss=0.1\n")  # an earlier attempt's, before the launch
    tail = sweep_console.LogTail(str(log), offset=log.stat().st_size)
    assert not tail.poll() and tail.step is None
    _append(log, "data: digits\ncompiling ...\nresuming from step 10\nstep 15/40 loss=0.5\n"
                 "warning: step 99/100\nstep 20/40 loss=0.4 err=0.1\nstep 2")
    assert tail.poll()
    assert (tail.step, tail.total, tail.line) == (20, 40, "step 20/40 loss=0.4 err=0.1")
    assert not tail.poll()  # nothing new: the unfinished line waits for its newline
    _append(log, "5/40 loss=0.3\n")
    assert tail.poll() and (tail.step, tail.total) == (25, 40)


def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


def test_off_a_terminal_a_run_gets_a_progress_line_at_each_quarter_and_every_10_min(tmp_path):
    import io

    now = [0.0]
    out = io.StringIO()
    console = sweep_console.Console(2, tty=False, stream=out, clock=lambda: now[0])
    log = tmp_path / "train.log"
    log.write_text("")
    console.started("a", str(log), 0, resumed=False)
    for step in (10, 20, 30, 40, 50, 60, 70, 80):  # one step a second
        _append(log, f"step {step}/100 loss=1.0\n")
        now[0] = step
        console.poll()
    _append(log, "step 85/100 loss=0.5\n")
    now[0] = 80 + sweep_console.REPORT_EVERY_S
    console.poll()
    assert out.getvalue().splitlines() == [
        "[progress] a: step 30/100 loss=1.0 (30%, ~70 s left)",
        "[progress] a: step 50/100 loss=1.0 (50%, ~50 s left)",
        "[progress] a: step 80/100 loss=1.0 (80%, ~20 s left)",
        "[progress] a: step 85/100 loss=0.5 (85%, ~2 min left)"]
    assert console.counts() == (85, 200)  # the run not yet started counts as long as 'a'
    console.finished("a", "finished")
    assert console.counts() == (100, 200)


def test_on_a_terminal_one_bar_counts_the_study_steps_and_lines_go_above_it(tmp_path):
    import io

    out = io.StringIO()
    console = sweep_console.Console(3, tty=True, stream=out)
    console.skipped("done", 100)
    log = tmp_path / "train.log"
    log.write_text("")
    console.started("b", str(log), 0, resumed=True)
    console.start()
    try:
        assert console.counts() == (100, 300)
        _append(log, "resuming from step 30\nstep 40/50 loss=1.0\n")
        console.poll()
        assert console.counts() == (140, 225)  # the third run: as long as the mean, 75
        assert console.bar.initial == 140  # done before this launcher: not in the speed
        sweep_console.say("[start] c (log: c/train.log)")
        shown = str(console.bar)
        assert shown.startswith("1/3 runs:  62%") and "140/225" in shown, shown
        assert shown.endswith("b 40/50]"), shown
        console.finished("b", "failed")  # a failed run counts the steps it did
        assert console.counts() == (140, 215)
    finally:
        console.close()
    assert "[start] c (log: c/train.log)\n" in out.getvalue()
    assert sweep_console._CONSOLE is None


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
    out = launch_sweep(config, fake, study)
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
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    code = sweep.main([*args, "--workdir", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "s").exists()


def test_dry_run_commands_and_the_launcher_work_from_any_directory(tmp_path):
    """A config path relative to a directory outside the repository, with its :ARG."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    config = os.path.relpath(os.path.join(sweep.REPO, "configs", "digits.py"), here)
    tiny = ["--config.model.widths=(4,8,16)", "--config.batch_size=32",
            "--config.num_steps=4", "--config.log_every_steps=2",
            "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"]
    cmd = [sys.executable, "-m", "experiments.sweep", f"{config}:resnet-8", "--workdir", "study",
           "--sweep", "model.plain=True,False", *tiny]
    env = {**os.environ, "PYTHONPATH": sweep.REPO}
    dry = subprocess.run([*cmd, "--dry-run"], cwd=here, env=env, capture_output=True,
                         text=True)
    assert dry.returncode == 0, dry.stderr
    commands = [shlex.split(line) for line in dry.stdout.splitlines()]
    study = os.path.realpath(here / "study")
    assert len(commands) == 2
    for args in commands:
        path, arg = args[args.index("--config") + 1].rsplit(":", 1)
        assert os.path.isabs(path) and os.path.isfile(path) and arg == "resnet-8"
        assert os.path.isabs(args[0]) and os.path.isabs(args[1])
        assert os.path.dirname(args[args.index("--workdir") + 1]) == study
        assert set(tiny) <= set(args)
    assert not os.path.exists(study)
    env_without = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    first = subprocess.run(commands[0], cwd=elsewhere, env=env_without, capture_output=True,
                           text=True)  # a printed command, run from yet another directory
    assert first.returncode == 0, first.stdout + first.stderr
    # The launcher, started where the dry run was: it runs its trainers in the repository,
    # so the config path it gives them must not depend on where it was started.
    out = subprocess.run(cmd, cwd=here, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[skip] plain=True: already finished" in out.stdout
    assert f"[start] plain=False (log: {study}/plain=False/train.log)" in out.stdout
    for name in ("plain=True", "plain=False"):
        summary = json.loads(Path(study, name, "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 4
    assert Path(study, "results.md").exists() and Path(study, "curves.png").exists()
    assert "plain-8" in Path(study, "results.md").read_text()


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

    from conftest import TINY, read_metrics, wait_until

    study = tmp_path / "study"
    steps = 100  # the kill comes at the first log line (step 5), long before the end
    args = [*(f"--config.{k}={v}" for k, v in TINY.items()), f"--config.num_steps={steps}",
            "--config.checkpoint_every_steps=20", "--config.layer_responses=False"]
    cmd = [sys.executable, "-m", "experiments.sweep", "configs/digits.py:resnet-14",
           "--workdir", str(study), "--no-report", *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = study / "run" / ".train.lock"
    wait_until((study / "run" / "metrics.jsonl").exists, proc=launcher,
               what="the trainer's first log line")
    trainer = int(lock.read_text())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    wait_until(lambda: not _alive(trainer), timeout=60,  # the parent-death SIGTERM
               what="the trainer's end (it outlived its launcher)")
    assert (study / "run" / "checkpoints").is_dir()  # it checkpointed before it stopped
    assert not (study / "run" / "summary.json").exists()  # stopped mid-run, not finished
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[finished] run" in out.stdout
    assert "[start] run (resuming from step " in out.stdout  # said, not a fresh start
    logged = [m["step"] for m in read_metrics(study / "run")]
    assert logged == list(range(5, steps + 1, 5))  # every logged step once: no second trainer


def test_the_launcher_imports_no_jax_flax_orbax_or_tensorflow():
    """It plans, locks and follows runs; validation that needs JAX runs in a trainer process."""
    heavy = ("jax", "flax", "orbax", "optax", "tensorflow", "tensorflow_datasets")
    out = subprocess.run([sys.executable, "-c", "import sys, experiments.sweep; "
                          f"print([m for m in {heavy!r} if m in sys.modules])"],
                         capture_output=True, text=True, cwd=sweep.REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
