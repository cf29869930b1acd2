"""The sweep's runs and packs: which runs train together in one ``train.py``, its command,
how each run ended, and the run directories' locks and summaries.

A pack is K runs of one network that differ only in ``training.pack.PACK_KEYS``
(seed, scalar optimizer and schedule values), trained as one program by one
trainer (``train.py --config CFG --run DIR KEY=VALUE ... --run DIR ...``).
``make_packs`` groups the planned runs by ``training.pack.group_key`` (a group
collects the runs of its key in plan order) and cuts each group into packs of
at most K runs, which come in the order of their first run (``--pack 1``: the
plan's order). Runs of a streamed dataset, or whose seed does not fit the
pack's int32, never pack. A pack of one run is a plain run, with today's
``--workdir`` command.

``--pack K`` sets K; ``--pack auto`` measures it per network on the machine
(``experiments.pack_size``, in a subprocess so that the launcher never holds
the accelerator's memory); without ``--pack``, the config file's optional
``pack(arg)`` says (``None``: 1, no packing).

``LogCopy`` copies the pack's output, which the trainer writes to its first
run's ``train.log``, into the other runs' logs as it comes, so each run's log
holds the pack's whole output. Each run keeps its own lock (``acquire_lock``:
``RUN_DIR/.lock``, taken over from a dead process) and its own status (its
``summary.json``, ``outcome``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import ml_collections

from data.datasets import IN_MEMORY_DATASETS
from experiments.pack_size import CPU_PACK
from training import command_line, exits
from training import pack as packing
from training.run_dir import read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY_EVERY_S = 0.2  # how often LogCopy reads the pack's log
STALE_UNREADABLE_LOCK_S = 60


@dataclass
class Run:
    name: str
    overrides: dict[str, str]  # swept values, as command-line strings
    workdir: str
    command: list[str] = field(default_factory=list)  # its train.py command, alone
    settings: dict[str, str] = field(default_factory=dict)  # every override of its config
    group: str | None = None  # runs of one group may share a pack; None: never packs


@dataclass
class Pack:
    """Runs trained by one ``train.py``; ``command()`` of one run is that run's own."""

    index: int
    runs: list[Run]
    python: str
    train_script: str
    config: str  # FILE[:ARG], absolute

    def command(self, runs: list[Run] | None = None) -> list[str]:
        """The pack's train.py command, or that of ``runs`` (some of its runs: the rest dropped).

        Overrides that every run gives with the same value are shared
        (``--config.KEY=VALUE``); each run's ``--run DIR KEY=VALUE ...`` gives the others.
        """
        runs = self.runs if runs is None else runs
        if len(runs) == 1:
            return runs[0].command
        first, rest = runs[0].settings, runs[1:]
        shared = {k: v for k, v in first.items() if all(r.settings.get(k) == v for r in rest)}
        own = [(r.workdir, {k: v for k, v in r.settings.items() if k not in shared})
               for r in runs]
        return command_line.pack_command(self.python, self.train_script, self.config, shared,
                                         own)


def group_of(config: ml_collections.ConfigDict) -> str | None:
    """The run's pack group (``training.pack.group_key``), or None when it cannot pack."""
    if config.dataset not in IN_MEMORY_DATASETS or not -2**31 <= config.seed < 2**31:
        return None
    return packing.group_key(config)


def make_packs(runs: list[Run], size: int | Callable[[list[Run]], int], *, python: str,
               train_script: str, config: str) -> list[Pack]:
    """The runs cut into packs: by group, in plan order, at most ``size`` runs each.

    ``size`` is K, or a function of a group's runs (``AutoSize``) giving its K.
    A run that cannot pack (``Run.group`` None) is a group of its own.
    """
    groups: dict[object, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.group if run.group is not None else -1 - i, []).append(i)
    chunks: list[list[int]] = []
    for members in groups.values():
        k = size if isinstance(size, int) else size([runs[i] for i in members])
        chunks += [members[start:start + k] for start in range(0, len(members), max(k, 1))]
    chunks.sort()  # packs in the order of their first run: with K = 1, the plan's order
    return [Pack(i, [runs[j] for j in chunk], python, train_script, config)
            for i, chunk in enumerate(chunks)]


def parse_pack(text: str | int, where: str = "--pack") -> int | str:
    """'auto' or a positive integer (as text or as a number); one-line ValueError otherwise."""
    if text == "auto":
        return "auto"
    if isinstance(text, int) and not isinstance(text, bool) and text >= 1:
        return text
    if isinstance(text, str) and text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"{where} must be a positive integer or 'auto', got {text!r}")


def default_pack(config_path: str) -> int | str:
    """The config file's ``pack(arg)`` (called like its ``sweep``), or 1 when it has none."""
    path, arg = command_line.split_config_arg(config_path)
    module = command_line.load_module(path)
    if not hasattr(module, "pack"):
        return 1
    try:
        value = command_line.call_with_arg(module.pack, arg)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is bad input
        raise ValueError(f"pack() in {path} failed: {type(e).__name__}: {e}") from e
    return 1 if value is None else parse_pack(value, f"pack() in {path}")


class AutoSize:
    """``--pack auto``: each group's K, measured by ``experiments.pack_size`` in a subprocess.

    Once a probe says the backend is the CPU (where K is ``pack_size.CPU_PACK``,
    unmeasured), no other group is probed; nor is a group with fewer than two
    runs left to train (K changes nothing).
    """

    def __init__(self, python: str, config: str, env: dict[str, str], out: TextIO):
        self.python, self.config, self.env, self.out = python, config, env, out
        self.backend: str | None = None

    def __call__(self, runs: list[Run]) -> int:
        left = [run for run in runs if status_of(run.workdir) not in ("finished", "diverged")]
        if len(left) < 2:
            return 1
        if self.backend == "cpu":
            return min(len(runs), CPU_PACK)
        command = [self.python, "-m", "experiments.pack_size", self.config,
                   "--max-runs", str(len(runs)),
                   *(f"--config.{k}={v}" for k, v in runs[0].settings.items())]
        out = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True)
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
            k, self.backend, line = int(result["pack"]), result["backend"], result["line"]
            if result["images_per_sec"]:
                line += f" [the network of {runs[0].name}: {len(runs)} runs]"
        except (IndexError, ValueError, KeyError, TypeError):
            last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            k, line = 1, f"pack auto: the probe of {runs[0].name} failed ({last}): no packing"
        print(line, file=self.out, flush=True)
        return k


def outcome(returncode: int, status: str | None, last: str) -> tuple[str, str]:
    """How one run of a trainer ended, from the trainer's exit code and the run's summary.

    A pack exits 3 when some of its runs diverged and the others finished.
    """
    if status == "finished" and returncode in (0, exits.EXIT_DIVERGED):
        return "finished", ""
    if status == "diverged":
        return "diverged", last
    if returncode in (130, 143, -2, -15):
        return "interrupted", last
    if returncode == exits.EXIT_BAD_INPUT and "is in use by process" in last:
        return "locked", last  # a trainer of an earlier launcher is still stopping
    return "failed", last or f"exit status {returncode}"


def read_summary(run_dir: str) -> dict:
    """The run's summary.json; {} when it has none (or an unreadable one)."""
    try:
        summary = read_json(os.path.join(run_dir, "summary.json"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def status_of(run_dir: str) -> str | None:
    """The run's status (finished, diverged, failed, ...); None without a summary."""
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
    """Removes RUN_DIR/.lock if this process holds it."""
    path = os.path.join(run_dir, ".lock")
    try:
        if read_json(path).get("pid") == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass


class LogCopy:
    """Copies what a trainer appends to ``source`` (from ``offset``) to every file of ``targets``.

    A thread reads the new bytes every ``COPY_EVERY_S``; ``close`` copies the
    rest. The trainer writes to a file, not a pipe, so it never depends on
    the launcher being alive to take its output.
    """

    def __init__(self, source: str, offset: int, targets: list[str]):
        self.source, self.offset = source, offset
        self.targets = [open(t, "ab") for t in targets]  # noqa: SIM115 - closed in close()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pack-log-copy", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(COPY_EVERY_S):
            self.copy()

    def copy(self) -> None:
        try:
            with open(self.source, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        for target in self.targets:
            target.write(data)
            target.flush()

    def close(self, tail: str = "") -> None:
        """Copies the rest, then ``tail`` (the trainer's stderr), and closes the targets."""
        self._stop.set()
        self._thread.join()
        self.copy()
        for target in self.targets:
            target.write(tail.encode())
            target.close()
