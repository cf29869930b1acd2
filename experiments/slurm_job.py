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
exits 130, and submitit calls ``checkpoint``, which waits for that and asks
for the job to be requeued; the requeued job resumes. Preemption,
``scontrol requeue`` and ``scancel`` send SIGTERM: the trainers checkpoint and
exit 143, and SLURM requeues the job (or not, for scancel) by itself. A run
that fails for its own reasons (bad config, divergence) exits otherwise and is
not requeued: the job ends FAILED (or COMPLETED for a diverged run) with the
reason in the job's log and the run's ``summary.json``.
"""

from __future__ import annotations

import os
import subprocess
import time

import submitit

from experiments import sweep
from experiments.study_plan import REPO, Pack
from training.run_dir import status_of


def _rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0") or 0)


class TrainerJob(submitit.helpers.Checkpointable):
    """The job of one trainer (a run or a pack): ``TrainerJob(pack)()`` in the job."""

    def __init__(self, pack: Pack):
        self.pack = pack
        self._children: list[subprocess.Popen] = []
        self._launcher: sweep.Launcher | None = None

    def __getstate__(self) -> dict:
        return {"pack": self.pack}  # what a requeued job needs; never its processes

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["pack"])

    def __call__(self) -> dict[str, str]:
        """Trains the pack; each run's end (finished, diverged, interrupted, failed)."""
        if _rank() > 0:
            return self._other_task()
        self._launcher = sweep.Launcher([self.pack], workers=1)
        t = time.time()
        ended = self._launcher.run_pack(self.pack, 0)
        for run, status, detail in ended:
            extra = f": {detail}" if detail and status != "finished" else ""
            print(f"[{status}] {run.name} ({time.time() - t:.0f} s){extra}", flush=True)
        failed = [f"{run.name}: {detail}" for run, status, detail in ended if status == "failed"]
        if failed:
            raise RuntimeError("; ".join(failed))
        return {run.name: status for run, status, _ in ended}

    def _other_task(self) -> dict[str, str]:
        """Task k > 0: the same trainer command (the runs task 0 trains: those not done)."""
        runs = [run for run in self.pack.runs if status_of(run.workdir) not in sweep.DONE]
        if not runs:
            return {}
        env = sweep.trainer_env([], 1, 0)  # it dies with this process
        proc = subprocess.Popen(self.pack.command(runs), cwd=REPO, env=env)
        self._children.append(proc)
        code = proc.wait()
        return {"task": str(os.environ.get("SLURM_PROCID")), "exit": str(code)}

    def _log(self, text: str) -> None:
        """Appends to the train.log of the first run being trained (a pack copies it on)."""
        runs = [run for run in self.pack.runs if status_of(run.workdir) not in sweep.DONE]
        if text and runs:
            with open(os.path.join(runs[0].workdir, "train.log"), "a") as f:
                f.write(text)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:
        """The time-limit warning (SIGINT) came: the trainer checkpoints; requeue if it stopped.

        Called by submitit on task 0 only; returns None (no requeue) when
        the trainer ended otherwise (finished, or failed).
        """
        children = list(self._launcher.children) if self._launcher else self._children
        codes = [child.wait() for child in children]
        print(f"time-limit warning: trainer exit {codes or 'none running'}", flush=True)
        for child in children:  # its last words ("SIGINT at step N: checkpoint saved ..."),
            if child.stderr is not None:  # which the launcher's reader will not get to
                self._log(child.stderr.read())
        if codes and all(code in sweep.STOPPED for code in codes):
            return submitit.helpers.DelayedSubmission(self)
        return None
