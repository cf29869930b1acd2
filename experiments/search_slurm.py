"""A search's workers as a SLURM job array: ``experiments.search ... --launcher slurm``.

    python -m experiments.search CONFIG --workdir STUDY --trials N --workers W \\
        --launcher slurm [--slurm KEY=VALUE ...]

The study is checked and made on this machine, as without SLURM (bad input:
one ``error:`` line, nothing created or submitted); then W jobs, one array,
each run the same search command with one worker (``--workers 1``, the
``--launcher``/``--slurm`` flags dropped). The workers share the study's
storage (``STUDY/study.db``, or ``--storage URL``) and ask for trials under the
study directory's lock, so no trial is trained twice and ``--trials`` is never
overshot; the last worker to finish writes the report. The command returns
once the jobs are submitted and prints their ids; ``experiments.search_report
STUDY`` shows the study meanwhile, and the same command again submits more
workers (a worker finding the study complete ends at once).

Stopping, as for a sweep's jobs (``experiments.slurm_job``): SLURM's
time-limit warning (SIGINT, ``signal_s`` before the limit) reaches the worker
and its trainer, which checkpoints; once the worker has ended, the job is
requeued and its new worker resumes the trial (its heartbeat lapsed meanwhile,
so it is retried with the same values). Preemption and ``scontrol requeue``
(SIGTERM) requeue the job through SLURM itself.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

import submitit

from experiments import slurm, slurm_options
from experiments.study_plan import REPO

DROPPED = ("--launcher", "--slurm", "--workers")  # flags of this command only (with a value)


def worker_argv(argv: list[str]) -> list[str]:
    """The search command of one worker: ``argv`` less the launcher's flags, ``--workers 1``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in DROPPED:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in DROPPED)):
            out.append(arg)
    return [*out, "--workers", "1"]


def check(args: argparse.Namespace, study_dir: str) -> slurm_options.SlurmOptions:
    """The job options, checked with SLURM before anything is created (one-line ValueError)."""
    options = slurm_options.parse(args.slurm, slurm_options.config_defaults(args.config))
    slurm_options.preflight(options, study_dir)
    return options


class WorkerJob(submitit.helpers.Checkpointable):
    """One search worker in a job: ``python -m experiments.search ... --workers 1``."""

    def __init__(self, command: list[str]):
        self.command = command

    def __call__(self) -> int:
        # submitit requeues at once from its SIGINT handler; the worker (signalled by SLURM
        # too) first stops its trainer at a checkpoint, then that handler runs.
        submitit_handler = signal.getsignal(signal.SIGINT)
        warned: list[int] = []
        signal.signal(signal.SIGINT, lambda signum, _frame: warned.append(signum))
        code = subprocess.Popen(self.command, cwd=REPO).wait()
        if warned and callable(submitit_handler):
            submitit_handler(signal.SIGINT, None)  # requeues this job and exits
        if code != 0:
            raise RuntimeError(f"the search worker exited {code} (its log is this job's)")
        return code

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self)  # the same worker, requeued


def submit(args: argparse.Namespace, argv: list[str], study_dir: str,
           options: slurm_options.SlurmOptions) -> int:
    """Submits ``--workers`` worker jobs as one array; prints their ids and what to run next."""
    command = [sys.executable, "-m", "experiments.search", *worker_argv(argv)]
    executor = slurm.executor(
        study_dir, options, f"search:{study_dir.rstrip('/').split('/')[-1]}",
        time=options.time_min, signal_delay_s=options.signal_s,
        additional_parameters={**options.sbatch, "signal": f"INT@{options.signal_s}",
                               "requeue": True},
        **({"array_parallelism": options.array_parallelism}
           if options.array_parallelism else {}))
    try:
        with executor.batch():
            jobs = [executor.submit(WorkerJob(command)) for _ in range(args.workers)]
    except Exception as e:  # noqa: BLE001 - sbatch's refusal, as submitit raises it
        raise ValueError(f"sbatch refused the workers' jobs: {slurm.last_line(e)}") from None
    ids = [job.job_id for job in jobs]
    print(f"submitted {len(ids)} worker job{'s' * (len(ids) > 1)}: {' '.join(ids)} "
          f"(logs: {study_dir}/{slurm.FOLDER})", flush=True)
    print(f"look: python -m experiments.search_report {study_dir}")
    print(f"cancel: scancel {' '.join(sorted({i.split('_')[0] for i in ids}))}")
    return 0
