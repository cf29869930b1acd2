"""How a run ends: exit codes, the exceptions that carry them, and the stop-signal flag.

``train.py`` maps each exception to its exit code and one ``error:`` line:
bad input (``ValueError``, before anything is written) 2, divergence 3, a
failed write 4, a dead peer process 5, SIGINT/SIGTERM 130/143 after a
checkpoint was saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 4
EXIT_PEER_FAILED = 5  # multi-process: a collective failed, another process probably died
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Set by the sweep launcher to its own pid: its trainers must not outlive it.
PARENT_PID_ENV = "RESNET_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A SIGTERM when the launcher named by ``RESNET_PARENT_PID`` dies (Linux).

    The kernel sends it (``prctl(PR_SET_PDEATHSIG)``) however the launcher
    dies, ``kill -9`` included; the trainer then checkpoints and stops as for
    any SIGTERM, so a rerun of the sweep resumes the run instead of training
    it beside an orphan. A launcher already gone by now means the same.
    Elsewhere, and outside a sweep, nothing happens.
    """
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


def _checkpoint_text(step: int | None) -> str:
    return f"step {step}" if step is not None else "none"


class Diverged(RuntimeError):
    """The training loss became non-finite."""

    def __init__(self, step: int, last_checkpoint: int | None):
        self.step, self.last_checkpoint = step, last_checkpoint
        super().__init__(f"loss is not finite at step {step}; last good checkpoint: "
                         f"{_checkpoint_text(last_checkpoint)}")


class WriteFailed(RuntimeError):
    """A metrics line or checkpoint could not be written (disk full, quota, lost mount)."""

    def __init__(self, what: str, step: int, err: BaseException, last_checkpoint: int | None):
        after = (f"the last complete checkpoint (step {last_checkpoint}) is intact: free space "
                 "and run again to resume" if last_checkpoint is not None else
                 "no checkpoint was complete yet: free space and run again to start over")
        super().__init__(f"cannot write the {what} (training stopped at step {step}: "
                         f"{first_line(err)}); {after}")


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut to ``limit`` characters, for a one-line message.

    TensorStore appends the repr of a method to its messages; that part is dropped.
    """
    text = str(err).strip()
    first = text.splitlines()[0].strip() if text else type(err).__name__
    first = first.split(" See full TensorStore details")[0]
    return first if len(first) <= limit else first[:limit - 3] + "..."


# TensorStore (Orbax's array writer) reports storage failures as ValueErrors or
# bare Exceptions that carry one of these status codes, with no OSError cause.
STORAGE_STATUS_CODES = ("RESOURCE_EXHAUSTED", "NOT_FOUND", "PERMISSION_DENIED")


def storage_error(e: BaseException) -> BaseException | None:
    """The OSError or TensorStore storage failure behind ``e`` (or its causes), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) or any(code in str(e) for code in STORAGE_STATUS_CODES):
            return e
        e = e.__cause__ or e.__context__
    return None


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved before stopping."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved; run again to resume")


@contextlib.contextmanager
def writing(what: str, step: int, last_checkpoint: Callable[[], int | None]) -> Iterator[None]:
    """Turns a failed write into ``WriteFailed``, naming the checkpoint a rerun resumes from."""
    try:
        yield
    except Exception as e:  # Orbax's async save re-raises the writer's error wrapped
        cause = storage_error(e)
        if cause is None:
            raise
        raise WriteFailed(what, step, cause, last_checkpoint()) from e


class _DropFailedSaveLogs(logging.Filter):
    """Drops the logs of a failed checkpoint save: it is raised again and reported in one line.

    Orbax logs the failure of its background save thread with a traceback
    (absl's logger); asyncio logs each of the save's write tasks whose
    storage error nobody retrieved once the first one failed the save.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if "orbax" in record.pathname:
            return False
        return not (record.exc_info and storage_error(record.exc_info[1]) is not None)


def _drop_closed_loop_callbacks(unraisable) -> None:
    """TensorStore finishing the writes of a save that already failed: nothing to report."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def quiet_failed_saves() -> None:
    """Keeps a failed checkpoint write to one ``error:`` line instead of pages of tracebacks.

    A save fails in Orbax's background thread; ``writing`` turns the error,
    raised again at the next save or wait, into ``WriteFailed``. What else
    the failure leaves (Orbax's and asyncio's error logs, TensorStore's late
    callbacks into the closed event loop, the save's unawaited write
    coroutines) says the same thing hundreds of times and is dropped.
    """
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_DropFailedSaveLogs())
    sys.unraisablehook = _drop_closed_loop_callbacks
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message=r"coroutine '.*(write_fragment|serializ).*' was never awaited")


class StopSignals:
    """Records SIGTERM/SIGINT so the loop can checkpoint and stop between dispatches."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self) -> StopSignals:
        for s in EXIT_INTERRUPTED:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
