"""How steps reach the devices: every step up to the next log line as one dispatch, if it can.

``make_train_chunk(feed, step_fn, ...)`` returns ``run(state, step) -> (state,
sums)``, which advances the state to the next log step (or the end) and
returns the chunk's summed loss and error and each step's loss on device.

- In-memory feeds: the batch of each step is drawn inside the program
  (``feed.train_batch``), so with ``loop_on_device`` the whole chunk is one
  ``lax.fori_loop`` (no host round trip per step); otherwise one dispatch
  per step, still with no host-to-device copy.
- Streaming feeds: one dispatch per step, each fed a batch from the host
  stream.

Nothing recompiles between chunks: the program takes the state (donated)
and the feed's device arrays as arguments, and the chunk length is traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data.device import replicated
from training.compile_options import jit

StepFn = Callable[[Any, dict], tuple[Any, dict]]


def steps_until_log(log_every: int, total: int, step: int) -> int:
    """Steps from ``step`` to the next multiple of ``log_every`` (or to ``total``)."""
    return min(log_every - step % log_every, total - step)


def zero_sums(log_every: int, runs: int | None = None) -> jax.Array:
    """An empty chunk: (loss, error, steps) totals, then room for each step's loss.

    A pack of ``runs`` runs (``training.pack``) gets one such row per run.
    """
    return jnp.zeros(3 + log_every if runs is None else (runs, 3 + log_every))


def add_step(sums: jax.Array, metrics: dict[str, jax.Array]) -> jax.Array:
    """Adds one step's ``loss`` and ``error`` to a chunk's sums.

    Step i of the chunk also writes its loss at 3 + i, so the log line can
    show the step-to-step spread (the gradient noise of the batch size) for
    the price of one scalar store. Rows of a pack's sums take their run's
    ``loss`` and ``error`` (vectors, one value per run).
    """
    if sums.ndim == 2:
        return jax.vmap(add_step)(sums, metrics)
    loss, error = metrics["loss"], metrics["error"]
    i = 3 + sums[2].astype(jnp.int32)
    return sums.at[i].set(loss).at[:3].add(jnp.stack([loss, error, 1.0]))


def read_chunk_sums(sums: np.ndarray) -> tuple[float, float, int, list[float]]:
    """(summed loss, summed error, steps, each step's loss) from ``add_step``'s vector.

    For a pack, read each run's row: ``[read_chunk_sums(row) for row in sums]``.
    """
    sums = np.asarray(sums)
    count = int(sums[2])
    return float(sums[0]), float(sums[1]), count, [float(v) for v in sums[3:3 + count]]


def make_train_chunk(feed: Any, step_fn: StepFn, *, log_every: int, total_steps: int,
                     start_step: int, loop_on_device: bool = True,
                     runs: int | None = None) -> Callable:
    """``run(state, step) -> (state, sums)``: every step from ``step`` to the next log step.

    ``step_fn(state, batch) -> (state, metrics)`` is the (data-parallel) train
    step. ``start_step`` seeds a streaming feed's shuffle; in-memory batches
    are pure functions of (seed, step) and do not need it. With ``runs`` the
    state is a pack of that many runs (``training.pack``) and the sums have
    one row per run.
    """
    def one_step(state, source, sums):
        state, metrics = step_fn(state, feed.train_batch(source, state.step))
        return state, add_step(sums, metrics)

    if feed.arrays is not None and loop_on_device:

        def chunk(state, arrays):
            n = jnp.minimum(log_every - state.step % log_every, total_steps - state.step)
            body = lambda _, carry: one_step(carry[0], arrays, carry[1])  # noqa: E731
            return jax.lax.fori_loop(0, n, body, (state, zero_sums(log_every, runs)))

        chunk_fn = jit(chunk, donate_argnums=0)
        return lambda state, step: chunk_fn(state, feed.arrays)

    # One dispatch per step: the feed's device arrays, or the next batch of its stream.
    next_source = (lambda: feed.arrays) if feed.arrays is not None else \
        feed.train_stream(start_step).__next__
    step_jit = jit(one_step, donate_argnums=(0, 2))
    zeros = jit(lambda: zero_sums(log_every, runs), out_shardings=replicated(feed.mesh))

    def run(state, step):
        sums = zeros()
        for _ in range(steps_until_log(log_every, total_steps, step)):
            state, sums = step_jit(state, next_source(), sums)
        return state, sums

    return run
