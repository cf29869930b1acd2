"""Orbax checkpoints of the training state: atomic, last few kept, restored into shardings.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the
latest one: a checkpoint is either complete or ignored, never half-read.
Checkpoints hold arrays only (no pickle).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores one pytree of arrays under ``WORKDIR/checkpoints``."""

    def __init__(self, workdir: str | os.PathLike, keep: int):
        path = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints"))
        self.manager = ocp.CheckpointManager(
            path,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(n=keep), create=True),
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

    def wait(self) -> None:
        """Blocks until pending saves are on disk (raises if one failed)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in a run directory, oldest first; creates nothing.

    Orbax writes into a temporary directory (``STEP.orbax-checkpoint-tmp-...``)
    and renames it to ``STEP`` when complete, so only all-digit names count.
    """
    path = os.path.join(os.fspath(workdir), "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


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
