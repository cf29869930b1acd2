"""The architecture of a network, independent of its parameters: ``NetworkSpec``.

A spec says the family, depth, block type, blocks per stage, widths, stem,
shortcut option and layer order; ``cifar_spec``, ``imagenet_spec`` and
``wrn_spec`` build it from a depth and check that the depth exists in the
family (6n+2 / 9n+2, 18-152, 6n+4). ``NetworkSpec.name`` is the network's
name in the grammar the configs parse (``resnet-56``, ``preact-164``,
``wrn-28-10``), ``label`` its display form.
"""

from __future__ import annotations

import dataclasses

from models.shortcuts import SHORTCUT_OPTIONS

IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STEMS = ("cifar", "imagenet")
BLOCKS = ("basic", "bottleneck")
BOTTLENECK_STRIDES = ("first", "middle")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """Everything that defines a network's architecture, independent of its parameters."""

    family: str  # 'cifar', 'imagenet' or 'wrn'
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
    preact: bool = False
    width_factor: int = 1  # Wide ResNets' k (name only; widths already include it)
    # ResNeXt (family 'resnext'): groups of the 3x3 conv and their width in the first stage
    # (C and d of "CxDd"); the inner width doubles with the stage as the widths do.
    cardinality: int = 1
    group_width: int = 0

    @property
    def connectivity(self) -> str:
        """'plain' (no shortcuts) or 'residual'."""
        return "plain" if self.plain else "residual"

    @property
    def name(self) -> str:
        """The network's name, in the grammar ``configs.network_arg.apply_network_name`` parses.

        ``plain-20``, ``resnet-56``, ``preact-164``, ``plain-preact-110``, ``wrn-28-10``.
        """
        plain = "plain-" if self.plain else ""
        if self.family == "resnext":
            return f"{plain}resnext-{self.depth}-{self.cardinality}x{self.group_width}d"
        if self.family == "wrn":
            return f"{plain}wrn-{self.depth}-{self.width_factor}"
        if self.preact:
            return f"{plain}preact-{self.depth}"
        return f"plain-{self.depth}" if self.plain else f"resnet-{self.depth}"

    @property
    def label(self) -> str:
        """The network's display label (figures, tables): ``ResNet-56``, ``plain-20``,
        ``pre-act ResNet-164``, ``pre-act plain-110``, ``WRN-28-10``, ``plain WRN-16-2``,
        ``ResNeXt-29 (8x64d)``."""
        if self.family == "resnext":
            return (f"{'plain ' if self.plain else ''}ResNeXt-{self.depth} "
                    f"({self.cardinality}x{self.group_width}d)")
        if self.family == "wrn":
            return f"{'plain ' if self.plain else ''}WRN-{self.depth}-{self.width_factor}"
        kind = f"plain-{self.depth}" if self.plain else f"ResNet-{self.depth}"
        return f"pre-act {kind}" if self.preact else kind

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_sizes)

    def validate(self) -> None:
        if self.shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(
                f"unknown shortcut option {self.shortcut!r}; allowed: {', '.join(SHORTCUT_OPTIONS)}"
            )
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; allowed: {', '.join(STEMS)}")
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; allowed: {', '.join(BLOCKS)}")
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


def cifar_spec(depth: int, *, block: str = "basic", widths: tuple[int, ...] = (16, 32, 64),
               **kw) -> NetworkSpec:
    """The paper's CIFAR network: depth 6n+2 with basic blocks, 9n+2 with bottlenecks."""
    per_block = {"basic": 2, "bottleneck": 3}
    if block not in per_block:
        raise ValueError(f"unknown block {block!r}; allowed: {', '.join(BLOCKS)}")
    k = 3 * per_block[block]
    if not isinstance(depth, int) or depth < k + 2 or (depth - 2) % k:
        examples = ("8, 14, 20, 32, 44, 56, 110, 1202" if block == "basic"
                    else "11, 29, 47, 164, 1001")
        raise ValueError(
            f"CIFAR depth with {block} blocks must be {k}n+2 with n >= 1 ({examples}, ...), "
            f"got {depth}"
        )
    widths = tuple(widths)
    if len(widths) != 3:
        raise ValueError(f"CIFAR widths must have one entry per stage (3), got {widths}")
    return NetworkSpec(
        family="cifar",
        depth=depth,
        block=block,
        stage_sizes=((depth - 2) // k,) * 3,
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


def wrn_spec(depth: int, width_factor: int, **kw) -> NetworkSpec:
    """WRN-depth-k (Zagoruyko & Komodakis 2016): 6n+4 layers, 16k/32k/64k, pre-activation."""
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 28, 40, ...), got {depth}")
    if not isinstance(width_factor, int) or width_factor < 1:
        raise ValueError(f"WRN width factor k must be a positive integer, got {width_factor}")
    kw["preact"] = True
    return NetworkSpec(
        family="wrn",
        depth=depth,
        block="basic",
        stage_sizes=((depth - 4) // 6,) * 3,
        widths=(16 * width_factor, 32 * width_factor, 64 * width_factor),
        stem="cifar",
        stem_width=16,
        width_factor=width_factor,
        **kw,
    )


def check_regularisers(spec: NetworkSpec, survival_last: float, head_dropout: float) -> None:
    """The stochastic-depth and head-dropout settings a ``ResNet`` of ``spec`` accepts."""
    if survival_last < 1.0 and spec.plain:
        raise ValueError("stochastic depth drops residual branches; a plain net has none "
                         "(set model.plain=False or model.survival_last=1.0)")
    if not 0.0 < survival_last <= 1.0:
        raise ValueError(f"model.survival_last must be in (0, 1], got {survival_last}")
    if not 0.0 <= head_dropout < 1.0:
        raise ValueError(f"model.head_dropout must be in [0, 1), got {head_dropout}")
