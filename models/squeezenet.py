"""SqueezeNet (Iandola et al. 2016): AlexNet's accuracy with 50x fewer parameters.

A Fire module squeezes with 1x1 convs, then expands with 1x1 and 3x3 convs side by side
(concatenated), ReLU after each. Version 1.0 (the paper): 7x7/2 conv with 96 filters,
max-pool, fire2-4, max-pool, fire5-8, max-pool, fire9, dropout 0.5, a 1x1 conv to the
classes (``head``), ReLU, global average pool: 1,248,424 parameters. Version 1.1 (the
authors' repository, 2.4x cheaper): 3x3/2 conv with 64 filters and the pools moved earlier
(1,235,496). Max-pools are 3x3/2 with ceil rounding, as Caffe's and torchvision's. Convs
have biases and no BatchNorm, as published (``model.bn=True`` adds it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.classic import ClassicSpec
from models.layers import LayerOptions, fold
from models.network import ConvUnit, Network
from models.pooling import pool

VERSIONS = ("1.0", "1.1")
# version: (stem filters, stem kernel, stages of fire modules (squeeze, expand) each after a
# max-pool).
LAYOUT = {
    "1.0": (96, 7, (((16, 64), (16, 64), (32, 128)),
                    ((32, 128), (48, 192), (48, 192), (64, 256)), ((64, 256),))),
    "1.1": (64, 3, (((16, 64), (16, 64)), ((32, 128), (32, 128)),
                    ((48, 192), (48, 192), (64, 256), (64, 256)))),
}


class Fire(nnx.Module):
    """squeeze 1x1 -> (expand 1x1 | expand 3x3), concatenated; ReLU after each conv."""

    def __init__(self, in_features: int, squeeze: int, expand: int, opts: LayerOptions, *,
                 rngs: nnx.Rngs, bn: bool):
        self.squeeze = ConvUnit(in_features, squeeze, 1, 1, opts, rngs=rngs, bn=bn)
        self.expand1 = ConvUnit(squeeze, expand, 1, 1, opts, rngs=rngs, bn=bn)
        self.expand3 = ConvUnit(squeeze, expand, 3, 1, opts, rngs=rngs, bn=bn)
        self.out_features = 2 * expand

    def __call__(self, x: jax.Array, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, list[jax.Array]]:
        s = self.squeeze(x, fold(rng, 0))[0]
        e1, e3 = self.expand1(s, fold(rng, 1))[0], self.expand3(s, fold(rng, 2))[0]
        return jnp.concatenate([e1, e3], -1), [s, e1, e3]


class FireStage(nnx.Module):
    """A 3x3/2 max-pool (ceil), then Fire modules."""

    def __init__(self, fires: tuple, in_features: int, opts: LayerOptions, *, rngs: nnx.Rngs,
                 spec: ClassicSpec):
        blocks = []
        for squeeze, expand in fires:
            blocks.append(Fire(in_features, spec.w(squeeze), spec.w(expand), opts, rngs=rngs,
                               bn=spec.bn))
            in_features = blocks[-1].out_features
        self.blocks = nnx.List(blocks)
        self.out_features = in_features
        self.num_blocks = len(blocks)
        self.repeated = None
        self.remat = False

    def __call__(self, x: jax.Array, rng: jax.Array | None = None, *, collect: bool = True):
        x = pool(x, "max", 3, 2, ceil=True)
        outputs, activations = [], []
        for i, fire in enumerate(self.blocks):
            x, acts = fire(x, fold(rng, i))
            if collect:
                outputs.append(x)
                activations += acts
        return x, outputs, list(outputs), activations


class Stem(nnx.Module):
    """The first conv (no padding) and its ReLU."""

    def __init__(self, spec: ClassicSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        width, k, _ = LAYOUT[spec.version]
        self.conv = ConvUnit(spec.in_channels, spec.w(width), k, 2, opts, rngs=rngs, bn=spec.bn,
                             padding=0)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        return self.conv(x, rng)[0]


class SqueezeNet(Network):
    """Stem, three pooled stages of Fire modules, dropout 0.5, 1x1 conv classifier, ReLU,
    global average pool."""

    def __init__(self, spec: ClassicSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        spec.validate()
        self.spec, self.dtype = spec, opts.dtype
        self.stem = Stem(spec, opts, rngs=rngs)
        features, _, layout = LAYOUT[spec.version]
        features, stages = spec.w(features), []
        for fires in layout:
            stages.append(FireStage(fires, features, opts, rngs=rngs, spec=spec))
            features = stages[-1].out_features
        self.stages = nnx.List(stages)
        self.final = None
        self.dropout = nnx.Dropout(0.5)
        self.head = nnx.Conv(features, spec.num_classes, (1, 1), kernel_init=opts.head_init(),
                             dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.head_act = opts.activation_module(spec.num_classes)
        self.num_features = features


def squeezenet_spec(depth: int, *, version: str | None = None, **kw) -> ClassicSpec:
    """SqueezeNet 1.0 or 1.1; depth 18 (conv1, 8 Fire modules of two layers, conv10)."""
    version = version or "1.0"
    if version not in VERSIONS:
        raise ValueError(f"model.version must be one of {', '.join(VERSIONS)} for SqueezeNet, "
                         f"got {version!r}")
    if depth != 18:
        raise ValueError(f"SqueezeNet has 18 weight layers (1.0 and 1.1), got depth {depth}")
    sizes = tuple(len(s) for s in LAYOUT[version][2])
    return ClassicSpec(family="squeezenet", depth=18, stage_sizes=sizes, version=version, **kw)
