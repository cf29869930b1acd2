"""ResNeXt (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks").

A ResNeXt block is a bottleneck block whose 3x3 convolution is split into ``C`` groups
(the cardinality) of ``d`` channels each: 1x1 to ``C*d``, grouped 3x3 with the block's
stride (as the paper's code and torchvision do), 1x1 to 4x the stage width, BN after each
conv, ReLU after the addition. ``C*d`` doubles with each stage as the widths do. The rest is
the ResNet of ``models.resnet`` (stem, stages, scan over repeated blocks, stochastic depth,
plain counterparts with the same layers): only the block differs.

- CIFAR (paper Sec. 5.3): a 3x3 stem with 64 channels, three stages of ``n`` blocks with
  outputs 256/512/1024, depth ``9n + 2``: ResNeXt-29 8x64d and 16x64d.
- ImageNet: ResNeXt-50/101/152 on the ResNet-50/101/152 layouts, e.g. 50 32x4d and
  101 32x8d (torchvision's ``resnext50_32x4d``, ``resnext101_32x8d``).
"""

from __future__ import annotations

import jax
from flax import nnx

from models.blocks import _PostActBlock
from models.layers import ConvBN, LayerOptions, fold, make_bn, make_conv
from models.shortcuts import make_shortcut
from models.specs import IMAGENET_STAGES, NetworkSpec

RESNEXT_IMAGENET_DEPTHS = tuple(d for d, (block, _) in IMAGENET_STAGES.items()
                                if block == "bottleneck")
# (cardinality, group width) when unset: the papers' ResNeXt-29 8x64d and ResNeXt-50 32x4d.
CIFAR_DEFAULT = (8, 64)
IMAGENET_DEFAULT = (32, 4)


class GroupedConvBN(nnx.Module):
    """A grouped convolution (no bias) followed by BatchNorm."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int,
                 groups: int, opts: LayerOptions, *, rngs: nnx.Rngs):
        self.conv = make_conv(in_features, out_features, kernel_size, stride, opts, rngs,
                              groups=groups)
        self.bn = make_bn(out_features, opts, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class ResNeXtBlock(_PostActBlock):
    """1x1 to C*d, grouped 3x3 (stride here), 1x1 to 4x width; BN after each; ReLU after the
    (optional) addition."""

    expansion = 4

    def __init__(self, in_features: int, width: int, stride: int, *, residual: bool,
                 shortcut: str, opts: LayerOptions, rngs: nnx.Rngs, cardinality: int,
                 inner: int, stochastic_depth: bool = False):
        self._init_common(residual, stochastic_depth)
        out = width * self.expansion
        self.out_features = out
        self.unit1 = ConvBN(in_features, inner, 1, 1, opts, rngs=rngs)
        self.act1 = opts.activation_module(inner)
        self.unit2 = GroupedConvBN(inner, inner, 3, stride, cardinality, opts, rngs=rngs)
        self.act2 = opts.activation_module(inner)
        zero = residual and opts.zero_init_residual
        self.unit3 = ConvBN(inner, out, 1, 1, opts, rngs=rngs, zero_scale=zero)
        self.act_out = opts.activation_module(out)
        self.shortcut = (
            make_shortcut(shortcut, in_features, out, stride, opts, rngs) if residual else None
        )

    def _branch(self, x: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h1 = self.act1(self.unit1(x), fold(rng, 0))
        h2 = self.act2(self.unit2(h1), fold(rng, 1))
        return self.unit3(h2), [h1, h2]


def inner_width(spec: NetworkSpec, width: int) -> int:
    """C*d in the stage of ``width``: doubles with the stage width (C*d in the first stage)."""
    return spec.cardinality * spec.group_width * width // spec.widths[0]


def make_resnext_block(spec: NetworkSpec, in_features: int, width: int, stride: int,
                       opts: LayerOptions, rngs: nnx.Rngs, *,
                       stochastic_depth: bool = False) -> ResNeXtBlock:
    return ResNeXtBlock(in_features, width, stride, residual=not spec.plain,
                        shortcut=spec.shortcut, opts=opts, rngs=rngs,
                        cardinality=spec.cardinality, inner=inner_width(spec, width),
                        stochastic_depth=stochastic_depth)


def resnext_spec(depth: int, *, cardinality: int | None = None, group_width: int | None = None,
                 widths: tuple[int, ...] | None = None, stem: str | None = None,
                 **kw) -> NetworkSpec:
    """ResNeXt-(9n+2) for CIFAR or ResNeXt-50/101/152 for ImageNet, C groups of width d."""
    imagenet = depth in RESNEXT_IMAGENET_DEPTHS
    if imagenet:
        sizes = IMAGENET_STAGES[depth][1]
        widths = tuple(widths or (64, 128, 256, 512))
        stem = stem or "imagenet"
        c0, d0 = IMAGENET_DEFAULT
    else:
        if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
            raise ValueError("ResNeXt depth must be 9n+2 with n >= 1 for CIFAR (11, 20, 29, ...) "
                             f"or one of {', '.join(map(str, RESNEXT_IMAGENET_DEPTHS))} for "
                             f"ImageNet, got {depth}")
        if stem not in (None, "cifar"):
            raise ValueError(f"model.stem={stem!r} is not available for CIFAR ResNeXts")
        sizes = ((depth - 2) // 9,) * 3
        widths = tuple(widths or (64, 128, 256))
        stem = "cifar"
        c0, d0 = CIFAR_DEFAULT
    c, d = int(cardinality or c0), int(group_width or d0)
    if c < 1 or d < 1:
        raise ValueError(f"model.cardinality and model.group_width must be >= 1, got {c}, {d}")
    if len(widths) != len(sizes):
        raise ValueError(f"widths {widths} must have one entry per stage ({len(sizes)} stages)")
    if any(w % widths[0] for w in widths):
        raise ValueError(f"ResNeXt widths must be multiples of the first, got {widths}")
    kw.pop("bottleneck_stride", None)
    return NetworkSpec(family="resnext", depth=depth, block="bottleneck", stage_sizes=sizes,
                       widths=widths, stem=stem, stem_width=widths[0], cardinality=c,
                       group_width=d, bottleneck_stride="middle", **kw)
