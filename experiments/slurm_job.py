"""One trainer of a study as a SLURM job: what runs on the compute node (``experiments.slurm``).

``TrainerJob(pack)`` is the callable that submitit pickles into the job and
calls there (``python -m submitit.core._submit``, in an ``srun`` step). Task 0
trains the pack as the local launcher does (``sweep.Launcher.run_pack``): the
pack's ``train.py`` command, exactly the one ``--dry-run`` prints, its output
appended to each run's ``train.log``, runs done already skipped, a failure
recorded in the run's ``summary.json``. Every other task of a multi-task job
(``--slurm ntasks=N`` or ``nodes``) starts the same command; the trainers
join through JAX's SLURM detection (``training.distributed``) and process 0
alone writes.

Stopping. SLURM's time-limit warning is SIGINT (``--signal=INT@signal_s``,
sent to every process of the job's steps): each trainer checkpoints and
exits 130; once it has, the job runs submitit's handler of the signal, which
calls ``checkpoint`` and requeues the job; the requeued job resumes. Preemption,
``scontrol requeue`` and ``scancel`` send SIGTERM: the trainers checkpoint and
exit 143, and SLURM requeues the job (or not, for scancel) by itself. A run
that fails for its own reasons (bad config, divergence) exits otherwise and is
not requeued: the job ends FAILED (or COMPLETED for a diverged run) with the
reason in the job's log and the run's ``summary.json``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import submitit

from experiments import sweep
from experiments.study_plan import DONE, REPO, Pack
from training.run_dir import status_of


def _rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0") or 0)


class TrainerJob(submitit.helpers.Checkpointable):
    """The job of one trainer (a run or a pack): ``TrainerJob(pack)()`` in the job."""

    def __init__(self, pack: Pack):
        self.pack = pack
        self._launcher: sweep.Launcher | None = None
        self._ended: list | None = None

    def __getstate__(self) -> dict:
        return {"pack": self.pack}  # what a requeued job needs; never its processes

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["pack"])

    def __call__(self) -> dict[str, str]:
        """Trains the pack; each run's end (finished, diverged, interrupted, failed)."""
        if _rank() > 0:
            return self._other_task()
        # submitit's handler of the time-limit warning (SIGINT) requeues and exits at once,
        # from inside whatever this process is doing (reading the trainer's stderr). The
        # trainers get the signal too and checkpoint: their end is awaited here first, then
        # submitit's handler runs (it calls ``checkpoint`` below).
        submitit_handler = signal.getsignal(signal.SIGINT)
        warned: list[int] = []
        signal.signal(signal.SIGINT, lambda signum, _frame: warned.append(signum))
        self._launcher = sweep.Launcher([self.pack], workers=1)
        t = time.time()
        self._ended = self._launcher.run_pack(self.pack, 0)
        for run, status, detail in self._ended:
            extra = f": {detail}" if detail and status != "finished" else ""
            print(f"[{status}] {run.name} ({time.time() - t:.0f} s){extra}", flush=True)
        if warned and callable(submitit_handler) and self._interrupted():
            print("time-limit warning: the trainer checkpointed; requeueing", flush=True)
            submitit_handler(signal.SIGINT, None)  # requeues this job and exits
        failed = [f"{run.name}: {detail}" for run, status, detail in self._ended
                  if status == "failed"]
        if failed:
            raise RuntimeError("; ".join(failed))
        return {run.name: status for run, status, _ in self._ended}

    def _interrupted(self) -> bool:
        """Whether a run of this job stopped at a signal (checkpointed; to be resumed)."""
        return any(status == "interrupted" for _, status, _ in self._ended)

    def _other_task(self) -> dict[str, str]:
        """Task k > 0: the same trainer command (the runs task 0 trains: those not done)."""
        runs = [run for run in self.pack.runs if status_of(run.workdir) not in DONE]
        if not runs:
            return {}
        env = sweep.trainer_env([], 1, 0)  # it dies with this process
        code = subprocess.Popen(self.pack.command(runs), cwd=REPO, env=env).wait()
        return {"task": str(os.environ.get("SLURM_PROCID")), "exit": str(code)}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:
        """submitit's requeue after the time-limit warning: the same job, if a run stopped.

        Called by submitit's SIGINT handler, which ``__call__`` runs once the
        trainers have ended; None (no requeue) when no run was interrupted.
        """
        if self._ended is not None and not self._interrupted():
            return None
        return submitit.helpers.DelayedSubmission(self)
