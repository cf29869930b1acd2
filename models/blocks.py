"""Building blocks of plain and residual networks: conv+BN units, shortcuts, blocks.

A plain block and a residual block hold exactly the same layers; the only
difference is whether the block input is added back before the final ReLU.
That is what makes the plain-vs-residual comparison of He et al. (2015) fair,
and why one class with a ``residual`` flag implements both.

All modules take NHWC inputs. The BatchNorm ``axis_name`` is how the trainer
chooses per-device statistics (``None``, the paper's multi-GPU setting) or
statistics over the global batch (``'data'``, under ``jax.shard_map``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.conv import conv_general_dilated as canonical_vjp_conv

SHORTCUT_OPTIONS = ("A", "B", "C")


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """Options shared by every layer of one network (dtypes, init, BatchNorm)."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    # He et al. (2015, "Delving deep into rectifiers"), std = sqrt(2 / n). The
    # forward-propagation derivation uses n = k*k*c_in (fan-in), which is also
    # Caffe's MSRAFiller default used for the paper; torchvision uses fan-out.
    init_mode: str = "fan_in"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    zero_init_residual: bool = False
    # How blocks run, not what they compute (the results are the same either way):
    # scan_blocks stacks the identical blocks of a stage and runs them with one
    # compiled body (nnx.scan), so compile time stops growing with depth;
    # remat_blocks recomputes each block's activations in the backward pass
    # instead of keeping them (less memory, about one more forward pass of compute).
    scan_blocks: bool = False
    remat_blocks: bool = False
    canonical_conv_vjp: bool = True

    def kernel_init(self) -> nnx.Initializer:
        return nnx.initializers.variance_scaling(2.0, self.init_mode, "normal")


class ConvBN(nnx.Module):
    """Convolution (no bias) followed by BatchNorm, the paper's basic unit."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        stride: int,
        opts: LayerOptions,
        *,
        rngs: nnx.Rngs,
        zero_scale: bool = False,
    ):
        pad = (kernel_size - 1) // 2
        conv_fn = canonical_vjp_conv if opts.canonical_conv_vjp else jax.lax.conv_general_dilated
        self.conv = nnx.Conv(
            in_features,
            out_features,
            (kernel_size, kernel_size),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=opts.kernel_init(),
            conv_general_dilated=conv_fn,
            dtype=opts.dtype,
            param_dtype=opts.param_dtype,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            out_features,
            momentum=opts.bn_momentum,
            epsilon=opts.bn_epsilon,
            axis_name=opts.bn_axis_name,
            scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
            dtype=opts.dtype,
            param_dtype=opts.param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


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
) -> nnx.Module:
    """The paper's shortcut options: A identity (zero-pad), B project on shape change, C always."""
    shape_changes = stride != 1 or in_features != out_features
    if option == "C" or (option == "B" and shape_changes):
        return ConvBN(in_features, out_features, 1, stride, opts, rngs=rngs)
    if option in ("A", "B"):
        return IdentityShortcut(in_features, out_features, stride)
    raise ValueError(f"unknown shortcut option {option!r}; allowed: A, B, C")


class BasicBlock(nnx.Module):
    """Two 3x3 conv-BN units; ReLU between them and after the (optional) addition."""

    expansion = 1

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        *,
        residual: bool,
        shortcut: str,
        opts: LayerOptions,
        rngs: nnx.Rngs,
    ):
        self.out_features = width
        self.residual = residual
        self.unit1 = ConvBN(in_features, width, 3, stride, opts, rngs=rngs)
        zero = residual and opts.zero_init_residual
        self.unit2 = ConvBN(width, width, 3, 1, opts, rngs=rngs, zero_scale=zero)
        self.shortcut = (
            make_shortcut(shortcut, in_features, width, stride, opts, rngs) if residual else None
        )

    def branch(self, x: jax.Array) -> jax.Array:
        return self.unit2(nnx.relu(self.unit1(x)))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns (block output, branch response after its last BN, before any addition)."""
        response = self.branch(x)
        y = response + self.shortcut(x) if self.residual else response
        return nnx.relu(y), response


class BottleneckBlock(nnx.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each conv followed by BN.

    ``stride_on='first'`` puts the stride on the first 1x1 conv, as in the
    paper (and the original Caffe models); ``'middle'`` puts it on the 3x3
    conv, as torchvision's later "ResNet v1.5" does.
    """

    expansion = 4

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        *,
        residual: bool,
        shortcut: str,
        opts: LayerOptions,
        rngs: nnx.Rngs,
        stride_on: str = "first",
    ):
        out = width * self.expansion
        self.out_features = out
        self.residual = residual
        s1, s2 = (stride, 1) if stride_on == "first" else (1, stride)
        self.unit1 = ConvBN(in_features, width, 1, s1, opts, rngs=rngs)
        self.unit2 = ConvBN(width, width, 3, s2, opts, rngs=rngs)
        zero = residual and opts.zero_init_residual
        self.unit3 = ConvBN(width, out, 1, 1, opts, rngs=rngs, zero_scale=zero)
        self.shortcut = (
            make_shortcut(shortcut, in_features, out, stride, opts, rngs) if residual else None
        )

    def branch(self, x: jax.Array) -> jax.Array:
        return self.unit3(nnx.relu(self.unit2(nnx.relu(self.unit1(x)))))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns (block output, branch response after its last BN, before any addition)."""
        response = self.branch(x)
        y = response + self.shortcut(x) if self.residual else response
        return nnx.relu(y), response
