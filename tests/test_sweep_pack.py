"""Tests of the sweep's packs (--pack): grouping, commands, the config file's default, the
launcher with a fake pack trainer, and the measured pack size (experiments/pack_size.py)."""

import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import launch_sweep, tiny_config

from experiments import pack_size, study_plan, sweep
from training import command_line, pack
from training.run_dir import read_summary

# Two networks (depth 20 and 56) times three seeds, in the order the seeds come; pack(arg)
# says the default --pack.
STUDY_CONFIG = textwrap.dedent('''
    """A tiny study for tests."""
    from configs import digits

    def get_config(arg=None):
        return digits.get_config("resnet-20")

    def sweep(add, arg=None):
        for seed in (0, 1, 2):
            for depth in (20, 56):
                add(**{"model.depth": depth, "seed": seed})

    def pack(arg=None):
        return {None: None, "two": 2, "auto": "auto", "bad": 0}[arg]
''')

# Stands in for train.py: records its arguments in each of its run directories, prints two
# progress lines and a warning, writes each run's summary (seed 1 diverges: exit 3), and
# fails for depth 56 (exit 1) without writing any summary.
FAKE_PACK_TRAIN = textwrap.dedent('''
    import json, os, sys
    args = sys.argv[1:]
    runs, i = [], 0
    while i < len(args):
        if args[i] == "--run":
            j = i + 2
            while j < len(args) and not args[j].startswith("--"):
                j += 1
            runs.append((args[i + 1], args[i + 2:j]))
            i = j
        elif args[i] == "--workdir":
            runs.append((args[i + 1], [a[9:] for a in args if a.startswith("--config.seed")]))
            i += 2
        else:
            i += 1
    for workdir, _ in runs:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "calls.txt"), "a") as f:
            f.write(" ".join(args) + "\\n")
    print("step 1/2 loss=0.5 err=0.1 img/s=10", flush=True)
    print("step 2/2 loss=0.4 err=0.0 img/s=10", flush=True)
    if "--config.model.depth=56" in args:
        print("error: boom", file=sys.stderr)
        sys.exit(1)
    diverged = False
    for workdir, own in runs:
        status = "diverged" if "seed=1" in own else "finished"
        diverged |= status == "diverged"
        summary = {"status": status, "steps": 2}
        if status == "diverged":
            summary["error"] = "loss is not finite at step 2"
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
    print("warning: fake", file=sys.stderr)
    sys.exit(3 if diverged else 0)
''')


@pytest.fixture
def files(tmp_path):
    config = tmp_path / "study.py"
    config.write_text(STUDY_CONFIG)
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_PACK_TRAIN)
    return config, fake


def _plan(config, study, swept=(), **overrides):
    return sweep.plan(str(config), str(study), {k: str(v) for k, v in overrides.items()},
                      list(swept), sys.executable, "train.py")


def _packs(runs, size):
    return study_plan.make_packs(runs, size, python=sys.executable, train_script="/t.py",
                                  config="/c.py")


def _names(packs):
    return [[run.name for run in p.runs] for p in packs]


def test_runs_of_one_network_pack_in_plan_order_in_chunks_of_at_most_k(files, tmp_path):
    config, _ = files
    runs = _plan(config, tmp_path / "s")
    assert [r.name for r in runs][:3] == ["depth=20,seed=0", "depth=56,seed=0",
                                          "depth=20,seed=1"]
    assert _names(_packs(runs, 2)) == [["depth=20,seed=0", "depth=20,seed=1"],
                                       ["depth=56,seed=0", "depth=56,seed=1"],
                                       ["depth=20,seed=2"], ["depth=56,seed=2"]]
    assert _names(_packs(runs, 8)) == [[f"depth={d},seed={s}" for s in (0, 1, 2)]
                                       for d in (20, 56)]
    assert _names(_packs(runs, 1)) == [[r.name] for r in runs]  # --pack 1: the plan's order
    assert [p.index for p in _packs(runs, 2)] == [0, 1, 2, 3]
    # A function of the group's runs gives each network its own K (--pack auto).
    sized = _packs(runs, lambda group: 3 if "depth=20" in group[0].name else 1)
    assert _names(sized)[0] == ["depth=20,seed=0", "depth=20,seed=1", "depth=20,seed=2"]
    assert len(sized) == 4


def test_pack_keys_share_a_pack_and_other_keys_do_not(tmp_path):
    runs = _plan("configs/digits.py:resnet-20", tmp_path / "s",
                 [("optimizer.lr", ["0.1", "0.05"]), ("model.plain", ["True", "False"]),
                  ("data_seed", ["0", "1"])])
    packs = _packs(runs, 16)
    assert _names(packs) == [
        ["lr=0.1,plain=True,data_seed=0", "lr=0.1,plain=True,data_seed=1",
         "lr=0.05,plain=True,data_seed=0", "lr=0.05,plain=True,data_seed=1"],
        ["lr=0.1,plain=False,data_seed=0", "lr=0.1,plain=False,data_seed=1",
         "lr=0.05,plain=False,data_seed=0", "lr=0.05,plain=False,data_seed=1"]]
    # data_seed selects the data with a validation split: it splits the packs then.
    runs = _plan("configs/digits.py:resnet-20", tmp_path / "v",
                 [("data_seed", ["0", "1"]), ("seed", ["0", "1"])], val_examples=100)
    assert _names(_packs(runs, 16)) == [["data_seed=0,seed=0", "data_seed=0,seed=1"],
                                        ["data_seed=1,seed=0", "data_seed=1,seed=1"]]


def test_streamed_datasets_and_seeds_beyond_int32_never_pack():
    streamed = command_line.load_config("configs/imagenet.py:resnet-18")
    assert pack.group_of(streamed) is None
    assert pack.group_of(tiny_config(seed=2**31)) is None
    assert pack.group_of(tiny_config(seed=5)) == pack.group_of(tiny_config())
    runs = [study_plan.Run(f"r{i}", {}, f"/w/r{i}", ["lone", str(i)], {}, None)
            for i in range(3)]
    packs = _packs(runs, 4)
    assert _names(packs) == [["r0"], ["r1"], ["r2"]] and packs[1].command() == ["lone", "1"]


def _dry_run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", *args, "--dry-run"],
                          capture_output=True, text=True)


def test_dry_run_prints_one_command_per_pack_that_parses_back(files, tmp_path):
    config, _ = files
    study = tmp_path / "s"
    out = _dry_run(str(config), "--workdir", str(study), "--pack", "2",
                   "--config.num_steps=7")
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert len(commands) == 4
    lone = commands[2]  # depth 20, seed 2: a pack of one is today's command
    assert lone[lone.index("--workdir") + 1] == str(study / "depth=20,seed=2")
    assert {"--config.num_steps=7", "--config.model.depth=20", "--config.seed=2"} <= set(lone)
    assert "--run" not in lone
    for command, depth in ((commands[0], 20), (commands[1], 56)):
        assert os.path.isabs(command[1]) and command[1].endswith("train.py")
        args = command_line.parse_train_args(command[2:])
        assert args.config == str(config) and args.workdir is None
        assert args.overrides == {"num_steps": "7", "model.depth": str(depth)}
        assert args.runs == [(str(study / f"depth={depth},seed={s}"), {"seed": str(s)})
                             for s in (0, 1)]
        for _, own in args.runs:  # each run's config is the one the plan validated
            assert command_line.load_config(args.config, {**args.overrides, **own}).seed == \
                int(own["seed"])
    assert not study.exists()


def test_the_degradation_study_packs_the_seeds_of_each_network(tmp_path):
    out = _dry_run("configs/degradation.py:digits,seeds=3", "--workdir", str(tmp_path / "x"),
                   "--pack", "3")
    commands = out.stdout.splitlines()
    assert out.returncode == 0 and len(commands) == 4, out.stderr
    for line in commands:
        args = command_line.parse_train_args(shlex.split(line)[2:])
        assert [own for _, own in args.runs] == [{"seed": str(s)} for s in (0, 1, 2)]
        assert {"model.depth", "model.plain"} <= set(args.overrides)
    assert pack_size.default_pack("configs/degradation.py:cifar10,seeds=5") == "auto"
    assert pack_size.default_pack("configs/degradation.py:cifar10") == 1
    assert pack_size.default_pack("configs/degradation.py") == 1
    assert pack_size.default_pack("configs/digits.py") == 1  # no pack(): 1


def test_pack_defaults_to_the_config_files_and_auto_packs_on_cpu_unmeasured(files, tmp_path):
    config, _ = files
    study = str(tmp_path / "s")
    assert len(_dry_run(str(config), "--workdir", study).stdout.splitlines()) == 6
    assert len(_dry_run(f"{config}:two", "--workdir", study).stdout.splitlines()) == 4
    assert len(_dry_run(f"{config}:two", "--workdir", study, "--pack", "1")
               .stdout.splitlines()) == 6
    auto = _dry_run(f"{config}:auto", "--workdir", study)  # the probe runs in a subprocess
    assert auto.returncode == 0, auto.stderr
    assert len(auto.stdout.splitlines()) == 2 and auto.stdout.count("--run") == 6
    assert auto.stderr.count("pack auto: 3 on CPU (not measured") == 1  # one line, one probe


@pytest.mark.parametrize("arg,args,message", [
    ("", ["--pack", "0"], "--pack must be a positive integer or 'auto', got '0'"),
    ("", ["--pack", "two"], "--pack must be a positive integer or 'auto', got 'two'"),
    ("", ["--pack"], "expected one argument"),
    (":bad", [], "must be a positive integer or 'auto', got 0"),  # the file's pack(arg)
])
def test_a_bad_pack_is_one_error_line(files, tmp_path, arg, args, message):
    config, _ = files
    out = _dry_run(f"{config}{arg}", "--workdir", str(tmp_path / "s"), *args)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and message in err[0], out.stderr
    assert err[0].startswith("error: ")


def test_auto_probes_only_groups_with_runs_left_and_a_failed_probe_means_no_packing(tmp_path):
    import io
    import shutil

    runs = [study_plan.Run(f"s{i}", {}, str(tmp_path / f"s{i}"), [], {"seed": str(i)}, "g")
            for i in range(3)]
    for run in runs[:2]:
        os.makedirs(run.workdir)
        Path(run.workdir, "summary.json").write_text('{"status": "finished"}')
    out = io.StringIO()
    auto = pack_size.AutoSize(shutil.which("false"), "configs/digits.py", dict(os.environ),
                                out)
    assert auto(runs) == 1 and out.getvalue() == ""  # one run left: nothing to measure
    Path(runs[1].workdir, "summary.json").unlink()
    assert auto(runs) == 1
    assert out.getvalue() == "pack auto: the probe of s0 failed (exit status 1): no packing\n"


def test_one_trainer_per_pack_each_run_with_its_own_log_lock_and_status(files, tmp_path):
    config, fake = files
    study = tmp_path / "study"
    done, held = study / "depth=20,seed=0", study / "depth=56,seed=2"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"status": "finished", "steps": 2}))
    held.mkdir()
    (held / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    out = launch_sweep(config, fake, study, "--pack", "3", "--workers", "2")
    assert out.returncode == 1, out.stdout + out.stderr  # the depth-56 pack failed
    assert "6 runs in 2 packs" in out.stdout
    assert "[skip] depth=20,seed=0: already finished" in out.stdout
    assert "[locked] depth=56,seed=2" in out.stdout
    assert "sweep done: 1 diverged, 2 failed, 2 finished, 1 locked" in out.stdout
    # The finished run and the locked one are dropped from their packs' commands.
    for name, others in (("depth=20,seed=1", ["depth=20,seed=1", "depth=20,seed=2"]),
                         ("depth=56,seed=0", ["depth=56,seed=0", "depth=56,seed=1"])):
        calls = (study / name / "calls.txt").read_text().splitlines()
        args = command_line.parse_train_args(shlex.split(calls[0]))
        assert len(calls) == 1 and [d for d, _ in args.runs] == [str(study / o) for o in others]
    assert not (done / "calls.txt").exists() and not (held / "calls.txt").exists()
    assert (held / ".lock").exists()  # not this launcher's to remove
    # Each run its own log, holding the pack's whole output, stderr included.
    for name in ("depth=20,seed=1", "depth=20,seed=2", "depth=56,seed=0", "depth=56,seed=1"):
        log = study / name / "train.log"
        text = log.read_text()
        assert text.startswith("step 1/2") and "step 2/2 loss=0.4" in text, name
        assert text.count("error: boom" if "56" in name else "warning: fake") == 1  # once
        assert f"[start] {name} (log: {log}; pack " in out.stdout
        assert not (study / name / ".lock").exists()
    # Each run its own status: from its summary, or recorded when the trainer left none.
    status = {n: read_summary(str(study / n)) for n in
              ("depth=20,seed=1", "depth=20,seed=2", "depth=56,seed=0", "depth=56,seed=1")}
    assert status["depth=20,seed=1"]["status"] == "diverged"
    assert "[diverged] depth=20,seed=1 (" in out.stdout
    assert "loss is not finite at step 2" in out.stdout
    assert status["depth=20,seed=2"]["status"] == "finished"
    for name in ("depth=56,seed=0", "depth=56,seed=1"):
        assert status[name]["status"] == "failed" and status[name]["error"] == "error: boom"
        assert f"failed: {name}: error: boom" in out.stdout
    # sweep.json: every run's pack and the pack's command as planned.
    recorded = json.loads((study / "sweep.json").read_text())
    assert recorded["pack"] == 3
    packs = {r["name"]: (r["pack"], r["command"]) for r in recorded["runs"]}
    assert packs["depth=20,seed=0"][0] == packs["depth=20,seed=2"][0] == 0
    assert packs["depth=56,seed=1"][0] == 1
    planned = command_line.parse_train_args(packs["depth=20,seed=2"][1][2:])
    assert len(planned.runs) == 3


def test_a_pack_of_one_is_a_plain_run(files, tmp_path):
    config, fake = files
    study = tmp_path / "study"
    out = launch_sweep(config, fake, study)  # the file's pack(): None, so 1
    assert "[start] depth=20,seed=0 (log: " in out.stdout and "; pack" not in out.stdout
    assert "6 runs in " in out.stdout and "packs" not in out.stdout
    calls = (study / "depth=20,seed=0" / "calls.txt").read_text()
    assert "--workdir" in calls and "--run" not in calls


def test_auto_pack_size_on_cpu_and_for_streamed_data_is_not_measured(capsys):
    def never(config, k):
        raise AssertionError("measured")

    assert pack_size.auto_pack_size(tiny_config(), 8, measure_fn=never) == 4  # JAX's: cpu
    assert "pack auto: 4 on CPU (not measured" in capsys.readouterr().out
    assert pack_size.auto_pack_size(tiny_config(), 3, "cpu", measure_fn=never) == 3
    streamed = command_line.load_config("configs/imagenet.py:resnet-18")
    assert pack_size.auto_pack_size(streamed, 8, "gpu", measure_fn=never) == 1
    assert "in-memory dataset" in capsys.readouterr().out
    assert pack_size.auto_pack_size(tiny_config(), 1, "gpu", measure_fn=never) == 1


def test_auto_pack_size_takes_the_largest_k_within_5_percent_and_stops_at_oom(capsys):
    assert pack_size.candidates(5) == [1, 2, 4, 5]
    assert pack_size.candidates(40) == [1, 2, 4, 8, 16]
    assert pack_size.candidates(2) == [1, 2]
    tried = []

    def fake(rates):
        def measure(config, k):
            tried.append(k)
            if rates[k] is None:
                raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
            return rates[k]
        return measure

    rates = {1: 100.0, 2: 190.0, 4: 380.0, 8: None, 16: 999.0}
    assert pack_size.auto_pack_size(tiny_config(), 16, "gpu", measure_fn=fake(rates)) == 4
    assert tried == [1, 2, 4, 8]
    line = capsys.readouterr().out.strip()
    assert "K=4: 380" in line and "K=8: out of memory" in line and line.endswith(
        "-> packs of 4 (the largest within 5% of the best)")
    rates = {1: 100.0, 2: 199.0, 4: 200.0, 8: 191.0, 16: 150.0}
    assert pack_size.auto_pack_size(tiny_config(), 16, "gpu", measure_fn=fake(rates)) == 8
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):  # the lone run must fit
        pack_size.auto_pack_size(tiny_config(), 4, "gpu", measure_fn=fake({1: None}))

    def broken(config, k):
        raise ValueError("not a memory error")

    with pytest.raises(ValueError, match="not a memory error"):
        pack_size.auto_pack_size(tiny_config(), 4, "gpu", measure_fn=broken)


def test_the_forced_probe_measures_packs_on_this_device(capsys):
    """The GPU path, run on the CPU: the real step, alone and packed, timed."""
    k = pack_size.auto_pack_size(tiny_config(), 2, backend="gpu")
    line = capsys.readouterr().out
    assert k in (1, 2), line
    assert "pack auto: images/s on gpu (batch 32 per run) K=1: " in line and "K=2: " in line


def test_a_real_pack_through_the_launcher(tmp_path):
    """The real train.py as the launcher's trainer: one pack of 2 seeds, each run its own.

    (That a packed run's numbers are its lone run's: tests/test_pack_train.py.)
    """
    from conftest import TINY, read_metrics

    study = tmp_path / "study"
    out = subprocess.run([sys.executable, "-m", "experiments.sweep",
                          "configs/digits.py:resnet-14", "--workdir", str(study),
                          "--sweep", "seed=0,1", "--pack", "2", "--no-report",
                          *(f"--config.{k}={v}" for k, v in TINY.items())],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 runs in 1 pack" in out.stdout and "sweep done: 2 finished" in out.stdout
    first_losses = set()
    for name, seed in (("seed=0", 0), ("seed=1", 1)):
        assert "2 runs in one pack" in (study / name / "train.log").read_text()
        assert read_summary(str(study / name))["status"] == "finished"
        assert json.loads((study / name / "config.json").read_text())["seed"] == seed
        lines = read_metrics(study / name)
        assert [line["step"] for line in lines] == [5, 10, 15, 20]
        first_losses.add(lines[0]["train_loss"])
    assert len(first_losses) == 2
