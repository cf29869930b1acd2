"""The files of a run directory: config.json, metrics.jsonl, summary.json, TensorBoard events.

Also what launchers read there (``read_summary``, ``status_of``; their lock on
a run is ``training.launcher_lock``): this module imports no JAX, so the sweep
launcher stays light.

Everything is JSON (never pickle) and written so that a kill at any moment
leaves readable files: whole-file writes go to a temporary file that is then
renamed over the old one, and metrics lines are appended and flushed one at a
time. On resume, metric lines after the restored checkpoint are dropped so
that every logged step appears exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import stat
import sys
from collections.abc import Iterable
from typing import Any


def _create_new(path: str) -> int:
    """A new file, opened for writing, with mode 0o666 less the process umask (as ``open``).

    The kernel applies the umask (and a default ACL), so teammates read a run
    as they read ``metrics.jsonl``; ``tempfile.mkstemp`` would make it 0600.
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                   0o666)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON to ``path`` atomically (temporary file in the same directory + rename).

    The file gets the mode a plain ``open(path, "w")`` would give it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}.json")
    fd = _create_new(tmp)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two configs, as 'key: old -> new'."""
    a, b = flatten(old), flatten(json.loads(json.dumps(new)))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, mirrored to TensorBoard."""

    def __init__(self, workdir: str, is_writer: bool):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.workdir, self.is_writer = workdir, is_writer
        self._tb = None
        # Set by truncate_after on resume: TensorBoard drops the earlier event files'
        # scalars from this step on, as the truncation dropped their metrics lines.
        self._purge_step: int | None = None

    def read(self, *, warn: bool = False) -> list[dict]:
        """Every readable line, in file order; unreadable ones are skipped.

        A line is unreadable when it is not a JSON object with an integer
        ``step`` (cut short by a kill, or damaged). ``warn`` prints one
        ``warning:`` line naming them.
        """
        if not os.path.exists(self.path):
            return []
        lines, bad = [], []
        with open(self.path, errors="replace") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    line = None
                if isinstance(line, dict) and type(line.get("step")) is int:
                    lines.append(line)
                elif raw.strip():
                    bad.append(number)
        if bad and warn:
            print(f"warning: {self.path}: skipped {len(bad)} unreadable line(s) "
                  f"(line {', '.join(map(str, bad))})", file=sys.stderr)
        return lines

    def truncate_after(self, step: int) -> None:
        """Keeps the readable lines up to ``step`` (the restored checkpoint), each step once.

        Lines after the checkpoint are dropped (a resumed run logs them again);
        unreadable lines are dropped with a warning, and every readable line
        before the checkpoint is kept, in step order (the last of a step logged twice).
        The file keeps its mode, and the TensorBoard events written from now on
        start with a purge of the steps after ``step`` (``purge_step``).
        """
        if not self.is_writer or not os.path.exists(self.path):
            return
        self._purge_step = step + 1
        self.close()  # the next append opens a writer that purges
        by_step = {line["step"]: line for line in self.read(warn=True) if line["step"] <= step}
        keep = [by_step[s] for s in sorted(by_step)]
        tmp = self.path + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)  # left by a kill during an earlier truncation
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        with os.fdopen(_create_new(tmp), "w") as f:
            os.fchmod(f.fileno(), mode)
            f.writelines(json.dumps(line) + "\n" for line in keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Closes the TensorBoard event file (each log line's events are already on disk)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def last_value(self, key: str, default: Any) -> Any:
        lines = self.read()
        return lines[-1].get(key, default) if lines else default

    def append(self, line: dict) -> None:
        if not self.is_writer:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is None:
            from training import tb_events  # noqa: PLC0415 - readers of runs never need it

            self._tb = tb_events.EventFile(self.workdir, purge_step=self._purge_step)
        self._tb.scalars(line["step"], {k: v for k, v in line.items()
                                        if k != "step" and isinstance(v, int | float)})


class RunDir:
    """A run directory: validated, created and described by config.json before training."""

    LOCK = ".train.lock"

    def __init__(self, workdir: str, is_writer: bool = True):
        self.workdir, self.is_writer = workdir, is_writer
        self.metrics = MetricsLog(workdir, is_writer)
        self._lock_fd: int | None = None
        # Set by prepare when checkpoints exist but metrics.jsonl does not: the step up
        # to which the run's history is lost (summary.json says so).
        self.history_lost_before: int | None = None

    def prepare(self, config: dict, *, allow_config_change: bool = False,
                total_steps: int | None = None) -> None:
        """Creates the directory, or checks that a resumed run has the same config.

        ``check_identity`` first (nothing is written when it refuses). A
        change allowed by ``allow_config_change`` is appended to
        ``config_changes.jsonl`` (the step it applies from, what changed and
        the config before), so the files keep saying what was trained. The
        writing process then holds an exclusive OS lock on the directory
        (``flock`` on ``.train.lock``) until ``close`` or its death, when the
        kernel releases it: a second trainer on the same run stops at once
        with a ValueError, having written nothing.
        """
        diffs = check_identity(self.workdir, config, allow_config_change=allow_config_change,
                               total_steps=total_steps)
        path = os.path.join(self.workdir, "config.json")
        try:
            os.makedirs(self.workdir, exist_ok=True)
            if self.is_writer:
                self._lock()
                if diffs:
                    self._record_change(diffs, read_json(path))
                write_json_atomic(path, config)
        except OSError as e:
            raise ValueError(f"cannot write the run directory {self.workdir}: {e.strerror}") from e
        steps = checkpoint_dirs(self.workdir)
        if steps and not os.path.exists(self.metrics.path) and self.is_writer:
            self.history_lost_before = steps[-1]
            print(f"warning: {self.metrics.path} is missing: the metrics of steps up to "
                  f"{steps[-1]} are lost; the run resumes, and its summary.json will say "
                  "that its history is partial", file=sys.stderr)

    def _record_change(self, diffs: list[str], previous: dict) -> None:
        steps = checkpoint_dirs(self.workdir)
        line = {"from_step": steps[-1] if steps else 0, "changes": diffs, "previous": previous}
        with open(os.path.join(self.workdir, CONFIG_CHANGES), "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _lock(self) -> None:
        fd = os.open(os.path.join(self.workdir, self.LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"run directory {self.workdir} is in use by process {holder}") \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Writes out the queued TensorBoard events and releases the directory's lock."""
        # The events mirror metrics.jsonl: a full disk must not hide what stopped the run.
        with contextlib.suppress(OSError):
            self.metrics.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_writer:
            write_json_atomic(os.path.join(self.workdir, name), obj)


CONFIG_CHANGES = "config_changes.jsonl"  # settings changed on resume, and from which step


def checkpoint_dirs(workdir: str) -> list[int]:
    """Steps of the numbered directories under ``WORKDIR/checkpoints``, oldest first."""
    path = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path)
                  if d.isdigit() and os.path.isdir(os.path.join(path, d)))


def check_identity(workdir: str, config: dict, *, allow_config_change: bool = False,
                   total_steps: int | None = None, offer_allow: bool = True) -> list[str]:
    """Whether ``config`` may train in ``workdir``; returns the differences it accepts.

    The one identity check of a run directory, for ``train.py`` and the sweep
    launcher alike; a one-line ValueError (nothing written) when the path is
    not a usable directory, when it holds checkpoints but no ``config.json``
    (what was trained cannot be told), when its ``config.json`` is unreadable,
    or when the configs differ, unless ``allow_config_change``: then the
    change must apply to some step (``total_steps`` beyond the newest
    checkpoint's), or the files would describe a run never trained.
    ``offer_allow`` names ``--allow-config-change`` in the refusal (train.py's
    flag; the sweep launcher has none).
    """
    if os.path.islink(workdir) and not os.path.exists(workdir):
        raise ValueError(f"the run directory {workdir} is a dangling symbolic link "
                         f"(to {os.readlink(workdir)})")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"the run directory {workdir} is not a directory")
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.isdir(metrics):
        raise ValueError(f"{metrics} is a directory, not a file of metrics lines")
    path = os.path.join(workdir, "config.json")
    steps = checkpoint_dirs(workdir)
    if not os.path.exists(path):
        if steps:
            raise ValueError(f"{workdir} has checkpoints (step {steps[-1]}) but no config.json, "
                             "so what they trained cannot be told; put it back, or use "
                             "another --workdir")
        return []
    try:
        old = read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({e}); put it right, or use another "
                         "--workdir") from None
    if not isinstance(old, dict):
        raise ValueError(f"{path} is not a config (a JSON object); put it right, or use "
                         "another --workdir")
    diffs = config_differences(old, config)
    if not diffs:
        return []
    if not allow_config_change:
        remedy = ", or --allow-config-change to resume anyway" if offer_allow else \
            " (or put the config back)"
        raise ValueError(f"{workdir} holds a run with a different config "
                         f"({'; '.join(diffs)}); use another --workdir{remedy}")
    if steps and total_steps is not None and steps[-1] >= total_steps:
        raise ValueError(
            f"{workdir} has trained {steps[-1]} steps and this config ends at step "
            f"{total_steps}: the change ({'; '.join(diffs)}) would apply to no step; use "
            "another --workdir, or a config that trains on")
    return diffs


def finished_summary(workdir: str, config: dict) -> dict | None:
    """The summary of a run that already finished with this config; None otherwise.

    Running a finished run again then writes nothing (its config.json and
    summary.json keep their bytes and times).
    """
    try:
        summary = read_json(os.path.join(workdir, "summary.json"))
        same = not config_differences(read_json(os.path.join(workdir, "config.json")), config)
    except (OSError, ValueError):
        return None
    return summary if same and isinstance(summary, dict) and \
        summary.get("status") == "finished" else None


def summarize(lines: Iterable[dict], **fields: Any) -> dict:
    """summary.json: final/best errors from the metric lines, plus the given fields."""
    lines = list(lines)
    evals = [line for line in lines if "test_error" in line]
    last = lines[-1] if lines else {}
    summary = {
        "final_train_error": last.get("train_error"),
        "final_test_error": evals[-1]["test_error"] if evals else None,
        "best_test_error": min(e["test_error"] for e in evals) if evals else None,
        "wall_time_s": last.get("elapsed_s"),
        "last_logged_step": last.get("step"),
    }
    vals = [line for line in lines if "val_error" in line]
    if vals:
        summary["final_val_error"] = vals[-1]["val_error"]
        summary["best_val_error"] = min(v["val_error"] for v in vals)
    if evals and "test_error_per_class" in evals[-1]:  # per-class error of the final eval
        summary["test_error_per_class"] = evals[-1]["test_error_per_class"]
    summary.update(fields)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in summary.items()}


def record_failure(workdir: str, status: str, error: str, **fields: Any) -> None:
    """Writes summary.json for a run that stopped without finishing (diverged / failed)."""
    if not os.path.isdir(workdir):
        return
    summary = summarize(MetricsLog(workdir, False).read(), status=status, error=error, **fields)
    write_json_atomic(os.path.join(workdir, "summary.json"), summary)


def read_summary(workdir: str) -> dict:
    """The run's summary.json; {} when it has none (or an unreadable one)."""
    try:
        summary = read_json(os.path.join(workdir, "summary.json"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def status_of(workdir: str) -> str | None:
    """The run's status (finished, diverged, failed, ...); None without a summary."""
    return read_summary(workdir).get("status")
