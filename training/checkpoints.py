"""Orbax checkpoints of the training state: atomic, last few kept, restored into shardings.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the
latest one: a checkpoint is either complete or ignored, never half-read.
Checkpoints hold arrays only (no pickle).

A checkpoint damaged after it was written (a truncated file, a lost
``_METADATA``) is not the end of a run: ``restore_newest`` falls back to the
newest one that restores and moves the damaged ones aside, into
``WORKDIR/damaged_checkpoints/``; it deletes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store

from training import exits
from training.run_dir import checkpoint_dirs

DAMAGED_DIR = "damaged_checkpoints"


class NoCheckpointRestores(Exception):
    """A run has checkpoints but none of them restores (none was moved or deleted)."""


class Checkpointer:
    """Saves and restores one pytree of arrays under ``WORKDIR/checkpoints``.

    ``is_writer`` marks the trainer's process 0, the one process that moves
    damaged checkpoints aside and removes the temporary directories of saves
    that never completed (a kill or a full disk mid-save); readers of another
    run (ensembles, fine-tuning) leave its directory as it is.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int, *, is_writer: bool = False):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.is_writer, self.keep = is_writer, keep
        self.manager = self._manager()

    def _manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(n=self.keep), create=True,
                cleanup_tmp_directories=self.is_writer),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk (the last ``keep``), oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Starts an asynchronous save; training continues while it is written."""
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, step: int, like: Any) -> Any:
        """Restores into the structure, dtypes and shardings of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_newest(self, like: Any) -> tuple[int | None, Any]:
        """Restores the newest checkpoint that restores; ``(None, like)`` when there is none.

        Newer checkpoints that fail to restore (any error: TensorStore, JSON,
        a tree that no longer matches, an empty or foreign step directory) are
        moved to ``WORKDIR/damaged_checkpoints/`` with one ``warning:`` line
        each. Each step is read by an Orbax manager of its own: a manager that
        failed on one step fails on healthy ones too. When none restores,
        nothing is moved and ``NoCheckpointRestores`` names each step and why.
        """
        failures = []
        for step in reversed(self._steps_on_disk()):
            try:
                state = self._restore_alone(step, like)
            except Exception as e:  # noqa: BLE001 - whatever the damage, try an older one
                failures.append((step, exits.first_line(e, 160)))
                continue
            for bad, why in failures if self.is_writer else ():
                where = self._move_aside(bad)
                print(f"warning: checkpoint {bad} does not restore ({why}); "
                      f"moved it to {where}, resuming from checkpoint {step}", file=sys.stderr)
            if failures:
                self._reopen()
            return step, state
        if failures:
            steps = "; ".join(f"step {s}: {why}" for s, why in failures)
            raise NoCheckpointRestores(
                f"no checkpoint in {self.manager.directory} restores ({steps}); nothing was "
                "moved or deleted: use another --workdir to start afresh")
        return None, like

    def _steps_on_disk(self) -> list[int]:
        """Every step directory, oldest first: Orbax's view, and numbered directories it skips."""
        return sorted(set(self.all_steps()) | set(checkpoint_steps(self.workdir)))

    def _restore_alone(self, step: int, like: Any) -> Any:
        """``restore(step, like)`` through a fresh, read-only manager (this one stays clean)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        with _quiet_orbax():  # a read-only manager warns that it is read-only, twice
            reader = ocp.CheckpointManager(
                os.path.join(self.workdir, "checkpoints"),
                options=ocp.CheckpointManagerOptions(create=False, read_only=True))
            try:
                return reader.restore(step, args=ocp.args.StandardRestore(abstract))
            finally:
                reader.close()

    def _reopen(self) -> None:
        """A new manager over the directory, once damaged checkpoints were moved out of it."""
        with contextlib.suppress(Exception):
            self.manager.close()
        self.manager = self._manager()

    def _move_aside(self, step: int) -> str:
        """Moves a damaged checkpoint out of Orbax's sight; returns where to."""
        target = os.path.join(self.workdir, DAMAGED_DIR, str(step))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        n = 1
        while os.path.exists(target):  # damaged again after a later resume
            n += 1
            target = os.path.join(self.workdir, DAMAGED_DIR, f"{step}.{n}")
        os.rename(os.path.join(self.workdir, "checkpoints", str(step)), target)
        return target

    def last_complete_step(self) -> int | None:
        """The newest complete checkpoint on disk, once the saves in flight have ended.

        What a failed write reports as the run's restart point
        (``exits.writing``): a save that failed left no step directory.
        """
        with contextlib.suppress(Exception):
            self.wait()
        return max(checkpoint_steps(self.workdir), default=None)

    def close_quietly(self) -> None:
        """Closes, saying nothing of a failed save (reported where it surfaced)."""
        with contextlib.suppress(Exception):
            self.close()

    def wait(self) -> None:
        """Blocks until pending saves are on disk (raises if one failed)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in a run directory, oldest first; creates nothing.

    Orbax writes into a temporary directory (``STEP.orbax-checkpoint-tmp-...``)
    and renames it to ``STEP`` when complete, so only all-digit directory
    names count (a stray file named like a step does not).
    """
    return checkpoint_dirs(os.fspath(workdir))


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax's absl warnings while probing a step (a missing metadata file, ...) stay quiet:
    what went wrong is said in one line, by the caller."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# Below this many bytes per replica an array is written whole by one replica (Orbax's
# ``min_slice_bytes_for_replica_parallel``).
REPLICA_SLICE_MIN_BYTES = 1 << 20


def _whole_small_arrays() -> None:
    """Small arrays are written by one replica; large ones still by every replica a slice.

    Orbax's default off GPUs splits the save of an array replicated on N
    devices into N slices, each cut by an eager op on the training thread
    while it waits. For the parameters of a ResNet on a data-parallel mesh
    (almost all under a megabyte) that costs more than it saves; a large
    array still spreads its writes over the replicas (and hosts). The same
    arrays are written, and checkpoints of either kind restore. Orbax's
    default handler otherwise (its array metadata store) is kept.
    """
    with _quiet_orbax():  # Orbax warns of the override
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=REPLICA_SLICE_MIN_BYTES,
                array_metadata_store=array_metadata_store.Store()),
            override=True)


_whole_small_arrays()


def restore_subtrees(workdir: str | os.PathLike, step: int, like: dict[str, Any]) -> dict:
    """Restores only the top-level entries of ``like`` (e.g. params and batch_stats).

    Reads another run's checkpoint without knowing the rest of its state (its
    optimizer may differ), into the shapes, dtypes and shardings of ``like``.
    """
    path = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints"))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
    try:
        return manager.restore(step, args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True))
    finally:
        manager.close()
