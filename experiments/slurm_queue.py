"""What SLURM says of this user's jobs: which are queued or running (``squeue``).

The sweep's SLURM launcher (``experiments.slurm``) decides from this whether a
run's job is still SLURM's or gone: gone with its run unfinished means the run
is submitted again, or reported as ended. Light: no JAX, no submitit.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Iterable

from experiments import slurm_options

POLL_S = 2.0  # how often a waiting launcher asks squeue
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT",
          "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
           "STAGE_OUT", "RESIZING"}


def queue() -> dict[str, str]:
    """This user's jobs in the queue: job id (``12_3``: an array's task) -> queued/running.

    Asks for every state (``-t all``) and keeps the live ones: plain ``squeue``
    leaves out a job whose base state has ended even while a flag says it is
    being requeued (SLURM names the flag first: REQUEUED, COMPLETING), and a
    launcher that looked then would take the job for gone and submit its run
    again.
    """
    out = slurm_options.slurm_command("squeue", "-h", "-r", "-t", "all", "-u",
                                      getpass.getuser(), "-o", "%i %T")
    if out.returncode != 0:
        raise ValueError(f"squeue failed: {slurm_options.last_error(out)}")
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        if state in QUEUED or state in RUNNING:
            states[job] = "queued" if state in QUEUED else "running"
    return states


def confirmed_queue(expected: Iterable[str]) -> dict[str, str]:
    """``queue()``; looked at again ``POLL_S`` later when a job of ``expected`` is missing.

    A job between two states (as in a requeue) can be missing from one look;
    only a job missing from both is taken for gone (its run submitted again, or
    reported as ended).
    """
    queued = queue()
    if any(job not in queued for job in expected):
        time.sleep(POLL_S)
        queued = queue()
    return queued
