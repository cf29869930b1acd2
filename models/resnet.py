"""Plain and residual networks of He et al. (2015), CIFAR and ImageNet families.

One ``ResNet`` class covers both families: a stem, stages of blocks and a
global-average-pool + linear head. The families differ only in their
``NetworkSpec`` (stem, block type, blocks per stage, widths), built by
``cifar_spec`` and ``imagenet_spec`` from a depth.

- CIFAR (paper Sec. 4.2): depth 6n+2; 3x3 stem with 16 filters; three stages
  of n basic blocks with 16/32/64 filters; the first block of stages 2 and 3
  downsamples with a stride-2 conv.
- ImageNet (paper Table 1): 7x7/2 stem + 3x3/2 max-pool; basic blocks for
  18/34 and bottlenecks for 50/101/152.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.blocks import SHORTCUT_OPTIONS, BasicBlock, BottleneckBlock, ConvBN, LayerOptions

IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STEMS = ("cifar", "imagenet")
BOTTLENECK_STRIDES = ("first", "middle")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """Everything that defines a network's architecture, independent of its parameters."""

    family: str  # 'cifar' or 'imagenet'
    depth: int
    block: str  # 'basic' or 'bottleneck'
    stage_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    stem: str  # 'cifar' (3x3/1) or 'imagenet' (7x7/2 + max-pool)
    stem_width: int
    plain: bool = False
    shortcut: str = "A"
    num_classes: int = 10
    in_channels: int = 3
    bottleneck_stride: str = "first"

    @property
    def name(self) -> str:
        return f"{'plain' if self.plain else 'resnet'}-{self.depth}"

    def validate(self) -> None:
        if self.shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(
                f"unknown shortcut option {self.shortcut!r}; allowed: {', '.join(SHORTCUT_OPTIONS)}"
            )
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; allowed: {', '.join(STEMS)}")
        if self.bottleneck_stride not in BOTTLENECK_STRIDES:
            raise ValueError(
                f"unknown bottleneck_stride {self.bottleneck_stride!r}; allowed: "
                f"{', '.join(BOTTLENECK_STRIDES)}"
            )
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(
                f"widths {tuple(self.widths)} must have one entry per stage "
                f"({len(self.stage_sizes)} stages)"
            )
        if any(w < 1 for w in self.widths) or self.stem_width < 1:
            raise ValueError(f"widths must be positive, got {tuple(self.widths)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")


def cifar_spec(depth: int, *, widths: tuple[int, ...] = (16, 32, 64), **kw) -> NetworkSpec:
    """The paper's CIFAR network of depth 6n+2 (20, 32, 44, 56, 110, 1202, ...)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...), "
            f"got {depth}"
        )
    n = (depth - 2) // 6
    widths = tuple(widths)
    if len(widths) != 3:
        raise ValueError(f"CIFAR widths must have one entry per stage (3), got {widths}")
    return NetworkSpec(
        family="cifar",
        depth=depth,
        block="basic",
        stage_sizes=(n,) * len(widths),
        widths=widths,
        stem="cifar",
        stem_width=widths[0],
        **kw,
    )


def imagenet_spec(
    depth: int, *, widths: tuple[int, ...] = (64, 128, 256, 512), stem: str = "imagenet", **kw
) -> NetworkSpec:
    """The paper's ImageNet network (Table 1): 18, 34 (basic) or 50, 101, 152 (bottleneck)."""
    if depth not in IMAGENET_STAGES:
        raise ValueError(
            f"ImageNet depth must be one of {', '.join(map(str, IMAGENET_STAGES))}, got {depth}"
        )
    block, sizes = IMAGENET_STAGES[depth]
    return NetworkSpec(
        family="imagenet",
        depth=depth,
        block=block,
        stage_sizes=sizes,
        widths=tuple(widths),
        stem=stem,
        stem_width=widths[0],  # 64: the first stage's width (bottleneck inner width)
        **kw,
    )


class Stem(nnx.Module):
    """CIFAR: 3x3/1 conv-BN-ReLU. ImageNet: 7x7/2 conv-BN-ReLU then 3x3/2 max-pool."""

    def __init__(self, spec: NetworkSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        self.max_pool = spec.stem == "imagenet"
        k, s = (7, 2) if self.max_pool else (3, 1)
        self.unit = ConvBN(spec.in_channels, spec.stem_width, k, s, opts, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.unit(x))
        if self.max_pool:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


def make_block(
    spec: NetworkSpec, in_features: int, width: int, stride: int, opts: LayerOptions,
    rngs: nnx.Rngs,
) -> BasicBlock | BottleneckBlock:
    """One block of the network's type; plain nets get the same layers without shortcut."""
    if spec.block == "basic":
        return BasicBlock(in_features, width, stride, residual=not spec.plain,
                          shortcut=spec.shortcut, opts=opts, rngs=rngs)
    return BottleneckBlock(in_features, width, stride, residual=not spec.plain,
                           shortcut=spec.shortcut, opts=opts, rngs=rngs,
                           stride_on=spec.bottleneck_stride)


def _call_block(block: nnx.Module, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return block(x)


class Stage(nnx.Module):
    """A run of blocks at one resolution; the first one may downsample and widen.

    Every block after the first has the same shapes. With ``opts.scan_blocks``
    those are held stacked (a leading axis of ``num_blocks - 1`` on every
    parameter, in ``self.repeated``) and run by ``nnx.scan``: one compiled
    block body per stage whatever the depth (ResNet-1202's 200 blocks per
    stage compile like one). Otherwise all blocks are in ``self.blocks``.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        in_features: int,
        width: int,
        num_blocks: int,
        stride: int,
        opts: LayerOptions,
        *,
        rngs: nnx.Rngs,
    ):
        self.num_blocks = num_blocks
        self.remat = opts.remat_blocks
        first = make_block(spec, in_features, width, stride, opts, rngs)
        self.out_features = out = first.out_features
        if opts.scan_blocks and num_blocks > 1:

            @nnx.split_rngs(splits=num_blocks - 1)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_repeated(rngs: nnx.Rngs) -> nnx.Module:
                return make_block(spec, out, width, 1, opts, rngs)

            self.blocks = nnx.List([first])
            self.repeated = make_repeated(rngs)
        else:
            rest = [make_block(spec, out, width, 1, opts, rngs) for _ in range(num_blocks - 1)]
            self.blocks = nnx.List([first, *rest])
            self.repeated = None

    def __call__(
        self, x: jax.Array, *, collect: bool = True
    ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
        """Returns (output, each block's output, each block's branch response).

        ``collect=False`` leaves the two lists empty, so a scanned stage does
        not stack every block's output when nobody asks for them.
        """
        call = nnx.remat(_call_block) if self.remat else _call_block
        outputs, responses = [], []
        for block in self.blocks:
            x, response = call(block, x)
            if collect:
                outputs.append(x)
                responses.append(response)
        if self.repeated is not None:

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
            def run(x: jax.Array, block: nnx.Module):
                y, response = call(block, x)
                return y, ((y, response) if collect else None)

            x, stacked = run(x, self.repeated)
            if collect:
                outputs += list(stacked[0])
                responses += list(stacked[1])
        return x, outputs, responses


class ResNet(nnx.Module):
    """Stem, stages and a global-average-pool + linear classifier.

    ``model(x)`` returns logits; ``model(x, return_features=True)`` returns
    ``(logits, features)`` where ``features['block_outputs']`` and
    ``features['branch_responses']`` list each block's output and its
    branch's response (after the last BN, before the addition), the data of
    the paper's Fig. 7.
    """

    def __init__(self, spec: NetworkSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        spec.validate()
        self.spec = spec
        self.dtype = opts.dtype
        self.stem = Stem(spec, opts, rngs=rngs)
        stages, features = [], spec.stem_width
        for i, (size, width) in enumerate(zip(spec.stage_sizes, spec.widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = Stage(spec, features, width, size, stride, opts, rngs=rngs)
            stages.append(stage)
            features = stage.out_features
        self.stages = nnx.List(stages)
        self.head = nnx.Linear(
            features,
            spec.num_classes,
            dtype=opts.dtype,
            param_dtype=opts.param_dtype,
            rngs=rngs,
        )
        self.num_features = features

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        x = self.stem(x.astype(self.dtype))
        outputs, responses = [], []
        for stage in self.stages:
            x, outs, resps = stage(x, collect=return_features)
            outputs += outs
            responses += resps
        pooled = jnp.mean(x, axis=(1, 2))
        logits = self.head(pooled).astype(jnp.float32)
        if return_features:
            return logits, {"block_outputs": outputs, "branch_responses": responses}
        return logits
