"""Building blocks of plain and residual networks: conv+BN units, shortcuts, blocks.

A plain block and a residual block hold exactly the same layers; the only
difference is whether the block input is added back. That is what makes the
plain-vs-residual comparison of He et al. (2015) fair, and why one class
with a ``residual`` flag implements both.

Two orderings of the layers:

- the original (He et al. 2015): conv-BN-ReLU units, ReLU after the addition
  (``BasicBlock``, ``BottleneckBlock``);
- pre-activation (He et al. 2016, "Identity Mappings in Deep Residual
  Networks"): BN-ReLU-conv units and nothing after the addition, so the
  identity path is clean from the input to the final BN-ReLU of the network
  (``PreActBasicBlock``, ``PreActBottleneckBlock``). Wide ResNets use the
  pre-activation basic block with dropout between its convolutions.

Every block may drop its residual branch at random in training (stochastic
depth, Huang et al. 2016): ``block(x, rng, survival)`` keeps the branch with
probability ``survival`` for the whole batch and, at test time, scales it by
``survival``. Randomness is explicit: ``rng`` is a JAX key in training and may
be ``None`` in evaluation (``model.eval()`` makes every block deterministic).

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

from models.activations import Activation
from models.batch_norm import BatchNorm
from models.conv import conv_general_dilated as canonical_vjp_conv

SHORTCUT_OPTIONS = ("A", "B", "C")
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
              opts: LayerOptions, rngs: nnx.Rngs, *, zero: bool = False) -> nnx.Conv:
    """A bias-free 'same'-padded convolution (BatchNorm, before or after it, has the bias)."""
    pad = (kernel_size - 1) // 2
    conv_fn = canonical_vjp_conv if opts.canonical_conv_vjp else jax.lax.conv_general_dilated
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=nnx.initializers.zeros if zero else opts.kernel_init(),
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


class _Block(nnx.Module):
    """What every block shares: the residual addition with optional stochastic depth."""

    residual: bool
    stochastic_depth: bool
    deterministic: bool

    def _combine(self, shortcut: jax.Array | None, response: jax.Array,
                 rng: jax.Array | None, survival) -> jax.Array:
        if not self.residual:
            return response
        if self.stochastic_depth:
            if self.deterministic:
                response = response * jnp.asarray(survival, response.dtype)
            else:
                if rng is None:
                    raise ValueError("stochastic depth needs a random key in training")
                keep = jax.random.bernoulli(rng, survival)
                response = response * keep.astype(response.dtype)
        return response + shortcut

    def _init_common(self, residual: bool, stochastic_depth: bool) -> None:
        self.residual = residual
        self.stochastic_depth = stochastic_depth
        self.deterministic = False


class _PostActBlock(_Block):
    """The original ordering: the activation comes after the addition.

    Subclasses define ``_branch(x, rng) -> (response, inner activations)``.
    """

    shortcut: nnx.Module | None
    act_out: nnx.Module

    def branch(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """The residual function alone (after its last BN, before any addition)."""
        return self._branch(x, rng)[0]

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 survival: float | jax.Array = 1.0) -> tuple[jax.Array, dict]:
        """Returns (block output, {'response': branch after its last BN, 'activations': [...]})."""
        response, hidden = self._branch(x, rng)
        y = self._combine(self.shortcut(x) if self.residual else None, response,
                          fold(rng, 2), survival)
        y = self.act_out(y, fold(rng, 3))
        return y, {"response": response, "activations": [*hidden, y]}


class _PreActBlock(_Block):
    """The pre-activation ordering: BN-act first, nothing after the addition.

    When the shortcut is a projection, it takes the block's pre-activated
    input, as the branch does (He et al. 2016); an identity takes the raw
    input. Without ``pre`` (the first block after an ImageNet stem that
    already ends in BN-ReLU) the input goes in as it is. Subclasses define
    ``_branch(pre, rng) -> (response, inner activations)``.
    """

    shortcut: nnx.Module | None
    pre: BNAct | None

    def _preactivate(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
        return x if self.pre is None else self.pre(x, fold(rng, 0))

    def branch(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """The residual function alone (the last conv's output, before the addition)."""
        return self._branch(self._preactivate(x, rng), rng)[0]

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 survival: float | jax.Array = 1.0) -> tuple[jax.Array, dict]:
        """Returns (block output, {'response': branch output, 'activations': [...]})."""
        pre = self._preactivate(x, rng)
        response, hidden = self._branch(pre, rng)
        shortcut = None
        if self.residual:
            shortcut = self.shortcut(x if isinstance(self.shortcut, IdentityShortcut) else pre)
        y = self._combine(shortcut, response, fold(rng, 3), survival)
        acts = hidden if self.pre is None else [pre, *hidden]
        return y, {"response": response, "activations": acts}


def _dropout(rate: float) -> nnx.Dropout | None:
    return nnx.Dropout(rate) if rate > 0 else None


class BasicBlock(_PostActBlock):
    """Two 3x3 conv-BN units; activation between them and after the (optional) addition."""

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
        stochastic_depth: bool = False,
    ):
        self._init_common(residual, stochastic_depth)
        self.out_features = width
        self.unit1 = ConvBN(in_features, width, 3, stride, opts, rngs=rngs)
        self.act1 = opts.activation_module(width)
        self.dropout = _dropout(opts.block_dropout)
        zero = residual and opts.zero_init_residual
        self.unit2 = ConvBN(width, width, 3, 1, opts, rngs=rngs, zero_scale=zero)
        self.act_out = opts.activation_module(width)
        self.shortcut = (
            make_shortcut(shortcut, in_features, width, stride, opts, rngs) if residual else None
        )

    def _branch(self, x: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h = self.act1(self.unit1(x), fold(rng, 0))
        hidden = [h]
        if self.dropout is not None:
            h = self.dropout(h, rngs=fold(rng, 1))
        return self.unit2(h), hidden


class BottleneckBlock(_PostActBlock):
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
        stochastic_depth: bool = False,
    ):
        self._init_common(residual, stochastic_depth)
        out = width * self.expansion
        self.out_features = out
        s1, s2 = (stride, 1) if stride_on == "first" else (1, stride)
        self.unit1 = ConvBN(in_features, width, 1, s1, opts, rngs=rngs)
        self.act1 = opts.activation_module(width)
        self.unit2 = ConvBN(width, width, 3, s2, opts, rngs=rngs)
        self.act2 = opts.activation_module(width)
        zero = residual and opts.zero_init_residual
        self.unit3 = ConvBN(width, out, 1, 1, opts, rngs=rngs, zero_scale=zero)
        self.act_out = opts.activation_module(out)
        self.shortcut = (
            make_shortcut(shortcut, in_features, out, stride, opts, rngs) if residual else None
        )

    def _branch(self, x: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h1 = self.act1(self.unit1(x), fold(rng, 0))
        h2 = self.act2(self.unit2(h1), fold(rng, 1))
        return self.unit3(h2), [h1, h2]


class PreActBasicBlock(_PreActBlock):
    """BN-act-conv3x3, BN-act-(dropout)-conv3x3, then the addition and nothing after it.

    ``preact_input=False`` skips the first BN-act, for the first block after
    an ImageNet stem that already ends in BN-ReLU.
    """

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
        stochastic_depth: bool = False,
        preact_input: bool = True,
    ):
        self._init_common(residual, stochastic_depth)
        self.out_features = width
        self.pre = BNAct(in_features, opts, rngs=rngs) if preact_input else None
        self.conv1 = make_conv(in_features, width, 3, stride, opts, rngs)
        self.mid = BNAct(width, opts, rngs=rngs)
        self.dropout = _dropout(opts.block_dropout)
        zero = residual and opts.zero_init_residual
        self.conv2 = make_conv(width, width, 3, 1, opts, rngs, zero=zero)
        self.shortcut = (
            make_shortcut(shortcut, in_features, width, stride, opts, rngs, preact=True)
            if residual else None
        )

    def _branch(self, pre: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h = self.mid(self.conv1(pre), fold(rng, 1))
        hidden = [h]
        if self.dropout is not None:
            h = self.dropout(h, rngs=fold(rng, 2))
        return self.conv2(h), hidden


class PreActBottleneckBlock(_PreActBlock):
    """BN-act-conv1x1, BN-act-conv3x3, BN-act-conv1x1 (x4 channels), then the addition."""

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
        stochastic_depth: bool = False,
        preact_input: bool = True,
    ):
        self._init_common(residual, stochastic_depth)
        out = width * self.expansion
        self.out_features = out
        s1, s2 = (stride, 1) if stride_on == "first" else (1, stride)
        self.pre = BNAct(in_features, opts, rngs=rngs) if preact_input else None
        self.conv1 = make_conv(in_features, width, 1, s1, opts, rngs)
        self.mid1 = BNAct(width, opts, rngs=rngs)
        self.conv2 = make_conv(width, width, 3, s2, opts, rngs)
        self.mid2 = BNAct(width, opts, rngs=rngs)
        zero = residual and opts.zero_init_residual
        self.conv3 = make_conv(width, out, 1, 1, opts, rngs, zero=zero)
        self.shortcut = (
            make_shortcut(shortcut, in_features, out, stride, opts, rngs, preact=True)
            if residual else None
        )

    def _branch(self, pre: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h1 = self.mid1(self.conv1(pre), fold(rng, 1))
        h2 = self.mid2(self.conv2(h1), fold(rng, 2))
        return self.conv3(h2), [h1, h2]

