"""Data parallelism over a 1-D device mesh: jit for the global program, shard_map for BatchNorm.

The training step is one ``jax.jit`` program over a ``('data',)`` mesh that
spans every device of every process. Parameters are replicated; the global
batch is split along the mesh axis. The forward/backward pass runs inside
``jax.shard_map`` so that each device normalises with its own batch
statistics, as the paper's multi-GPU runs did (``batch_norm='per_device'``),
or with statistics averaged over the global batch (``batch_norm='sync'``,
BatchNorm's ``axis_name='data'``). Gradients are averaged across devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
BATCH_NORM_MODES = ("per_device", "sync")


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all devices (of all processes) along the 'data' axis."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
    """Places a pytree of host (or single-device) arrays on every device of every process.

    Built from each process's own copy (``make_array_from_callback``), so it
    works when the mesh spans several processes, where ``jax.device_put`` of a
    process-local array onto a global sharding does not; every process must
    hold the same values (same seed, same data).
    """
    sharding = replicated(mesh)

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def batch_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding that splits the batch axis (after ``leading_axes`` unsharded axes)."""
    return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def bn_axis_name(batch_norm: str) -> str | None:
    """BatchNorm's axis_name for a ``config.batch_norm`` mode."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(
            f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}, got {batch_norm!r}"
        )
    return DATA_AXIS if batch_norm == "sync" else None


def data_parallel_grads(loss_fn, mesh: Mesh):
    """Wraps ``loss_fn(params, state, x, y, rng) -> (loss, (aux, new_state))`` for data parallelism.

    Returns ``f(params, state, x, y, rng) -> (loss, aux, new_state, grads)`` where ``x, y`` are
    sharded along the batch and everything else is replicated. Each device folds its
    index into ``rng``, so dropout masks and stochastic-depth draws differ across devices
    as they would across the examples of one big batch. Each device differentiates
    its own loss with respect to its own copy of the parameters (``pcast(to='varying')``
    makes the copies per-device, so no implicit reduction happens in the backward pass);
    gradients, losses,
    metrics and BatchNorm running statistics are then averaged across devices. With sync
    BatchNorm the backward pass of the statistics' ``pmean`` carries every device's loss to
    every device's parameters, so the average is still the gradient of the global loss.
    """

    def differentiable(params, state, x, y, rng):
        # Rebuild the (non-differentiated) state's containers inside this trace: NNX
        # refuses to update variables that were created at an outer trace level.
        return loss_fn(params, jax.tree.map(lambda a: a, state), x, y, rng)

    def per_device(params, state, x, y, rng):
        local_params = jax.lax.pcast(params, DATA_AXIS, to="varying")
        rng = jax.random.fold_in(rng, jax.lax.axis_index(DATA_AXIS))
        (loss, (aux, new_state)), grads = jax.value_and_grad(differentiable, has_aux=True)(
            local_params, state, x, y, rng
        )
        mean = lambda t: jax.lax.pmean(t, DATA_AXIS)  # noqa: E731
        return mean(loss), jax.tree.map(mean, aux), jax.tree.map(mean, new_state), mean(grads)

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P()),
        out_specs=P(),
    )
