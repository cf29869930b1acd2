"""A run's TensorBoard scalars, written in the trainer's own thread, and its HParams session.

tensorboardX's ``SummaryWriter`` writes from a background thread: a full
disk kills that thread with a traceback, and the next log line then blocks
forever on the thread's queue. Writing the same records directly
(tensorboardX's ``EventsWriter``: the same file format and file name) turns
a failed write into an ``OSError`` where it happens, which the loop reports
as exit 4 like any other failed write.

``write_hparams`` adds, when a run ends, its HParams session (its settings,
``hparams_of``, and how it ended) and its final and best validation and test
errors, in an event file of its own (``*.hparams``), so a study's runs
compare side by side in TensorBoard's HParams dashboard. No experiment
summary is written: TensorBoard then builds the table from every run's
session, whatever keys each one has.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import api_pb2, plugin_hparams_pb2
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.summary import scalar

from configs import default
from training.run_dir import flatten

# Settings every run shows in the HParams table (the ones studies vary most), whatever
# their value; any other key shows where it differs from configs/default.py.
HPARAM_KEYS = ("dataset", "model.family", "model.depth", "model.plain", "batch_size",
               "num_steps", "seed", "val_examples", "optimizer.lr", "optimizer.momentum",
               "optimizer.weight_decay", "schedule.name", "schedule.warmup_steps")
# The summary.json fields shown as the HParams table's metrics, under these tags.
HPARAM_METRICS = {"final_val_error": "hparams/final_val_error",
                  "best_val_error": "hparams/best_val_error",
                  "final_test_error": "hparams/final_test_error",
                  "best_test_error": "hparams/best_test_error"}


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


def hparams_of(config: dict) -> dict[str, bool | int | float | str]:
    """A run's settings for the HParams table, from its config (``config.json``'s dict).

    The keys of ``HPARAM_KEYS``, and every other key whose value differs from
    ``configs/default.py`` (the dataset file's and the command line's changes);
    None and tuples as text.
    """
    defaults, values = flatten(default.get_config().to_dict()), flatten(config)
    out = {}
    for key, value in sorted(values.items()):
        if key in HPARAM_KEYS or key not in defaults or defaults[key] != value:
            out[key] = value if isinstance(value, bool | int | float | str) else \
                str(tuple(value) if isinstance(value, list) else value)
    return out


def _plugin_summary(tag: str, data: plugin_hparams_pb2.HParamsPluginData) -> Summary:
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="hparams", content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def write_hparams(logdir: str, step: int, hparams: dict[str, Any], summary: dict[str, Any],
                  status: str) -> None:
    """Writes the run's HParams session into a new ``events.out.tfevents.*.hparams`` file.

    ``hparams``: its settings (``hparams_of``), to which ``status`` (finished,
    pruned, diverged, ...) is added; ``summary``: its summary.json, whose
    errors (``HPARAM_METRICS``) are written as scalars at ``step``. A failed
    write raises ``OSError``.
    """
    start = plugin_hparams_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in {**hparams, "status": status}.items():
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, int | float):
            start.hparams[key].number_value = float(value)
        else:
            start.hparams[key].string_value = str(value)
    end = plugin_hparams_pb2.SessionEndInfo(
        status=api_pb2.Status.Value("STATUS_SUCCESS" if status == "finished" else
                                    "STATUS_FAILURE"), end_time_secs=time.time())
    writer = EventsWriter(os.path.join(logdir, "events"), filename_suffix=".hparams")
    try:
        now = time.time()
        writer.write_event(Event(wall_time=now, step=step, summary=_plugin_summary(
            "_hparams_/session_start_info",
            plugin_hparams_pb2.HParamsPluginData(session_start_info=start))))
        for key, tag in HPARAM_METRICS.items():
            if isinstance(summary.get(key), int | float):
                writer.write_event(Event(wall_time=now, step=step,
                                         summary=scalar(tag, summary[key])))
        writer.write_event(Event(wall_time=now, step=step, summary=_plugin_summary(
            "_hparams_/session_end_info",
            plugin_hparams_pb2.HParamsPluginData(session_end_info=end))))
        writer.flush()
    finally:
        writer.close()
