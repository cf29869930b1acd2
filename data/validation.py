"""Checks of the config sections the data package consumes; each raises a one-line ValueError.

``dataset``, ``val_examples``, ``augment.*``, ``normalize``, ``whiten_*`` and
``imbalance.*``, before anything is loaded.
"""

from __future__ import annotations

import math
from typing import Any

from data.datasets import IN_MEMORY_DATASETS, KNOWN_DATASETS
from data.statistics import NORMALIZATIONS, WHITEN_OVER

IMBALANCE_COUNTERS = ("none", "resample", "reweight")


def validate_config(config: Any) -> None:
    """Every data check, in the order a reader meets the keys in ``configs/default.py``."""
    if config.dataset not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; known: {', '.join(KNOWN_DATASETS)}")
    if config.val_examples < 0:
        raise ValueError(f"val_examples must be >= 0, got {config.val_examples}")
    validate_inputs(config)
    validate_imbalance(config)


def validate_inputs(config: Any) -> None:
    """Checks ``augment.*``, ``normalize`` and ``whiten_*``."""
    aug, in_memory = config.augment, config.dataset in IN_MEMORY_DATASETS
    if aug.crop_padding < 0:
        raise ValueError(f"augment.crop_padding must be >= 0, got {aug.crop_padding}")
    if aug.scale is not None:
        if not in_memory:
            raise ValueError(f"augment.scale is for in-memory datasets; {config.dataset} "
                             "uses augment.scale_range (shorter side in pixels)")
        if not (len(aug.scale) == 2 and all(math.isfinite(v) for v in aug.scale)
                and 1 <= aug.scale[0] <= aug.scale[1]):
            raise ValueError(f"augment.scale must be (lo, hi) with 1 <= lo <= hi, got {aug.scale}")
    if not 0 <= aug.hsv_jitter <= 1:
        raise ValueError(f"augment.hsv_jitter must be in [0, 1], got {aug.hsv_jitter}")
    if aug.hsv_jitter and config.model.in_channels != 3:
        raise ValueError(f"augment.hsv_jitter needs RGB images, but {config.dataset} has "
                         f"{config.model.in_channels} channel(s) (model.in_channels)")
    if not (math.isfinite(aug.pca_lighting) and aug.pca_lighting >= 0):
        raise ValueError(f"augment.pca_lighting must be >= 0, got {aug.pca_lighting}")
    if config.normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {config.normalize!r}; allowed: "
                         f"{', '.join(NORMALIZATIONS)}")
    if not in_memory and config.normalize != "channel_standardize":
        raise ValueError(f"{config.dataset} is streamed and normalised with fixed per-channel "
                         f"statistics: normalize must be 'channel_standardize', got "
                         f"{config.normalize!r}")
    if config.whiten_over not in WHITEN_OVER:
        raise ValueError(f"unknown whiten_over {config.whiten_over!r}; allowed: "
                         f"{', '.join(WHITEN_OVER)}")
    if config.normalize == "pca" and config.whiten_over == "image":
        raise ValueError("normalize='pca' over whole images would scramble the pixel layout "
                         "the convolutions need: set whiten_over='channel', or use 'zca'")
    if not (math.isfinite(config.whiten_epsilon) and config.whiten_epsilon > 0):
        raise ValueError(f"whiten_epsilon must be > 0, got {config.whiten_epsilon}")


def validate_imbalance(config: Any) -> None:
    """Checks ``imbalance.*`` (in-memory datasets only)."""
    imb = config.imbalance
    # None is what the command line makes of --config.imbalance.counter=none.
    if imb.counter not in (None, *IMBALANCE_COUNTERS):
        raise ValueError(f"imbalance.counter must be one of {', '.join(IMBALANCE_COUNTERS)}, "
                         f"got {imb.counter!r}")
    used = imb.classes is not None or imb.counter not in (None, "none")
    if used and config.dataset not in IN_MEMORY_DATASETS:
        raise ValueError(f"imbalance is available for in-memory datasets only "
                         f"({', '.join(IN_MEMORY_DATASETS)}), not {config.dataset}")
    if imb.classes is None:
        return
    k = config.model.num_classes
    if (not all(isinstance(c, int) and 0 <= c < k for c in imb.classes)
            or len(set(imb.classes)) != len(imb.classes) or not imb.classes):
        raise ValueError(f"imbalance.classes must be distinct class ids in [0, {k}), "
                         f"got {tuple(imb.classes)}")
    if not 0 < imb.keep_fraction <= 1:
        raise ValueError(f"imbalance.keep_fraction must be in (0, 1], got {imb.keep_fraction}")
