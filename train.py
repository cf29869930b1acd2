"""Trains one network from one config: ``python train.py --config FILE[:ARG] --workdir DIR``.

The command line, its exit codes (``training.exits``) and two thin entry
points: ``train_and_evaluate(config, workdir)`` for one run and
``train_pack(configs, workdirs)`` for a pack (``train.py --config FILE --run
DIR1 seed=1 --run DIR2 seed=2 ...``: runs of one network that differ only
in seeds or scalar optimizer values, stepped as one program, each in its own
run directory with the files, resume and exit codes of a lone run). Both
train through the one loop, ``training.loop.train``.

A run is a directory: ``config.json``, ``metrics.jsonl`` (one JSON object
per logged step), ``summary.json``, TensorBoard events and Orbax
checkpoints. Running the same command on an existing workdir resumes from
the latest checkpoint; for in-memory datasets it ends with the same numbers
as an uninterrupted run. docs/ARCHITECTURE.md draws how the pieces fit.
"""

from __future__ import annotations

import json
import sys

import jax
import ml_collections

from training import checkpoints, command_line, compile_cache, distributed, exits, loop

validate_config = loop.validate_config  # the launcher's and the benchmark's check of a run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
    """Trains and evaluates one config in ``workdir``; returns the summary dict.

    A run that already finished with this config returns its summary and
    writes nothing. Raises ValueError for bad input (before anything is
    written), ``exits.Diverged`` when the loss stops being finite (its
    ``summary.json`` says so), ``exits.Interrupted`` after a SIGTERM/SIGINT
    and ``exits.WriteFailed`` when a metrics line or checkpoint cannot be
    written (the last complete checkpoint stays usable).
    """
    (summary,) = loop.train([config], [workdir], allow_config_change=allow_config_change)
    if summary.get("status") == "diverged":
        saved = checkpoints.checkpoint_steps(workdir)
        raise exits.Diverged(summary["diverged_at_step"], saved[-1] if saved else None)
    return summary


def train_pack(configs: list[ml_collections.ConfigDict], workdirs: list[str], *,
               allow_config_change: bool = False) -> list[dict]:
    """Trains several runs of one network as one program (``training.pack``), each in its workdir.

    The configs may differ only in ``pack.PACK_KEYS`` (seeds, scalar optimizer
    and schedule values). Returns each run's summary (status ``finished`` or
    ``diverged``: a diverging run stops, the others go on). Raises as
    ``train_and_evaluate`` does, but for divergence.
    """
    return loop.train(configs, workdirs, allow_config_change=allow_config_change)


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
        summaries = loop.train(configs, workdirs,
                               allow_config_change=args.allow_config_change)
    except ValueError as e:
        return command_line.bad_input(e)
    except checkpoints.NoCheckpointRestores as e:
        print(f"error: {e}", file=sys.stderr)
        return exits.EXIT_BAD_INPUT
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
        if summaries[0].get("status") == "diverged":
            print(f"error: diverged: {summaries[0]['error']}", file=sys.stderr)
            return exits.EXIT_DIVERGED
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
