"""Trains one network from one config: ``python train.py --config FILE[:ARG] --workdir DIR``.

``train_and_evaluate(config, workdir)`` is the importable function behind the
command: validate the config, build the feed, the state and the compiled
step, then loop: a chunk of steps up to the next log line, a metrics line,
sometimes an evaluation and a checkpoint. A run is a directory:
``config.json``, ``metrics.jsonl`` (one JSON object per logged step),
``summary.json``, TensorBoard events and Orbax checkpoints. Running the same
command on an existing workdir resumes from the latest checkpoint; for
in-memory datasets it ends with the same numbers as an uninterrupted run (the
order of examples and the augmentation are pure functions of (seed, step)).

The pieces live in ``training/`` (state and steps, parallelism, dispatch,
measurements, schedule, optimizer, checkpoints, run files) and ``data/``
(datasets and feeds); docs/ARCHITECTURE.md draws how they fit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time

import jax
import ml_collections

import models
from data import feeds, statistics
from data import validation as data_validation
from data.device import replicate
from training import (
    checkpoints,
    command_line,
    dispatch,
    distributed,
    exits,
    finetune,
    measure,
    optimizer,
    parallel,
    progress,
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
    """Trains and evaluates one config in ``workdir``; returns the summary dict.

    A run that already finished with this config returns its summary and
    writes nothing. Raises ValueError for bad input (before anything is written), ``Diverged``
    when the loss stops being finite and ``Interrupted`` after a SIGTERM/SIGINT
    (both after writing what must survive), ``WriteFailed`` when a metrics line
    or checkpoint cannot be written (the last complete checkpoint stays usable).
    """
    # Signals are caught from the very start, so a SIGTERM during set-up or
    # compilation still ends with a checkpoint instead of a lost run.
    with exits.StopSignals() as stop:
        mesh = parallel.make_mesh()
        validate_config(config, mesh.devices.size)
        done = run_dir.finished_summary(workdir, config.to_dict())
        if done is not None:
            progress.say(f"already finished: {workdir} (step {done.get('steps')}, final test "
                         f"error {_percent(done.get('final_test_error'))}); nothing to do")
            return done
        progress.say(f"loading {config.dataset} ...")
        feed = feeds.make_feed(config, mesh)
        progress.say(f"data: {config.dataset}, {feed.num_train:,} training examples "
                     f"({'in memory' if isinstance(feed, feeds.InMemoryFeed) else 'streamed'})")
        sched = schedule.derive_schedule(config, feed.num_train)
        if config.finetune.from_run is not None and not checkpoints.checkpoint_steps(workdir):
            finetune.source_step(config)  # a resumed fine-tuning run never reads it again
        run = run_dir.RunDir(workdir, is_writer=jax.process_index() == 0)
        run.prepare(config.to_dict(), allow_config_change=allow_config_change)  # and lock it
        # Input is validated; a ValueError from here on is a bug, not bad input, and
        # must not be reported as one (exit 2, "error: ...").
        ckpt = checkpoints.Checkpointer(workdir, config.keep_checkpoints,
                                        is_writer=run.is_writer)
        try:
            return _train(config, workdir, mesh, feed, sched, run, ckpt, stop)
        except ValueError as e:
            raise RuntimeError(f"internal error after the input was validated: {e}") from e
        finally:
            with contextlib.suppress(Exception):  # a failed save was reported where it surfaced
                ckpt.close()
            run.close()


def _train(config: ml_collections.ConfigDict, workdir: str, mesh, feed,
           sched: schedule.Schedule, run: run_dir.RunDir, ckpt: checkpoints.Checkpointer,
           stop: exits.StopSignals) -> dict:
    state = steps.create_train_state(config)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    if not ckpt.all_steps() and config.finetune.from_run is not None:
        params, batch_stats = finetune.import_source(config, state.params, state.batch_stats)
        state = state.replace(params=params, batch_stats=batch_stats)
    restored, state = ckpt.restore_newest(replicate(state, mesh))
    start = int(state.step)
    if restored is not None:
        progress.say(f"resuming from step {start} of {sched.total_steps} "
                     f"(checkpoint {os.path.join(workdir, 'checkpoints', str(restored))})")
    run.metrics.truncate_after(start)
    elapsed_before = run.metrics.last_value("elapsed_s", 0.0)

    weights = (statistics.inverse_frequency_weights(feed.class_counts)
               if config.imbalance.counter == "reweight" else None)
    step_fn = parallel.data_parallel(functools.partial(
        steps.train_step, config=config, sched=sched, class_weights=weights), mesh)
    chunk = dispatch.make_train_chunk(feed, step_fn, log_every=config.log_every_steps,
                                      total_steps=sched.total_steps, start_step=start,
                                      loop_on_device=config.loop_on_device)
    count_dead = config.dead_units and config.model.activation in models.RECTIFIERS

    def last_checkpoint() -> int | None:
        """The newest complete checkpoint on disk, once the saves in flight have ended."""
        with contextlib.suppress(Exception):  # a failed save leaves no step directory
            ckpt.wait()
        return max(checkpoints.checkpoint_steps(workdir), default=None)

    if start < sched.total_steps:
        progress.say(f"compiling the training step of {models.spec_from_config(config.model).name}"
                     f" ({num_params:,} parameters); the first log line follows at step "
                     f"{min(start + config.log_every_steps, sched.total_steps)}")
    bar = progress.Progress(sched.total_steps, start, config.log_every_steps)
    t0, t_log, step = time.time(), time.time(), start
    while step < sched.total_steps:
        state, sums = chunk(state, step)
        loss_sum, err_sum, count, step_losses = dispatch.read_chunk_sums(jax.device_get(sums))
        step, now = int(state.step), time.time()
        if int(state.first_bad_step) >= 0:
            ckpt.wait()
            raise exits.Diverged(int(state.first_bad_step), ckpt.latest_step())
        line = {
            "step": step,
            "epoch": round(step / sched.steps_per_epoch, 3),
            "lr": float(schedule.learning_rate(config, sched, step - 1, state.warm,
                                               state.plateau.scale)),
            "train_loss": loss_sum / count,
            "train_losses": step_losses,  # each step's loss (its spread: gradient noise)
            "train_error": err_sum / count,
            "images_per_sec": count * config.batch_size / max(now - t_log, 1e-9),
            "elapsed_s": elapsed_before + now - t0,
        }
        if step % config.eval_every_steps == 0 or step == sched.total_steps:
            line.update(measure.evaluate(feed, state))
            if count_dead:
                line["dead_units"] = measure.dead_units(feed, state)
            if config.schedule.name == "plateau":  # before the checkpoint, which must hold it
                state = state.replace(plateau=replicate(
                    schedule.plateau_step(config, state.plateau, line["val_error"]), mesh))
        with exits.writing("metrics line", step, last_checkpoint):
            run.metrics.append(line)
        bar.update(line)
        t_log = time.time()
        if (step % config.checkpoint_every_steps == 0 or step == sched.total_steps
                or stop.signum is not None):
            with exits.writing("checkpoint", step, last_checkpoint):
                ckpt.save(step, state)
        if stop.signum is not None and step < sched.total_steps:
            with exits.writing("checkpoint", step, last_checkpoint):
                ckpt.wait()
            raise exits.Interrupted(stop.signum, step)
    with exits.writing("checkpoint", step, last_checkpoint):
        ckpt.wait()
    bar.close()

    spec = models.spec_from_config(config.model)
    if config.layer_responses:
        stds = measure.layer_response_stds(feed, state)
        stages = [s for s, n in enumerate(spec.stage_sizes) for _ in range(n)]
        with exits.writing("layer responses", step, last_checkpoint):
            run.write_json("layer_responses.json", {"blocks": [
                {"index": i, "stage": stages[i], "std": float(v)} for i, v in enumerate(stds)]})
    summary = run_dir.summarize(run.metrics.read(), status="finished", name=spec.name,
                                params=num_params, steps=sched.total_steps)
    with exits.writing("summary", step, last_checkpoint):
        run.write_json("summary.json", summary)
    return summary


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (``training.exits``)."""
    exits.die_with_parent()
    exits.quiet_failed_saves()
    try:
        args = command_line.parse_train_args(sys.argv[1:] if argv is None else argv)
        config = command_line.load_config(args.config, args.overrides)
        group = distributed.from_args(args.coordinator, args.num_processes, args.process_id,
                                      args.heartbeat_timeout)
    except ValueError as e:
        return command_line.bad_input(e)
    distributed.initialize(group)
    try:
        summary = train_and_evaluate(config, args.workdir,
                                     allow_config_change=args.allow_config_change)
    except ValueError as e:
        return command_line.bad_input(e)
    except checkpoints.NoCheckpointRestores as e:
        print(f"error: {e}", file=sys.stderr)
        return exits.EXIT_BAD_INPUT
    except exits.Diverged as e:
        name = models.spec_from_config(config.model).name
        run_dir.record_failure(args.workdir, "diverged", str(e), name=name,
                               diverged_at_step=e.step)
        print(f"error: diverged: {e}", file=sys.stderr)
        return exits.EXIT_DIVERGED
    except exits.Interrupted as e:
        print(str(e), file=sys.stderr)
        return exits.EXIT_INTERRUPTED[e.signum]
    except exits.WriteFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return exits.EXIT_WRITE_FAILED
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: process {jax.process_index()}: a cross-process operation failed "
              f"({first}); another process of this job has probably died; start the job "
              "again to resume from its last checkpoint", file=sys.stderr)
        return exits.EXIT_PEER_FAILED
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
