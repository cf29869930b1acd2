"""The plain nets that came before ResNet: AlexNet, VGG and Network in Network.

- AlexNet (Krizhevsky et al. 2012): 11x11/4, 5x5, 3x3 x3 convs, overlapping 3x3/2 max-pools,
  local response normalisation after the first two, two 4096-wide dropout layers. The paper's
  net (``layout='paper'``) has 96/256/384/384/256 filters with conv2, 4 and 5 split in two
  groups (its two GPUs): 60,965,224 parameters. ``layout='torchvision'`` is torchvision's
  single-tower 64/192/384/256/256 without LRN ("One weird trick", 61,100,840).
- VGG (Simonyan & Zisserman 2015): configurations A/B/D/E = VGG-11/13/16/19, 3x3 convs in
  five stages of 64-512 filters, each ending in a 2x2 max-pool, then 4096-4096 dropout
  layers. ``bn=True`` is torchvision's VGG-BN (BatchNorm after each conv, the conv keeping
  its bias). The classifier sees a 7x7 average-pooled map, as torchvision's.
- NiN (Lin et al. 2014), CIFAR: three "mlpconv" layers (a 5x5/5x5/3x3 conv followed by two
  1x1 convs, ReLU after each), max-/average-pool 3x3/2 and dropout 0.5 between them, the last
  1x1 conv giving one map per class, global average pooling instead of fully connected layers.

Conv layers have biases and no BatchNorm, as published; ``model.bn=True`` adds BatchNorm after
every conv (bias-free convs, except VGG-BN's). ``model.width_scale`` multiplies every conv
width of these families (and of GoogLeNet and SqueezeNet): thin versions for CPU runs. The
classifiers' dropout (0.5) is part of the published nets. ``ClassicSpec`` also describes
GoogLeNet and SqueezeNet (``models.inception``, ``models.squeezenet``).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from models.layers import LayerOptions, fold
from models.network import ConvUnit, FamilySpec, Network
from models.pooling import adaptive_avg_pool, local_response_norm, pool

VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
              19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)
ALEXNET_WIDTHS = {"paper": (96, 256, 384, 384, 256), "torchvision": (64, 192, 384, 256, 256)}
LAYOUTS = ("paper", "torchvision")
FC_WIDTH = 4096
CLASSIFIER_DROPOUT = 0.5
# AlexNet's LRN (size, alpha, beta, k), paper Sec. 3.3.
ALEXNET_LRN = (5, 1e-4, 0.75, 2.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassicSpec(FamilySpec):
    """AlexNet, VGG, NiN, GoogLeNet or SqueezeNet."""

    bn: bool = False
    layout: str = "paper"
    widths: tuple[int, ...] = ()
    fc_width: int = FC_WIDTH
    version: str = ""  # SqueezeNet's 1.0 or 1.1
    aux_heads: bool = False  # GoogLeNet's auxiliary classifiers
    width_scale: float = 1.0  # every conv width times this (thin nets for CPU studies)

    def w(self, channels: int) -> int:
        """A published conv width, scaled by ``width_scale`` (at least 1)."""
        return max(1, round(channels * self.width_scale))

    @property
    def connectivity(self) -> str:
        return "inception" if self.family in ("googlenet", "squeezenet") else "plain"

    @property
    def default_bn(self) -> bool:
        """BatchNorm as published: torchvision's GoogLeNet only."""
        return self.family == "googlenet" and self.layout == "torchvision"

    @property
    def name(self) -> str:
        tv = "-torchvision" if self.layout == "torchvision" else ""
        bn = "" if self.bn == self.default_bn else "-bn" if self.bn else "-nobn"
        if self.family == "squeezenet":
            return f"squeezenet-{self.version}{bn}"
        if self.family == "vgg":
            return f"vgg-{self.depth}{bn}"
        return f"{self.family}{tv}{bn}"

    @property
    def label(self) -> str:
        base = {"alexnet": "AlexNet", "nin": "NiN", "googlenet": "GoogLeNet",
                "vgg": f"VGG-{self.depth}", "squeezenet": f"SqueezeNet {self.version}"}
        notes = [n for n, on in (("torchvision", self.layout == "torchvision"),
                                 ("BN" if self.bn else "no BN", self.bn != self.default_bn))
                 if on]
        return base[self.family] + (f" ({', '.join(notes)})" if notes else "")

    def validate(self) -> None:
        super().validate()
        if self.layout not in LAYOUTS:
            raise ValueError(f"model.layout must be one of {', '.join(LAYOUTS)}, "
                             f"got {self.layout!r}")
        if self.fc_width < 1:
            raise ValueError(f"model.fc_width must be >= 1, got {self.fc_width}")
        if not self.width_scale > 0:
            raise ValueError(f"model.width_scale must be positive, got {self.width_scale}")


def conv(out: int, k: int, stride: int = 1, pad: int | None = None, groups: int = 1) -> tuple:
    return ("conv", out, k, stride, (k - 1) // 2 if pad is None else pad, groups)


class ChainStage(nnx.Module):
    """Conv units in a chain, with the parameter-free layers between them.

    ``layers`` lists ``conv(out, k, stride, pad, groups)``, ``('pool', kind, k, s, ceil)``,
    ``('lrn', size, alpha, beta, k)`` and ``('dropout', rate)``. Each conv unit's output,
    pre-activation response and activation are handed back (``Network``'s stage protocol).
    """

    def __init__(self, layers: list[tuple], in_features: int, opts: LayerOptions, *,
                 rngs: nnx.Rngs, bn: bool, bias: bool | None = None):
        units, drops, ops = [], [], []
        for item in layers:
            if item[0] == "conv":
                _, out, k, stride, pad, groups = item
                units.append(ConvUnit(in_features, out, k, stride, opts, rngs=rngs, bn=bn,
                                      padding=pad, groups=groups, bias=bias))
                ops.append(("conv", len(units) - 1))
                in_features = out
            elif item[0] == "dropout":
                drops.append(nnx.Dropout(item[1]))
                ops.append(("dropout", len(drops) - 1))
            else:
                ops.append(tuple(item))
        self.units, self.drops, self.ops = nnx.List(units), nnx.List(drops), tuple(ops)
        self.out_features = in_features
        self.num_blocks = len(units)
        self.repeated = None
        self.remat = False

    def __call__(self, x: jax.Array, rng: jax.Array | None = None, *, collect: bool = True):
        outputs, responses = [], []
        for i, op in enumerate(self.ops):
            if op[0] == "conv":
                x, pre = self.units[op[1]](x, fold(rng, i))
                if collect:
                    outputs.append(x)
                    responses.append(pre)
            elif op[0] == "dropout":
                x = self.drops[op[1]](x, rngs=fold(rng, i))
            elif op[0] == "pool":
                x = pool(x, op[1], op[2], op[3], ceil=op[4])
            else:  # lrn
                x = local_response_norm(x, *op[1:])
        return x, outputs, responses, list(outputs)


class MLPClassifier(nnx.Module):
    """Average-pool to ``grid x grid``, flatten, then two fc-act-dropout layers (AlexNet, VGG)."""

    def __init__(self, in_features: int, grid: int, width: int, opts: LayerOptions, *,
                 rngs: nnx.Rngs):
        self.grid = grid
        kw = dict(kernel_init=opts.kernel_init(), dtype=opts.dtype,
                  param_dtype=opts.param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(in_features * grid * grid, width, **kw)
        self.act1 = opts.activation_module(width)
        self.drop1 = nnx.Dropout(CLASSIFIER_DROPOUT)
        self.fc2 = nnx.Linear(width, width, **kw)
        self.act2 = opts.activation_module(width)
        self.drop2 = nnx.Dropout(CLASSIFIER_DROPOUT)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        x = adaptive_avg_pool(x, self.grid).reshape(x.shape[0], -1)
        x = self.drop1(self.act1(self.fc1(x), fold(rng, 0)), rngs=fold(rng, 1))
        return self.drop2(self.act2(self.fc2(x), fold(rng, 2)), rngs=fold(rng, 3))


class Identity(nnx.Module):
    """A stem that does nothing (the first stage takes the image)."""

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        return x


def _linear_head(features: int, spec: ClassicSpec, opts: LayerOptions,
                 rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(features, spec.num_classes, kernel_init=opts.head_init(),
                      dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)


class VGG(Network):
    """Five stages of 3x3 conv units, each ending in a 2x2 max-pool; the 4096-4096 classifier."""

    def __init__(self, spec: ClassicSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        spec.validate()
        self.spec, self.dtype = spec, opts.dtype
        self.stem = Identity()
        stages, features = [], spec.in_channels
        for n, width in zip(VGG_DEPTHS[spec.depth], spec.widths, strict=True):
            layers = [conv(width, 3)] * n + [("pool", "max", 2, 2, False)]
            stages.append(ChainStage(layers, features, opts, rngs=rngs, bn=spec.bn, bias=True))
            features = width
        self.stages = nnx.List(stages)
        self.final = MLPClassifier(features, 7, spec.fc_width, opts, rngs=rngs)
        self.dropout = None
        self.head = _linear_head(spec.fc_width, spec, opts, rngs)
        self.num_features = spec.fc_width


class AlexNet(Network):
    """conv1-(LRN)-pool, conv2-(LRN)-pool, conv3-conv4-conv5-pool; the 4096-4096 classifier."""

    def __init__(self, spec: ClassicSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        spec.validate()
        self.spec, self.dtype = spec, opts.dtype
        self.stem = Identity()
        w = spec.widths
        paper = spec.layout == "paper"
        g = 2 if paper else 1
        lrn = [("lrn", *ALEXNET_LRN)] if paper else []
        max_pool = ("pool", "max", 3, 2, False)
        layout = [[conv(w[0], 11, 4, 2), *lrn, max_pool],
                  [conv(w[1], 5, groups=g), *lrn, max_pool],
                  [conv(w[2], 3), conv(w[3], 3, groups=g), conv(w[4], 3, groups=g), max_pool]]
        stages, features = [], spec.in_channels
        for layers in layout:
            stages.append(ChainStage(layers, features, opts, rngs=rngs, bn=spec.bn))
            features = stages[-1].out_features
        self.stages = nnx.List(stages)
        self.final = MLPClassifier(features, 6, spec.fc_width, opts, rngs=rngs)
        self.dropout = None
        self.head = _linear_head(spec.fc_width, spec, opts, rngs)
        self.num_features = spec.fc_width


class NiN(Network):
    """Three mlpconv layers; the last 1x1 conv (``head``) gives the class maps, then ReLU and
    global average pooling."""

    def __init__(self, spec: ClassicSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        spec.validate()
        self.spec, self.dtype = spec, opts.dtype
        self.stem = Identity()
        w = spec.w
        layout = [[conv(w(192), 5), conv(w(160), 1), conv(w(96), 1),
                   ("pool", "max", 3, 2, True), ("dropout", 0.5)],
                  [conv(w(192), 5), conv(w(192), 1), conv(w(192), 1),
                   ("pool", "avg", 3, 2, True), ("dropout", 0.5)],
                  [conv(w(192), 3), conv(w(192), 1)]]
        stages, features = [], spec.in_channels
        for layers in layout:
            stages.append(ChainStage(layers, features, opts, rngs=rngs, bn=spec.bn))
            features = stages[-1].out_features
        self.stages = nnx.List(stages)
        self.final = None
        self.dropout = None
        self.head = nnx.Conv(features, spec.num_classes, (1, 1), kernel_init=opts.head_init(),
                             dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.head_act = opts.activation_module(spec.num_classes)
        self.num_features = features


def classic_spec(family: str, depth: int, *, bn: bool | None = None, layout: str | None = None,
                 widths: tuple[int, ...] | None = None, fc_width: int | None = None,
                 width_scale: float = 1.0, **kw) -> ClassicSpec:
    """VGG-11/13/16/19, AlexNet (8) or NiN (9)."""
    depths = {"vgg": tuple(VGG_DEPTHS), "alexnet": (8,), "nin": (9,)}[family]
    if depth not in depths:
        raise ValueError(f"{family} depth must be one of {', '.join(map(str, depths))}, "
                         f"got {depth}")
    layout = layout or "paper"
    if family == "nin" and widths is not None:
        raise ValueError("model.widths is not available for NiN (its widths are the paper's)")
    if family == "nin" and fc_width is not None:
        raise ValueError("NiN has no fully connected layers; leave model.fc_width unset")
    default = VGG_WIDTHS if family == "vgg" else ALEXNET_WIDTHS.get(layout, ())
    widths = tuple(int(w) for w in widths) if widths else tuple(
        max(1, round(w * width_scale)) for w in default)
    if family != "nin" and (len(widths) != 5 or min(widths) < 1):
        raise ValueError(f"{family} widths must be 5 positive numbers (one per "
                         f"{'stage' if family == 'vgg' else 'conv'}), got {widths}")
    if family != "alexnet" and layout != "paper":
        raise ValueError(f"model.layout={layout!r}: {family}'s layout is torchvision's "
                         "already (leave it 'paper')")
    sizes = {"vgg": VGG_DEPTHS.get(depth), "alexnet": (1, 1, 3), "nin": (3, 3, 2)}[family]
    return ClassicSpec(family=family, depth=depth, stage_sizes=sizes, bn=bool(bn),
                       layout=layout, widths=widths, fc_width=int(fc_width or FC_WIDTH),
                       width_scale=width_scale, **kw)

