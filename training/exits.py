"""How a run ends: exit codes, the exceptions that carry them, and the stop-signal flag.

``train.py`` maps each exception to its exit code and one ``error:`` line:
bad input (``ValueError``, before anything is written) 2, divergence 3, a
failed write 4, a dead peer process 5, SIGINT/SIGTERM 130/143 after a
checkpoint was saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
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
        super().__init__(f"cannot write the {what} at step {step} ({err}); the last complete "
                         f"checkpoint ({_checkpoint_text(last_checkpoint)}) is intact: free "
                         "space and run again to resume")


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
    except OSError as e:
        raise WriteFailed(what, step, e, last_checkpoint()) from e
    except Exception as e:  # Orbax's async save re-raises the writer's error wrapped
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):
            raise WriteFailed(what, step, cause, last_checkpoint()) from e
        raise


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
