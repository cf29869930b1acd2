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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from models.activations import ACTIVATIONS, RECTIFIERS
from models.layers import INIT_MODES, INITS, LayerOptions
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

FAMILIES = ("cifar", "imagenet", "wrn")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# He et al. (2016)'s CIFAR bottleneck nets (ResNet-164, ResNet-1001): bottleneck by default.
CIFAR_BOTTLENECK_DEPTHS = (164, 1001)

__all__ = [
    "ACTIVATIONS",
    "FAMILIES",
    "IMAGENET_STAGES",
    "RECTIFIERS",
    "SHORTCUT_OPTIONS",
    "NetworkSpec",
    "ResNet",
    "build_model",
    "default_shortcut",
    "layer_options_from_config",
    "spec_from_config",
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


def spec_from_config(cfg: Mapping[str, Any] | Any) -> NetworkSpec:
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


def validate_config(cfg: Mapping[str, Any] | Any) -> None:
    """Every check ``build_model`` makes, without building anything (one-line ValueError)."""
    check_regularisers(spec_from_config(cfg), survival_last_from_config(cfg),
                       head_dropout_from_config(cfg))
    layer_options_from_config(cfg)


def build_model(
    cfg: Mapping[str, Any] | Any, *, seed: int = 0, bn_axis_name: str | None = None
) -> ResNet:
    """Builds the network described by ``config.model``; bad values raise a one-line ValueError.

    ``bn_axis_name`` is the mesh axis over which BatchNorm averages its
    statistics when the model runs inside ``jax.shard_map`` (``None``: each
    device normalises with its own batch, as in the paper's multi-GPU runs).
    """
    spec = spec_from_config(cfg)
    opts = layer_options_from_config(cfg, bn_axis_name)
    return ResNet(spec, opts, rngs=nnx.Rngs(seed), survival_last=survival_last_from_config(cfg),
                  head_dropout=head_dropout_from_config(cfg))
