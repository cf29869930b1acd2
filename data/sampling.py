"""Which training examples a step sees: pure functions of (seed, step), run on device.

A resumed run sees exactly the batches an uninterrupted one would, because
each step's indices depend only on the key and the step number.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def batch_indices(key: jax.Array, step, num_examples: int, batch_size: int) -> jax.Array:
    """Indices of the examples of training step ``step``: a pure function of (key, step).

    Each epoch is a fresh permutation (keyed by the epoch number) cut into
    ``num_examples // batch_size`` batches; the remainder is dropped.
    """
    steps_per_epoch = max(1, num_examples // batch_size)
    step = jnp.asarray(step, jnp.int32)
    epoch, within = step // steps_per_epoch, step % steps_per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice(perm, (within * batch_size,), (batch_size,)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ClassIndex:
    """Training examples grouped by class, for class-balanced sampling on device."""

    order: np.ndarray  # (N,) int32: example indices sorted by class
    offsets: np.ndarray  # (K,) int32: where each present class starts in ``order``
    counts: np.ndarray  # (K,) int32: examples of each present class (all > 0)

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ClassIndex:
        order = np.argsort(labels, kind="stable").astype(np.int32)
        _, offsets, counts = np.unique(labels[order], return_index=True, return_counts=True)
        return cls(order, offsets.astype(np.int32), counts.astype(np.int32))


def balanced_batch_indices(key: jax.Array, step, index: dict[str, jax.Array],
                           batch_size: int) -> jax.Array:
    """Indices of a class-balanced batch: each example draws a class uniformly, then a member.

    ``index`` holds a ``ClassIndex``'s arrays (on device). Sampling is with
    replacement, a pure function of (key, step) like ``batch_indices``, so a
    resumed run sees the same batches; rare classes repeat, common ones are
    seen less often (class-balanced re-sampling).
    """
    class_key, member_key = jax.random.split(jax.random.fold_in(key, step))
    k = jax.random.randint(class_key, (batch_size,), 0, index["counts"].shape[0])
    within = jax.random.randint(member_key, (batch_size,), 0, index["counts"][k])
    return index["order"][index["offsets"][k] + within]
