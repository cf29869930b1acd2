"""One trial of a search: an ordinary run directory, its trainer, its evaluations told to Optuna.

The trial's drawn values become ``--config.KEY=VALUE`` overrides of a plain
``train.py`` run in ``STUDY/<name>`` (``trial=0003,lr=0.0347``: the logical
trial's number and its values; a retried trial resumes the same directory),
trained in a subprocess as the sweep launcher's runs are: its output goes to
the run's ``train.log`` and it dies with the search. After each evaluation
the trainer asks the search through its gate (``training.eval_gate``): the
validation error is reported to Optuna (``trial.report``, the step as the
resource) and, when the pruner says so, the trainer is told to stop there;
it checkpoints that step and exits 143, and the run's ``summary.json`` says
``pruned``, at which step and why. While the trainer runs, the search
records the trial's heartbeat. How the trainer ended decides the trial:

| trainer | run's summary.json | Optuna |
|---|---|---|
| finished (exit 0) | finished | COMPLETE, value: the final validation error |
| stopped by the pruner | pruned | PRUNED |
| diverged (exit 3) | diverged | PRUNED (ranked below every complete trial) |
| stopped from outside (the search stopping), or its run busy | unchanged | FAIL, queued again |
| anything else | failed, with the trainer's last line | FAIL |
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from experiments.search_space import Param, override_text, short_text
from experiments.search_study import origin, requeue
from experiments.study_plan import REPO, run_name
from training import eval_gate, exits, run_dir, tb_events

STOPPED = {*exits.EXIT_INTERRUPTED.values(), *(-int(s) for s in exits.EXIT_INTERRUPTED)}
LOCK_WAIT_S = 120  # for the trainer of a lost worker to checkpoint and let its run go


@dataclass
class Setup:
    """What every trial of a search shares."""

    study_dir: str  # absolute
    config: str  # FILE[:ARG], absolute
    overrides: dict[str, str]  # --config.KEY=VALUE of every trial
    space: list[Param]
    pruner: str
    python: str = sys.executable
    train_script: str = os.path.join(REPO, "train.py")
    heartbeat_s: int = 60

    def distributions(self) -> dict:
        return {p.key: p.distribution() for p in self.space}


def trial_name(number: int, params: dict) -> str:
    """The run directory's name: 'trial=0003,lr=0.0347' (values to 4 significant digits)."""
    return run_name({"trial": f"{number:04d}", **{k: short_text(v) for k, v in params.items()}})


def command(setup: Setup, workdir: str, params: dict) -> list[str]:
    """The trial's train.py command: the search's overrides, then its drawn values."""
    settings = {**setup.overrides, **{k: override_text(v) for k, v in params.items()}}
    return [setup.python, setup.train_script, "--config", setup.config, "--workdir", workdir,
            *(f"--config.{k}={v}" for k, v in settings.items())]


def _wait_for_run_dir(workdir: str, timeout: float = LOCK_WAIT_S) -> None:
    """Waits while another trainer (a lost worker's, still checkpointing) holds the run."""
    path = os.path.join(workdir, run_dir.RunDir.LOCK)
    if not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDWR)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # the trainer says who holds it
                time.sleep(0.2)
    finally:
        os.close(fd)


def prune_reason(study: optuna.Study, pruner: str, step: int, value: float) -> str:
    """Why the pruner stopped a trial at ``step``, in one line."""
    if pruner == "median":
        others = [t.intermediate_values[step] for t in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,)) if step in t.intermediate_values]
        if others:
            return (f"median pruner: validation error {100 * value:.2f}% at step {step}, above "
                    f"the median of {len(others)} finished trials there "
                    f"({100 * statistics.median(others):.2f}%)")
    if pruner == "asha":
        return (f"ASHA pruner: validation error {100 * value:.2f}% at step {step}, not among "
                "the best third of the trials that reached this rung")
    return f"{pruner} pruner: validation error {100 * value:.2f}% at step {step}"


class TrialRun:
    """Runs one asked trial to its end and tells Optuna how it ended."""

    def __init__(self, setup: Setup, study: optuna.Study, storage, trial: optuna.Trial,
                 env: dict[str, str], children: set):
        self.setup, self.study, self.storage, self.trial = setup, study, storage, trial
        self.env, self.children = env, children
        self.number = origin(storage.get_trial(trial._trial_id))  # noqa: SLF001
        self.name = trial_name(self.number, trial.params)
        self.workdir = os.path.join(setup.study_dir, self.name)
        self.reported: set[int] = set()
        self.pruned: tuple[int, str] | None = None  # (step, why)
        self.total_steps: int | None = None
        self.taken_over = False

    def run(self) -> tuple[str, str]:
        """Trains the trial; returns its status and a detail line, after telling Optuna.

        A trial taken over meanwhile (its heartbeat went stale, another worker
        retries it: this worker was thought lost) ends ``taken over``; its
        trainer still finishes the run, which the retry then finds done.
        """
        try:
            return self._run()
        except optuna.exceptions.UpdateFinishedTrialError:
            return "taken over", "its heartbeat went stale and another worker retries it"

    def _run(self) -> tuple[str, str]:
        self.trial.set_user_attr("run", self.name)
        self.storage.record_heartbeat(self.trial._trial_id)  # noqa: SLF001 - as Study.optimize
        os.makedirs(self.workdir, exist_ok=True)
        self._report_logged()
        if run_dir.status_of(self.workdir) == "pruned":  # pruned before its worker was lost
            status, detail = "pruned", run_dir.read_summary(self.workdir).get("error", "")
        else:
            status, detail = self._train()
        if self.taken_over:
            raise optuna.exceptions.UpdateFinishedTrialError(self.name)
        self._tell(status, detail)
        return status, detail

    def _report_logged(self) -> None:
        """The evaluations a resumed run logged before (a retried trial starts anew in Optuna)."""
        for line in run_dir.MetricsLog(self.workdir, False).read():
            if "val_error" in line and line["step"] not in self.reported:
                self.trial.report(line["val_error"], line["step"])
                self.reported.add(line["step"])

    def _train(self) -> tuple[str, str]:
        _wait_for_run_dir(self.workdir)
        log_path = os.path.join(self.workdir, "train.log")
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        answers_r, answers_w = os.pipe()
        questions_r, questions_w = os.pipe()
        env = {**self.env, eval_gate.ENV: f"{answers_r},{questions_w}"}
        try:
            with open(log_path, "a") as log:
                proc = subprocess.Popen(
                    command(self.setup, self.workdir, self.trial.params), cwd=REPO,
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                    pass_fds=(answers_r, questions_w),
                    start_new_session=not sys.platform.startswith("linux"))
        finally:
            os.close(answers_r)
            os.close(questions_w)
        self.children.add(proc)
        try:
            with os.fdopen(questions_r) as questions, os.fdopen(answers_w, "w") as answers:
                self._follow(questions, answers)
            proc.wait()
        finally:
            self.children.discard(proc)
        return self._outcome(proc.returncode, _last_line(log_path, offset))

    def _follow(self, questions, answers) -> None:
        """Answers the trainer's evaluations until it ends, beating the trial's heart."""
        beat = time.monotonic()
        while True:
            if time.monotonic() - beat >= self.setup.heartbeat_s:
                self.storage.record_heartbeat(self.trial._trial_id)  # noqa: SLF001
                beat = time.monotonic()
            ready, _, _ = select.select([questions], [], [], min(1.0, self.setup.heartbeat_s))
            if not ready:
                continue
            text = questions.readline()
            if not text:  # the trainer has ended
                return
            asked = json.loads(text)
            try:
                stop = self._judge(asked["step"], asked["val_error"], asked["total_steps"])
            except optuna.exceptions.UpdateFinishedTrialError:  # taken over: let it finish
                stop, self.taken_over = False, True
            with contextlib.suppress(OSError):
                answers.write("stop\n" if stop else "go\n")
                answers.flush()

    def _judge(self, step: int, value: float, total_steps: int) -> bool:
        """Reports one evaluation; True when the pruner stops the trial there."""
        self.total_steps = total_steps
        if step not in self.reported:
            self.trial.report(value, step)
            self.reported.add(step)
        if step >= total_steps or not self.trial.should_prune():
            return False
        self.pruned = (step, prune_reason(self.study, self.setup.pruner, step, value))
        return True

    def _outcome(self, returncode: int, last: str) -> tuple[str, str]:
        summary = run_dir.read_summary(self.workdir)
        status = summary.get("status")
        if returncode == 0 and status == "finished":
            return "finished", ""
        if status == "diverged":
            return "diverged", str(summary.get("error", last))
        if returncode in STOPPED and self.pruned is not None:
            self._record_pruned(*self.pruned)
            return "pruned", self.pruned[1]
        if returncode in STOPPED:
            return "interrupted", last
        if returncode == exits.EXIT_BAD_INPUT and "is in use by process" in last:
            return "locked", last
        detail = last or f"exit status {returncode}"
        run_dir.record_failure(self.workdir, "failed", detail, trial=self.number)
        return "failed", detail

    def _record_pruned(self, step: int, why: str) -> None:
        """The pruned run's summary.json, TensorBoard HParams session and train.log line."""
        run_dir.record_failure(self.workdir, "pruned", why, trial=self.number, steps=step,
                               pruned_at_step=step, total_steps=self.total_steps)
        summary = run_dir.read_summary(self.workdir)
        with contextlib.suppress(OSError, ValueError):
            config = run_dir.read_json(os.path.join(self.workdir, "config.json"))
            tb_events.write_hparams(self.workdir, step, tb_events.hparams_of(config), summary,
                                    "pruned")
        with open(os.path.join(self.workdir, "train.log"), "a") as log:
            log.write(f"pruned by the search at step {step}: {why}\n")

    def _tell(self, status: str, detail: str) -> None:
        summary = run_dir.read_summary(self.workdir)
        steps = summary.get("steps", summary.get("last_logged_step"))
        for key, value in (("status", status), ("detail", detail), ("steps", steps),
                           ("total_steps", self.total_steps or summary.get("steps"))):
            if value not in (None, ""):
                self.trial.set_user_attr(key, value)
        if status == "finished" and isinstance(summary.get("final_val_error"), float | int):
            self.study.tell(self.trial, float(summary["final_val_error"]))
        elif status == "finished":
            self.trial.set_user_attr("detail", "its summary.json holds no validation error")
            self.study.tell(self.trial, state=TrialState.FAIL)
        elif status in ("pruned", "diverged"):
            self.study.tell(self.trial, state=TrialState.PRUNED)
        elif status in ("interrupted", "locked"):
            requeue(self.study, self.study.tell(self.trial, state=TrialState.FAIL))
        else:
            self.study.tell(self.trial, state=TrialState.FAIL)


def _last_line(path: str, offset: int) -> str:
    """The last non-empty line the trainer wrote to its log (from ``offset``)."""
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
