"""Checkpoints under faults: a damaged newest checkpoint, none restorable, a full disk."""

import errno
import os
import shutil
import subprocess

import pytest
from conftest import (
    copy_run,
    read_metrics,
    tiny_argv,
    tiny_config,
    tiny_run,
    train_cmd,
    without_timing,
)

import train
from training import checkpoints, exits, run_dir, tb_events


def _argv(workdir):
    """``train.main``'s arguments for the tiny run, checkpointing every 5 steps."""
    return tiny_argv(workdir, checkpoint_every_steps=5)


def _steps_on_disk(workdir):
    return checkpoints.checkpoint_steps(workdir)


def _fail_at(monkeypatch, target, method, step, error):
    """``target.method`` raises ``error`` when it reaches ``step``; returns the real method."""
    real = getattr(target, method)

    def failing(self, *args):
        at = args[0] if isinstance(args[0], int) else args[0]["step"]
        if at == step:
            raise error
        return real(self, *args)

    monkeypatch.setattr(target, method, failing)
    return real


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The metrics of the tiny run trained in one go (the checkpoint interval changes none)."""
    return without_timing(read_metrics(tiny_run(tmp_path_factory)[0]))


@pytest.fixture(scope="module")
def stopped_at_15(tmp_path_factory):
    """A run that stopped at step 15 (its metrics line failed): checkpoints 5 and 10."""
    workdir = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _fail_at(monkeypatch, run_dir.MetricsLog, "append", 15,
                 OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(exits.WriteFailed):
            train.train_and_evaluate(tiny_config(checkpoint_every_steps=5), str(workdir))
    assert _steps_on_disk(workdir) == [5, 10]
    return workdir


def _stopped_at_15(workdir, stopped_at_15):
    """A copy of ``stopped_at_15`` in ``workdir`` (emptied first: tmp_path exists)."""
    workdir.rmdir()
    copy_run(stopped_at_15, workdir)


def _truncate_large_files(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 1024:
                os.truncate(path, 100)


def _delete_metadata(step_dir):
    os.remove(os.path.join(step_dir, "default", "_METADATA"))


@pytest.mark.parametrize("damage", [_truncate_large_files, _delete_metadata])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_ends_as_if_uninterrupted(
        tmp_path, capsys, uninterrupted, stopped_at_15, damage):
    _stopped_at_15(tmp_path, stopped_at_15)
    damage(tmp_path / "checkpoints" / "10")
    capsys.readouterr()
    code = train.main(_argv(tmp_path))
    assert code == 0
    warnings = [e for e in capsys.readouterr().err.splitlines() if e.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint 10 does not restore")
    assert "resuming from checkpoint 5" in warnings[0]
    moved = tmp_path / checkpoints.DAMAGED_DIR / "10"
    assert str(moved) in warnings[0] and moved.is_dir()  # kept, not deleted
    assert without_timing(read_metrics(tmp_path)) == uninterrupted
    assert _steps_on_disk(tmp_path) == [10, 15, 20]  # 10 written anew by the resumed run


def test_when_no_checkpoint_restores_it_is_one_error_line_and_nothing_is_moved(
        tmp_path, capsys, stopped_at_15):
    _stopped_at_15(tmp_path, stopped_at_15)
    for step in (5, 10):
        _delete_metadata(tmp_path / "checkpoints" / str(step))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    code = train.main(_argv(tmp_path))
    err = [e for e in capsys.readouterr().err.splitlines() if e.strip()]
    assert code == exits.EXIT_BAD_INPUT and len(err) == 1, err
    assert err[0].startswith("error: no checkpoint in ") and "step 10: " in err[0]
    assert "step 5: " in err[0] and "nothing was moved or deleted" in err[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EROFS, "Read-only file system"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    ValueError('RESOURCE_EXHAUSTED: Error writing "params.stem" in OCDBT'),
    Exception("NOT_FOUND: Error writing local file"),
    Exception("PERMISSION_DENIED: Error opening file"),
])
def test_storage_failures_are_told_from_bugs(error):
    """What ``exits.writing`` turns into exit 4: the error itself or any of its causes."""
    assert exits.storage_error(error) is error
    try:
        try:
            raise error
        except Exception as e:
            raise RuntimeError("Orbax's async save failed") from e
    except RuntimeError as wrapped:
        assert exits.storage_error(wrapped) is error
    assert exits.storage_error(KeyError("params")) is None
    assert exits.storage_error(ValueError("shapes (3,) and (4,) differ")) is None


def test_a_write_failure_names_the_checkpoint_to_resume_from_or_says_there_is_none():
    full = OSError(errno.ENOSPC, "No space left on device")
    resume = str(exits.WriteFailed("checkpoint", 15, full, 10))
    assert "(step 10) is intact" in resume and resume.endswith("run again to resume")
    over = str(exits.WriteFailed("checkpoint", 5, full, None))
    assert "no checkpoint was complete yet" in over and over.endswith("run again to start over")
    assert "training stopped at step 5: [Errno 28] No space left on device" in over


@pytest.mark.parametrize("what,error", [
    ("checkpoint", OSError(errno.ENOSPC, "No space left on device")),
    ("checkpoint", ValueError('RESOURCE_EXHAUSTED: Error writing "params.stem" in OCDBT')),
    ("metrics line", OSError(errno.EDQUOT, "Disk quota exceeded")),
    ("event file", OSError(errno.ENOSPC, "No space left on device")),
])
def test_a_failed_write_is_exit_4_with_one_line_and_the_rerun_ends_as_if_uninterrupted(
        tmp_path, monkeypatch, capsys, uninterrupted, what, error):
    target, method = {"checkpoint": (checkpoints.Checkpointer, "save"),
                      "metrics line": (run_dir.MetricsLog, "append"),
                      "event file": (tb_events.EventFile, "scalars")}[what]
    real = _fail_at(monkeypatch, target, method, 15, error)
    argv = _argv(tmp_path)
    capsys.readouterr()
    assert train.main(argv) == exits.EXIT_WRITE_FAILED
    err = [e for e in capsys.readouterr().err.splitlines() if e.strip()]
    written = "metrics line" if what == "event file" else what  # its TensorBoard mirror
    assert len(err) == 1 and err[0].startswith(f"error: cannot write the {written} "), err
    assert "training stopped at step 15" in err[0] and str(error).split(":")[0] in err[0]
    assert "the last complete checkpoint (step 10) is intact" in err[0]
    assert "internal error" not in err[0]
    monkeypatch.setattr(target, method, real)  # space freed: the rerun resumes from step 10
    assert train.main(argv) == 0
    assert without_timing(read_metrics(tmp_path)) == uninterrupted


def test_a_real_bug_in_a_write_is_still_an_internal_error(tmp_path, monkeypatch):
    _fail_at(monkeypatch, checkpoints.Checkpointer, "save", 10, KeyError("params"))
    with pytest.raises(KeyError):
        train.train_and_evaluate(tiny_config(), str(tmp_path))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 MiB tmpfs (needs mount rights: root in a container; skipped elsewhere).

    Room for the run's four checkpoints once the filler is gone, whatever
    their size on disk: TensorStore's OCDBT writes
    a checkpoint as a varying number of small files (more on a busy
    machine), each taking whole pages.
    """
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_is_exit_4_and_the_run_resumes_once_space_is_freed(
        small_tmpfs, tmp_path_factory):
    # Every checkpoint kept (steps 5, 10, 15, 20): the run needs four checkpoints' room and
    # gets two, so it fills the disk whether its checkpoints come out at half or at twice
    # the reference's size on disk (OCDBT's file count varies with the machine's load).
    extra = ("--config.checkpoint_every_steps=5", "--config.keep_checkpoints=100",
             "--config.layer_responses=False")
    reference, _ = tiny_run(tmp_path_factory)  # trained in one go: the numbers to end with
    newest = reference / "checkpoints" / "20"
    # As the tmpfs counts them: whole pages per file, whatever the reference's filesystem
    # reports in st_blocks (compressed or overlay filesystems report less).
    page = os.sysconf("SC_PAGE_SIZE")
    checkpoint_bytes = sum(-(-f.stat().st_size // page) * page
                           for f in newest.rglob("*") if f.is_file())
    stat = os.statvfs(small_tmpfs)
    room = 2 * checkpoint_bytes + 64 * 1024  # a checkpoint or two, then full
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - room, 0))
    workdir = small_tmpfs / "run"
    out = subprocess.run(train_cmd(workdir, *extra), capture_output=True, text=True)
    err = [e for e in out.stderr.splitlines() if e.strip()]
    assert out.returncode == exits.EXIT_WRITE_FAILED, out.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("error: cannot write the "), err
    # Usually a checkpoint or two were complete; if the first one did not fit, the message
    # says so and there is none on disk: the rerun starts over and ends the same.
    if "no checkpoint was complete yet" in err[0]:
        assert _steps_on_disk(workdir) == [], err
    else:
        last = int(err[0].split("the last complete checkpoint (step ")[1].split(")")[0])
        assert last in _steps_on_disk(workdir), err
    filler.unlink()  # space freed: the rerun resumes and ends as if never stopped
    out = subprocess.run(train_cmd(workdir, *extra), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert without_timing(read_metrics(workdir)) == without_timing(read_metrics(reference))
