"""A launcher's claim on a run directory (RUN_DIR/.lock), so two launchers never train one run.

The sweep launcher (and a SLURM job of it) takes the lock before starting a
run's trainer and releases it after; a lock whose process is gone, or that
an earlier attempt of the same SLURM job left, is taken over. The trainer's
own lock on the directory is ``run_dir.RunDir.LOCK``. Imports no JAX.
"""

from __future__ import annotations

import json
import os
import socket
import time

from training.run_dir import read_json

LAUNCHER_LOCK = ".lock"  # a launcher's claim on a run (the trainer's own is RunDir.LOCK)
STALE_UNREADABLE_LOCK_S = 60


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(workdir: str) -> bool:
    """Takes RUN_DIR/.lock atomically for a launcher; a lock of a dead process is taken over.

    So is the lock of an earlier attempt of this SLURM job (requeued, perhaps
    from a node that died): SLURM runs one attempt of a job at a time.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LAUNCHER_LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
          "slurm_job": os.environ.get("SLURM_JOB_ID")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = read_json(path)
                earlier_attempt = me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"]
                alive = not earlier_attempt and (holder.get("host") != me["host"]
                                                 or _pid_alive(int(holder["pid"])))
            except (OSError, ValueError, KeyError, TypeError):
                alive = time.time() - os.path.getmtime(path) < STALE_UNREADABLE_LOCK_S
            if alive:
                return False
            os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True
    return False


def release_lock(workdir: str) -> None:
    """Removes RUN_DIR/.lock if this process holds it."""
    path = os.path.join(workdir, LAUNCHER_LOCK)
    try:
        if read_json(path).get("pid") == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass
