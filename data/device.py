"""Placing host arrays on the devices of a mesh: replicated, or split along the batch.

The mesh's first axis is the data-parallel one (``training.parallel``
builds it); every helper here works when the mesh spans several processes,
each passing its own copy of the same host values.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Split the batch axis (after ``leading_axes`` unsplit axes) along the mesh's data axis."""
    return NamedSharding(mesh, P(*([None] * leading_axes), mesh.axis_names[0]))


def put(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from this process's copy of the whole host array."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A pytree of host (or single-device) arrays on every device of every process.

    Built from each process's own copy (``make_array_from_callback``), so it
    works when the mesh spans several processes, where ``jax.device_put`` of a
    process-local array onto a global sharding does not; every process must
    hold the same values (same seed, same data).
    """
    sharding = replicated(mesh)
    return jax.tree.map(lambda leaf: put(leaf, sharding), tree)
