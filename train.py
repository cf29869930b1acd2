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

``train.py --config FILE --run DIR1 seed=1 --run DIR2 seed=2 ...`` trains a
pack instead (``train_pack``): runs of one network that differ only in seeds
or scalar optimizer values, stepped as one program, each in its own run
directory with the files, resume and exit codes of a lone run
(``training/pack.py``, ``training/pack_train.py``).

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
from data import datasets, feeds, statistics
from data import validation as data_validation
from data.device import replicate
from training import (
    checkpoints,
    command_line,
    compile_cache,
    dispatch,
    distributed,
    exits,
    finetune,
    optimizer,
    pack,
    pack_train,
    parallel,
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
            ckpt.close_quietly()
            run.close()


def train_pack(configs: list[ml_collections.ConfigDict], workdirs: list[str], *,
               allow_config_change: bool = False) -> list[dict]:
    """Trains several runs of one network as one program (``training.pack``), each in its workdir.

    The configs may differ only in ``pack.PACK_KEYS`` (seeds, scalar optimizer
    and schedule values); each run gets the files, resume and exit behaviour
    of a lone run (``training/pack_train.py``). Returns each run's summary
    (status ``finished`` or ``diverged``: a diverging run stops, the others
    go on). Raises as ``train_and_evaluate`` does.
    """
    with exits.StopSignals() as stop:
        mesh = parallel.make_mesh()
        for config in configs:
            validate_config(config, mesh.devices.size)
        pack.check_packable(configs)
        if configs[0].dataset not in datasets.IN_MEMORY_DATASETS:
            raise ValueError(f"a pack needs a dataset held in memory "
                             f"({', '.join(datasets.IN_MEMORY_DATASETS)}); {configs[0].dataset}"
                             " is streamed: train its runs one by one")
        summaries = [run_dir.finished_summary(w, c.to_dict())
                     for c, w in zip(configs, workdirs, strict=True)]
        for workdir, done in zip(workdirs, summaries, strict=True):
            if done is not None:
                progress.say(f"already finished: {workdir}; left out of the pack")
        todo = [i for i, done in enumerate(summaries) if done is None]
        if not todo:
            return summaries
        config = configs[todo[0]]
        progress.say(f"loading {config.dataset} ...")
        feed = feeds.make_feed(config, mesh)
        progress.say(f"data: {config.dataset}, {feed.num_train:,} training examples (in memory)"
                     f"; {len(todo)} runs in one pack")
        sched = schedule.derive_schedule(config, feed.num_train)
        with contextlib.ExitStack() as opened:
            members = []
            for i in todo:
                if (configs[i].finetune.from_run is not None
                        and not checkpoints.checkpoint_steps(workdirs[i])):
                    finetune.source_step(configs[i])
                run = run_dir.RunDir(workdirs[i], is_writer=jax.process_index() == 0)
                opened.callback(run.close)
                run.prepare(configs[i].to_dict(), allow_config_change=allow_config_change)
                ckpt = checkpoints.Checkpointer(workdirs[i], configs[i].keep_checkpoints,
                                                is_writer=run.is_writer)
                opened.callback(ckpt.close_quietly)
                members.append(pack_train.PackedRun(configs[i], workdirs[i], run, ckpt))
            try:
                done = pack_train.train_pack_loop(members, mesh, feed, sched, stop)
            except ValueError as e:
                raise RuntimeError(f"internal error after the input was validated: {e}") from e
        for i, summary in zip(todo, done, strict=True):
            summaries[i] = summary
        return summaries


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
    last_checkpoint = ckpt.last_complete_step
    if start < sched.total_steps:
        progress.say(f"compiling the training step of {models.spec_from_config(config.model).name}"
                     f" ({num_params:,} parameters); the first log line follows at step "
                     f"{min(start + config.log_every_steps, sched.total_steps)}")
    bar = progress.Progress(sched.total_steps, start, config.log_every_steps)
    t0, t_log, step = time.time(), time.time(), start
    while step < sched.total_steps:
        state, sums = chunk(state, step)
        step, now = int(state.step), time.time()
        if int(state.first_bad_step) >= 0:
            ckpt.wait()
            raise exits.Diverged(int(state.first_bad_step), ckpt.latest_step())
        line = records.train_line(config, sched, step, jax.device_get(sums), warm=state.warm,
                                  plateau_scale=state.plateau.scale, seconds=now - t_log,
                                  elapsed_s=elapsed_before + now - t0)
        if records.is_eval_step(config, step, sched.total_steps):
            line.update(records.evaluation(config, feed, state))
            plateau = records.next_plateau(config, state.plateau, line)
            if plateau is not None:
                state = state.replace(plateau=replicate(plateau, mesh))
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

    return records.finish(config, feed, state, run, num_params=num_params,
                          total_steps=sched.total_steps, last_checkpoint=last_checkpoint)


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (``training.exits``)."""
    exits.die_with_parent()
    exits.quiet_failed_saves()
    compile_cache.enable()
    try:
        args = command_line.parse_train_args(sys.argv[1:] if argv is None else argv)
        runs = args.runs or [(args.workdir, {})]
        configs = [command_line.load_config(args.config, {**args.overrides, **own})
                   for _, own in runs]
        workdirs = [workdir for workdir, _ in runs]
        group = distributed.from_args(args.coordinator, args.num_processes, args.process_id,
                                      args.heartbeat_timeout)
    except ValueError as e:
        return command_line.bad_input(e)
    distributed.initialize(group)
    try:
        if len(configs) > 1:
            summaries = train_pack(configs, workdirs,
                                   allow_config_change=args.allow_config_change)
        else:
            summaries = [train_and_evaluate(configs[0], workdirs[0],
                                            allow_config_change=args.allow_config_change)]
    except ValueError as e:
        return command_line.bad_input(e)
    except checkpoints.NoCheckpointRestores as e:
        print(f"error: {e}", file=sys.stderr)
        return exits.EXIT_BAD_INPUT
    except exits.Diverged as e:  # a lone run (a pack records each run's divergence itself)
        name = models.spec_from_config(configs[0].model).name
        run_dir.record_failure(workdirs[0], "diverged", str(e), name=name,
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
    if len(configs) == 1:
        print(json.dumps(summaries[0]))
        return 0
    for workdir, summary in zip(workdirs, summaries, strict=True):
        print(json.dumps({"workdir": workdir, **summary}))
    diverged = [w for w, summary in zip(workdirs, summaries, strict=True)
                if summary.get("status") != "finished"]
    if diverged:
        print(f"error: diverged: {', '.join(diverged)} (the pack's other runs finished)",
              file=sys.stderr)
        return exits.EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    sys.exit(main())
