"""Reference numbers from He et al. (2015) and its follow-ups, to print beside ours. Data only."""

from __future__ import annotations

# CIFAR-10 test error % (Table 6). ResNet-110: best of 5 runs; mean 6.61 +- 0.16.
CIFAR10_RESNET_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
CIFAR10_RESNET110_MEAN_STD = (6.61, 0.16)
CIFAR10_RESNET_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}

# ImageNet top-1 validation error %, 10-crop testing (Table 2).
IMAGENET_TOP1_ERROR = {
    (True, 18): 27.94,
    (True, 34): 28.54,
    (False, 18): 27.88,
    (False, 34): 25.03,
}


def paper_test_error(dataset: str, plain: bool, depth: int) -> float | None:
    """The paper's test error % for this network and dataset, or None where it has none."""
    if dataset == "cifar10" and not plain:
        return CIFAR10_RESNET_TEST_ERROR.get(depth)
    if dataset == "imagenet2012":
        return IMAGENET_TOP1_ERROR.get((plain, depth))
    return None


# CIFAR-10 test error % of the follow-ups, keyed by (architecture, depth):
# He et al. (2016), "Identity Mappings in Deep Residual Networks", Table 3 (original and
# pre-activation; 164 and 1001 are bottleneck nets); Huang et al. (2016), stochastic depth
# (ResNet-110, linear decay to 0.5); Zagoruyko & Komodakis (2016), WRN-28-10 without dropout.
CIFAR10_FOLLOW_UP_TEST_ERROR = {
    ("original", 164): 5.93,
    ("original", 1001): 7.61,
    ("preact", 110): 6.37,
    ("preact", 164): 5.46,
    ("preact", 1001): 4.92,
    ("stochastic_depth", 110): 5.25,
    ("wrn-10", 28): 4.00,
}


def published_test_error(dataset: str, model: dict) -> float | None:
    """The published test error % for the network a flattened ``config.model`` describes.

    ``model`` maps the keys of ``config.model`` (without the prefix) to values;
    missing keys take their defaults (the paper's original nets).
    """
    family, depth = model.get("family", "cifar"), model.get("depth")
    plain = bool(model.get("plain", False))
    preact, sd = bool(model.get("preact", False)), bool(model.get("stochastic_depth", False))
    if family == "imagenet" and model.get("stem") == "cifar":
        return None  # not a published net
    if dataset == "cifar10" and not plain:
        if family == "wrn":
            return CIFAR10_FOLLOW_UP_TEST_ERROR.get((f"wrn-{model.get('width_factor', 1)}", depth))
        if sd and not preact:
            return CIFAR10_FOLLOW_UP_TEST_ERROR.get(("stochastic_depth", depth))
        if sd:
            return None
        if preact or depth in (164, 1001):
            return CIFAR10_FOLLOW_UP_TEST_ERROR.get(("preact" if preact else "original", depth))
    if family == "wrn" or preact or sd:
        return None
    return paper_test_error(dataset, plain, depth)


# --------------------------------------------------------------------------- the zoo's papers
# CIFAR-10 test error % with the standard augmentation (4-pixel shift, horizontal flip: the
# papers' "C10+"), keyed by the network's name (``models.spec_from_config(...).name``):
# - Huang et al. (2017), "Densely Connected Convolutional Networks", Table 2 (params: 1.0M,
#   7.0M, 27.2M, 0.8M, 15.3M, 25.6M);
# - Xie et al. (2017), "Aggregated Residual Transformations for Deep Neural Networks",
#   Table 7 (34.4M, 68.1M);
# - Larsson et al. (2017), "FractalNet: Ultra-Deep Neural Networks without Residuals",
#   Table 1: 20 layers (C=3, 38.6M params) without drop-path or dropout; with both, 4.60
#   (``CIFAR10_FRACTAL_DROP_PATH``); the 40-layer net (22.9M) is reported with heavier
#   augmentation only ("C10++": 5.24) and has no entry here;
# - Lin et al. (2014), "Network In Network", Table 2: 8.81 with translation and flipping
#   (10.41 without augmentation, with dropout).
CIFAR10_ZOO_TEST_ERROR = {
    "densenet-40-12": 5.24,
    "densenet-100-12": 4.10,
    "densenet-100-24": 3.74,
    "densenet-bc-100-12": 4.51,
    "densenet-bc-250-24": 3.62,
    "densenet-bc-190-40": 3.46,
    "resnext-29-8x64d": 3.65,
    "resnext-29-16x64d": 3.58,
    "fractal-20": 5.22,
    "nin": 8.81,
}
CIFAR10_FRACTAL_DROP_PATH = {"fractal-20": 4.60}
# Parameter counts the papers give (millions), for the same keys.
CIFAR10_ZOO_PARAMS_M = {
    "densenet-40-12": 1.0, "densenet-100-12": 7.0, "densenet-100-24": 27.2,
    "densenet-bc-100-12": 0.8, "densenet-bc-250-24": 15.3, "densenet-bc-190-40": 25.6,
    "resnext-29-8x64d": 34.4, "resnext-29-16x64d": 68.1, "fractal-20": 38.6,
}


def zoo_test_error(dataset: str, name: str, model: dict) -> float | None:
    """The published CIFAR-10 test error % of a zoo network by name (None where there is
    none); FractalNet's with drop-path or dropout is the regularised row of its Table 1."""
    if dataset != "cifar10":
        return None
    if name in CIFAR10_FRACTAL_DROP_PATH and (model.get("drop_path") or
                                              model.get("block_dropout")):
        return CIFAR10_FRACTAL_DROP_PATH[name]
    return CIFAR10_ZOO_TEST_ERROR.get(name)


# ImageNet top-1 accuracy % of torchvision's weights (IMAGENET1K_V1, one 224x224 centre
# crop of the 256-resized image), from torchvision's model documentation: one protocol for
# every net, which the papers' own numbers (10-crop, multi-scale, ensembles) are not. Keyed
# by our network names; params and multiply-adds come from our zoo (``python -m models``),
# which builds these nets exactly (tests/test_zoo.py).
IMAGENET_TORCHVISION_TOP1 = {
    "alexnet-torchvision": 56.522,
    "vgg-11": 69.020, "vgg-13": 69.928, "vgg-16": 71.592, "vgg-19": 72.376,
    "vgg-11-bn": 70.370, "vgg-13-bn": 71.586, "vgg-16-bn": 73.360, "vgg-19-bn": 74.218,
    "googlenet-torchvision": 69.778,
    "squeezenet-1.0": 58.092, "squeezenet-1.1": 58.178,
    "resnet-18": 69.758, "resnet-34": 73.314, "resnet-50": 76.130, "resnet-101": 77.374,
    "resnet-152": 78.312,
    "densenet-121": 74.434, "densenet-169": 75.600, "densenet-201": 76.896,
    "densenet-161": 77.138,
    "resnext-50-32x4d": 77.618, "resnext-101-32x8d": 79.312,
}
# The model config of each (the keys of ``config.model``; ImageNet defaults otherwise).
IMAGENET_TORCHVISION_MODELS = {
    "alexnet-torchvision": {"family": "alexnet", "depth": 8, "layout": "torchvision"},
    **{f"vgg-{d}": {"family": "vgg", "depth": d} for d in (11, 13, 16, 19)},
    **{f"vgg-{d}-bn": {"family": "vgg", "depth": d, "bn": True} for d in (11, 13, 16, 19)},
    "googlenet-torchvision": {"family": "googlenet", "depth": 22, "layout": "torchvision"},
    "squeezenet-1.0": {"family": "squeezenet", "depth": 18, "version": "1.0"},
    "squeezenet-1.1": {"family": "squeezenet", "depth": 18, "version": "1.1"},
    **{f"resnet-{d}": {"family": "imagenet", "depth": d, "shortcut": "B",
                       "bottleneck_stride": "middle"} for d in (18, 34, 50, 101, 152)},
    **{f"densenet-{d}": {"family": "densenet", "depth": d} for d in (121, 169, 201, 161)},
    "resnext-50-32x4d": {"family": "resnext", "depth": 50},
    "resnext-101-32x8d": {"family": "resnext", "depth": 101, "cardinality": 32,
                          "group_width": 8},
}
# The papers' own ImageNet top-1 validation error % (their protocols differ: see each):
# AlexNet (Krizhevsky et al. 2012, Table 2, one CNN): 40.7; VGG-16 (D) and VGG-19 (E)
# (Simonyan & Zisserman 2015, Table 3, single scale 256-512 / 384): 25.6 and 25.5;
# SqueezeNet 1.0 (Iandola et al. 2016, Table 2): 42.5; DenseNet-121/169/201 (Huang et al.
# 2017, Table 3, single crop): 25.02, 23.80, 22.58; ResNeXt-50 32x4d (Xie et al. 2017,
# Table 3, 224 single crop): 22.2. GoogLeNet's paper gives top-5 only (6.67%, an ensemble).
IMAGENET_PAPER_TOP1_ERROR = {
    "alexnet": 40.7, "vgg-16": 25.6, "vgg-19": 25.5, "squeezenet-1.0": 42.5,
    "densenet-121": 25.02, "densenet-169": 23.80, "densenet-201": 22.58,
    "resnext-50-32x4d": 22.2,
}
