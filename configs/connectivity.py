"""The degradation study across connectivity patterns: which ones cure degradation, at what cost?

He et al. (2015) cured the degradation of deep plain nets with identity shortcuts. The nets
that followed carry the signal from shallow to deep in other ways: DenseNet concatenates every
earlier layer's features (Huang et al. 2017), FractalNet joins columns of different depths by
their mean and has no identity path at all (Larsson et al. 2017), ResNeXt splits the residual
branch into groups (Xie et al. 2017). Each study trains every pattern at two depths, a shallow
and a deep net, and the report says which patterns get worse with depth and which do not
(``experiments.report``), and draws accuracy against multiply-adds and parameters
(``complexity.png``).

Studies (``python -m experiments.sweep configs/connectivity.py:STUDY --workdir DIR``):

- ``digits`` (default; the embedded data, the digits recipe of ``configs/digits.py``: 600
  steps, batch 128, LR 0.1 divided by 10 at 50% and 75%): plain and residual 20 and 56 (the
  pair of the degradation study), DenseNet-BC 22 and 58 (k = 12) and FractalNet 24 and 48
  (3 blocks of 16/32/64 channels, C = 4 and 5 columns; no drop-path, as the plain and residual
  nets have no stochastic depth). README.md gives the results and the time it takes.
- ``cifar10``: each family with its paper's recipe, the published test error beside ours:
  plain and residual 20/56/110 (He et al.: 64k iterations, batch 128, LR 0.1 /10 at 32k and
  48k, weight decay 1e-4); DenseNet (L=40, k=12) and DenseNet-BC (L=100, k=12) (Huang et al.:
  300 epochs, batch 64, LR 0.1 /10 at 50% and 75%, weight decay 1e-4, Nesterov momentum 0.9;
  standard augmentation, hence no dropout); FractalNet-20 and -40 (Larsson et al.: 400
  epochs, batch 100, LR 0.02 /10 whenever the remaining epochs halve, momentum 0.9, Xavier
  init, local drop-path 0.15 with global drop-path on half of the batches, dropout 0-40% by
  block; the paper gives no weight decay: 1e-4 here).

Options, comma-separated after the study: ``resnext`` adds ResNeXt (digits: 20 and 56 with
the residual nets' output widths, 8 groups of 2 channels; cifar10: ResNeXt-29 8x64d and
16x64d, 300 epochs, batch 128, LR 0.1 /10 at 150 and 225, weight decay 5e-4); ``preact``
adds pre-activation ResNets (digits: 20 and 56; cifar10: 110 and 164, He et al. 2016's
recipe); ``seeds=N`` repeats every run with N seeds.
"""

import ml_collections

from configs import cifar10, digits

STUDIES = ("digits", "cifar10")
OPTIONS = "resnext, preact, seeds=N"


def _parse(arg: str | None) -> tuple[str, dict]:
    study, *opts = (arg or "digits").split(",")
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")
    options = {"seeds": 1, "resnext": False, "preact": False}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "seeds" and value.isdigit() and int(value) > 0:
            options["seeds"] = int(value)
        elif key in ("resnext", "preact") and not value:
            options[key] = True
        else:
            raise ValueError(f"unknown study option {opt!r}; allowed: {OPTIONS}")
    return study, options


def get_config(arg: str | None = "digits") -> ml_collections.ConfigDict:
    study, _ = _parse(arg)
    return digits.get_config("resnet-20") if study == "digits" else cifar10.get_config("resnet-20")


def pack(arg: str | None = "digits") -> str | None:
    """The sweep's default ``--pack``: 'auto' with seeds=N > 1 (each network's seeds), else None."""
    _, options = _parse(arg)
    return "auto" if options["seeds"] > 1 else None


def _digits_runs(options: dict) -> list[dict]:
    runs = [{"model.depth": d, "model.plain": plain} for plain in (True, False) for d in (20, 56)]
    runs += [{"model.family": "densenet", "model.depth": d, "model.block": "bottleneck"}
             for d in (22, 58)]
    runs += [{"model.family": "fractal", "model.depth": d, "model.widths": (16, 32, 64)}
             for d in (24, 48)]
    if options["resnext"]:
        runs += [{"model.family": "resnext", "model.depth": d, "model.widths": (4, 8, 16),
                  "model.cardinality": 8, "model.group_width": 2} for d in (20, 56)]
    if options["preact"]:
        runs += [{"model.depth": d, "model.preact": True} for d in (20, 56)]
    return runs


def _cifar10_runs(options: dict) -> list[dict]:
    he = [{"model.depth": d, "model.plain": plain,
           **({"schedule.warmup_until_error": 0.8} if d >= 110 else {})}
          for plain in (True, False) for d in (20, 56, 110)]
    epochs = {"schedule.boundaries_steps": None}  # the base's 32k/48k would win otherwise
    densenet = {**epochs, "model.family": "densenet", "num_epochs": 300.0, "batch_size": 64,
                "schedule.boundaries_fraction": (0.5, 0.75), "optimizer.nesterov": True}
    dense = [{**densenet, "model.depth": 40},
             {**densenet, "model.depth": 100, "model.block": "bottleneck"}]
    fractal = {**epochs, "model.family": "fractal", "num_epochs": 400.0, "batch_size": 100,
               "optimizer.lr": 0.02, "schedule.boundaries_epochs": (200.0, 300.0, 350.0, 375.0),
               "model.init": "xavier", "model.drop_path": 0.15, "model.global_drop_path": 0.5,
               "model.block_dropout": 0.4}
    runs = he + dense + [{**fractal, "model.depth": d} for d in (20, 40)]
    if options["resnext"]:
        resnext = {**epochs, "model.family": "resnext", "model.depth": 29, "num_epochs": 300.0,
                   "schedule.boundaries_epochs": (150.0, 225.0), "optimizer.weight_decay": 5e-4}
        runs += [{**resnext, "model.cardinality": c} for c in (8, 16)]
    if options["preact"]:
        runs += [{"model.depth": d, "model.preact": True, "schedule.warmup_until_error": 0.8}
                 for d in (110, 164)]
    return runs


def sweep(add, arg: str | None = "digits") -> None:
    study, options = _parse(arg)
    runs = _digits_runs(options) if study == "digits" else _cifar10_runs(options)
    for seed in range(options["seeds"]):
        for overrides in runs:
            add(**overrides, **({"seed": seed} if options["seeds"] > 1 else {}))
