"""The sweep launcher's console: one tqdm bar over a study's steps, or plain lines.

The launcher's trainers write their progress to their ``train.log``
(``step N/M ...`` lines, training/progress.py); ``Console`` follows those
logs from a thread and shows, on a terminal, one live bar over the whole
study's steps with each running run's step and the time left, and
otherwise plain lines: ``[start] NAME (log: PATH)``, a few ``[progress]``
lines per run and ``[finished] NAME (N s)``, each printed when it happens.
``say`` prints one whole line from any thread, above the bar if there is one.
``LogCopy`` copies a pack's log, which its trainer writes to its first run's
``train.log``, into its other runs' logs as it comes.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

_PRINT_LOCK = threading.Lock()
_CONSOLE: Console | None = None  # the launcher's console while it runs (say() goes there)

STEP_LINE = re.compile(r"step (\d+)/(\d+)(?!\d)")  # training/progress.py, off a terminal
POLL_S = 1.0  # how often the console reads the running trainers' logs
REPORT_EVERY_S = 600  # off a terminal: a run's [progress] line at least this often, and
# one at 25, 50 and 75% of its steps
MAX_PARTIAL = 1 << 16  # bytes of an unfinished log line kept until its newline comes


def say(text: str) -> None:
    """One whole line to stdout, even from worker threads (above the bar, if there is one)."""
    console = _CONSOLE
    if console is not None:
        console.say(text)
        return
    with _PRINT_LOCK:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class LogTail:
    """The last ``step N/M`` line a trainer wrote to its log, reading only the new bytes.

    Lines are read whole: an unfinished last line waits for its newline. Other
    lines (start-up messages, warnings, a traceback) are ignored.
    """

    def __init__(self, path: str, offset: int = 0):
        self.path, self.offset, self.partial = path, offset, b""
        self.step: int | None = None
        self.total: int | None = None
        self.line = ""  # the last step line, as written

    def poll(self) -> bool:
        """Reads what was appended since the last call; True if a new step line came."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self.offset:  # the log was replaced: read it from the start
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError:
            return False
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-MAX_PARTIAL:]
        found = False
        for raw in lines:
            text = raw.decode(errors="replace").strip()
            match = STEP_LINE.match(text)
            if match:
                self.step, self.total, self.line = int(match[1]), int(match[2]), text
                found = True
        return found


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _Live:
    """A running run, as its log shows it."""

    tail: LogTail
    resumed: bool  # its first step line counts as done before this launcher
    label: str  # who its [progress] lines name; "" for none (a pack's other runs)
    first: tuple[float, int] | None = None  # (time, step) of its first step line
    quarter: int = 0  # off a terminal: the last 25% mark reported
    reported: float = 0.0  # when its last line was printed


class Console:
    """What the launcher shows while the study runs.

    On a terminal, one tqdm bar over the study's steps: runs already done
    count as done, each running run counts its last ``step N/M`` line, and a
    run that has not yet written one counts as long as the mean of the runs
    seen so far (the total firms up as runs start). The ETA is the steps left
    at the average rate of this launcher; the postfix names the running runs
    and their steps. Off a terminal (a batch job's log), plain lines only: a
    run's ``[progress]`` lines at 25, 50 and 75% of its steps and at least
    every ``REPORT_EVERY_S``. A polling thread reads the logs every
    ``POLL_S`` seconds.
    """

    def __init__(self, num_runs: int, tty: bool | None = None, stream: TextIO | None = None,
                 clock=time.monotonic):
        self.stream = sys.stdout if stream is None else stream
        self.tty = self.stream.isatty() if tty is None else tty
        self.num_runs, self.clock = num_runs, clock
        self.ended: dict[str, tuple[int, int]] = {}  # name -> (steps done, steps counted)
        self.lengths: dict[str, int] = {}  # name -> its steps, once known
        self.live: dict[str, _Live] = {}
        self.base = 0  # steps done before this launcher (skipped and resumed runs)
        self.bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lines

    def say(self, text: str) -> None:
        with _PRINT_LOCK:
            if self.bar is not None:
                from tqdm import tqdm  # noqa: PLC0415

                tqdm.write(text, file=self.stream)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    # --- the runs

    def skipped(self, name: str, steps: int | None) -> None:
        """A run done before this launcher (its summary's steps, if it says)."""
        with _PRINT_LOCK:
            if steps is not None:
                self.lengths[name] = steps
            self.ended[name] = (steps or 0, steps or 0)
            self.base += steps or 0

    def started(self, name: str, log_path: str, offset: int, resumed: bool,
                label: str | None = None) -> None:
        """A trainer started, writing to ``log_path`` from byte ``offset`` on.

        ``label`` names the run in its ``[progress]`` lines (default: ``name``);
        ``""`` prints none (the runs of a pack share one trainer's progress).
        """
        with _PRINT_LOCK:
            self.live[name] = _Live(LogTail(log_path, offset), resumed,
                                    name if label is None else label, reported=self.clock())

    def finished(self, name: str, status: str) -> None:
        """A trainer ended: a finished run counts all its steps, any other those it did."""
        with _PRINT_LOCK:
            live = self.live.pop(name, None)
            if live is None:
                return
            self._read(name, live, report=False)
            step, total = live.tail.step or 0, live.tail.total
            if status == "finished" and total is not None:
                step = total
            self.ended[name] = (step, step)
            self._show()

    # --- the polling thread

    def start(self) -> None:
        global _CONSOLE
        if self.tty:
            from tqdm import tqdm  # noqa: PLC0415

            with _PRINT_LOCK:
                try:  # a terminal of no size (some ptys) would hide the bar: 100 x 20
                    sized = min(os.get_terminal_size(self.stream.fileno())) > 0
                except (OSError, ValueError, AttributeError):
                    sized = False
                self.bar = tqdm(total=None, file=self.stream, unit="step", smoothing=0,
                                dynamic_ncols=sized, ncols=None if sized else 100,
                                nrows=None if sized else 20, mininterval=POLL_S)
                self._show()
        _CONSOLE = self
        self._thread = threading.Thread(target=self._poll_loop, name="sweep-console",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        global _CONSOLE
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with _PRINT_LOCK:
            if self.bar is not None:
                self._show()
                self.bar.close()
                self.bar = None
        if _CONSOLE is self:
            _CONSOLE = None

    def _poll_loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        """Reads the running trainers' logs and shows their progress."""
        with _PRINT_LOCK:
            for name, live in list(self.live.items()):
                self._read(name, live, report=not self.tty)
            self._show()

    def _read(self, name: str, live: _Live, report: bool) -> None:
        tail = live.tail
        if not tail.poll():
            return
        now = self.clock()
        self.lengths[name] = tail.total
        if live.first is None:
            live.first = (now, tail.step)
            if live.resumed:
                self.base += tail.step
        if not report or not live.label or tail.step >= tail.total:
            return
        quarter = min(3, 4 * tail.step // max(tail.total, 1))
        if quarter > live.quarter or now - live.reported >= REPORT_EVERY_S:
            live.quarter, live.reported = max(quarter, live.quarter), now
            note = f"{100 * tail.step // max(tail.total, 1)}%"
            t0, s0 = live.first
            if tail.step > s0 and now > t0:
                left = (tail.total - tail.step) * (now - t0) / (tail.step - s0)
                note += f", ~{_duration(left)} left"
            self.stream.write(f"[progress] {live.label}: {tail.line} ({note})\n")
            self.stream.flush()

    def counts(self) -> tuple[int, int | None]:
        """(steps done, steps of the study) as the logs show them; None: no length known yet."""
        done = sum(d for d, _ in self.ended.values())
        total = sum(t for _, t in self.ended.values())
        done += sum(live.tail.step or 0 for live in self.live.values())
        lengths = [n for n in self.lengths.values() if n]
        guess = sum(lengths) / len(lengths) if lengths else None
        unknown = self.num_runs - len(self.ended) - len(self.live)
        for name in self.live:
            if name in self.lengths:
                total += self.lengths[name]
            else:
                unknown += 1
        if unknown and guess is None:
            return done, None
        return done, total + round(unknown * (guess or 0))

    def _show(self) -> None:
        """Redraws the bar (the caller holds the print lock)."""
        if self.bar is None:
            return
        done, total = self.counts()
        self.bar.total = max(total, done) if total is not None else None
        self.bar.n, self.bar.initial = done, min(self.base, done)
        self.bar.set_description_str(f"{len(self.ended)}/{self.num_runs} runs", refresh=False)
        running = [f"{name} {live.tail.step}/{live.tail.total}" if live.tail.step is not None
                   else f"{name} starting" for name, live in self.live.items()]
        self.bar.set_postfix_str(", ".join(running), refresh=False)
        self.bar.refresh(nolock=False)


COPY_EVERY_S = 0.2  # how often LogCopy reads a pack's log


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
