"""A search's say on a lone run at each evaluation: go on, or stop there (pruned).

``experiments.search`` starts each trial's ``train.py`` with
``RESNET_EVAL_GATE=R,W``: two pipe file descriptors it hands down. After the
metrics line of an evaluation with a validation error, the training loop
sends that evaluation on W (one JSON line: ``step``, ``val_error``,
``total_steps``) and waits for one line on R, ``go`` or ``stop``. On
``stop`` the loop stops as on SIGTERM: a checkpoint of this step, then
``exits.Interrupted`` (exit 143), so a pruned trial trains not one step
past the evaluation that pruned it, and its run directory resumes like any
other. A closed pipe (the search is gone) means go on: the trainer dies with
its launcher anyway (``exits.die_with_parent``). Without the variable
(``train.py`` alone, a sweep, a pack) there is no gate.
"""

from __future__ import annotations

import json
import os

ENV = "RESNET_EVAL_GATE"


class Gate:
    """The trainer's end of the two pipes."""

    def __init__(self, read_fd: int, write_fd: int):
        self._answers = os.fdopen(read_fd, "r")
        self._questions = os.fdopen(write_fd, "w")

    def stop_after(self, line: dict, total_steps: int) -> bool:
        """Sends the evaluation of metrics ``line``; True when the search says stop."""
        try:
            self._questions.write(json.dumps({"step": line["step"],
                                              "val_error": line["val_error"],
                                              "total_steps": total_steps}) + "\n")
            self._questions.flush()
            answer = self._answers.readline()
        except OSError:  # the search is gone: go on
            return False
        return answer.strip() == "stop"


def from_env() -> Gate | None:
    """The gate named by ``RESNET_EVAL_GATE``; None without one (or a malformed one)."""
    text = os.environ.get(ENV, "")
    try:
        read_fd, write_fd = (int(x) for x in text.split(","))
        os.fstat(read_fd), os.fstat(write_fd)
    except (ValueError, OSError):
        return None
    return Gate(read_fd, write_fd)
