"""The units every block is made of: conv and BatchNorm layers, their options and inits.

``LayerOptions`` carries what every layer of a network shares (dtypes,
initialisation, activation, BatchNorm momentum and ``axis_name``, dropout,
how stages run); ``make_conv``/``make_bn`` build the layers, ``ConvBN`` and
``BNAct`` the two units of the original and pre-activation orderings. All
modules take NHWC inputs. The BatchNorm ``axis_name`` is how the trainer
chooses per-device statistics (``None``, the paper's multi-GPU setting) or
statistics over the global batch (``'data'``, under ``jax.shard_map``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.activations import Activation
from models.batch_norm import BatchNorm
from models.conv import conv_general_dilated as canonical_vjp_conv

INITS = ("he", "xavier", "small", "zeros")
INIT_MODES = ("fan_in", "fan_out", "fan_avg")
SMALL_INIT_STD = 0.01


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """Options shared by every layer of one network (dtypes, init, activation, BatchNorm)."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    # Kernel initialisation. 'he' (He et al. 2015, "Delving deep into rectifiers"):
    # std = sqrt(2 / n); the forward-propagation derivation uses n = k*k*c_in
    # (fan-in), which is also Caffe's MSRAFiller default used for the paper;
    # torchvision uses fan-out. 'xavier' (LeCun / Glorot, Caffe's XavierFiller):
    # std = sqrt(1 / n). 'small': N(0, 0.01^2), the pre-2014 habit. 'zeros': every
    # kernel zero, which shows the symmetry problem (nothing can learn).
    init: str = "he"
    init_mode: str = "fan_in"
    activation: str = "relu"
    activation_slope: float = 0.01  # leaky_relu's fixed negative slope
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    zero_init_residual: bool = False
    block_dropout: float = 0.0  # dropout between a basic block's two convs (Wide ResNets)
    # How blocks run, not what they compute (the results are the same either way):
    # scan_blocks stacks the identical blocks of a stage and runs them with one
    # compiled body (nnx.scan), so compile time stops growing with depth;
    # remat_blocks recomputes each block's activations in the backward pass
    # instead of keeping them (less memory, about one more forward pass of compute).
    # scan_unroll: blocks per scan iteration (lax.scan's unroll; True = the whole
    # stage as straight-line code, the parameters still stacked; 'auto': by
    # backend and depth, models.resnet.resolve_scan_unroll).
    scan_blocks: bool = False
    scan_unroll: str | int | bool = "auto"
    remat_blocks: bool = False
    canonical_conv_vjp: bool = True

    def kernel_init(self) -> nnx.Initializer:
        """Initialiser of every convolution kernel."""
        if self.init == "zeros":
            return nnx.initializers.zeros
        if self.init == "small":
            return nnx.initializers.normal(SMALL_INIT_STD)
        scale = 2.0 if self.init == "he" else 1.0
        return nnx.initializers.variance_scaling(scale, self.init_mode, "normal")

    def head_init(self) -> nnx.Initializer:
        """Initialiser of the classifier: no ReLU follows it, so 'he' keeps Flax's LeCun normal."""
        if self.init == "he":
            return nnx.initializers.lecun_normal()
        return self.kernel_init()

    def activation_module(self, features: int) -> Activation:
        return Activation(self.activation, features, slope=self.activation_slope,
                          param_dtype=self.param_dtype)


def fold(rng: jax.Array | None, i: int) -> jax.Array | None:
    """The ``i``-th independent key of ``rng`` (``None`` stays ``None``: evaluation)."""
    return None if rng is None else jax.random.fold_in(rng, i)


def make_conv(in_features: int, out_features: int, kernel_size: int, stride: int,
              opts: LayerOptions, rngs: nnx.Rngs, *, zero: bool = False, bias: bool = False,
              groups: int = 1, padding: int | None = None) -> nnx.Conv:
    """A 'same'-padded convolution, bias-free by default (BatchNorm, before or after it, has
    the bias). ``bias`` adds one (nets without BatchNorm), ``groups`` splits the channels into
    that many groups (ResNeXt, AlexNet's two GPUs), ``padding`` overrides the 'same' padding."""
    pad = (kernel_size - 1) // 2 if padding is None else padding
    conv_fn = canonical_vjp_conv if opts.canonical_conv_vjp else jax.lax.conv_general_dilated
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=bias,
        kernel_init=nnx.initializers.zeros if zero else opts.kernel_init(),
        bias_init=nnx.initializers.zeros,
        conv_general_dilated=conv_fn,
        dtype=opts.dtype,
        param_dtype=opts.param_dtype,
        rngs=rngs,
    )


def make_bn(features: int, opts: LayerOptions, rngs: nnx.Rngs, *,
            zero_scale: bool = False) -> BatchNorm:
    return BatchNorm(
        features,
        momentum=opts.bn_momentum,
        epsilon=opts.bn_epsilon,
        axis_name=opts.bn_axis_name,
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        dtype=opts.dtype,
        param_dtype=opts.param_dtype,
        rngs=rngs,
    )


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
        self.conv = make_conv(in_features, out_features, kernel_size, stride, opts, rngs)
        self.bn = make_bn(out_features, opts, rngs, zero_scale=zero_scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BNAct(nnx.Module):
    """BatchNorm then the activation: the pre-activation unit (and a pre-act net's last layer)."""

    def __init__(self, features: int, opts: LayerOptions, *, rngs: nnx.Rngs):
        self.bn = make_bn(features, opts, rngs)
        self.act = opts.activation_module(features)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        return self.act(self.bn(x), rng)
