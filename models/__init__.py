"""Model zoo: plain and residual networks (He et al. 2015) and their follow-ups, in Flax NNX.

Configs build models through one stable entry point, ``build_model``, which
takes the ``config.model`` section:

    family           'cifar' (6n+2 basic / 9n+2 bottleneck) | 'imagenet' (18/34/50/101/152)
                     | 'wrn' (Wide ResNet, 6n+4, pre-activation)
    depth            int
    plain            bool, True = no shortcuts at all
    block            'basic' | 'bottleneck' | None (CIFAR family only; None = basic, except
                     depths 164 and 1001, He et al. 2016's bottleneck nets)
    preact           bool, pre-activation ordering (He et al. 2016); always on for 'wrn'
    width_factor     int, WRN's k (widths 16k/32k/64k)
    shortcut         'A' | 'B' | 'C' | None (None = the published choice: A for the CIFAR
                     basic-block nets and ImageNet 18/34, B for bottleneck nets and WRNs;
                     must be None for plain nets)
    num_classes      int
    in_channels      int (1 for the 8x8 digits, 3 for RGB)
    widths           tuple | None (None = family default)
    stem             'cifar' | 'imagenet' | None (None = the family's own; ImageNet nets
                     with the CIFAR stem run on 32x32 images)
    bottleneck_stride 'first' (paper) | 'middle' (torchvision v1.5)
    init             'he' (paper) | 'xavier' | 'small' (N(0, 0.01^2)) | 'zeros'
    init_mode        'fan_in' (paper / Caffe MSRAFiller) | 'fan_out' | 'fan_avg'
    activation       'relu' (paper) | 'leaky_relu' | 'prelu' | 'rrelu' | 'tanh' | 'sigmoid'
    activation_slope float, leaky_relu's negative slope
    stochastic_depth bool, drop residual branches at random in training (Huang et al. 2016)
    survival_last    float, the last block's survival probability (linear decay from 1)
    block_dropout    float, dropout between a basic block's convs (WRN: 0.3)
    head_dropout     float, dropout before the classifier
    zero_init_residual bool (not in the paper; zero the last BN scale of each branch)
    dtype, param_dtype 'float32' | 'bfloat16' | 'float16'
    bn_momentum      float, running-average momentum (new = m * old + (1 - m) * batch)
    scan_blocks      bool, run each stage's identical blocks with one compiled body
                     (nnx.scan): compile time independent of depth (ResNet-1202)
    scan_unroll      'auto' | 'full' | int, blocks per scan iteration; 'full' runs each
                     stage as straight-line code (same stacked parameters); 'auto': see
                     models.resnet.resolve_scan_unroll
    remat_blocks     bool, recompute each block's activations in the backward pass
                     (DenseNet: each dense layer's)

The families beyond the ResNets (``models.families``; each module's docstring has the
paper): 'resnext' (CIFAR 9n+2, ImageNet 50/101/152), 'densenet' (CIFAR 3n+4 / BC 6n+4,
ImageNet 121/169/201/264/161), 'fractal' (B * 2^(C-1)), 'vgg' (11/13/16/19), 'alexnet' (8),
'nin' (9, CIFAR), 'googlenet' (22), 'squeezenet' (18). Their keys:

    cardinality, group_width  ResNeXt's C and d (None: 8x64d for CIFAR, 32x4d for ImageNet)
    growth_rate      DenseNet's k (None: 12 CIFAR, 32 ImageNet, 48 for DenseNet-161)
    compression      DenseNet's theta (None: 0.5 with bottlenecks, block='bottleneck', else 1)
    columns          FractalNet's C (None: from the depth and the number of widths)
    drop_path, global_drop_path  FractalNet's local drop probability and global fraction
    bn               BatchNorm in AlexNet, VGG, NiN, GoogLeNet, SqueezeNet (None: published)
    layout           'paper' | 'torchvision' (AlexNet, GoogLeNet)
    version          SqueezeNet's '1.0' | '1.1'
    aux_heads        GoogLeNet's auxiliary classifiers (weight 0.3 in training)
    fc_width         VGG's and AlexNet's fully connected width (None: 4096)

A key set for a family it does not apply to is a one-line error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.activations import ACTIVATIONS, RECTIFIERS
from models.families import NEW_FAMILIES, build_new_family, new_family_spec
from models.families import check_regularisers as check_family_regularisers
from models.layers import INIT_MODES, INITS, LayerOptions
from models.network import FamilySpec
from models.resnet import ResNet
from models.shortcuts import SHORTCUT_OPTIONS
from models.specs import (
    BLOCKS,
    IMAGENET_STAGES,
    NetworkSpec,
    check_regularisers,
    cifar_spec,
    imagenet_spec,
    wrn_spec,
)

FAMILIES = ("cifar", "imagenet", "wrn", *NEW_FAMILIES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# He et al. (2016)'s CIFAR bottleneck nets (ResNet-164, ResNet-1001): bottleneck by default.
CIFAR_BOTTLENECK_DEPTHS = (164, 1001)

__all__ = [
    "ACTIVATIONS",
    "FAMILIES",
    "FamilySpec",
    "IMAGENET_STAGES",
    "RECTIFIERS",
    "SHORTCUT_OPTIONS",
    "NetworkSpec",
    "ResNet",
    "abstract_model",
    "build_model",
    "default_shortcut",
    "layer_options_from_config",
    "spec_from_config",
    "training_logits",
    "validate_config",
]


def default_shortcut(family: str, depth: int, block: str = "basic") -> str:
    """The published choice: A for the basic-block CIFAR and ImageNet nets, B otherwise."""
    if family == "wrn" or block == "bottleneck" or (family == "imagenet" and depth >= 50):
        return "B"
    return "A"


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _dtype(name: str, key: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"model.{key} must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _choice(value: Any, allowed: tuple, key: str) -> Any:
    if value not in allowed:
        raise ValueError(f"model.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _cifar_block(cfg: Mapping[str, Any] | Any, depth: Any) -> str:
    block = _get(cfg, "block")
    if block is None:
        return "bottleneck" if depth in CIFAR_BOTTLENECK_DEPTHS else "basic"
    return _choice(block, BLOCKS, "block")


def spec_from_config(cfg: Mapping[str, Any] | Any) -> NetworkSpec | FamilySpec:
    """Validates ``config.model`` and returns the network's architecture spec."""
    family = _get(cfg, "family", "cifar")
    if family not in FAMILIES:
        raise ValueError(f"unknown model.family {family!r}; allowed: {', '.join(FAMILIES)}")
    depth = _get(cfg, "depth")
    if depth is None:
        raise ValueError("model.depth is required")
    plain = bool(_get(cfg, "plain", False))
    shortcut = cfg.get("shortcut") if hasattr(cfg, "get") else getattr(cfg, "shortcut", None)
    if plain and shortcut is not None:
        raise ValueError(
            f"model.shortcut={shortcut!r} given for a plain net, which has no shortcuts; "
            "leave it unset (None) or set model.plain=False"
        )
    if family in NEW_FAMILIES:
        spec = new_family_spec(family, depth, cfg, lambda key, default=None: _get(cfg, key,
                                                                                 default))
        spec.validate()
        return spec
    block = _cifar_block(cfg, depth) if family == "cifar" else _get(cfg, "block")
    if family == "imagenet" and block is not None and block != IMAGENET_STAGES.get(depth,
                                                                                   (block,))[0]:
        raise ValueError(f"ImageNet-{depth} is built from {IMAGENET_STAGES[depth][0]} blocks; "
                         f"model.block={block!r} contradicts it (leave it unset)")
    if family == "wrn" and block not in (None, "basic"):
        raise ValueError(f"Wide ResNets use basic blocks; model.block={block!r} is not available")
    if shortcut is None:
        depth_int = depth if isinstance(depth, int) else 0
        block_of = block or IMAGENET_STAGES.get(depth_int, ("basic",))[0]
        shortcut = default_shortcut(family, depth_int, block_of)
    preact = bool(_get(cfg, "preact", False))
    kw = dict(
        plain=plain,
        shortcut=shortcut,
        num_classes=int(_get(cfg, "num_classes", 10)),
        in_channels=int(_get(cfg, "in_channels", 3)),
        bottleneck_stride=_get(cfg, "bottleneck_stride", "first"),
    )
    widths = _get(cfg, "widths")
    width_factor = int(_get(cfg, "width_factor", 1))
    if family != "wrn" and width_factor != 1:
        raise ValueError(f"model.width_factor={width_factor} is for family 'wrn' (WRN-d-k); "
                         "use model.widths to widen other families")
    if widths is not None:
        if family == "wrn":
            raise ValueError("model.widths is not available for WRNs; set model.width_factor")
        kw["widths"] = tuple(int(w) for w in widths)
    if family == "cifar":
        stem = _get(cfg, "stem", "cifar")
        if stem != "cifar":
            raise ValueError(f"model.stem={stem!r} is not available for the CIFAR family")
        spec = cifar_spec(depth, block=block, preact=preact, **kw)
    elif family == "wrn":
        if _get(cfg, "stem", "cifar") != "cifar":
            raise ValueError("Wide ResNets have the CIFAR stem only")
        spec = wrn_spec(depth, width_factor, **kw)
    else:
        spec = imagenet_spec(depth, stem=_get(cfg, "stem", "imagenet"), preact=preact, **kw)
    spec.validate()
    return spec


def layer_options_from_config(
    cfg: Mapping[str, Any] | Any, bn_axis_name: str | None = None
) -> LayerOptions:
    """Dtype, initialisation, activation, dropout and BatchNorm options from ``config.model``."""
    momentum = float(_get(cfg, "bn_momentum", 0.9))
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"model.bn_momentum must be in [0, 1), got {momentum}")
    block_dropout = float(_get(cfg, "block_dropout", 0.0))
    if not 0.0 <= block_dropout < 1.0:
        raise ValueError(f"model.block_dropout must be in [0, 1), got {block_dropout}")
    return LayerOptions(
        dtype=_dtype(_get(cfg, "dtype", "float32"), "dtype"),
        param_dtype=_dtype(_get(cfg, "param_dtype", "float32"), "param_dtype"),
        init=_choice(_get(cfg, "init", "he"), INITS, "init"),
        init_mode=_choice(_get(cfg, "init_mode", "fan_in"), INIT_MODES, "init_mode"),
        activation=_choice(_get(cfg, "activation", "relu"), ACTIVATIONS, "activation"),
        activation_slope=float(_get(cfg, "activation_slope", 0.01)),
        bn_momentum=momentum,
        bn_axis_name=bn_axis_name,
        zero_init_residual=bool(_get(cfg, "zero_init_residual", False)),
        block_dropout=block_dropout,
        scan_blocks=bool(_get(cfg, "scan_blocks", False)),
        scan_unroll=scan_unroll_from_config(cfg),
        remat_blocks=bool(_get(cfg, "remat_blocks", False)),
    )


def scan_unroll_from_config(cfg: Mapping[str, Any] | Any) -> str | int | bool:
    """``model.scan_unroll``, checked: 'auto', True ('full': a whole stage) or an int >= 1."""
    value = str(_get(cfg, "scan_unroll", "auto")).strip().lower()
    if value == "auto":
        return "auto"
    if value == "full":
        return True
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"model.scan_unroll must be 'auto', 'full' or an int >= 1, got {value!r}")


def survival_last_from_config(cfg: Mapping[str, Any] | Any) -> float:
    """The last block's survival probability; 1.0 when stochastic depth is off."""
    if not bool(_get(cfg, "stochastic_depth", False)):
        return 1.0
    if bool(_get(cfg, "plain", False)):
        raise ValueError("model.stochastic_depth drops residual branches; a plain net has none")
    return float(_get(cfg, "survival_last", 0.5))


def head_dropout_from_config(cfg: Mapping[str, Any] | Any) -> float:
    return float(_get(cfg, "head_dropout", 0.0))


def training_logits(model: nnx.Module, x: jax.Array, rng: jax.Array | None
                    ) -> list[tuple[float, jax.Array]]:
    """(loss weight, logits) of every classifier a training step trains: the network's own
    first, then its auxiliary heads if it has any (GoogLeNet's, weight 0.3 each)."""
    fn = getattr(model, "training_logits", None)
    return fn(x, rng) if fn is not None else [(1.0, model(x, rng=rng))]


def validate_config(cfg: Mapping[str, Any] | Any) -> None:
    """Every check ``build_model`` makes, without building anything (one-line ValueError)."""
    spec = spec_from_config(cfg)
    if isinstance(spec, FamilySpec):
        check_family_regularisers(spec, lambda key, default=None: _get(cfg, key, default))
    else:
        check_regularisers(spec, survival_last_from_config(cfg), head_dropout_from_config(cfg))
    layer_options_from_config(cfg)


def build_model(
    cfg: Mapping[str, Any] | Any, *, seed: int = 0, bn_axis_name: str | None = None,
    rngs: nnx.Rngs | None = None,
) -> nnx.Module:
    """Builds the network described by ``config.model``; bad values raise a one-line ValueError.

    ``bn_axis_name`` is the mesh axis over which BatchNorm averages its
    statistics when the model runs inside ``jax.shard_map`` (``None``: each
    device normalises with its own batch, as in the paper's multi-GPU runs).
    """
    spec = spec_from_config(cfg)
    opts = layer_options_from_config(cfg, bn_axis_name)
    rngs = nnx.Rngs(seed) if rngs is None else rngs
    if isinstance(spec, FamilySpec):
        return build_new_family(spec, opts, rngs,
                                lambda key, default=None: _get(cfg, key, default))
    return ResNet(spec, opts, rngs=rngs, survival_last=survival_last_from_config(cfg),
                  head_dropout=head_dropout_from_config(cfg))


class KeySequence:
    """Stands in for ``nnx.Rngs`` when building a network inside a trace (``abstract_model``):
    the i-th key asked for, of any stream, is ``fold_in(key(seed), i)``, counted in Python.
    NNX's counters, advanced inside a trace, make each new layer's trace step scan the whole
    program so far (quadratic in depth: DenseNet-201's shapes took 10 s, 2 s with these)."""

    def __init__(self, seed: int = 0):
        self.seed, self.count = seed, 0

    def __call__(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(jax.random.key(self.seed), self.count - 1)

    def __getattr__(self, stream: str) -> KeySequence:
        if stream.startswith("__"):
            raise AttributeError(stream)
        return self


def abstract_model(cfg: Mapping[str, Any] | Any) -> nnx.Module:
    """The network of ``config.model`` with shapes and no values (``nnx.eval_shape``): the
    parameter count and the traced multiply-adds of VGG's 138M parameters at no cost."""
    scanned = bool(_get(cfg, "scan_blocks", False))  # nnx.split_rngs needs real Rngs
    return nnx.eval_shape(lambda: build_model(cfg, rngs=None if scanned else KeySequence()))
