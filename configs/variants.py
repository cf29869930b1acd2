"""Beyond the paper: original, pre-activation, stochastic-depth and wide residual nets.

Studies (``python -m experiments.sweep configs/variants.py:STUDY --workdir DIR``):

- ``digits`` (default; embedded data): at depth
  56, the original ResNet (He et al. 2015), the pre-activation ResNet (He et
  al. 2016, option A shortcuts as the original) and the original ResNet with
  stochastic depth (Huang et al. 2016, survival 0.5 at the last block), with
  the digits recipe. Expect all three to train to a low error; the report
  ranks them.
- ``cifar10``: the published CIFAR-10 variants with their own recipes, the
  published test error beside each: ResNet-110 and pre-activation
  ResNet-110/164/1001 (64k iterations; 1001 warms up at LR 0.01), ResNet-110
  with stochastic depth (500 epochs, LR /10 at 250 and 375, Nesterov), and
  WRN-28-10 and WRN-40-4 (200 epochs, LR x0.2 at 60/120/160, weight decay
  5e-4, Nesterov). Several GPU-days in all.
"""

import ml_collections

from configs import cifar10, digits

STUDIES = ("digits", "cifar10")


def _study(arg: str | None) -> str:
    study = arg or "digits"
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")
    return study


def get_config(arg: str | None = "digits") -> ml_collections.ConfigDict:
    if _study(arg) == "digits":
        return digits.get_config("resnet-56")
    return cifar10.get_config("resnet-110")


def sweep(add, arg: str | None = "digits") -> None:
    if _study(arg) == "digits":
        add(**{"model.depth": 56})
        add(**{"model.depth": 56, "model.preact": True})
        add(**{"model.depth": 56, "model.stochastic_depth": True})
        return
    paper = {"schedule.warmup_until_error": 0.8}  # He et al.'s rule for the deepest nets
    add(**{"model.depth": 110, **paper})
    for depth in (110, 164, 1001):
        add(**{"model.depth": depth, "model.preact": True, **paper})
    add(**{"model.depth": 110, "model.stochastic_depth": True, "num_epochs": 500.0,
           "schedule.boundaries_epochs": (250.0, 375.0), "optimizer.nesterov": True})
    wrn = {"model.family": "wrn", "num_epochs": 200.0, "optimizer.weight_decay": 5e-4,
           "optimizer.nesterov": True, "schedule.boundaries_epochs": (60.0, 120.0, 160.0),
           "schedule.decay_factor": 0.2}
    add(**{"model.depth": 28, "model.width_factor": 10, **wrn})
    add(**{"model.depth": 40, "model.width_factor": 4, **wrn})
