"""BatchNorm whose training-mode gradient keeps only its input, not two intermediates.

Why: ``nnx.BatchNorm`` differentiated by JAX keeps two activation-sized arrays
for its backward pass (``2 * x`` from the square in the variance, and
``x - mean``). A scan over a stage's blocks stacks every such residual, so each
is written into a buffer on the forward pass and read back on the backward one.
Here the VJP is the textbook BatchNorm gradient, computed from ``x``, the batch
mean and ``1 / sqrt(var + eps)``: one activation-sized residual per layer,
and a faster training step on CPU and GPU (BENCHMARKS.md).

Values, parameters and running statistics are those of ``nnx.BatchNorm``
(tested, gradients included). The fast path covers what the networks use:
batch statistics over all axes but the last, scale and bias, no mask, and no
``axis_name`` (per-device statistics; synchronised BatchNorm, which would also
need its gradient's reductions averaged across devices, stays with Flax's).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(normalised x, batch mean, batch variance) over every axis but the last.

    Statistics in float32 whatever ``x``'s dtype, the variance as E[x^2] - E[x]^2
    clipped at 0, as ``nnx.BatchNorm`` computes them.
    """
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axes)
    var = jnp.maximum(0.0, jnp.square(x32).mean(axes) - jnp.square(mean))
    inv = lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (scale * inv) + bias
    return (y.astype(x.dtype), mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    x, mean, inv, scale = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    x32 = x.astype(jnp.float32)
    g32 = g.astype(jnp.float32)
    x_hat = (x32 - mean) * inv
    d_bias = g32.sum(axes)
    d_scale = (g32 * x_hat).sum(axes)
    dx = (scale * inv) * (g32 - d_bias / count - x_hat * (d_scale / count))
    # Cotangents of the returned statistics (zero in training, where only the
    # running averages read them, but handled so the function is exact). Where
    # the variance was clipped at 0, x - mean is rounding noise and so are these
    # terms (Flax's gradient is 0 through the clip).
    dx = dx + g_mean / count + g_var * 2.0 * (x32 - mean) / count
    return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` with ``batch_norm_train``'s lighter gradient in training mode."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        running = self.use_running_average if use_running_average is None else use_running_average
        fast = (
            running is False
            and mask is None
            and self.axis_name is None
            and self.axis in (-1, x.ndim - 1)
            and self.scale is not None
            and self.bias is not None
            and self.use_fast_variance
        )
        if not fast:
            return super().__call__(x, use_running_average, mask=mask)
        x, scale, bias = self.promote_dtype(
            (x, self.scale[...], self.bias[...]), dtype=self.dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        m = self.momentum
        self.mean[...] = lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
        self.var[...] = lax.stop_gradient(m * self.var[...] + (1 - m) * var)
        return y
