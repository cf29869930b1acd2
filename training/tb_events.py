"""A run's TensorBoard scalars, written in the trainer's own thread.

tensorboardX's ``SummaryWriter`` writes from a background thread: a full
disk kills that thread with a traceback, and the next log line then blocks
forever on the thread's queue. Writing the same records directly
(tensorboardX's ``EventsWriter``: the same file format and file name) turns
a failed write into an ``OSError`` where it happens, which the loop reports
as exit 4 like any other failed write.
"""

from __future__ import annotations

import os
import time

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.summary import scalar


class EventFile:
    """One ``events.out.tfevents.*`` file; a resumed run's starts by purging the dropped steps.

    ``purge_step``: TensorBoard hides the events of earlier files at this
    step and after (what ``SummaryWriter(purge_step=...)`` writes), so a
    resumed run shows each step once, as ``metrics.jsonl`` does.
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        self._writer = EventsWriter(os.path.join(logdir, "events"))
        if purge_step is not None:
            self._writer.write_event(Event(wall_time=time.time(), step=purge_step,
                                           session_log=SessionLog(status=SessionLog.START)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes one scalar per key at ``step`` and flushes them to disk."""
        now = time.time()
        for name, value in values.items():
            self._writer.write_event(Event(wall_time=now, step=step, summary=scalar(name, value)))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
