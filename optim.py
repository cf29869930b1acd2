"""Regularisers and the reduce-on-plateau rule that ``train.py``'s optimizer and loop use.

The paper's recipe is plain SGD with momentum and L2 weight decay added to
the gradient (Caffe's way); everything here is an option around it:

- ``add_l1``: an L1 term ``l1 * sign(p)`` added to the gradient (with L2 set
  too: elastic net);
- decoupled weight decay is optax's own ``add_decayed_weights`` placed after
  the momentum (``train.make_optimizer`` chooses where), so that the step is
  ``p -= lr * (momentum + wd * p)``: the decay never enters the momentum;
- ``project_max_norm``: after each update, every unit's incoming weight
  vector is rescaled to norm <= c (Srivastava et al. 2014);
- ``PlateauState`` / ``plateau_update``: divide the LR when the validation
  error stops improving. The state lives in ``TrainState`` so that it is
  checkpointed and a resumed run continues exactly as an uninterrupted one.

Parameter trees are NNX ``State``s; rules that depend on where a parameter
sits use its path of names (``('stages', 0, 'repeated', 'unit1', 'conv',
'kernel')``), read from JAX key paths so they work on any tree of the same
layout (including optax's masked trees).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax


def key_name(key: Any) -> Any:
    """The plain name of one JAX key-path entry (dict key, sequence index or attribute)."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def names(keypath: tuple) -> tuple:
    """A JAX key path as a tuple of names, without the trailing ``.value`` of NNX Variables."""
    out = tuple(key_name(k) for k in keypath)
    return out[:-1] if out and out[-1] == "value" else out


def map_with_names(fn: Callable[[tuple, Any], Any], tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` whose function also gets each leaf's path of names."""
    return jax.tree_util.tree_map_with_path(lambda kp, *leaves: fn(names(kp), *leaves),
                                            tree, *rest)


def is_kernel(path: tuple) -> bool:
    """Conv and linear weights (not biases, not BatchNorm scales and offsets)."""
    return bool(path) and path[-1] == "kernel"


def add_l1(l1: float, mask: Any = None) -> optax.GradientTransformation:
    """Adds ``l1 * sign(p)`` to the gradient: the (sub)gradient of ``l1 * sum |p|``."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_l1 needs the parameters")
        updates = jax.tree.map(lambda g, p: g + l1 * jnp.sign(p).astype(g.dtype), updates, params)
        return updates, state

    tx = optax.GradientTransformation(lambda params: optax.EmptyState(), update)
    return optax.masked(tx, mask) if mask is not None else tx


def project_max_norm(params: Any, max_norm: float,
                     skip: Callable[[tuple], bool] = lambda path: False) -> Any:
    """Rescales each unit's incoming weight vector to norm <= ``max_norm``.

    A unit is an output channel: for a conv kernel (H, W, I, O) the vector is
    its (H, W, I) slice, for a linear kernel (in, out) its ``in`` column.
    Kernels of scanned blocks (paths through ``repeated``) carry a leading
    block axis, which is not part of any vector. Vectors already inside the
    ball are returned bit for bit; rescaled ones have norm ``max_norm`` up to
    float rounding. Only kernels are constrained (not biases or BatchNorm
    parameters); ``skip(path)`` leaves more out (frozen parameters).
    """

    def project(path, p):
        if not is_kernel(path) or skip(path) or p.ndim < 2:
            return p
        first = 1 if "repeated" in path else 0
        axes = tuple(range(first, p.ndim - 1))
        norm = jnp.sqrt(jnp.sum(jnp.square(p.astype(jnp.float32)), axis=axes, keepdims=True))
        scaled = (p * (max_norm / jnp.maximum(norm, 1e-30))).astype(p.dtype)
        return jnp.where(norm > max_norm, scaled, p)

    return map_with_names(project, params)


# --------------------------------------------------------------------------- plateau


@flax.struct.dataclass
class PlateauState:
    """Reduce-on-plateau bookkeeping, checkpointed with the rest of the train state."""

    scale: jax.Array  # float32: the LR is config.optimizer.lr * scale
    best: jax.Array  # float32: best validation error so far (inf before the first)
    since_best: jax.Array  # int32: evaluations since the last improvement or reduction

    @classmethod
    def initial(cls) -> PlateauState:
        return cls(scale=np.float32(1.0), best=np.float32(np.inf), since_best=np.int32(0))


def plateau_update(state: PlateauState, error: float, *, factor: float, patience: int,
                   threshold: float = 0.0, min_scale: float = 0.0) -> PlateauState:
    """One evaluation's step of the rule (host side, on plain numbers).

    An error counts as an improvement when it is below ``best - threshold``;
    otherwise the evaluation is one more without improvement. After
    ``patience`` such evaluations in a row the scale is divided by ``factor``
    (not below ``min_scale``) and the count starts again; the best error is
    kept, so the new LR also has to beat it.
    """
    scale, best, since = float(state.scale), float(state.best), int(state.since_best)
    error = float(np.float32(error))  # compared at the precision the best error is stored in
    if error < best - threshold:
        best, since = error, 0
    else:
        since += 1
    if since >= patience:
        scale, since = max(scale / factor, min_scale), 0
    return PlateauState(scale=np.float32(scale), best=np.float32(best),
                        since_best=np.int32(since))
