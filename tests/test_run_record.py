"""A run directory's record always matches what was trained (issue: nothing silently wrong).

Each test is one defect found by probing: a bad checkpoint directory that
blocked every checkpoint, a launcher that skipped drifted runs, a report
that averaged failed seeds, a config file rewritten to settings never
trained, missing files accepted silently, tracebacks, misleading statuses.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import (
    TINY,
    copy_run,
    load_json,
    make_run,
    read_metrics,
    tiny_argv,
    tiny_config,
    tiny_run,
    without_timing,
)

import train
from experiments import report, study, sweep
from training import checkpoints, finetune


@pytest.fixture
def stopped(tmp_path, tmp_path_factory):
    """A copy of the shared tiny run (checkpoints 10 and 20), stopped: no summary.json."""
    workdir = copy_run(tiny_run(tmp_path_factory)[0], tmp_path / "run")
    (workdir / "summary.json").unlink()
    return workdir


def _errors(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


# --- 1. One bad checkpoint directory no longer blocks the healthy ones ------------------------


@pytest.mark.parametrize("damage", ["emptied", "stray"])
def test_an_empty_or_stray_step_directory_is_moved_aside_and_the_run_resumes(
        stopped, tmp_path_factory, capsys, caplog, damage):
    caplog.set_level(logging.WARNING, logger="absl")  # absl's lines reach train.py's stderr
    if damage == "emptied":  # the newest step directory, emptied
        bad = stopped / "checkpoints" / "20"
        for child in bad.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:  # a numbered directory that is no checkpoint at all
        bad = stopped / "checkpoints" / "99"
        bad.mkdir()
        (bad / "junk.txt").write_text("not a checkpoint")
    capsys.readouterr()
    assert train.main(tiny_argv(stopped)) == 0
    err = _errors(capsys)  # one line: no absl warning before it, no traceback
    assert len(err) == 1 and err[0].startswith(f"warning: checkpoint {bad.name} does not restore")
    said = [r.getMessage() for r in caplog.records if r.name == "absl"]
    assert not [m for m in said if "read only" in m or "read_only" in m], said  # the probe's
    assert (stopped / checkpoints.DAMAGED_DIR / bad.name).is_dir()  # kept, not deleted
    shared = tiny_run(tmp_path_factory)[0]
    assert without_timing(read_metrics(stopped)) == without_timing(read_metrics(shared))


def test_a_stray_file_named_like_a_step_is_no_checkpoint(tmp_path, tmp_path_factory):
    source = copy_run(tiny_run(tmp_path_factory)[0], tmp_path / "source")
    (source / "checkpoints" / "999").write_text("a file, not a checkpoint")
    assert checkpoints.checkpoint_steps(source) == [10, 20]
    config = tiny_config(**{"finetune.from_run": str(source), "model.num_classes": 12})
    assert finetune.source_step(config)[1] == 20  # fine-tuning takes the newest real one


# --- 2. The sweep launcher checks a run's identity before skipping or resuming it -------------

def _study_with_the_tiny_run(tmp_path, tmp_path_factory):
    study = tmp_path / "study"
    study.mkdir()
    copy_run(tiny_run(tmp_path_factory)[0], study / "run")
    return study


def test_the_launcher_refuses_a_finished_run_of_another_config_and_writes_nothing(
        tmp_path, tmp_path_factory, capsys):
    study = _study_with_the_tiny_run(tmp_path, tmp_path_factory)
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    args = ["configs/digits.py:resnet-14", "--workdir", str(study),
            *[f"--config.{k}={v}" for k, v in TINY.items() if k != "num_steps"]]
    assert sweep.main([*args, "--config.num_steps=30"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "holds a run with a different config" in err[0], err
    assert "num_steps: 20 -> 30" in err[0] and "--allow-config-change" not in err[0]
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before
    assert not (study / "sweep.json").exists()


# --- 3. The report averages finished runs only ------------------------------------------------

def test_a_failed_seed_is_not_averaged_into_the_row(tmp_path):
    make_run(tmp_path, "seed=0", depth=20, plain=False, train_errors=[0.5, 0.2, 0.0],
             test_errors=[None, 0.1, 0.02], seed=0)
    make_run(tmp_path, "seed=1", depth=20, plain=False, train_errors=[0.9], test_errors=[0.6],
             seed=1, status="failed")
    (row,) = study.build_rows(study.load_runs(str(tmp_path)))
    assert row.train_error == 0.0 and row.train_error_std is None
    assert row.test_error == pytest.approx(2.0) and row.test_error_std is None
    assert row.status == "1 finished; 1 failed"
    written = report.write_report(tmp_path)
    assert written["notices"] == [] and "gap_png" in written  # two evaluations of the finished


def test_runs_of_two_studies_are_not_pooled_as_seeds(tmp_path):
    for name in ("a", "b"):
        make_run(tmp_path / name, "run", depth=20, plain=False, train_errors=[0.0],
                 test_errors=[0.01 if name == "a" else 0.03])
        (tmp_path / name / "sweep.json").write_text("{}")
    rows = study.build_rows(study.load_runs(str(tmp_path)))
    assert sorted(len(r.runs) for r in rows) == [1, 1]
    assert {r.variant for r in rows} == {"study=a", "study=b"}


# --- 4. --allow-config-change never writes a config that was not trained ------------------------

def test_a_finished_run_given_a_change_that_would_train_nothing_is_refused(
        tmp_path, tmp_path_factory, capsys):
    workdir = copy_run(tiny_run(tmp_path_factory)[0], tmp_path / "run")
    config = (workdir / "config.json").read_bytes()
    for change in ({"optimizer.lr": 0.05}, {"num_steps": 10}):
        assert train.main([*tiny_argv(workdir, **change), "--allow-config-change"]) == 2
        err = _errors(capsys)
        assert len(err) == 1 and "would apply to no step" in err[0], err
        assert (workdir / "config.json").read_bytes() == config


def test_an_allowed_change_is_recorded_with_the_step_it_applies_from(stopped, capsys):
    old = load_json(stopped / "config.json")
    argv = [*tiny_argv(stopped, num_steps=30), "--allow-config-change"]
    assert train.main(argv) == 0
    (change,) = [json.loads(x) for x in (stopped / "config_changes.jsonl").read_text().splitlines()]
    assert change["from_step"] == 20 and change["changes"] == ["num_steps: 20 -> 30"]
    assert change["previous"] == old
    assert load_json(stopped / "config.json")["num_steps"] == 30
    assert [m["step"] for m in read_metrics(stopped)][-2:] == [25, 30]


# --- 5. Missing files on resume: refused, or said -----------------------------------------------

def test_checkpoints_without_a_config_are_refused(stopped, capsys):
    (stopped / "config.json").unlink()
    assert train.main(tiny_argv(stopped)) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "has checkpoints (step 20) but no config.json" in err[0]
    assert not (stopped / "config.json").exists()


def test_a_missing_metrics_file_is_said_and_the_summary_marked_partial(stopped, capsys):
    (stopped / "metrics.jsonl").unlink()
    assert train.main(tiny_argv(stopped)) == 0
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("warning: ") and "metrics.jsonl is missing" in err[0]
    assert load_json(stopped / "summary.json")["history"].startswith("partial: ")


# --- 6. No tracebacks ---------------------------------------------------------------------------

def test_a_metrics_file_that_is_a_directory_is_one_error_line(stopped, capsys):
    (stopped / "metrics.jsonl").unlink()
    (stopped / "metrics.jsonl").mkdir()
    assert train.main(tiny_argv(stopped)) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "metrics.jsonl is a directory" in err[0]


@pytest.mark.parametrize("text,why", [("[1, 2]", "is not a JSON object (a list)"),
                                      ('{"status": "fini', "cannot be read")])
def test_a_summary_that_is_no_summary_is_named_by_the_report(tmp_path, capsys, text, why):
    run = make_run(tmp_path, "run", depth=20, plain=False, train_errors=[0.0],
                   test_errors=[0.01])
    (run / "summary.json").write_text(text)
    assert report.main([str(tmp_path)]) == 0
    err = _errors(capsys)
    assert err == [line for line in err if line.startswith("warning: ")] and len(err) == 1
    assert str(run / "summary.json") in err[0] and why in err[0]


# --- 7. Statuses that say what happened ---------------------------------------------------------

def test_a_dangling_symlink_workdir_is_one_clear_line(tmp_path, capsys):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    assert train.main(tiny_argv(link)) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "is a dangling symbolic link" in err[0]


def test_a_pack_refused_for_one_runs_drift_writes_nothing_into_the_others(
        tmp_path, tmp_path_factory, capsys):
    drifted = copy_run(tiny_run(tmp_path_factory)[0], tmp_path / "old")
    (drifted / "summary.json").unlink()
    fresh = tmp_path / "new"
    args = [*tiny_argv("x")[:2], *tiny_argv("x")[4:], "--config.optimizer.momentum=0.8",
            "--run", str(fresh), "seed=1", "--run", str(drifted), "seed=0"]
    assert train.main(args) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "optimizer.momentum: 0.9 -> 0.8" in err[0]
    assert not fresh.exists()


@pytest.mark.parametrize("args,message", [
    (["--sweep", "seed=0,1", "--sweep", "seed=2"], "--sweep seed is given twice"),
])
def test_sweep_flags_said_twice_are_one_line(tmp_path, capsys, args, message):
    assert sweep.main(["configs/digits.py", "--workdir", str(tmp_path / "s"), *args]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and message in err[0]


def test_tuple_values_can_be_swept():
    assert sweep.split_values("(4,8,16),(8,16,32)") == ["(4,8,16)", "(8,16,32)"]
    assert sweep.split_values("0.1,0.2") == ["0.1", "0.2"]
    runs = sweep.expand("configs/digits.py:resnet-8", [("model.widths", ["(4,8,16)",
                                                                         "(8,16,32)"])])
    assert [r["model.widths"] for r in runs] == ["(4,8,16)", "(8,16,32)"]


FAKE = textwrap.dedent('''
    import sys
    sys.exit(0)
''')


def test_a_launcher_whose_runs_all_train_elsewhere_is_not_done(tmp_path):
    """Every run locked by a live launcher: exit 1, no report mid-study."""
    import socket

    config = tmp_path / "study.py"
    config.write_text("from configs import digits\n\ndef get_config(arg=None):\n"
                      "    return digits.get_config('resnet-8')\n")
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    study = tmp_path / "study"
    (study / "run").mkdir(parents=True)
    (study / "run" / ".lock").write_text(json.dumps({"pid": os.getpid(),
                                                     "host": socket.gethostname()}))
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", str(config), "--workdir",
                          str(study), "--train-script", str(fake)],  # with its report
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "[locked] run" in out.stdout and "the study is not done" in out.stdout
    assert not (study / "results.md").exists()
