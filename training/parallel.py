"""Data parallelism over a 1-D device mesh: one jitted program, the step per device in shard_map.

The training step is one ``jax.jit`` program over a ``('data',)`` mesh that
spans every device of every process. Parameters are replicated; the global
batch is split along the mesh axis. ``data_parallel`` runs the plain
``train_step`` on each device's share of the batch inside ``jax.shard_map``,
so that each device normalises with its own batch statistics, as the paper's
multi-GPU runs did (``batch_norm='per_device'``), or with statistics averaged
over the global batch (``batch_norm='sync'``: BatchNorm's
``axis_name='data'``). The step averages gradients, metrics and BatchNorm
running statistics over the axis it is given, so every device applies the
same update and the state stays replicated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
BATCH_NORM_MODES = ("per_device", "sync")


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all devices (of all processes) along the 'data' axis."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def bn_axis_name(batch_norm: str) -> str | None:
    """BatchNorm's axis_name for a ``config.batch_norm`` mode."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(
            f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}, got {batch_norm!r}"
        )
    return DATA_AXIS if batch_norm == "sync" else None


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    """``batch_norm`` and, when the machine is known, a batch that divides across its devices."""
    bn_axis_name(config.batch_norm)
    if num_devices is not None and config.batch_size % num_devices:
        raise ValueError(
            f"batch_size {config.batch_size} does not divide evenly across {num_devices} "
            f"devices; use a multiple of {num_devices}"
        )


def data_parallel(step: Callable, mesh: Mesh) -> Callable:
    """``step(state, batch, axis_name=...) -> (state, metrics)`` run per device over ``mesh``.

    The state is replicated (``P()``) and every leaf of the batch is split
    along its first axis. Inside, each device sees its own share of the batch
    and the mesh axis name, over which ``step`` averages what must agree.
    """
    return jax.shard_map(functools.partial(step, axis_name=DATA_AXIS), mesh=mesh,
                         in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
