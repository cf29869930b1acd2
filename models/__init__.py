"""Model zoo: plain and residual networks of He et al. (2015) in Flax NNX.

Configs build models through one stable entry point, ``build_model``, which
takes the ``config.model`` section:

    family           'cifar' (6n+2 layers) | 'imagenet' (18/34/50/101/152)
    depth            int
    plain            bool, True = no shortcuts at all
    shortcut         'A' | 'B' | 'C' | None (None = the paper's default: A for
                     CIFAR and ImageNet 18/34, B for 50/101/152; must be None
                     for plain nets)
    num_classes      int
    in_channels      int (1 for the 8x8 digits, 3 for RGB)
    widths           tuple | None (None = family default)
    stem             'cifar' | 'imagenet' | None (None = the family's own)
    bottleneck_stride 'first' (paper) | 'middle' (torchvision v1.5)
    init_mode        'fan_in' (paper / Caffe MSRAFiller) | 'fan_out'
    zero_init_residual bool (not in the paper; zero the last BN scale of each branch)
    dtype, param_dtype 'float32' | 'bfloat16' | 'float16'
    bn_momentum      float, running-average momentum (new = m * old + (1 - m) * batch)
    scan_blocks      bool, run each stage's identical blocks with one compiled body
                     (nnx.scan): compile time independent of depth (ResNet-1202)
    remat_blocks     bool, recompute each block's activations in the backward pass
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from models.blocks import SHORTCUT_OPTIONS, LayerOptions
from models.resnet import IMAGENET_STAGES, NetworkSpec, ResNet, cifar_spec, imagenet_spec

FAMILIES = ("cifar", "imagenet")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
INIT_MODES = ("fan_in", "fan_out")

__all__ = [
    "FAMILIES",
    "IMAGENET_STAGES",
    "SHORTCUT_OPTIONS",
    "NetworkSpec",
    "ResNet",
    "build_model",
    "default_shortcut",
    "spec_from_config",
]


def default_shortcut(family: str, depth: int) -> str:
    """The paper's choice: option A for CIFAR and ImageNet 18/34, B for the bottleneck nets."""
    if family == "imagenet" and depth >= 50:
        return "B"
    return "A"


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _dtype(name: str, key: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"model.{key} must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


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
    if shortcut is None:
        shortcut = default_shortcut(family, depth if isinstance(depth, int) else 0)
    kw = dict(
        plain=plain,
        shortcut=shortcut,
        num_classes=int(_get(cfg, "num_classes", 10)),
        in_channels=int(_get(cfg, "in_channels", 3)),
        bottleneck_stride=_get(cfg, "bottleneck_stride", "first"),
    )
    widths = _get(cfg, "widths")
    if widths is not None:
        kw["widths"] = tuple(int(w) for w in widths)
    if family == "cifar":
        stem = _get(cfg, "stem", "cifar")
        if stem != "cifar":
            raise ValueError(f"model.stem={stem!r} is not available for the CIFAR family")
        spec = cifar_spec(depth, **kw)
    else:
        spec = imagenet_spec(depth, stem=_get(cfg, "stem", "imagenet"), **kw)
    spec.validate()
    return spec


def layer_options_from_config(
    cfg: Mapping[str, Any] | Any, bn_axis_name: str | None = None
) -> LayerOptions:
    """Dtype, initialisation and BatchNorm options from ``config.model``."""
    init_mode = _get(cfg, "init_mode", "fan_in")
    if init_mode not in INIT_MODES:
        allowed = ", ".join(INIT_MODES)
        raise ValueError(f"model.init_mode must be one of {allowed}, got {init_mode!r}")
    momentum = float(_get(cfg, "bn_momentum", 0.9))
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"model.bn_momentum must be in [0, 1), got {momentum}")
    return LayerOptions(
        dtype=_dtype(_get(cfg, "dtype", "float32"), "dtype"),
        param_dtype=_dtype(_get(cfg, "param_dtype", "float32"), "param_dtype"),
        init_mode=init_mode,
        bn_momentum=momentum,
        bn_axis_name=bn_axis_name,
        zero_init_residual=bool(_get(cfg, "zero_init_residual", False)),
        scan_blocks=bool(_get(cfg, "scan_blocks", False)),
        remat_blocks=bool(_get(cfg, "remat_blocks", False)),
    )


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
    return ResNet(spec, opts, rngs=nnx.Rngs(seed))
