"""The training loop of a pack: K runs of one network stepped as one program, each a run.

``train.py --run DIR1 k=v --run DIR2 k=v ...`` (``train.train_pack``) validates
the runs and opens their directories; ``train_pack_loop`` here trains them.
It is ``train.py``'s loop with a run axis: one compiled chunk advances every
run to the next log step (``training.pack``), then each run gets what a
lone run gets (``training.records``): its own metrics line, evaluation,
checkpoint and, at the end, summary, all in its own run directory. So a
packed run is an ordinary run to every reader: ``experiments.report``,
ensembles, fine-tuning, and resuming it alone or in another pack.

- Resuming: each run restores its own newest checkpoint. The pack starts
  at the step of the run furthest behind; runs ahead (their checkpoint
  written before a kill, their neighbours' not) wait, unchanged, until the
  pack reaches their step (``pack.stack_states``), so every run ends as if
  trained in one go.
- Divergence: a run whose loss stops being finite stops there (the pack's
  step skips it), is recorded ``diverged`` in its own ``summary.json`` (as
  a lone run would be, with its last checkpoint kept) and is left out from
  then on; the others go on.
- SIGTERM/SIGINT: every run's checkpoint of the current log step, then
  ``exits.Interrupted``, as for a lone run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import ml_collections
import numpy as np

import models
from data import statistics
from data.device import replicate
from training import (
    checkpoints,
    dispatch,
    exits,
    finetune,
    pack,
    progress,
    records,
    run_dir,
    schedule,
    steps,
)


@dataclass
class PackedRun:
    """One run of a pack, as the host sees it."""

    config: ml_collections.ConfigDict
    workdir: str
    run: run_dir.RunDir
    ckpt: checkpoints.Checkpointer
    step: int = 0  # its own steps taken (ahead of the pack's while it waits)
    elapsed_before: float = 0.0  # training time of its earlier sessions
    diverged: bool = False

    def last_checkpoint(self) -> int | None:
        return self.ckpt.last_complete_step()


def _restore(member: PackedRun, mesh) -> steps.TrainState:
    """The run's state: its newest checkpoint, or fresh (fine-tuned from its source, if asked)."""
    config = member.config
    state = steps.create_train_state(config)
    if not member.ckpt.all_steps() and config.finetune.from_run is not None:
        params, batch_stats = finetune.import_source(config, state.params, state.batch_stats)
        state = state.replace(params=params, batch_stats=batch_stats)
    restored, state = member.ckpt.restore_newest(replicate(state, mesh))
    member.step = int(state.step)
    if restored is not None:
        progress.say(f"{member.workdir}: resuming from step {member.step} (checkpoint "
                     f"{os.path.join(member.workdir, 'checkpoints', str(restored))})")
    member.run.metrics.truncate_after(member.step)
    member.elapsed_before = member.run.metrics.last_value("elapsed_s", 0.0)
    return state


def train_pack_loop(members: Sequence[PackedRun], mesh, feed: Any, sched: schedule.Schedule,
                    stop: exits.StopSignals, *, strategy: str | None = None) -> list[dict]:
    """Trains the runs of a pack to the end; returns each run's summary (finished or diverged).

    ``feed`` is an in-memory feed of any run's config (the runs share their
    data), ``sched`` its schedule. Raises ``exits.Interrupted`` after a signal
    and ``exits.WriteFailed`` when a run's files cannot be written, as
    ``train.py`` does for a lone run.
    """
    configs = [m.config for m in members]
    config = configs[0]
    packed = replicate(pack.stack_states(configs, [_restore(m, mesh) for m in members]), mesh)
    num_params = sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(packed.runs.params))
    weights = (statistics.inverse_frequency_weights(feed.class_counts)
               if config.imbalance.counter == "reweight" else None)
    step_fn = pack.make_packed_step(config, sched, mesh, strategy=strategy,
                                    class_weights=weights)
    start = int(packed.step)
    chunk = dispatch.make_train_chunk(
        pack.PackedFeed(feed, [c.seed for c in configs]), step_fn,
        log_every=config.log_every_steps, total_steps=sched.total_steps, start_step=start,
        loop_on_device=config.loop_on_device, runs=len(members))
    if start < sched.total_steps:
        progress.say(f"compiling the training step of {len(members)} packed "
                     f"{models.spec_from_config(config.model).name} ({num_params:,} parameters "
                     f"each); the first log line follows at step "
                     f"{min(start + config.log_every_steps, sched.total_steps)}")
    bar = progress.Progress(sched.total_steps, start, config.log_every_steps)
    t0, t_log, step = time.time(), time.time(), start
    while step < sched.total_steps:
        before = step
        packed, sums = chunk(packed, step)
        step, now = int(packed.step), time.time()
        sums, bad, warm, scale = jax.device_get((sums, packed.runs.first_bad_step,
                                                 packed.runs.warm, packed.runs.plateau.scale))
        lines = []
        for k, m in enumerate(members):
            if m.diverged or m.step != before:  # waiting: ahead of the pack, or diverged
                continue
            if bad[k] >= 0:
                _record_divergence(m, int(bad[k]))
                continue
            m.step = step
            line = records.train_line(m.config, sched, step, sums[k], warm=warm[k],
                                      plateau_scale=scale[k], seconds=now - t_log,
                                      elapsed_s=m.elapsed_before + now - t0)
            if records.is_eval_step(m.config, step, sched.total_steps):
                state = pack.unpack(packed, k)
                line.update(records.evaluation(m.config, feed, state))
                plateau = records.next_plateau(m.config, jax.device_get(state.plateau), line)
                if plateau is not None:
                    packed = _set_plateau(packed, k, plateau, mesh)
            with exits.writing("metrics line", step, m.last_checkpoint):
                m.run.metrics.append(line)
            lines.append(line)
        if lines:
            bar.update(_pack_line(lines))
        t_log = time.time()
        if (step % config.checkpoint_every_steps == 0 or step == sched.total_steps
                or stop.signum is not None):
            for k, m in enumerate(members):
                if not m.diverged and m.step == step:
                    with exits.writing("checkpoint", step, m.last_checkpoint):
                        m.ckpt.save(step, pack.unpack(packed, k))
        if stop.signum is not None and step < sched.total_steps:
            for m in members:
                with exits.writing("checkpoint", step, m.last_checkpoint):
                    m.ckpt.wait()
            raise exits.Interrupted(stop.signum, step)
    for m in members:
        with exits.writing("checkpoint", step, m.last_checkpoint):
            m.ckpt.wait()
    bar.close()

    summaries = []
    for k, m in enumerate(members):
        if m.diverged:
            summaries.append(run_dir.read_json(os.path.join(m.workdir, "summary.json")))
            continue
        summaries.append(records.finish(m.config, feed, pack.unpack(packed, k), m.run,
                                        num_params=num_params, total_steps=sched.total_steps,
                                        last_checkpoint=m.last_checkpoint))
    return summaries


def _record_divergence(member: PackedRun, bad_step: int) -> None:
    """Writes the run's ``diverged`` summary, as ``train.py`` does for a lone run."""
    member.diverged = True
    member.ckpt.wait()
    error = exits.Diverged(bad_step, member.ckpt.latest_step())
    run_dir.record_failure(member.workdir, "diverged", str(error),
                           name=models.spec_from_config(member.config.model).name,
                           diverged_at_step=bad_step)
    progress.say(f"{member.workdir}: diverged: {error}; the pack's other runs go on")


def _set_plateau(packed: pack.PackedState, k: int, plateau: schedule.PlateauState,
                 mesh) -> pack.PackedState:
    """The pack with run ``k``'s reduce-on-plateau state replaced (host values)."""
    host = jax.tree.map(lambda a: np.array(jax.device_get(a)), packed.runs.plateau)
    for leaf, value in zip(jax.tree.leaves(host), jax.tree.leaves(plateau), strict=True):
        leaf[k] = value
    return packed.replace(runs=packed.runs.replace(plateau=replicate(host, mesh)))


def _pack_line(lines: list[dict]) -> dict:
    """The progress bar's line of a log step: the mean over the runs that took it."""
    out = {"step": lines[0]["step"],
           "images_per_sec": sum(line["images_per_sec"] for line in lines)}
    for key in ("train_loss", "train_error", "test_error"):
        values = [line[key] for line in lines if key in line]
        if values:
            out[key] = float(np.mean(values))
    return out
