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
