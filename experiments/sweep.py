"""Sweep launcher: runs every config of a study, each in its own run directory.

    python -m experiments.sweep configs/degradation.py[:ARG] --workdir runs/degradation
        [--config.key=value ...] [--sweep key=v1,v2 ...] [--pack K|auto] [--workers N]
        [--dry-run] [--launcher slurm [--slurm KEY=VALUE ...] [--detach|--status|--cancel]]

The runs are the config file's ``sweep(add, arg)`` list (big_vision style),
times the product of the ``--sweep`` lists. Each run has its own directory,
``STUDY/<name>``, where the name is made of its swept values, and its own
``train.log`` there. ``--pack K`` trains up to K runs of one network that
differ only in seed or scalar optimizer/schedule values as one pack: one
``train.py --run DIR ... --run DIR ...`` subprocess (``study_plan``; ``auto``:
K measured on the machine, up to 4 on CPU; default: the config file's ``pack(arg)``,
else 1, one ``train.py --workdir DIR`` per run). Paths in the commands are
absolute (the config file's is resolved against the working directory once,
in ``plan``), so ``--dry-run``'s commands (one per trainer) run from any directory.
Finished (and diverged) runs are skipped and interrupted ones resume, so
re-running the same command after a crash finishes the study. A failing run
does not stop the others. A lock file per run directory keeps two launchers
from training the same run at once (and each trainer locks its run directories
itself); trainers die with the launcher (``exits.die_with_parent``). The
report is written at the end.

``--launcher slurm`` submits the same trainers as SLURM jobs instead
(``experiments.slurm``); the default, local, path below is unchanged by it.

The console (``sweep_console.Console``) follows the trainers' logs (their ``step N/M``
lines): on a terminal one tqdm bar over the study's steps; otherwise plain
lines, ``[start] NAME (log: PATH)``, a few ``[progress]`` lines per trainer and
``[finished] NAME (N s)``, each printed when it happens.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time

from experiments import pack_size
from experiments.slurm_options import KEYS as SLURM_KEYS
from experiments.study_plan import (
    DONE,
    MAX_NAME,
    REPO,
    Pack,
    Run,
    absolute_config,
    expand,
    make_packs,
    plan,
    run_name,
)
from experiments.sweep_console import Console, LogCopy, say
from training import command_line, exits
from training.launcher_lock import acquire_lock, release_lock
from training.run_dir import (
    check_identity,
    checkpoint_dirs,
    read_summary,
    record_failure,
    write_json_atomic,
)

__all__ = ["MAX_NAME", "REPO", "Launcher", "acquire_lock", "expand", "main", "plan",
           "release_lock", "run_name"]
HAS_PARENT_DEATH_SIGNAL = sys.platform.startswith("linux")  # see exits.die_with_parent
STOPPED = {*exits.EXIT_INTERRUPTED.values(), *(-int(s) for s in exits.EXIT_INTERRUPTED)}


def trainer_env(devices: list[str], workers: int, slot: int) -> dict[str, str]:
    """A trainer's environment: it dies with the launcher; one GPU per worker if several."""
    env = {**os.environ, exits.PARENT_PID_ENV: str(os.getpid())}
    if devices and workers > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
    return env


class Launcher:
    """Runs the planned packs, one trainer subprocess each, and records how each run ended."""

    def __init__(self, packs: list[Pack], workers: int, console: Console | None = None):
        self.packs, self.workers = packs, workers
        self.runs = [run for p in packs for run in p.runs]
        self.console = Console(len(self.runs)) if console is None else console
        self.children: set[subprocess.Popen] = set()
        self.stopping = False
        self.devices = self._devices()
        self.results: dict[str, list[tuple[str, str]]] = {}

    @staticmethod
    def _devices() -> list[str]:
        listed = os.environ.get("RESNET_SWEEP_DEVICES")
        if listed:
            return [d for d in listed.split(",") if d]
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.strip()]
        except (OSError, subprocess.SubprocessError):
            return []

    def _env(self, slot: int) -> dict[str, str]:
        return trainer_env(self.devices, self.workers, slot)

    def _skipped(self, run: Run) -> bool:
        """True (and says so) if the run is done already: finished or diverged."""
        summary = read_summary(run.workdir)
        status = summary.get("status")
        if status not in DONE:
            return False
        say(f"[skip] {run.name}: already {status}")
        self.results.setdefault(status, []).append((run.name, ""))
        steps = summary.get("steps", summary.get("last_logged_step"))
        self.console.skipped(run.name, steps if isinstance(steps, int) else None)
        return True

    def run_pack(self, pack: Pack, slot: int) -> list[tuple[Run, str, str]]:
        """Trains the pack's runs that no other launcher holds or has done.

        Returns (run, status, detail) for each run but those found done.
        """
        if self.stopping:
            return [(run, "skipped", "launcher stopping") for run in pack.runs]
        ended, members = [], []
        for run in pack.runs:
            if not acquire_lock(run.workdir):
                ended.append((run, "locked", "running in another launcher"))
            elif self._skipped(run):  # done by another launcher since this one started
                release_lock(run.workdir)
            else:
                members.append(run)
        try:
            return ended + (self._train(pack, members, slot) if members else [])
        finally:
            for run in members:
                release_lock(run.workdir)

    def _train(self, pack: Pack, members: list[Run], slot: int) -> list[tuple[Run, str, str]]:
        """One trainer for ``members`` (the pack's command, rebuilt for them); each run's end.

        The trainer writes to the first run's train.log; ``LogCopy`` copies
        it into the others' as it comes, and the trainer's stderr ends each.
        """
        logs = [os.path.join(run.workdir, "train.log") for run in members]
        offsets = [os.path.getsize(p) if os.path.exists(p) else 0 for p in logs]
        copy = LogCopy(logs[0], offsets[0], logs[1:]) if len(logs) > 1 else None
        where = f"; pack {pack.index}, {len(members)} runs" if copy else ""
        for i, (run, log_path, offset) in enumerate(zip(members, logs, offsets, strict=True)):
            saved = checkpoint_dirs(run.workdir)
            resumed = bool(saved)
            label = None if not copy else "" if i else \
                f"pack {pack.index} ({run.name} and {len(members) - 1} more)"
            self.console.started(run.name, log_path, offset, resumed, label)
            again = f"resuming from step {saved[-1]}; " if saved else ""
            say(f"[start] {run.name} ({again}log: {log_path}{where})")
        err = ""
        try:
            with open(logs[0], "a") as log:
                # Off Linux there is no parent-death signal: each trainer gets a process
                # group of its own, which ``launch`` ends when the launcher stops.
                proc = subprocess.Popen(pack.command(members), cwd=REPO, stdout=log,
                                        stderr=subprocess.PIPE, text=True, env=self._env(slot),
                                        start_new_session=not HAS_PARENT_DEATH_SIGNAL)
                self.children.add(proc)
                _, err = proc.communicate()
                self.children.discard(proc)
                if copy:  # the trainer's output first, then its stderr: once in each log
                    copy.close(err)
                    copy = None
                log.write(err)
        finally:
            if copy:
                copy.close(err)
        last = (err.strip().splitlines() or [""])[-1]
        ended = []
        for run in members:
            summary = read_summary(run.workdir)
            status = summary.get("status")
            own = str(summary.get("error") or last) if status == "diverged" else last
            result, detail = outcome(proc.returncode, status, own)
            if result == "failed" and status is None:
                record_failure(run.workdir, "failed", detail, name=run.name)
            ended.append((run, result, detail))
        return ended

    def stop(self, signum, _frame) -> None:
        self.stopping = True
        for child in list(self.children):
            child.send_signal(signum)

    def launch(self) -> dict[str, list[tuple[str, str]]]:
        """Trains every pack (the runs done already skipped); status -> [(run name, detail)]."""
        self.results = {}
        todo = []
        for pack in self.packs:
            left = [run for run in pack.runs if not self._skipped(run)]
            if left:
                todo.append(dataclasses.replace(pack, runs=left))
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.console.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
                futures = [pool.submit(self._timed, pack, i % self.workers)
                           for i, pack in enumerate(todo)]
                for fut in concurrent.futures.as_completed(futures):
                    for run, status, detail in fut.result():
                        self.results.setdefault(status, []).append((run.name, detail))
        finally:
            self.console.close()
            for s, handler in old.items():
                signal.signal(s, handler)
            self._end_children()
        return self.results

    def _end_children(self) -> None:
        """SIGTERM to trainers still running when the launcher leaves (an exception)."""
        for child in list(self.children):
            with contextlib.suppress(OSError):
                if HAS_PARENT_DEATH_SIGNAL:
                    child.terminate()
                else:
                    os.killpg(child.pid, signal.SIGTERM)

    def _timed(self, pack: Pack, slot: int) -> list[tuple[Run, str, str]]:
        """Runs one pack and says how each of its runs ended, before this worker goes on."""
        t = time.time()
        try:
            ended = self.run_pack(pack, slot)
        except BaseException:
            for run in pack.runs:
                self.console.finished(run.name, "failed")
            raise
        for run, status, detail in ended:
            self.console.finished(run.name, status)
            extra = f": {detail}" if detail and status != "finished" else ""
            say(f"[{status}] {run.name} ({time.time() - t:.0f} s){extra}")
        return ended


def outcome(returncode: int, status: str | None, last: str) -> tuple[str, str]:
    """How one run of a trainer ended, from the trainer's exit code and the run's summary.

    A pack exits 3 when some of its runs diverged and the others finished.
    """
    if status == "finished" and returncode in (0, exits.EXIT_DIVERGED):
        return "finished", ""
    if status == "diverged":
        return "diverged", last
    if returncode in STOPPED:  # a signal: the trainer's exit code, or the signal itself
        return "interrupted", last
    if returncode == exits.EXIT_BAD_INPUT and "is in use by process" in last:
        return "locked", last  # a trainer of an earlier launcher is still stopping
    return "failed", last or f"exit status {returncode}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = command_line.ArgumentParser(prog="python -m experiments.sweep",
                                   description=__doc__.splitlines()[0])
    p.add_argument("config", help="configs/FILE.py[:ARG]")
    p.add_argument("--workdir", required=True, help="study directory")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="ad-hoc sweep of a config key (repeat for a product)")
    p.add_argument("--workers", type=int, default=1,
                   help="trainers at once (default 1), each a run or a pack")
    p.add_argument("--pack", default=None, metavar="K|auto",
                   help="train up to K runs of one network as one program (training/pack.py); "
                        "auto: measured; default: the config file's pack(arg), else 1")
    p.add_argument("--dry-run", action="store_true",
                   help="print each trainer's command, run nothing")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: trainer processes on this machine (default); slurm: one SLURM "
                        "job per trainer (experiments/slurm.py)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a SLURM job option (repeat): " + ", ".join(SLURM_KEYS))
    p.add_argument("--detach", action="store_true",
                   help="SLURM: submit and return (a job writes the report)")
    p.add_argument("--status", action="store_true",
                   help="SLURM: print each run's state; submit nothing")
    p.add_argument("--cancel", action="store_true", help="SLURM: cancel the study's jobs")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    p.add_argument("--train-script", default=os.path.join(REPO, "train.py"),
                   help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    args.overrides = command_line.parse_overrides(extra)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    slurm_only = [f for f in ("slurm", "detach", "status", "cancel") if getattr(args, f)]
    if slurm_only and args.launcher != "slurm":
        raise ValueError(f"--{slurm_only[0]} goes with --launcher slurm")
    if args.pack is not None:
        args.pack = pack_size.parse_pack(args.pack)
    args.swept = []
    for item in args.sweep:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--sweep {item!r} must look like key=v1,v2,...")
        if key in dict(args.swept):
            raise ValueError(f"--sweep {key} is given twice; give all its values once: "
                             f"--sweep {key}=v1,v2,...")
        args.swept.append((key, split_values(values)))
    return args


def split_values(text: str) -> list[str]:
    """'0.1,0.2' -> ['0.1', '0.2']; commas inside brackets belong to one value:
    '(4,8,16),(8,16,32)' -> ['(4,8,16)', '(8,16,32)'] (tuple-valued keys)."""
    values, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cluster = None
    try:
        args = parse_args(argv)
        if args.launcher == "slurm":
            from experiments import slurm  # noqa: PLC0415 - submitit only for SLURM studies

            cluster = slurm.SlurmStudy.open(args, argv)  # checked before any work
            if args.status or args.cancel:
                return cluster.cancel() if args.cancel else cluster.show()
        runs = plan(args.config, args.workdir, args.overrides, args.swept, args.python,
                    args.train_script)
        pack = args.pack if args.pack is not None else pack_size.default_pack(args.config)
        size = pack if pack != "auto" else pack_size.AutoSize(
            args.python, absolute_config(args.config),
            trainer_env(Launcher._devices(), args.workers, 0),
            sys.stderr if args.dry_run else sys.stdout)  # stdout: the dry run's commands
        packs = make_packs(runs, size, python=args.python,
                           train_script=os.path.abspath(args.train_script),
                           config=absolute_config(args.config))
        for run in runs:  # train.py's own identity check, before anything is written
            check_identity(run.workdir, run.config, offer_allow=False)
    except ValueError as e:
        return command_line.bad_input(e)
    if args.dry_run:
        for p in packs:
            print(shlex.join(p.command()))
        return 0
    pack_of = {run.name: p for p in packs for run in p.runs}
    try:
        os.makedirs(args.workdir, exist_ok=True)
        write_json_atomic(os.path.join(args.workdir, "sweep.json"), {
            "config": args.config, "overrides": args.overrides, "sweep": args.swept,
            "pack": pack, "runs": [{"name": r.name, "overrides": r.overrides,
                                    "pack": pack_of[r.name].index,
                                    "command": pack_of[r.name].command()} for r in runs]})
    except OSError as e:
        return command_line.bad_input(f"cannot write the study directory {args.workdir}: "
                                      f"{e.strerror}")
    trainers = f" in {len(packs)} pack{'s' * (len(packs) > 1)}" if len(packs) < len(runs) else ""
    print(f"{len(runs)} runs{trainers} in {args.workdir}", flush=True)
    if cluster is not None:
        try:
            return cluster.launch(runs, packs)
        except ValueError as e:
            return command_line.bad_input(e)
    launcher = Launcher(packs, args.workers)
    results = launcher.launch()
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(results.items()))
    print(f"sweep done: {counts}")
    for name, detail in results.get("failed", []):
        print(f"  failed: {name}: {detail}")
    elsewhere = [name for name, _ in results.get("locked", [])]
    if elsewhere:
        print(f"  {len(elsewhere)} run(s) in training by another launcher "
              f"({', '.join(elsewhere)}): the study is not done; that launcher writes the "
              "report")
    if not args.no_report and not launcher.stopping and not elsewhere:
        from experiments import report  # noqa: PLC0415

        try:
            written = report.write_report(args.workdir)
            print(report.render_text(written))
        except ValueError as e:
            print(f"report: {e}", file=sys.stderr)
    bad = results.get("failed") or results.get("interrupted") or elsewhere or launcher.stopping
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
