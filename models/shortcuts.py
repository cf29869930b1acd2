"""The paper's shortcut options: A identity (subsampled, zero-padded), B and C projections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import ConvBN, LayerOptions, make_conv

SHORTCUT_OPTIONS = ("A", "B", "C")


class IdentityShortcut(nnx.Module):
    """Option A: identity, subsampled by the stride and zero-padded in new channels.

    Parameter-free. Extra channels are split evenly before and after the
    existing ones (the common CIFAR implementation; the paper only says
    "zero-padded").
    """

    def __init__(self, in_features: int, out_features: int, stride: int):
        if out_features < in_features:
            raise ValueError(
                f"option A cannot shrink channels ({in_features} -> {out_features}); use B or C"
            )
        self.stride = stride
        self.pad = out_features - in_features

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        if self.pad:
            lo = self.pad // 2
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (lo, self.pad - lo)))
        return x


def make_shortcut(
    option: str,
    in_features: int,
    out_features: int,
    stride: int,
    opts: LayerOptions,
    rngs: nnx.Rngs,
    *,
    preact: bool = False,
) -> nnx.Module:
    """The paper's shortcut options: A identity (zero-pad), B project on shape change, C always.

    A projection is a 1x1 conv followed by BN in the original nets; in
    pre-activation nets it is a bare 1x1 conv applied to the block's
    pre-activated input (He et al. 2016's code).
    """
    shape_changes = stride != 1 or in_features != out_features
    if option == "C" or (option == "B" and shape_changes):
        if preact:
            return make_conv(in_features, out_features, 1, stride, opts, rngs)
        return ConvBN(in_features, out_features, 1, stride, opts, rngs=rngs)
    if option in ("A", "B"):
        return IdentityShortcut(in_features, out_features, stride)
    raise ValueError(f"unknown shortcut option {option!r}; allowed: A, B, C")
