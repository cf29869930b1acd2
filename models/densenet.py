"""DenseNet and DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks").

Each layer of a dense block sees the concatenation of every earlier feature map of the block
and adds ``k`` (the growth rate) new ones: BN-ReLU-conv3x3 (DenseNet), or with the bottleneck
BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) (DenseNet-B). Between blocks a transition,
BN-ReLU-conv1x1 to ``floor(theta m)`` channels then a 2x2 average pool, compresses the ``m``
channels by ``theta`` (DenseNet-C: theta < 1; BC: both). The net ends with BN-ReLU, a global
average pool and the classifier.

- CIFAR (paper Sec. 3): a 3x3 stem conv with 16 channels (2k for BC), three dense blocks of
  ``n`` layers at 32/16/8 pixels; depth ``L = 3n + 4`` (``6n + 4`` with bottlenecks), e.g.
  DenseNet (L=40, k=12), DenseNet-BC (L=100, k=12), DenseNet-BC (L=190, k=40).
- ImageNet (Table 1): a 7x7/2 stem conv with 2k channels, BN-ReLU, 3x3/2 max-pool, then four
  BC blocks: DenseNet-121/169/201/264 (k=32) and DenseNet-161 (k=48), as torchvision's.

Dropout (``model.block_dropout``; the paper's 0.2 without augmentation) follows every conv
but the stem. Dense layers cannot be scanned (each sees more channels than the last);
``remat_blocks`` recomputes each layer's activations in the backward pass, the memory
DenseNet's concatenations otherwise keep.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import BNAct, LayerOptions, fold, make_bn, make_conv
from models.network import FamilySpec, Network
from models.pooling import pool

# depth: (growth rate, layers per block) of the ImageNet DenseNets (paper, Table 1).
IMAGENET_DENSENETS = {121: (32, (6, 12, 24, 16)), 169: (32, (6, 12, 32, 32)),
                      201: (32, (6, 12, 48, 32)), 264: (32, (6, 12, 64, 48)),
                      161: (48, (6, 12, 36, 24))}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseNetSpec(FamilySpec):
    growth_rate: int
    bottleneck: bool
    compression: float  # theta of the transitions
    init_features: int
    stem: str  # 'cifar' (3x3 conv) or 'imagenet' (7x7/2 conv-BN-ReLU, 3x3/2 max-pool)

    connectivity = "dense"

    @property
    def kind(self) -> str:
        return "densenet" + ("-" if self.bottleneck or self.compression < 1 else "") + \
            ("b" if self.bottleneck else "") + ("c" if self.compression < 1 else "")

    @property
    def name(self) -> str:
        if self.stem == "imagenet" and self.depth in IMAGENET_DENSENETS:
            default_k = IMAGENET_DENSENETS[self.depth][0]
            return f"densenet-{self.depth}" + ("" if self.growth_rate == default_k
                                               else f"-{self.growth_rate}")
        return f"{self.kind}-{self.depth}-{self.growth_rate}"

    @property
    def label(self) -> str:
        """``DenseNet-121``, ``DenseNet-BC-100 (k=12)``, ``DenseNet-40 (k=12)``."""
        if self.stem == "imagenet" and self.depth in IMAGENET_DENSENETS:
            default_k = IMAGENET_DENSENETS[self.depth][0]
            return f"DenseNet-{self.depth}" + ("" if self.growth_rate == default_k
                                               else f" (k={self.growth_rate})")
        suffix = self.kind[len("densenet"):].upper()  # '', '-B', '-C' or '-BC'
        return f"DenseNet{suffix}-{self.depth} (k={self.growth_rate})"

    def validate(self) -> None:
        super().validate()
        if self.growth_rate < 1:
            raise ValueError(f"model.growth_rate must be >= 1, got {self.growth_rate}")
        if not 0.0 < self.compression <= 1.0:
            raise ValueError(f"model.compression must be in (0, 1], got {self.compression}")


def densenet_spec(depth: int, *, growth_rate: int | None = None, bottleneck: bool | None = None,
                  compression: float | None = None, stem: str | None = None,
                  **kw) -> DenseNetSpec:
    """The paper's DenseNets: ImageNet 121/169/201/264/161 (BC), CIFAR 3n+4 or BC 6n+4."""
    imagenet = depth in IMAGENET_DENSENETS and stem != "cifar"
    if imagenet:
        k0, sizes = IMAGENET_DENSENETS[depth]
        if bottleneck is False:
            raise ValueError(f"DenseNet-{depth} is built from bottleneck layers; model.block="
                             "'basic' contradicts it (leave it unset)")
        k = growth_rate or k0
        return DenseNetSpec(family="densenet", depth=depth, stage_sizes=sizes, growth_rate=k,
                            bottleneck=True, compression=0.5 if compression is None
                            else compression, init_features=2 * k, stem="imagenet", **kw)
    if stem not in (None, "cifar"):
        raise ValueError(f"model.stem={stem!r}: ImageNet DenseNets are "
                         f"{', '.join(map(str, IMAGENET_DENSENETS))}; other depths are CIFAR nets")
    bottleneck = bool(bottleneck)
    per = 6 if bottleneck else 3
    if not isinstance(depth, int) or depth < per + 4 or (depth - 4) % per:
        examples = "22, 40, 100, 190, 250" if bottleneck else "13, 22, 40, 100"
        raise ValueError(f"CIFAR DenseNet{'-BC' if bottleneck else ''} depth must be {per}n+4 "
                         f"with n >= 1 ({examples}, ...), got {depth}")
    k = growth_rate or 12
    theta = (0.5 if bottleneck else 1.0) if compression is None else compression
    return DenseNetSpec(family="densenet", depth=depth, stage_sizes=((depth - 4) // per,) * 3,
                        growth_rate=k, bottleneck=bottleneck, compression=theta,
                        init_features=2 * k if bottleneck else 16, stem="cifar", **kw)


def _dropout(rate: float) -> nnx.Dropout | None:
    return nnx.Dropout(rate) if rate > 0 else None


class DenseLayer(nnx.Module):
    """BN-act-conv3x3(k), or BN-act-conv1x1(4k)-BN-act-conv3x3(k); dropout after each conv."""

    def __init__(self, in_features: int, k: int, bottleneck: bool, opts: LayerOptions, *,
                 rngs: nnx.Rngs):
        width = 4 * k if bottleneck else in_features
        self.pre = BNAct(in_features, opts, rngs=rngs)
        self.reduce = make_conv(in_features, width, 1, 1, opts, rngs) if bottleneck else None
        self.mid = BNAct(width, opts, rngs=rngs) if bottleneck else None
        self.conv = make_conv(width, k, 3, 1, opts, rngs)
        self.dropout = _dropout(opts.block_dropout)

    def _drop(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
        return x if self.dropout is None else self.dropout(x, rngs=rng)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, list[jax.Array]]:
        """(the k new feature maps, the activations)."""
        h = self.pre(x, fold(rng, 0))
        acts = [h]
        if self.reduce is not None:
            h = self.mid(self._drop(self.reduce(h), fold(rng, 1)), fold(rng, 2))
            acts.append(h)
        return self._drop(self.conv(h), fold(rng, 3)), acts


class Transition(nnx.Module):
    """BN-act-conv1x1(floor(theta m))-(dropout)-avgpool 2x2/2."""

    def __init__(self, in_features: int, out_features: int, opts: LayerOptions, *,
                 rngs: nnx.Rngs):
        self.pre = BNAct(in_features, opts, rngs=rngs)
        self.conv = make_conv(in_features, out_features, 1, 1, opts, rngs)
        self.dropout = _dropout(opts.block_dropout)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        h = self.pre(x, fold(rng, 0))
        y = self.conv(h)
        if self.dropout is not None:
            y = self.dropout(y, rngs=fold(rng, 1))
        return pool(y, "avg", 2, 2), h


def _call_layer(layer: DenseLayer, x: jax.Array, rng: jax.Array | None):
    return layer(x, rng)


class DenseStage(nnx.Module):
    """A dense block of ``n`` layers, then (except after the last block) a transition."""

    def __init__(self, in_features: int, n: int, k: int, bottleneck: bool,
                 out_features: int | None, opts: LayerOptions, *, rngs: nnx.Rngs):
        self.num_blocks = n
        self.repeated = None  # dense layers differ in width: nothing to scan
        self.remat = opts.remat_blocks
        self.layers = nnx.List([DenseLayer(in_features + i * k, k, bottleneck, opts, rngs=rngs)
                                for i in range(n)])
        block_out = in_features + n * k
        self.transition = (Transition(block_out, out_features, opts, rngs=rngs)
                           if out_features is not None else None)
        self.out_features = block_out if out_features is None else out_features

    def __call__(self, x: jax.Array, rng: jax.Array | None = None, *, collect: bool = True):
        call = nnx.remat(_call_layer) if self.remat else _call_layer
        features, outputs, activations = [x], [], []
        for i, layer in enumerate(self.layers):
            new, acts = call(layer, jnp.concatenate(features, -1) if i else x, fold(rng, i))
            features.append(new)
            if collect:
                outputs.append(new)
                activations += acts
        x = jnp.concatenate(features, -1)
        if self.transition is not None:
            x, h = self.transition(x, fold(rng, len(self.layers)))
            activations += [h] if collect else []
        return x, outputs, list(outputs), activations


class DenseNetStem(nnx.Module):
    """CIFAR: a bare 3x3 conv (the first layer normalises); ImageNet: 7x7/2 conv-BN-act, pool."""

    def __init__(self, spec: DenseNetSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        imagenet = spec.stem == "imagenet"
        k = 7 if imagenet else 3
        self.conv = make_conv(spec.in_channels, spec.init_features, k, 2 if imagenet else 1,
                              opts, rngs)
        self.bn = make_bn(spec.init_features, opts, rngs) if imagenet else None
        self.act = opts.activation_module(spec.init_features) if imagenet else None

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        x = self.conv(x)
        if self.bn is None:
            return x
        return pool(self.act(self.bn(x), rng), "max", 3, 2, pad=1)


class DenseNet(Network):
    """Stem, dense blocks with transitions, BN-act, global average pool, (dropout), linear."""

    def __init__(self, spec: DenseNetSpec, opts: LayerOptions, *, rngs: nnx.Rngs,
                 head_dropout: float = 0.0):
        spec.validate()
        self.spec = spec
        self.dtype = opts.dtype
        self.stem = DenseNetStem(spec, opts, rngs=rngs)
        features, stages = spec.init_features, []
        for i, n in enumerate(spec.stage_sizes):
            block_out = features + n * spec.growth_rate
            last = i == len(spec.stage_sizes) - 1
            out = None if last else int(math.floor(spec.compression * block_out))
            stages.append(DenseStage(features, n, spec.growth_rate, spec.bottleneck, out, opts,
                                     rngs=rngs))
            features = stages[-1].out_features
        self.stages = nnx.List(stages)
        self.final = BNAct(features, opts, rngs=rngs)
        self.dropout = nnx.Dropout(head_dropout) if head_dropout > 0 else None
        self.head = nnx.Linear(features, spec.num_classes, kernel_init=opts.head_init(),
                               dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.num_features = features
