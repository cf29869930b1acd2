"""How steps reach the devices: every step up to the next log line as one dispatch, if it can.

``make_train_chunk(feed, step_fn, ...)`` returns ``run(state, step) -> (state,
sums)``, which advances the state to the next log step (or the end) and
returns the chunk's sums by name (summed loss and error, steps taken, each
step's loss) on device.

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

import dataclasses
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


def zero_sums(log_every: int, shape: tuple[int, ...] = ()) -> dict[str, jax.Array]:
    """An empty chunk, by name: summed ``loss`` and ``error``, ``steps`` taken, each step's loss.

    ``shape`` is the shape of one step's ``loss`` and ``error``: () for a run,
    (K,) for a pack of K runs (``training.pack``), whose runs step together.
    """
    return {"loss": jnp.zeros(shape), "error": jnp.zeros(shape), "steps": jnp.zeros((), jnp.int32),
            "losses": jnp.zeros((*shape, log_every))}


def add_step(sums: dict[str, jax.Array], metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Adds one step's ``loss`` and ``error`` to a chunk's sums.

    Step i of the chunk also writes its loss to ``losses[..., i]``, so the log
    line can show the step-to-step spread (the gradient noise of the batch
    size) for the price of one scalar store.
    """
    loss, error, i = metrics["loss"], metrics["error"], sums["steps"]
    return {"loss": sums["loss"] + loss, "error": sums["error"] + error, "steps": i + 1,
            "losses": sums["losses"].at[..., i].set(loss)}


def read_chunk_sums(sums: dict[str, Any]) -> dict[str, Any]:
    """One run's chunk on the host: ``loss`` and ``error`` summed, ``steps``, each step's loss.

    ``losses`` is cut to the steps taken, as a list of floats.
    """
    steps = int(sums["steps"])
    return {"loss": float(sums["loss"]), "error": float(sums["error"]), "steps": steps,
            "losses": [float(v) for v in np.asarray(sums["losses"])[:steps]]}


def make_train_chunk(feed: Any, step_fn: StepFn, *, log_every: int, total_steps: int,
                     start_step: int, loop_on_device: bool = True,
                     metrics_shape: tuple[int, ...] = ()) -> Callable:
    """``run(state, step) -> (state, sums)``: every step from ``step`` to the next log step.

    ``step_fn(state, batch) -> (state, metrics)`` is the (data-parallel) train
    step, whose ``loss`` and ``error`` have shape ``metrics_shape`` (a pack's:
    one per run); ``sums`` are ``zero_sums``'s, added up. ``start_step`` seeds
    a streaming feed's shuffle; in-memory batches are pure functions of
    (seed, step) and do not need it.
    """
    def one_step(state, source, sums):
        state, metrics = step_fn(state, feed.train_batch(source, state.step))
        return state, add_step(sums, metrics)

    if feed.arrays is not None and loop_on_device:

        def chunk(state, arrays):
            n = jnp.minimum(log_every - state.step % log_every, total_steps - state.step)
            body = lambda _, carry: one_step(carry[0], arrays, carry[1])  # noqa: E731
            return jax.lax.fori_loop(0, n, body, (state, zero_sums(log_every, metrics_shape)))

        chunk_fn = jit(chunk, donate_argnums=0)
        return lambda state, step: chunk_fn(state, feed.arrays)

    # One dispatch per step: the feed's device arrays, or the next batch of its stream.
    next_source = (lambda: feed.arrays) if feed.arrays is not None else \
        feed.train_stream(start_step).__next__
    step_jit = jit(one_step, donate_argnums=(0, 2))
    zeros = jit(lambda: zero_sums(log_every, metrics_shape), out_shardings=replicated(feed.mesh))

    def run(state, step):
        sums = zeros()
        for _ in range(steps_until_log(log_every, total_steps, step)):
            state, sums = step_jit(state, next_source(), sums)
        return state, sums

    return run


@dataclasses.dataclass
class RunView:
    """One run's part of a chunk, on the host: what its metrics line is made of."""

    sums: dict[str, Any]  # read_chunk_sums
    first_bad_step: int  # -1 while its loss stayed finite
    warm: Any  # the warm-up-until-error rule's state after the chunk
    plateau_scale: Any  # the reduce-on-plateau factor after the chunk
