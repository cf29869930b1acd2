"""Frozen layers of a fine-tuning run: which parameters are fixed, and how a step keeps them.

``finetune.freeze`` keeps the first layers fixed: 'stem', 'stage1' (stem and
the first stage), 'stage2', ... or 'all' (everything but the head: a linear
classifier on frozen features). Frozen parameters get no update (optax
``set_to_zero`` through ``multi_transform``, so no weight decay, momentum or
max-norm either) and frozen BatchNorm layers run in inference mode: they
normalise with the source's running statistics and never change them.

Pure functions of the config and the parameter paths: the train step and
the optimizer use them, so this module reads no file (loading the source run
is ``training.finetune``'s job).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

import models
from training import param_paths

HEAD = "head"


def freezes(freeze: str | None) -> bool:
    """Whether ``finetune.freeze`` fixes anything ('none', or None from ``=none`` on the CLI)."""
    return freeze not in (None, "none")


def num_frozen_stages(freeze: str | None, num_stages: int) -> int:
    """How many stages ``freeze`` holds fixed (the stem too unless 'none'); validates it."""
    allowed = (f"'none', 'stem', 'stage1'..'stage{num_stages}' or 'all'")
    if not freezes(freeze) or freeze == "stem":
        return 0
    if freeze == "all":
        return num_stages
    k = freeze[len("stage"):] if freeze.startswith("stage") else ""
    if not k.isdigit() or not 1 <= int(k) <= num_stages:
        raise ValueError(f"finetune.freeze must be {allowed} for this network, got {freeze!r}")
    return int(k)


def frozen_predicate(freeze: str | None, num_stages: int) -> Callable[[tuple], bool]:
    """``is_frozen(path)`` for a parameter or statistic path such as ('stages', 0, ...)."""
    k = num_frozen_stages(freeze, num_stages)

    def is_frozen(path: tuple) -> bool:
        if not freezes(freeze) or not path or path[0] == HEAD:
            return False
        if path[0] == "stem":
            return True
        if path[0] == "final":  # a pre-activation net's last BN-act belongs to the last stage
            return k == num_stages
        return path[0] == "stages" and int(path[1]) < k

    return is_frozen


def frozen_predicate_of(config: ml_collections.ConfigDict) -> Callable[[tuple], bool]:
    """``is_frozen(path)`` for ``config.finetune.freeze`` on this config's network."""
    num_stages = len(models.spec_from_config(config.model).stage_sizes)
    return frozen_predicate(config.finetune.freeze, num_stages)


def param_labels(is_frozen: Callable[[tuple], bool]) -> Callable[[Any], Any]:
    """``optax.multi_transform`` labels: 'frozen' or 'train' for each parameter."""
    return lambda params: param_paths.map_with_names(
        lambda path, _: "frozen" if is_frozen(path) else "train", params)


def keep_frozen(is_frozen: Callable[[tuple], bool], old: Any, new: Any) -> Any:
    """``new`` with the frozen entries taken from ``old`` (exactly, whatever the step did)."""
    return param_paths.map_with_names(lambda path, o, n: o if is_frozen(path) else n, old, new)


def freeze_batch_norm(model: models.ResNet, freeze: str | None) -> None:
    """Puts the frozen part of a model in training mode into inference mode (running stats)."""
    if not freezes(freeze):
        return
    model.stem.eval()
    k = num_frozen_stages(freeze, len(model.stages))
    for stage in list(model.stages)[:k]:
        stage.eval()
    if model.final is not None and k == len(model.stages):
        model.final.eval()
