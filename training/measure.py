"""What runs measure on an evaluation split, through one reduction: ``reduce_split``.

Every measurement is a function ``fn(state, batch)`` of the train state and
one normalised, masked evaluation batch: ``steps.eval_step`` (error, loss,
per-class error), ``response_sums`` (the paper's Fig. 7), ``dead_unit_fraction``
and ``softmax`` (ensembles). ``reduce_split`` adds ``fn`` over the split (or
concatenates its per-example outputs), on device:

- in-memory feeds: the padded split is one ``lax.scan`` in one dispatch;
- streaming feeds: one dispatch per batch of the stream, stopping at the
  first batch that is all padding (decided on a global count, so every
  process runs the same batches).

Each program is compiled once per (function, split shape) and reused at
every evaluation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from training import steps
from training.compile_options import jit

MeasureFn = Callable[[steps.TrainState, dict], Any]


def _scan_split(state, split, arrays, *, fn, prepare, per_example):
    """``fn`` over a padded (batches, batch, ...) split; summed, or stacked per batch."""

    def body(carry, batch):
        acc, state = carry  # the state rides in the carry: nnx.scan (scanned stages)
        out = fn(state, prepare(arrays, batch))  # refuses variables of an outer trace level
        if per_example:
            return (acc, state), out
        return (jax.tree.map(jnp.add, acc, out), state), None

    first = jax.tree.map(lambda a: a[0], split)
    shapes = jax.eval_shape(lambda s, a, b: fn(s, prepare(a, b)), state, arrays, first)
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (acc, _), outs = jax.lax.scan(body, (init, state), split)
    return outs if per_example else acc


@functools.cache
def _compiled_scan() -> Callable:
    return jit(_scan_split, static_argnames=("fn", "prepare", "per_example"))


@functools.cache
def _compiled_batch(fn: MeasureFn, prepare: Callable) -> Callable:
    return jit(lambda state, arrays, batch: (fn(state, prepare(arrays, batch)),
                                             batch["mask"].sum()))


def reduce_split(feed: Any, split: str, fn: MeasureFn, state: Any, *,
                 num_batches: int | None = None, per_example: bool = False) -> Any:
    """Sums ``fn(state, batch)`` over the evaluation split ``split`` ('test' or 'val').

    ``fn`` must sum over the batch's real examples itself (``batch['mask']``).
    ``num_batches`` stops after that many batches (a cheap probe). With
    ``per_example`` ``fn`` returns one row per example and the rows of the
    real examples come back on the host, in order, instead of a sum.
    """
    if feed.arrays is not None:
        padded = feed.eval_splits[split]
        if num_batches is not None:
            padded = jax.tree.map(lambda a: a[:num_batches], padded)
        out = _compiled_scan()(state, padded, feed.arrays, fn=fn, prepare=feed.eval_batch,
                               per_example=per_example)
        if not per_example:
            return out
        rows = np.asarray(out)
        return rows.reshape(-1, *rows.shape[2:])[np.asarray(padded["mask"]).reshape(-1) > 0]
    batch_fn = _compiled_batch(fn, feed.eval_batch)
    total, rows = None, []
    for i, batch in enumerate(feed.eval_stream(split)):
        if num_batches is not None and i >= num_batches:
            break
        out, count = batch_fn(state, None, batch)
        if float(count) == 0:
            break
        out = jax.tree.map(np.asarray, out)
        if per_example:
            rows.append(out[np.asarray(batch["mask"]) > 0])
        else:
            total = out if total is None else jax.tree.map(np.add, total, out)
    if total is None and not rows:
        raise ValueError(f"the {split} split of {feed.config.dataset} is empty")
    return np.concatenate(rows) if per_example else total


# --------------------------------------------------------------------------- measurements


def eval_metrics(name: str, sums: dict[str, Any]) -> dict[str, Any]:
    """``{name}_error``, ``{name}_loss`` and ``{name}_error_per_class`` from ``eval_step`` sums.

    A class without examples in the split has error None.
    """
    sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    wrong, loss, count = sums["wrong"], sums["loss"], sums["count"]
    per_class = [float(w / c) if c else None
                 for w, c in zip(sums["wrong_per_class"], sums["count_per_class"], strict=True)]
    return {f"{name}_error": float(wrong / count), f"{name}_loss": float(loss / count),
            f"{name}_error_per_class": per_class}


def evaluate(feed: Any, state: steps.TrainState) -> dict[str, Any]:
    """Error, loss and per-class error of every evaluation split (test, and val if held out)."""
    out = {}
    for name in feed.eval_names:
        out.update(eval_metrics(name, reduce_split(feed, name, steps.eval_step, state)))
    return out


def response_sums(state: steps.TrainState, batch: dict) -> dict[str, jax.Array]:
    """Per block (one entry each): the summed ``mean`` and ``mean_square`` of its branch
    response over the real examples, and their ``count``.

    The branch response is the block's residual function after its last BN,
    before the addition and the ReLU (plain nets: the same layer), as in the
    paper's Fig. 7; moments are over all units of all real examples.
    """
    mask = batch["mask"]
    _, feats = state.model()(batch["image"], return_features=True)
    responses = [r.astype(jnp.float32) for r in feats["branch_responses"]]
    return {"mean": jnp.stack([(r.mean((1, 2, 3)) * mask).sum() for r in responses]),
            "mean_square": jnp.stack([(jnp.square(r).mean((1, 2, 3)) * mask).sum()
                                      for r in responses]),
            "count": jnp.stack([mask.sum() for _ in responses])}


def layer_response_stds(feed: Any, state: steps.TrainState) -> np.ndarray:
    """The standard deviation of each block's branch response on the test split (Fig. 7)."""
    sums = {k: np.asarray(v) for k, v in reduce_split(feed, "test", response_sums, state).items()}
    mean = sums["mean"] / sums["count"]
    return np.sqrt(np.maximum(sums["mean_square"] / sums["count"] - mean**2, 0.0))


def dead_unit_fraction(state: steps.TrainState, batch: dict) -> jax.Array:
    """Fraction of activation channels that are never positive on the real examples.

    A rectifier channel that outputs zero (or, for leaky variants, only its
    negative slope) at every position of every example gets no useful
    gradient: it is "dead". Counted over every activation of the network.
    """
    _, feats = state.model()(batch["image"], return_features=True)
    real = batch["mask"][:, None, None, None] > 0
    dead = [jnp.logical_not(jnp.any((a > 0) & real, axis=(0, 1, 2)))
            for a in feats["activations"]]
    return sum(d.sum() for d in dead) / sum(d.size for d in dead)


def dead_units(feed: Any, state: steps.TrainState) -> float:
    """``dead_unit_fraction`` on the first test batch."""
    return float(reduce_split(feed, "test", dead_unit_fraction, state, num_batches=1))


def softmax(state: steps.TrainState, batch: dict) -> jax.Array:
    """(batch, classes) class probabilities."""
    return jax.nn.softmax(state.model()(batch["image"]).astype(jnp.float32), axis=-1)


def class_probabilities(feed: Any, split: str, state: steps.TrainState) -> np.ndarray:
    """(N, classes) softmax of every example of ``split``, in order, on the host.

    Batched and normalised as the evaluation pass is, so the argmax gives the
    logged error.
    """
    return reduce_split(feed, split, softmax, state, per_example=True)
