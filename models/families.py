"""``config.model`` for the families beyond the ResNets: their specs, their knobs, their modules.

ResNeXt, DenseNet, FractalNet, VGG, AlexNet, NiN, GoogLeNet and SqueezeNet each read the
keys that mean something for them; a key set for a family it does not apply to is a one-line
error saying why (``KNOBS``). The ResNet families (cifar, imagenet, wrn) stay in
``models/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from models.classic import VGG, AlexNet, ClassicSpec, NiN, classic_spec
from models.densenet import IMAGENET_DENSENETS, DenseNet, densenet_spec
from models.fractal import FractalNet, fractal_spec
from models.inception import GoogLeNet
from models.layers import LayerOptions
from models.network import FamilySpec
from models.resnext import RESNEXT_IMAGENET_DEPTHS, resnext_spec
from models.specs import NetworkSpec
from models.squeezenet import SqueezeNet, squeezenet_spec

CLASSIC = ("vgg", "alexnet", "nin", "googlenet", "squeezenet")
NEW_FAMILIES = ("resnext", "densenet", "fractal", *CLASSIC)
# The published input of each family's default layout (python -m models, the tests).
IMAGENET_INPUT = ("vgg", "alexnet", "googlenet", "squeezenet")

# key: (the families it applies to, its unset value(s), why it does not apply elsewhere).
KNOBS: dict[str, tuple[tuple[str, ...], tuple, str]] = {
    "growth_rate": (("densenet",), (None,), "is DenseNet's k"),
    "compression": (("densenet",), (None,), "is DenseNet's transition compression"),
    "cardinality": (("resnext",), (None,), "is ResNeXt's number of groups"),
    "group_width": (("resnext",), (None,), "is ResNeXt's width of a group"),
    "columns": (("fractal",), (None,), "is FractalNet's C"),
    "drop_path": (("fractal",), (None, 0.0), "drops FractalNet's join inputs"),
    "global_drop_path": (("fractal",), (None, 0.0), "drops FractalNet's columns"),
    "bn": (CLASSIC, (None,), "switches BatchNorm in the pre-BatchNorm nets; this family "
                             "always has it"),
    "layout": (("alexnet", "googlenet"), (None, "paper"),
               "chooses torchvision's AlexNet or GoogLeNet; this family has one layout"),
    "version": (("squeezenet",), (None,), "is SqueezeNet's 1.0 or 1.1"),
    "aux_heads": (("googlenet",), (None, False), "adds GoogLeNet's auxiliary classifiers"),
    "fc_width": (("vgg", "alexnet"), (None,), "is the width of VGG's and AlexNet's "
                                              "fully connected layers"),
    "width_scale": (CLASSIC, (None, 1.0), "scales the pre-ResNet nets' conv widths "
                                          "(model.widths for the others)"),
    "preact": ((), (None, False), "is the pre-activation ordering of the ResNet families"),
    "plain": (("resnext",), (None, False), "removes shortcuts; this family has none"),
    "shortcut": (("resnext",), (None,), "is a shortcut option; this family has no shortcuts"),
    "stochastic_depth": (("resnext",), (None, False),
                         "drops residual branches; this family has none (FractalNet: "
                         "model.drop_path)"),
    "zero_init_residual": (("resnext",), (None, False), "zeroes residual branches; this "
                                                        "family has none"),
    "block_dropout": (("densenet", "fractal"), (None, 0.0),
                      "is dropout inside DenseNet layers and FractalNet blocks (basic blocks "
                      "for the ResNets); this family has its published dropout only"),
    "head_dropout": (("resnext", "densenet", "fractal"), (None, 0.0),
                     "would add dropout to a classifier that has its published dropout"),
    "widths": (("resnext", "fractal", "vgg", "alexnet"), (None,),
               "is not available for this family (DenseNet: model.growth_rate)"),
    "stem": (("resnext", "densenet"), (None,), "chooses the CIFAR or ImageNet stem of "
                                               "ResNeXt and DenseNet"),
    "width_factor": ((), (None, 1), "is WRN-d-k's k (model.widths widens other families)"),
}


def imagenet_input(family: str, depth: int, stem: str | None = None) -> bool:
    """Whether the family's net of this depth is an ImageNet one (224x224, 1000 classes)."""
    if stem == "cifar":
        return family == "imagenet"
    return (family in (*IMAGENET_INPUT, "imagenet")
            or (family == "resnext" and depth in RESNEXT_IMAGENET_DEPTHS)
            or (family == "densenet" and depth in IMAGENET_DENSENETS))


def _raw(cfg: Mapping[str, Any] | Any, key: str) -> Any:
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def check_knobs(family: str, cfg: Mapping[str, Any] | Any) -> None:
    """A one-line ValueError for the first key set that does not apply to ``family``."""
    for key, (families, unset, why) in KNOBS.items():
        value = _raw(cfg, key)
        if family not in families and value not in unset:
            raise ValueError(f"model.{key}={value!r} is not available for {family}: model.{key} "
                             f"{why}")


def new_family_spec(family: str, depth: Any, cfg: Mapping[str, Any] | Any,
                    get: Callable[..., Any]) -> NetworkSpec | FamilySpec:
    """The spec of a ``NEW_FAMILIES`` net from ``config.model`` (``get(key, default)``)."""
    check_knobs(family, cfg)
    if not isinstance(depth, int):
        raise ValueError(f"model.depth must be an integer, got {depth!r}")
    kw = dict(num_classes=int(get("num_classes", 10)), in_channels=int(get("in_channels", 3)))
    widths = get("widths")
    widths = tuple(int(w) for w in widths) if widths is not None else None
    block = get("block")
    if family == "resnext":
        if block not in (None, "bottleneck"):
            raise ValueError(f"ResNeXt blocks are bottlenecks; model.block={block!r} "
                             "contradicts it (leave it unset)")
        shortcut = get("shortcut", "B")
        if bool(get("plain", False)):
            shortcut = "A"  # unused: a plain net has no shortcuts
        return resnext_spec(depth, cardinality=get("cardinality"), group_width=get("group_width"),
                            widths=widths, stem=get("stem"), plain=bool(get("plain", False)),
                            shortcut=shortcut, **kw)
    if family == "densenet":
        if block not in (None, "basic", "bottleneck"):
            raise ValueError(f"model.block must be basic or bottleneck (DenseNet-B), got {block!r}")
        compression = get("compression")
        return densenet_spec(depth, growth_rate=get("growth_rate"),
                             bottleneck=None if block is None else block == "bottleneck",
                             compression=None if compression is None else float(compression),
                             stem=get("stem"), **kw)
    if block is not None:
        raise ValueError(f"model.block={block!r} is not available for {family}")
    if family == "fractal":
        return fractal_spec(depth, columns=get("columns"), widths=widths, **kw)
    kw["width_scale"] = float(get("width_scale", 1.0))
    if family == "googlenet":
        if depth != 22:
            raise ValueError(f"GoogLeNet has 22 layers, got depth {depth}")
        layout = get("layout", "paper")
        bn = get("bn")
        return ClassicSpec(family="googlenet", depth=22, stage_sizes=(2, 5, 2),
                           bn=(layout == "torchvision") if bn is None else bool(bn),
                           layout=layout, aux_heads=bool(get("aux_heads", False)), **kw)
    if family == "squeezenet":
        return squeezenet_spec(depth, version=get("version"), bn=bool(get("bn", False)), **kw)
    return classic_spec(family, depth, bn=get("bn"), layout=get("layout"), widths=widths,
                        fc_width=get("fc_width"), **kw)


def check_regularisers(spec: FamilySpec, get: Callable[..., Any]) -> None:
    """The dropout and drop-path values a ``FamilySpec`` net accepts (one-line ValueError)."""
    head_dropout = float(get("head_dropout", 0.0))
    if not 0.0 <= head_dropout < 1.0:
        raise ValueError(f"model.head_dropout must be in [0, 1), got {head_dropout}")
    if not 0.0 <= float(get("drop_path", 0.0)) < 1.0:
        raise ValueError(f"model.drop_path must be in [0, 1), got {get('drop_path')}")
    if not 0.0 <= float(get("global_drop_path", 0.0)) <= 1.0:
        raise ValueError(f"model.global_drop_path must be in [0, 1], got "
                         f"{get('global_drop_path')}")


def build_new_family(spec: FamilySpec, opts: LayerOptions, rngs: nnx.Rngs,
                     get: Callable[..., Any]) -> nnx.Module:
    """The module of a ``FamilySpec`` (ResNeXt specs are ``NetworkSpec``s: ``ResNet``)."""
    check_regularisers(spec, get)
    head_dropout = float(get("head_dropout", 0.0))
    if spec.family == "densenet":
        return DenseNet(spec, opts, rngs=rngs, head_dropout=head_dropout)
    if spec.family == "fractal":
        return FractalNet(spec, opts, rngs=rngs, drop_path=float(get("drop_path", 0.0)),
                          global_drop_path=float(get("global_drop_path", 0.0)),
                          head_dropout=head_dropout)
    classes = {"vgg": VGG, "alexnet": AlexNet, "nin": NiN, "googlenet": GoogLeNet,
               "squeezenet": SqueezeNet}
    return classes[spec.family](spec, opts, rngs=rngs)
