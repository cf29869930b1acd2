"""Reference numbers from He et al. (2015), to print beside ours. Plain data only."""

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
