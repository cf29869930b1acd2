"""Activation functions as modules, so every ReLU of a network can be swapped by one config key.

The paper uses ReLU everywhere. The alternatives researchers compare it with:

- ``leaky_relu``: ``max(x, a x)`` with a fixed slope ``a`` (Maas et al. 2013);
- ``prelu``: the same with ``a`` learned per channel, initialised to 0.25
  (He et al. 2015, "Delving deep into rectifiers");
- ``rrelu``: in training, ``a`` drawn uniformly from [1/8, 1/3] for every
  element; at test time the mean of that range (Xu et al. 2015);
- ``tanh`` and ``sigmoid``, the saturating non-linearities of older nets.

Each position in a network gets its own module (PReLU's slopes are
per-position parameters). Randomness is explicit: ``act(x, rng)`` where
``rng`` is a JAX key in training and may be ``None`` in evaluation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "rrelu", "tanh", "sigmoid")
# Activations whose units can "die" (output zero, or stuck at the negative slope, for every input).
RECTIFIERS = ("relu", "leaky_relu", "prelu", "rrelu")
PRELU_INIT = 0.25
RRELU_RANGE = (1.0 / 8.0, 1.0 / 3.0)


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """``max(x, 0)`` whose gradient keeps only a boolean mask for the backward pass.

    Why not ``jax.nn.relu``: its JVP rule ``select(x > 0, g, zeros)`` makes the
    full-size zeros a residual. Outside a loop XLA folds them away, but a scan
    over layers stacks every residual, so each scanned ReLU wrote and read a
    buffer of zeros as large as its input on every step. The gradient is the
    same (1 where x > 0, else 0, also at x == 0).
    """
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    return jnp.maximum(x, 0), x > 0


def _relu_bwd(positive, g):
    return (jnp.where(positive, g, jnp.zeros((), g.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)


class Activation(nnx.Module):
    """One non-linearity; ``deterministic`` is toggled by ``model.train()`` / ``model.eval()``."""

    def __init__(self, kind: str, features: int, *, slope: float = 0.01, param_dtype=jnp.float32):
        if kind not in ACTIVATIONS:
            raise ValueError(f"unknown activation {kind!r}; allowed: {', '.join(ACTIVATIONS)}")
        self.kind = kind
        self.slope = slope
        self.deterministic = False
        self.prelu_slope = (
            nnx.Param(jnp.full((features,), PRELU_INIT, param_dtype)) if kind == "prelu" else None
        )

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        if self.kind == "relu":
            return relu(x)
        if self.kind == "tanh":
            return jnp.tanh(x)
        if self.kind == "sigmoid":
            return jax.nn.sigmoid(x)
        if self.kind == "leaky_relu":
            slope = jnp.asarray(self.slope, x.dtype)
        elif self.kind == "prelu":
            slope = self.prelu_slope[...].astype(x.dtype)
        else:  # rrelu
            lo, hi = RRELU_RANGE
            if self.deterministic:
                slope = jnp.asarray((lo + hi) / 2, x.dtype)
            else:
                if rng is None:
                    raise ValueError("rrelu needs a random key in training (model(x, rng=key))")
                slope = jax.random.uniform(rng, x.shape, x.dtype, lo, hi)
        return jnp.where(x >= 0, x, slope * x)
