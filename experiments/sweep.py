"""Sweep launcher: runs every config of a study, each in its own run directory.

    python -m experiments.sweep configs/degradation.py[:ARG] --workdir runs/degradation
        [--config.key=value ...] [--sweep key=v1,v2 ...] [--workers N] [--dry-run]

The runs are the config file's ``sweep(add, arg)`` list (big_vision style),
times the product of the ``--sweep`` lists. Each run is one ``train.py``
subprocess on ``STUDY/<name>``, where the name is made of its swept values;
its output goes to ``STUDY/<name>/train.log``. Paths in the commands are
absolute (the config file's is resolved against the working directory once,
in ``plan``), so ``--dry-run``'s commands run from any directory.
Finished (and diverged) runs are skipped and interrupted ones resume, so
re-running the same command after a crash finishes the study. A failing run
does not stop the others. A lock file per run directory keeps two launchers
from training the same run at once (and each trainer locks its run directory
itself); trainers die with the launcher (``exits.die_with_parent``). The
report is written at the end.

The console (``sweep_console.Console``) follows the trainers' logs (their ``step N/M``
lines): on a terminal one tqdm bar over the study's steps; otherwise plain
lines, ``[start] NAME (log: PATH)``, a few ``[progress]`` lines per run and
``[finished] NAME (N s)``, each printed when it happens.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import train
from experiments.sweep_console import Console, say
from training import command_line, exits
from training.run_dir import read_json, record_failure, write_json_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE = ("finished", "diverged")
MAX_NAME = 120
STALE_UNREADABLE_LOCK_S = 60
HAS_PARENT_DEATH_SIGNAL = sys.platform.startswith("linux")  # see exits.die_with_parent


@dataclass
class Run:
    name: str
    overrides: dict[str, str]  # swept values, as command-line strings
    workdir: str
    command: list[str] = field(default_factory=list)


def _value_text(v) -> str:
    return str(v) if not isinstance(v, tuple | list) else repr(tuple(v))


def expand(config_path: str, swept: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The runs of a study: the file's sweep() list times the product of ``--sweep`` lists."""
    path, arg = command_line.split_config_arg(config_path)
    module = command_line.load_module(path)
    base: list[dict[str, str]] = []
    if hasattr(module, "sweep"):

        def add(**overrides):
            base.append({k: _value_text(v) for k, v in overrides.items()})

        try:
            command_line.call_with_arg(module.sweep, arg, add)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"sweep() in {path} failed: {type(e).__name__}: {e}") from e
    if not base:
        base = [{}]
    keys = [k for k, _ in swept]
    product = [dict(zip(keys, values, strict=True))
               for values in itertools.product(*(v for _, v in swept))]
    return [{**b, **p} for b in base for p in product]


def run_name(overrides: dict[str, str]) -> str:
    """'depth=56,plain=True' from the swept values; safe as one path component."""
    if not overrides:
        return "run"
    leaves = [k.split(".")[-1] for k in overrides]
    parts = []
    for key, value in overrides.items():
        short = key.split(".")[-1]
        parts.append(f"{short if leaves.count(short) == 1 else key}={value}")
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    name = re.sub(r"\.{2,}", "_", name).strip(".") or "run"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def absolute_config(config_path: str) -> str:
    """'configs/x.py:ARG' -> '/abs/.../configs/x.py:ARG', resolved against the cwd.

    An absolute path that holds a ':' (which would start the argument) is
    given relative to the repository instead, where the launcher runs trainers.
    """
    path, arg = command_line.split_config_arg(config_path)
    path = os.path.abspath(path)
    if ":" in path:
        path = os.path.relpath(path, REPO)
        if ":" in path:
            raise ValueError(f"the config file's path {path!r} must not contain ':'")
    return path if arg is None else f"{path}:{arg}"


def plan(config_path: str, workdir: str, global_overrides: dict[str, str],
         swept: list[tuple[str, list[str]]], python: str, train_script: str) -> list[Run]:
    """Expands, names and validates every run (its config must load) before any compute.

    Each run's command names every file by its absolute path (the config file
    resolved against the working directory): it runs from any directory.
    """
    study = os.path.realpath(workdir)
    config_arg = absolute_config(config_path)
    train_script = os.path.abspath(train_script)
    runs, seen = [], set()
    for overrides in expand(config_path, swept):
        config = command_line.load_config(config_path, {**global_overrides, **overrides})
        train.validate_config(config, num_devices=None)
        name = run_name(overrides)
        if name in seen:
            raise ValueError(f"two runs of the sweep share the name {name!r}")
        seen.add(name)
        run_dir = os.path.realpath(os.path.join(study, name))
        if os.path.dirname(run_dir) != study:
            raise ValueError(f"run name {name!r} would leave the study directory")
        command = [python, train_script, "--config", config_arg, "--workdir", run_dir]
        command += [f"--config.{k}={v}" for k, v in {**global_overrides, **overrides}.items()]
        runs.append(Run(name, overrides, run_dir, command))
    return runs


def read_summary(run_dir: str) -> dict:
    """The run's summary.json; {} when it has none (or an unreadable one)."""
    try:
        summary = read_json(os.path.join(run_dir, "summary.json"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def status_of(run_dir: str) -> str | None:
    return read_summary(run_dir).get("status")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(run_dir: str) -> bool:
    """Takes RUN_DIR/.lock atomically; a lock of a dead process is taken over."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".lock")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = read_json(path)
                alive = holder.get("host") != me["host"] or _pid_alive(int(holder["pid"]))
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


def release_lock(run_dir: str) -> None:
    path = os.path.join(run_dir, ".lock")
    try:
        if read_json(path).get("pid") == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass


class Launcher:
    """Runs the planned runs in worker subprocesses and records what happened."""

    def __init__(self, runs: list[Run], workers: int, console: Console | None = None):
        self.runs, self.workers = runs, workers
        self.console = Console(len(runs)) if console is None else console
        self.children: set[subprocess.Popen] = set()
        self.stopping = False
        self.devices = self._devices()

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
        env = {**os.environ, exits.PARENT_PID_ENV: str(os.getpid())}  # dies with the launcher
        if self.devices and self.workers > 1:
            env["CUDA_VISIBLE_DEVICES"] = self.devices[slot % len(self.devices)]
        return env

    def run_one(self, run: Run, slot: int) -> tuple[str, str]:
        if self.stopping:
            return "skipped", "launcher stopping"
        if not acquire_lock(run.workdir):
            return "locked", "running in another launcher"
        try:
            log_path = os.path.join(run.workdir, "train.log")
            with open(log_path, "a") as log:
                checkpoints = os.path.join(run.workdir, "checkpoints")
                resumed = os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))
                self.console.started(run.name, log_path, log.tell(), resumed)
                say(f"[start] {run.name} (log: {log_path})")
                # Off Linux there is no parent-death signal: each trainer gets a process
                # group of its own, which ``launch`` ends when the launcher stops.
                proc = subprocess.Popen(run.command, cwd=REPO, stdout=log,
                                        stderr=subprocess.PIPE, text=True, env=self._env(slot),
                                        start_new_session=not HAS_PARENT_DEATH_SIGNAL)
                self.children.add(proc)
                _, err = proc.communicate()
                self.children.discard(proc)
                log.write(err)
            status = status_of(run.workdir)
            last = (err.strip().splitlines() or [""])[-1]
            if proc.returncode == 0 and status == "finished":
                return "finished", ""
            if status == "diverged":
                return "diverged", last
            if proc.returncode in (130, 143, -2, -15):
                return "interrupted", last
            if proc.returncode == exits.EXIT_BAD_INPUT and "is in use by process" in last:
                return "locked", last  # a trainer of an earlier launcher is still stopping
            if status is None:
                record_failure(run.workdir, "failed", last or f"exit status {proc.returncode}",
                               name=run.name)
            return "failed", last or f"exit status {proc.returncode}"
        finally:
            release_lock(run.workdir)

    def stop(self, signum, _frame) -> None:
        self.stopping = True
        for child in list(self.children):
            child.send_signal(signum)

    def launch(self) -> dict[str, list[tuple[str, str]]]:
        results: dict[str, list[tuple[str, str]]] = {}
        todo = []
        for run in self.runs:
            summary = read_summary(run.workdir)
            status = summary.get("status")
            if status in DONE:
                say(f"[skip] {run.name}: already {status}")
                results.setdefault(status, []).append((run.name, ""))
                steps = summary.get("steps", summary.get("last_logged_step"))
                self.console.skipped(run.name, steps if isinstance(steps, int) else None)
            else:
                todo.append(run)
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.console.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
                futures = {}
                for i, run in enumerate(todo):
                    futures[pool.submit(self._timed, run, i % self.workers)] = run
                for fut in concurrent.futures.as_completed(futures):
                    status, detail = fut.result()
                    results.setdefault(status, []).append((futures[fut].name, detail))
        finally:
            self.console.close()
            for s, handler in old.items():
                signal.signal(s, handler)
            self._end_children()
        return results

    def _end_children(self) -> None:
        """SIGTERM to trainers still running when the launcher leaves (an exception)."""
        for child in list(self.children):
            with contextlib.suppress(OSError):
                if HAS_PARENT_DEATH_SIGNAL:
                    child.terminate()
                else:
                    os.killpg(child.pid, signal.SIGTERM)

    def _timed(self, run: Run, slot: int) -> tuple[str, str]:
        """Runs one run and says how it ended, before this worker takes the next."""
        t = time.time()
        try:
            status, detail = self.run_one(run, slot)
        except BaseException:
            self.console.finished(run.name, "failed")
            raise
        self.console.finished(run.name, status)
        extra = f": {detail}" if detail and status != "finished" else ""
        say(f"[{status}] {run.name} ({time.time() - t:.0f} s){extra}")
        return status, detail


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = command_line.ArgumentParser(prog="python -m experiments.sweep",
                                   description=__doc__.splitlines()[0])
    p.add_argument("config", help="configs/FILE.py[:ARG]")
    p.add_argument("--workdir", required=True, help="study directory")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="ad-hoc sweep of a config key (repeat for a product)")
    p.add_argument("--workers", type=int, default=1, help="parallel runs (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print each run's command, run nothing")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    p.add_argument("--train-script", default=os.path.join(REPO, "train.py"),
                   help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    args.overrides = command_line.parse_overrides(extra)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    args.swept = []
    for item in args.sweep:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--sweep {item!r} must look like key=v1,v2,...")
        args.swept.append((key, values.split(",")))
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        runs = plan(args.config, args.workdir, args.overrides, args.swept, args.python,
                    args.train_script)
    except ValueError as e:
        return command_line.bad_input(e)
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.command))
        return 0
    try:
        os.makedirs(args.workdir, exist_ok=True)
        write_json_atomic(os.path.join(args.workdir, "sweep.json"), {
            "config": args.config, "overrides": args.overrides, "sweep": args.swept,
            "runs": [{"name": r.name, "overrides": r.overrides, "command": r.command}
                     for r in runs]})
    except OSError as e:
        return command_line.bad_input(f"cannot write the study directory {args.workdir}: "
                                      f"{e.strerror}")
    print(f"{len(runs)} runs in {args.workdir}", flush=True)
    launcher = Launcher(runs, args.workers)
    results = launcher.launch()
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(results.items()))
    print(f"sweep done: {counts}")
    for name, detail in results.get("failed", []):
        print(f"  failed: {name}: {detail}")
    if not args.no_report and not launcher.stopping:
        from experiments import report  # noqa: PLC0415

        try:
            written = report.write_report(args.workdir)
            print(report.render_text(written))
        except ValueError as e:
            print(f"report: {e}", file=sys.stderr)
    bad = results.get("failed") or results.get("interrupted") or launcher.stopping
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
