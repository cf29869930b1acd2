"""The sweep on a SLURM cluster (``--launcher slurm``): each trainer of the plan is one job.

    python -m experiments.sweep CONFIG --workdir STUDY --launcher slurm [--slurm KEY=VALUE ...]
        [--detach | --status | --cancel]

Submission is submitit's (``SlurmExecutor``): the trainers of the plan (runs,
or packs) go as one job array, each job ``experiments.slurm_job.TrainerJob``
running the pack's ``train.py`` command, the one ``--dry-run`` prints, with
the options of ``experiments.slurm_options`` (checked before anything is
submitted), ``--requeue`` and SLURM's time-limit warning as SIGINT
(``--signal=INT@signal_s``). submitit's files and the jobs' logs go to
``STUDY/.slurm/``; the study records which job trains which run in
``STUDY/slurm.json``.

The same command again looks again: runs finished (or diverged) and runs
whose job is still queued or running are left alone; the others (new, failed,
interrupted) are submitted; each run's state is printed. Then, by default,
the launcher waits, showing the progress the local launcher shows (it follows
the runs' ``train.log``, and ``squeue`` for the jobs' states), and writes the
report. Ctrl-C stops the waiting, not the jobs. ``--detach`` returns after
submitting, with the job ids, the commands that look, attach and cancel, and
a report job that runs after the others (``afterany``). ``--status`` prints
the state and submits nothing; ``--cancel`` cancels the study's jobs (their
trainers checkpoint first). Light: no JAX here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import time

import filelock

from experiments import slurm_options
from experiments.slurm_queue import POLL_S, confirmed_queue, ended, queue
from experiments.study_plan import DONE, REPO, Pack, Run
from experiments.sweep_console import Console, say
from training.run_dir import read_json, read_summary, write_json_atomic

RECORD = "slurm.json"  # run name -> job id, and the report's job
FOLDER = ".slurm"  # submitit's pickles and the jobs' logs


def _checkpointed(run: Run) -> bool:
    path = os.path.join(run.workdir, "checkpoints")
    return os.path.isdir(path) and bool(os.listdir(path))


@dataclasses.dataclass
class SlurmStudy:
    """A study directory's SLURM jobs: what to submit, their state, the wait, the report."""

    args: argparse.Namespace
    argv: list[str]
    options: slurm_options.SlurmOptions
    study: str
    jobs: dict[str, str] = dataclasses.field(default_factory=dict)  # run name -> job id
    report_job: str | None = None

    @classmethod
    def open(cls, args: argparse.Namespace, argv: list[str]) -> SlurmStudy:
        """Reads the options and the study's records; checks all before any submission."""
        if args.workers != 1:
            raise ValueError("--workers is the local launcher's: SLURM runs the jobs it "
                             "schedules (--slurm array_parallelism=N caps them)")
        options = slurm_options.parse(args.slurm, slurm_options.config_defaults(args.config))
        study = os.path.realpath(args.workdir)
        if not (args.status or args.cancel or args.dry_run):
            slurm_options.preflight(options, study)
        self = cls(args, argv, options, study)
        with contextlib.suppress(OSError, ValueError):
            record = read_json(os.path.join(study, RECORD))
            self.jobs, self.report_job = dict(record["jobs"]), record.get("report_job")
        if (args.status or args.cancel) and not self.jobs:
            raise ValueError(f"no SLURM jobs recorded in {study} (submit with --launcher slurm "
                             "first)")
        return self

    # --- the study's state

    def _recorded_runs(self) -> list[Run]:
        """The runs of the study's last plan (sweep.json), for --status and --cancel."""
        try:
            runs = read_json(os.path.join(self.study, "sweep.json"))["runs"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot read {self.study}/sweep.json: {e}") from None
        return [Run(r["name"], r.get("overrides", {}), os.path.join(self.study, r["name"]))
                for r in runs]

    def state(self, run: Run, queued: dict[str, str]) -> tuple[str, str]:
        """(queued|running|finished|diverged|failed|interrupted|new, detail) of one run."""
        job = self.jobs.get(run.name)
        if job in queued:
            return queued[job], f"job {job}"
        summary = read_summary(run.workdir)
        status = summary.get("status")
        if status in DONE:
            return status, ""
        if status == "failed":
            return "failed", str(summary.get("error") or "")
        if job is not None or _checkpointed(run):
            said = [ended(job)] if job is not None else []
            return "interrupted", "; ".join(
                said + ["resumes from its checkpoint"] * _checkpointed(run))
        return "new", ""

    def show(self, runs: list[Run] | None = None) -> int:
        """``--status``: each run's state and the counts; submits nothing."""
        runs = self._recorded_runs() if runs is None else runs
        queued = queue()
        counts: dict[str, int] = {}
        for run in runs:
            state, detail = self.state(run, queued)
            counts[state] = counts.get(state, 0) + 1
            print(f"[{state}] {run.name}" + (f" ({detail})" if detail else ""))
        report = f"; report job {self.report_job} {queued[self.report_job]}" \
            if self.report_job in queued else ""
        print(f"{len(runs)} runs in {self.study}: "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + report, flush=True)
        return 0

    def cancel(self) -> int:
        """``--cancel``: scancel the study's jobs still in the queue (trainers checkpoint)."""
        queued = queue()
        ids = sorted({j for j in [*self.jobs.values(), self.report_job] if j in queued})
        if not ids:
            print(f"no job of {self.study} is queued or running")
            return 0
        out = slurm_options.slurm_command("scancel", *ids)
        if out.returncode != 0:
            raise ValueError(f"scancel failed: {slurm_options.last_error(out)}")
        print(f"cancelled {len(ids)} job{'s' * (len(ids) > 1)}: {' '.join(ids)} (running "
              "trainers checkpoint first; the same command without --cancel resumes them)")
        return 0

    # --- submitting

    def _executor(self, **parameters):
        return executor(self.study, self.options, f"sweep:{os.path.basename(self.study)}",
                        **parameters)

    def _submit(self, packs: list[Pack]) -> list[str]:
        """One job array of the packs (one job for one pack); their job ids, in order."""
        from experiments.slurm_job import TrainerJob  # noqa: PLC0415

        o = self.options
        executor = self._executor(
            time=o.time_min, signal_delay_s=o.signal_s,
            additional_parameters={**o.sbatch, "signal": f"INT@{o.signal_s}", "requeue": True},
            **({"array_parallelism": o.array_parallelism} if o.array_parallelism else {}))
        try:
            with executor.batch():
                jobs = [executor.submit(TrainerJob(pack)) for pack in packs]
        except Exception as e:  # noqa: BLE001 - sbatch's refusal, as submitit raises it
            raise ValueError(f"sbatch refused the jobs: {last_line(e)}") from None
        return [job.job_id for job in jobs]

    def _submit_report(self) -> str | None:
        """A job that writes the report once the study's jobs have ended (afterany)."""
        import submitit  # noqa: PLC0415

        queued = queue()
        arrays = sorted({j.split("_")[0] for j in self.jobs.values() if j in queued})
        if self.report_job in queued:
            slurm_options.slurm_command("scancel", self.report_job)  # it waits for fewer jobs
        if not arrays:
            return None
        keep = {k: v for k, v in self.options.sbatch.items()
                if k in ("partition", "account", "qos")}
        executor = self._executor(time=30, nodes=1, additional_parameters={
            **keep, "dependency": "afterany:" + ":".join(arrays)})
        command = [sys.executable, "-m", "experiments.report", self.study]
        try:
            job = executor.submit(submitit.helpers.CommandFunction(command, cwd=REPO))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"sbatch refused the report's job: {last_line(e)}") from None
        return job.job_id

    def _record(self) -> None:
        write_json_atomic(os.path.join(self.study, RECORD),
                          {"jobs": self.jobs, "report_job": self.report_job})

    def launch(self, runs: list[Run], packs: list[Pack]) -> int:
        """Looks, submits what is neither done nor in the queue, then waits (or detaches)."""
        os.makedirs(os.path.join(self.study, FOLDER), exist_ok=True)
        with filelock.FileLock(os.path.join(self.study, ".slurm.lock")):
            queued = confirmed_queue(self.jobs[run.name] for run in runs if run.name in self.jobs
                                     and read_summary(run.workdir).get("status") not in DONE)
            states = {run.name: self.state(run, queued) for run in runs}
            for run in runs:
                state, detail = states[run.name]
                if state != "new":
                    say(f"[{state}] {run.name}" + (f" ({detail})" if detail else ""))
            todo = []
            for pack in packs:
                left = [r for r in pack.runs if states[r.name][0] in ("new", "failed",
                                                                      "interrupted")]
                if left:
                    todo.append(dataclasses.replace(pack, runs=left))
            if todo:
                ids = self._submit(todo)
                before = dict(self.jobs)
                for pack, job in zip(todo, ids, strict=True):
                    for run in pack.runs:
                        self.jobs[run.name] = job
                        say(f"[submitted] {run.name} (job {job})")
                try:
                    if self.args.detach and not self.args.no_report:
                        self.report_job = self._submit_report()
                except ValueError:
                    slurm_options.slurm_command("scancel", *ids)  # nothing half-submitted
                    self.jobs = before
                    raise
                self._record()
        queued = queue()
        waiting = [run for run in runs if self.jobs.get(run.name) in queued]
        if self.args.detach:
            return self._detached(waiting)
        return self._wait(runs, packs, waiting)

    def _commands(self) -> list[str]:
        base = [a for a in self.argv if a not in ("--detach", "--status", "--cancel")]
        command = "python -m experiments.sweep " + shlex.join(base)
        return [f"look:   {command} --status", f"attach: {command}",
                f"cancel: {command} --cancel"]

    def _detached(self, waiting: list[Run]) -> int:
        ids = sorted({self.jobs[run.name] for run in waiting})
        print(f"{len(ids)} job{'s' * (len(ids) != 1)} queued or running: {' '.join(ids)}"
              + (f"; the report: job {self.report_job} (after them)" if self.report_job else
                 f"; the report: python -m experiments.report {self.study}"))
        for line in self._commands():
            print(line)
        return 0

    # --- waiting

    def _wait(self, runs: list[Run], packs: list[Pack], waiting: list[Run]) -> int:
        """Follows the jobs to their end (progress from the runs' logs), then the report."""
        console = Console(len(runs))
        results: dict[str, list[tuple[str, str]]] = {}
        waiting_names = {run.name for run in waiting}
        for run in runs:
            if run.name not in waiting_names:
                state, detail = self.state(run, {})
                summary = read_summary(run.workdir)
                if state in DONE:
                    console.skipped(run.name, summary.get("steps"))
                results.setdefault(state, []).append((run.name, detail))
        first_of_job = {}
        for run in waiting:
            first_of_job.setdefault(self.jobs[run.name], run.name)
        logs = {run.name: os.path.join(run.workdir, "train.log") for run in waiting}
        offsets = {n: os.path.getsize(p) if os.path.exists(p) else 0 for n, p in logs.items()}
        started: dict[str, float] = {}
        pending = list(waiting)
        detached = []

        def detach(_signum, _frame):
            detached.append(True)

        if pending:
            n = len({self.jobs[r.name] for r in pending})
            say(f"waiting for {n} job{'s' * (n > 1)} (Ctrl-C stops waiting; the jobs go on)")
        old = signal.signal(signal.SIGINT, detach)
        console.start()
        try:
            while pending and not detached:
                try:
                    queued = confirmed_queue(self.jobs[run.name] for run in pending)
                except ValueError:  # Ctrl-C reached squeue too
                    if detached:
                        break
                    raise
                for run in list(pending):
                    job = self.jobs[run.name]
                    state = queued.get(job)
                    label = None if first_of_job[job] == run.name else ""
                    if state == "running" and run.name not in started:
                        started[run.name] = time.time()
                        console.started(run.name, logs[run.name], offsets[run.name],
                                         _checkpointed(run), label)
                        say(f"[start] {run.name} (log: {logs[run.name]}, job {job})")
                    elif state == "queued" and run.name in started:
                        started.pop(run.name)
                        say(f"[requeued] {run.name} (job {job})")
                    elif state is None:
                        pending.remove(run)
                        result, detail = self._ended(run)
                        console.finished(run.name, result)
                        seconds = time.time() - started.get(run.name, time.time())
                        extra = f": {detail}" if detail and result != "finished" else ""
                        say(f"[{result}] {run.name} ({seconds:.0f} s){extra}")
                        results.setdefault(result, []).append((run.name, detail))
                if pending and not detached:
                    time.sleep(POLL_S)
        finally:
            console.close()
            signal.signal(signal.SIGINT, old)
        if detached:
            print(f"stopped waiting; {len(pending)} runs still queued or running")
            for line in self._commands():
                print(line)
            print(f"report: python -m experiments.report {self.study}")
            return 1
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(results.items()))
        print(f"sweep done: {counts}")
        for name, detail in results.get("failed", []):
            print(f"  failed: {name}: {detail}")
        if not self.args.no_report:
            self._report()
        bad = set(results) - {"finished", "diverged"}
        return 1 if bad else 0

    def _ended(self, run: Run) -> tuple[str, str]:
        """How a run whose job left the queue ended, from its summary."""
        summary = read_summary(run.workdir)
        status = summary.get("status")
        if status in DONE:
            return status, str(summary.get("error") or "") if status == "diverged" else ""
        if status == "failed":
            return "failed", str(summary.get("error") or "")
        log = os.path.join(self.study, FOLDER)
        return "interrupted", (f"{ended(self.jobs[run.name])}; left the queue unfinished "
                               f"(cancelled, or out of requeues; its log: {log}): run the "
                               "command again to resume")

    def _report(self) -> None:
        """The report, written here; a report job of this study that is queued is cancelled."""
        queued = queue()
        if self.report_job in queued:
            if queued[self.report_job] == "queued":
                slurm_options.slurm_command("scancel", self.report_job)
            while self.report_job in queue():  # running: let it end, then write here
                time.sleep(POLL_S)
        from experiments import report  # noqa: PLC0415

        try:
            written = report.write_report(self.study)
            print(report.render_text(written))
        except ValueError as e:
            print(f"report: {e}", file=sys.stderr)


def executor(study: str, options: slurm_options.SlurmOptions, job_name: str, **parameters):
    """submitit's executor for a study's jobs: run from the repository, SIGINT as the warning.

    Its pickles and the jobs' logs go to STUDY/.slurm; a job's shell waits for
    its trainer on SIGTERM (which checkpoints) instead of dying first.
    """
    import submitit  # noqa: PLC0415 - only where jobs are submitted

    setup = [f"cd {shlex.quote(REPO)}",
             f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}",
             "export SUBMITIT_PREEMPT_SIGNAL=INT",  # SLURM's time-limit warning
             "trap : TERM  # on SIGTERM this shell waits for the trainer's checkpoint"]
    ex = submitit.SlurmExecutor(folder=os.path.join(study, FOLDER),
                                max_num_timeout=options.max_requeues)
    ex.update_parameters(setup=setup, wckey=None, stderr_to_stdout=True, job_name=job_name,
                         **parameters)
    return ex


def last_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()] or [type(error).__name__]
    errors = [line for line in lines if "error:" in line] or lines
    return errors[-1].split("error: ")[-1].strip()
