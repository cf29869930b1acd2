"""The optimizer: the paper's SGD with momentum and L2 decay, and the regularisers around it.

The paper's recipe is plain SGD with momentum and L2 weight decay added to
the gradient (Caffe's way); ``make_optimizer`` builds exactly that chain by
default. Options:

- decoupled weight decay: optax's ``add_decayed_weights`` placed after the
  momentum, so the step is ``p -= lr * (momentum + wd * p)`` (the decay
  never enters the momentum);
- ``add_l1``: ``l1 * sign(p)`` added to the gradient (with L2: elastic net);
- ``project_max_norm``: after each update, every unit's incoming weight
  vector is rescaled to norm <= c (Srivastava et al. 2014); ``train_step``
  applies it;
- frozen parameters (fine-tuning) get a zero update and no state.

The learning rate is not part of the chain: ``train_step`` scales the
updates by ``schedule.learning_rate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from training import freeze, param_paths
from training.hyper import Hyper


def make_optimizer(config: ml_collections.ConfigDict,
                   hyper: Hyper | None = None) -> optax.GradientTransformation:
    """L2 weight decay added to the gradient (as Caffe), then momentum; LR applied in the step.

    Options: L1 (``l1 * sign(p)``, also added to the gradient), L2 decoupled
    from the momentum (added after it, so the step is ``p -= lr * (m + wd * p)``)
    and frozen parameters (fine-tuning), which get a zero update and no state.
    The paper's recipe builds exactly the chain (and optimizer state) it always did.
    Momentum and weight decay are ``hyper``'s (a packed run's, traced), else the
    config's; the state's structure does not depend on their values.
    """
    opt = config.optimizer
    hyper = Hyper.of(config) if hyper is None else hyper

    def decay_mask(params):
        if opt.weight_decay_on == "all":
            return jax.tree.map(lambda _: True, params)
        return nnx.map_state(lambda path, _: path[-1] == "kernel", params)

    decay = optax.add_decayed_weights(hyper.weight_decay, mask=decay_mask)
    coupled = opt.weight_decay_mode == "coupled"
    tx = optax.chain(
        *([decay] if coupled else []),
        *([add_l1(opt.l1, mask=decay_mask)] if opt.l1 else []),
        optax.trace(decay=hyper.momentum, nesterov=opt.nesterov),
        *([] if coupled else [decay]),
    )
    if freeze.freezes(config.finetune.freeze):
        labels = freeze.param_labels(freeze.frozen_predicate_of(config))
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks ``optimizer.*``; one-line ValueErrors."""
    opt = config.optimizer
    if not (math.isfinite(opt.lr) and opt.lr > 0):
        raise ValueError(f"optimizer.lr must be a positive finite number, got {opt.lr}")
    if not (math.isfinite(opt.weight_decay) and opt.weight_decay >= 0):
        raise ValueError(f"optimizer.weight_decay must be >= 0, got {opt.weight_decay}")
    if not 0 <= opt.momentum < 1:
        raise ValueError(f"optimizer.momentum must be in [0, 1), got {opt.momentum}")
    if opt.weight_decay_on not in ("all", "kernels"):
        raise ValueError(
            f"optimizer.weight_decay_on must be 'all' or 'kernels', got {opt.weight_decay_on!r}"
        )
    if opt.weight_decay_mode not in ("coupled", "decoupled"):
        raise ValueError(f"optimizer.weight_decay_mode must be 'coupled' or 'decoupled', "
                         f"got {opt.weight_decay_mode!r}")
    if not (math.isfinite(opt.l1) and opt.l1 >= 0):
        raise ValueError(f"optimizer.l1 must be >= 0, got {opt.l1}")
    if opt.max_norm is not None and not (math.isfinite(opt.max_norm) and opt.max_norm > 0):
        raise ValueError(f"optimizer.max_norm must be positive (or None = off), got {opt.max_norm}")


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
        if not param_paths.is_kernel(path) or skip(path) or p.ndim < 2:
            return p
        first = 1 if "repeated" in path else 0
        axes = tuple(range(first, p.ndim - 1))
        norm = jnp.sqrt(jnp.sum(jnp.square(p.astype(jnp.float32)), axis=axes, keepdims=True))
        scaled = (p * (max_norm / jnp.maximum(norm, 1e-30))).astype(p.dtype)
        return jnp.where(norm > max_norm, scaled, p)

    return param_paths.map_with_names(project, params)
