"""What SLURM says of this user's jobs: which are queued or running (``squeue``).

The sweep's SLURM launcher (``experiments.slurm``) decides from this whether a
run's job is still SLURM's or gone: gone with its run unfinished means the run
is submitted again, or reported as ended. A job is taken for gone only when
two looks at the queue miss it and SLURM, asked for that job alone
(``scontrol show job``), no longer holds it live; what SLURM last said of it
(``ended(job)``) goes into the launcher's line. Light: no JAX, no submitit.
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


def job_fields(job: str) -> dict[str, str]:
    """``scontrol show job`` of one job (``12_3``): its fields; {} once SLURM has forgotten it.

    The controller keeps an ended job for ``MinJobAge`` (300 s by default), so
    a job that just left the queue still says how it ended (JobState, Reason,
    ExitCode).
    """
    out = slurm_options.slurm_command("scontrol", "show", "job", "--oneliner", job)
    lines = out.stdout.splitlines() if out.returncode == 0 else []
    if not lines:
        return {}
    return dict(field.partition("=")[::2] for field in lines[0].split() if "=" in field)


def ended(job: str) -> str:
    """What SLURM last said of a job that left the queue, for the launcher's line."""
    fields = job_fields(job)
    if not fields:
        return f"job {job}: SLURM no longer knows it"
    return (f"job {job}: {fields.get('JobState', '?')}, exit {fields.get('ExitCode', '?')}"
            + (f", {fields['Reason']}" if fields.get("Reason", "None") != "None" else ""))


def confirmed_queue(expected: Iterable[str]) -> dict[str, str]:
    """``queue()``, with each job of ``expected`` it misses looked for again.

    A job between two states (as in a requeue) can be missing from one look:
    the queue is looked at again ``POLL_S`` later, and a job missing from both
    looks is asked for alone (``scontrol show job``); only a job that SLURM no
    longer holds queued or running is left out (its run submitted again, or
    reported as ended).
    """
    expected = list(expected)
    queued = queue()
    if any(job not in queued for job in expected):
        time.sleep(POLL_S)
        queued = queue()
        for job in expected:
            state = job_fields(job).get("JobState") if job not in queued else None
            if state in QUEUED or state in RUNNING:
                queued[job] = "queued" if state in QUEUED else "running"
    return queued
