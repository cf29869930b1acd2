"""The training loop, one for a lone run and for a pack: K >= 1 runs, each an ordinary run.

``train(configs, workdirs)`` validates the runs, skips those already
finished, builds the feed and the schedule, opens each run's directory and
checkpointer, restores each run's newest checkpoint, then loops: one chunk
of steps up to the next log step (``training.programs``: a lone run's own
compiled step, or a pack's), then for each run what a run gets at a log step
(``training.records``): its metrics line, sometimes an evaluation, the
plateau rule and a checkpoint. At the end each finished run gets its layer
responses and ``summary.json``. A run is a directory: ``config.json``,
``metrics.jsonl``, ``summary.json``, TensorBoard events and Orbax
checkpoints; running the same command again resumes it, and for in-memory
datasets ends with the numbers of an uninterrupted run (the order of
examples and the augmentation are pure functions of (seed, step)).

- Resuming: each run restores its own newest checkpoint. The runs start at
  the step of the one furthest behind; runs ahead (a pack killed between
  its runs' checkpoint writes) wait, unchanged, until the others reach them.
- Divergence: a run whose loss stops being finite stops there, with its last
  checkpoint kept and ``diverged`` in its ``summary.json``; the others go on.
- SIGTERM/SIGINT: every run's checkpoint of the current log step, then
  ``exits.Interrupted``.
- Under a search (``training.eval_gate``, a lone run only): after each
  evaluation the search says go on or stop; stop is handled as a SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

import models
from data import datasets, feeds
from data import validation as data_validation
from data.device import replicate
from training import (
    checkpoints,
    eval_gate,
    exits,
    finetune,
    optimizer,
    pack,
    parallel,
    programs,
    progress,
    records,
    run_dir,
    schedule,
    steps,
)

POSITIVE_KEYS = ("batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints", "eval_batch_size")


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    """Checks every section before any compute, each where it is consumed; one-line ValueError.

    ``num_devices=None`` skips the checks that depend on the machine (the sweep
    launcher validates every run before starting any, on a machine that may differ).
    """
    data_validation.validate_config(config)
    models.validate_config(config.model)
    parallel.validate_config(config, num_devices)
    optimizer.validate_config(config)
    schedule.validate_config(config)
    for key in POSITIVE_KEYS:  # the loop's own keys
        if not config[key] > 0:
            raise ValueError(f"{key} must be positive, got {config[key]}")
    for key in ("eval_every_steps", "checkpoint_every_steps"):
        if config[key] % config.log_every_steps:
            raise ValueError(f"{key} ({config[key]}) must be a multiple of log_every_steps "
                             f"({config.log_every_steps})")
    finetune.validate_config(config)


@dataclasses.dataclass
class Member:
    """One run of the loop, as the host sees it."""

    config: ml_collections.ConfigDict
    workdir: str
    run: run_dir.RunDir
    ckpt: checkpoints.Checkpointer
    step: int = 0  # its own steps taken (ahead of the others' while it waits)
    elapsed_before: float = 0.0  # training time of its earlier sessions
    diverged: bool = False

    def last_checkpoint(self) -> int | None:
        return self.ckpt.last_complete_step()


def train(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], *,
          allow_config_change: bool = False, strategy: str | None = None) -> list[dict]:
    """Trains each config in its workdir, the runs stepped together; returns their summaries.

    One run trains by its own program; several must be packable
    (``pack.check_packable``: they differ only in seeds and scalar optimizer
    values, and hold their data in memory). A run that already finished
    with its config is left out and its summary returned; nothing of it is
    rewritten. Each summary's status is ``finished`` or ``diverged``.
    Raises ValueError for bad input (before anything is written),
    ``exits.Interrupted`` after a SIGTERM/SIGINT and ``exits.WriteFailed``
    when a run's files cannot be written (its last complete checkpoint stays
    usable).
    """
    # Signals are caught from the very start, so a SIGTERM during set-up or
    # compilation still ends with a checkpoint instead of a lost run.
    with exits.StopSignals() as stop:
        mesh = parallel.make_mesh()
        for config in configs:
            validate_config(config, mesh.devices.size)
        if len(configs) > 1:
            pack.check_packable(configs)
            if configs[0].dataset not in datasets.IN_MEMORY_DATASETS:
                raise ValueError(f"a pack needs a dataset held in memory "
                                 f"({', '.join(datasets.IN_MEMORY_DATASETS)}); "
                                 f"{configs[0].dataset} is streamed: train its runs one by one")
        summaries = [run_dir.finished_summary(w, c.to_dict())
                     for c, w in zip(configs, workdirs, strict=True)]
        for workdir, done in zip(workdirs, summaries, strict=True):
            if done is not None:
                progress.say(f"already finished: {workdir} (step {done.get('steps')}, final "
                             f"test error {_percent(done.get('final_test_error'))}); "
                             + ("left out of the pack" if len(configs) > 1 else "nothing to do"))
        todo = [i for i, done in enumerate(summaries) if done is None]
        if not todo:
            return summaries
        config = configs[todo[0]]
        progress.say(f"loading {config.dataset} ...")
        feed = feeds.make_feed(config, mesh)
        where = "in memory" if isinstance(feed, feeds.InMemoryFeed) else "streamed"
        packed = f"; {len(todo)} runs in one pack" if len(configs) > 1 else ""
        progress.say(f"data: {config.dataset}, {feed.num_train:,} training examples "
                     f"({where}){packed}")
        sched = schedule.derive_schedule(config, feed.num_train)
        for i in todo:  # every run checked before any is written to
            _check(configs[i], workdirs[i], allow_config_change, sched.total_steps)
        with contextlib.ExitStack() as opened:
            members = [_open(configs[i], workdirs[i], opened, allow_config_change,
                             sched.total_steps) for i in todo]
            # Input is validated; a ValueError from here on is a bug, not bad input, and
            # must not be reported as one (exit 2, "error: ...").
            try:
                done = _loop(members, mesh, feed, sched, stop, packed=len(configs) > 1,
                             strategy=strategy)
            except ValueError as e:
                raise RuntimeError(f"internal error after the input was validated: {e}") from e
        for i, summary in zip(todo, done, strict=True):
            summaries[i] = summary
        return summaries


def _check(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool,
           total_steps: int) -> None:
    """A run's directory may take this config (``run_dir.check_identity``), and its
    fine-tuning source is usable; one-line ValueError, nothing written."""
    run_dir.check_identity(workdir, config.to_dict(), allow_config_change=allow_config_change,
                           total_steps=total_steps)
    if config.finetune.from_run is not None and not checkpoints.checkpoint_steps(workdir):
        finetune.source_step(config)  # a resumed fine-tuning run never reads it again


def _open(config: ml_collections.ConfigDict, workdir: str, opened: contextlib.ExitStack,
          allow_config_change: bool, total_steps: int) -> Member:
    """Creates (or checks) and locks a run's directory; opens its checkpointer."""
    run = run_dir.RunDir(workdir, is_writer=jax.process_index() == 0)
    opened.callback(run.close)
    run.prepare(config.to_dict(), allow_config_change=allow_config_change,
                total_steps=total_steps)  # and lock it
    ckpt = checkpoints.Checkpointer(workdir, config.keep_checkpoints, is_writer=run.is_writer)
    opened.callback(ckpt.close_quietly)
    return Member(config, workdir, run, ckpt)


def _restore(member: Member, mesh, total_steps: int, alone: bool) -> steps.TrainState:
    """The run's state: its newest checkpoint, or fresh (fine-tuned from its source, if asked)."""
    config = member.config
    state = steps.create_train_state(config)
    if not member.ckpt.all_steps() and config.finetune.from_run is not None:
        params, batch_stats = finetune.import_source(config, state.params, state.batch_stats)
        state = state.replace(params=params, batch_stats=batch_stats)
    restored, state = member.ckpt.restore_newest(replicate(state, mesh))
    member.step = int(state.step)
    if restored is not None:
        who = "" if alone else f"{member.workdir}: "
        progress.say(f"{who}resuming from step {member.step} of {total_steps} (checkpoint "
                     f"{os.path.join(member.workdir, 'checkpoints', str(restored))})")
    member.run.metrics.truncate_after(member.step)
    member.elapsed_before = member.run.metrics.last_value("elapsed_s", 0.0)
    return state


def _loop(members: Sequence[Member], mesh, feed, sched: schedule.Schedule,
          stop: exits.StopSignals, *, packed: bool, strategy: str | None) -> list[dict]:
    """Trains the runs to the end (or their divergence); returns each run's summary."""
    config = members[0].config
    alone = not packed
    states = [_restore(m, mesh, sched.total_steps, alone) for m in members]
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(states[0].params))
    start = min(m.step for m in members)
    program = programs.make_program([m.config for m in members], sched, mesh, feed,
                                    start=start, packed=packed, strategy=strategy)
    state = program.initial(states)
    del states
    if start < sched.total_steps:
        name = models.spec_from_config(config.model).name
        what = (f"{name} ({num_params:,} parameters)" if alone else
                f"{len(members)} packed {name} ({num_params:,} parameters each)")
        progress.say(f"compiling the training step of {what}; the first log line follows at "
                     f"step {min(start + config.log_every_steps, sched.total_steps)}")
    bar = progress.Progress(sched.total_steps, start, config.log_every_steps)
    gate = eval_gate.from_env() if alone else None  # a search's pruner, at each evaluation
    t0, t_log, step = time.time(), time.time(), start
    while step < sched.total_steps and not all(m.diverged for m in members):
        before = step
        state, sums = program.chunk(state, step)
        step, now = program.step_of(state), time.time()
        lines = []
        for k, (m, view) in enumerate(zip(members, program.views(state, sums), strict=True)):
            if m.diverged or m.step != before:  # waiting: diverged, or ahead of the others
                continue
            if view.first_bad_step >= 0:
                _record_divergence(m, view.first_bad_step, alone)
                continue
            m.step = step
            line = records.train_line(m.config, sched, step, view.sums, warm=view.warm,
                                      plateau_scale=view.plateau_scale, seconds=now - t_log,
                                      elapsed_s=m.elapsed_before + now - t0)
            if records.is_eval_step(m.config, step, sched.total_steps):
                run_state = program.run_state(state, k)
                line.update(records.evaluation(m.config, feed, run_state))
                plateau = records.next_plateau(m.config, jax.device_get(run_state.plateau),
                                               line)
                if plateau is not None:
                    state = program.with_plateau(state, k, plateau)
            with exits.writing("metrics line", step, m.last_checkpoint):
                m.run.metrics.append(line)
            lines.append(line)
            if gate and "val_error" in line and gate.stop_after(line, sched.total_steps):
                stop.signum = signal.SIGTERM  # pruned: checkpoint this step and stop
        if lines:
            bar.update(_progress_line(lines))
        t_log = time.time()
        signum = _agreed_stop(stop.signum)
        if (step % config.checkpoint_every_steps == 0 or step == sched.total_steps
                or signum is not None):
            for k, m in enumerate(members):
                if not m.diverged and m.step == step:
                    with exits.writing("checkpoint", step, m.last_checkpoint):
                        m.ckpt.save(step, program.run_state(state, k))
        if signum is not None and step < sched.total_steps:
            for m in members:
                with exits.writing("checkpoint", step, m.last_checkpoint):
                    m.ckpt.wait()
            raise exits.Interrupted(signum, step)
    for m in members:
        with exits.writing("checkpoint", step, m.last_checkpoint):
            m.ckpt.wait()
    bar.close()

    summaries = []
    for k, m in enumerate(members):
        if m.diverged:
            summaries.append(run_dir.read_json(os.path.join(m.workdir, "summary.json")))
            continue
        summaries.append(records.finish(m.config, feed, program.run_state(state, k), m.run,
                                        num_params=num_params, total_steps=sched.total_steps,
                                        last_checkpoint=m.last_checkpoint))
    return summaries


def _agreed_stop(signum: int | None) -> int | None:
    """The stop signal, once every process of a multi-process run knows of one.

    SLURM signals a job's processes at about the same moment, not at the same
    step: each process would otherwise checkpoint (a collective) at its own
    step and wait for the others for ever. Here all stop at the same log step.
    """
    if jax.process_count() == 1:
        return signum
    from jax.experimental import multihost_utils  # noqa: PLC0415

    signals = multihost_utils.process_allgather(np.int32(signum or 0))
    return int(signals.max()) or None


def _record_divergence(member: Member, bad_step: int, alone: bool) -> None:
    """Writes the run's ``diverged`` summary; its last checkpoint is its last finite state."""
    member.diverged = True
    member.ckpt.wait()
    error = exits.Diverged(bad_step, member.ckpt.latest_step())
    run_dir.record_failure(member.workdir, "diverged", str(error),
                           name=models.spec_from_config(member.config.model).name,
                           diverged_at_step=bad_step)
    records.write_hparams(member.config, member.run, run_dir.read_summary(member.workdir),
                          bad_step, member.last_checkpoint)
    if not alone:
        progress.say(f"{member.workdir}: diverged: {error}; the pack's other runs go on")


def _progress_line(lines: list[dict]) -> dict:
    """The progress display's line of a log step: the mean over the runs that took it."""
    if len(lines) == 1:
        return lines[0]
    out = {"step": lines[0]["step"],
           "images_per_sec": sum(line["images_per_sec"] for line in lines)}
    for key in ("train_loss", "train_error", "test_error"):
        values = [line[key] for line in lines if key in line]
        if values:
            out[key] = float(np.mean(values))
    return out


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"
