"""Pooling and local response normalisation, as the pre-ResNet networks of the zoo use them.

``pool`` is max or average pooling with an output size of ``floor`` (PyTorch's default,
AlexNet, VGG) or ``ceil`` (Caffe, GoogLeNet, SqueezeNet, NiN) of ``(H + 2p - k) / s + 1``,
never below one: a map smaller than the window still gives one output (the window is padded,
-inf for max, left out of the mean for average). On the published input sizes this is the
reference layout; on the 8x8 digits it lets every family run end to end.
``adaptive_avg_pool`` averages into a fixed grid as ``torch.nn.AdaptiveAvgPool2d`` does
(the 7x7 before VGG's classifier, 6x6 for AlexNet's, 4x4 for GoogLeNet's auxiliary heads; a
smaller map is repeated). ``local_response_norm`` is AlexNet's (and GoogLeNet's) LRN across
channels. All take NHWC inputs and have no parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _out_size(size: int, k: int, s: int, pad: int, ceil: bool) -> int:
    span = size + 2 * pad - k
    n = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (n - 1) * s >= size + pad:  # the last window must start inside (PyTorch's rule)
        n -= 1
    return max(1, n)


def pool(x: jax.Array, kind: str, k: int, s: int, *, pad: int = 0,
         ceil: bool = False) -> jax.Array:
    """Max (``kind='max'``) or average (``'avg'``) pooling of a k x k window with stride s."""
    pads = []
    for size in x.shape[1:3]:
        n = _out_size(size, k, s, pad, ceil)
        pads.append((pad, max(0, (n - 1) * s + k - size - pad)))
    window, strides = (1, k, k, 1), (1, s, s, 1)
    padding = ((0, 0), *pads, (0, 0))
    # Python scalars as initial values: JAX then knows the monoid (max, add) and its gradient.
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, padding)
    if kind != "avg":
        raise ValueError(f"unknown pooling {kind!r}; allowed: max, avg")
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
    ones = np.ones((1, *x.shape[1:3], 1), np.float32)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
    return total / jnp.asarray(count, x.dtype)


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """[lo, hi) of each of PyTorch's adaptive pooling bins along one axis."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
    """Averages each map into an ``out x out`` grid (bins as ``torch.nn.AdaptiveAvgPool2d``).

    A map that divides evenly is one reshape and mean (224x224 VGG: 7x7 to 7x7); other
    sizes average each bin's slice (no matrix products, so no multiply-adds are counted)."""
    h, w = x.shape[1:3]
    if h % out == 0 and w % out == 0:
        return x.reshape(x.shape[0], out, h // out, out, w // out, x.shape[3]).mean((2, 4))
    rows = [jnp.stack([x[:, r0:r1, c0:c1].mean((1, 2)) for c0, c1 in _bins(w, out)], 1)
            for r0, r1 in _bins(h, out)]
    return jnp.stack(rows, 1)


def local_response_norm(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> jax.Array:
    """``x / (k + alpha/size * sum of x^2 over `size` neighbouring channels) ** beta`` (Caffe's
    and PyTorch's LRN; AlexNet: size 5, alpha 1e-4, beta 0.75, k 2; GoogLeNet: k 1)."""
    sq = jnp.square(x.astype(jnp.float32))
    lo = size // 2
    sq = jnp.pad(sq, ((0, 0), (0, 0), (0, 0), (lo, size - 1 - lo)))
    window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), "VALID")
    return (x / (k + alpha / size * window) ** beta).astype(x.dtype)
