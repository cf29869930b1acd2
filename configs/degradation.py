"""The degradation study (He et al. 2015, Figs. 1, 4, 6; Tables 2, 6): plain vs residual nets.

Each study is a base config (``get_config(arg)``) plus the list of runs
(``sweep(add, arg)``, one ``add(**overrides)`` per run):

- ``digits`` (default; embedded data, no download): plain and residual 20 and
  56, the paper's Fig. 1 pair (README.md says how long it takes). Expect
  plain-56 to end with a much higher training error than plain-20, and
  ResNet-56 to train as well as ResNet-20.
- ``digits-full``: plain and residual 20/32/44/56/110 on digits.
- ``cifar10``: the paper's Fig. 6 / Table 6 study, plain and residual
  20/32/44/56/110 with the paper's recipe (64k iterations; LR 0.01 warm-up
  until training error < 80% at depth 110). ``cifar10,1202`` adds ResNet-1202;
  ``cifar10,seeds=5`` repeats every run with 5 seeds (paper: 6.61 +- 0.16 over
  5 runs of ResNet-110); the seeds of each network then train as one pack
  where that is faster (``pack``: ``--pack auto``, GPUs and TPUs).
- ``imagenet``: plain and residual 18 and 34 (Table 2 / Fig. 4), option A.
- ``card``: the 18/34/56/110-layer comparison on one dataset, CIFAR-10 with the
  paper's CIFAR recipe: plain and residual 18 and 34 (ImageNet basic blocks,
  widths 64-512, with the CIFAR stem: 3x3/1 conv, no max-pool) and 56 and 110
  (the CIFAR family), in one figure and one table.

Run the main job (and its report) with:
    python -m experiments.sweep configs/degradation.py --workdir runs/degradation
and a bigger study with e.g. ``configs/degradation.py:cifar10``.
"""

import ml_collections

from configs import cifar10, digits, imagenet

STUDIES = ("digits", "digits-full", "cifar10", "imagenet", "card")


def _parse(arg: str | None) -> tuple[str, dict]:
    study, *opts = (arg or "digits").split(",")
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")
    options = {"seeds": 1, "1202": False}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "seeds" and value.isdigit() and int(value) > 0:
            options["seeds"] = int(value)
        elif key == "1202" and not value and study == "cifar10":
            options["1202"] = True
        else:
            raise ValueError(f"unknown study option {opt!r}; allowed: seeds=N, 1202 (cifar10)")
    return study, options


def get_config(arg: str | None = "digits") -> ml_collections.ConfigDict:
    study, _ = _parse(arg)
    if study.startswith("digits"):
        return digits.get_config("resnet-20")
    if study in ("cifar10", "card"):
        return cifar10.get_config("resnet-20")
    return imagenet.get_config("resnet-18")


def pack(arg: str | None = "digits") -> str | None:
    """The sweep's default ``--pack``: 'auto' with seeds=N > 1 (each network's seeds), else None."""
    _, options = _parse(arg)
    return "auto" if options["seeds"] > 1 else None


def slurm(arg: str | None = "digits") -> dict[str, str | int]:
    """The study's default SLURM job options (``--launcher slurm``; ``--slurm KEY=VALUE`` or
    ``KEY=none`` overrides them): one GPU per CIFAR-10 run, one 8-GPU node per ImageNet run."""
    study, _ = _parse(arg)
    if study in ("cifar10", "card"):
        return {"gpus_per_node": 1, "cpus_per_task": 8, "time": "12:00:00"}
    if study == "imagenet":
        return {"gpus_per_node": 8, "cpus_per_task": 64, "time": "24:00:00"}
    return {"time": "2:00:00"}


def sweep(add, arg: str | None = "digits") -> None:
    study, options = _parse(arg)
    depths = {
        "digits": (20, 56),
        "digits-full": (20, 32, 44, 56, 110),
        "cifar10": (20, 32, 44, 56, 110),
        "imagenet": (18, 34),
        "card": (18, 34, 56, 110),
    }[study]
    runs = [(d, plain) for plain in (True, False) for d in depths]
    if options["1202"]:
        runs.append((1202, False))  # the paper trained only the residual 1202
    for seed in range(options["seeds"]):
        for depth, plain in runs:
            overrides = {"model.depth": depth, "model.plain": plain}
            if options["seeds"] > 1:
                overrides["seed"] = seed
            if study == "card" and depth in (18, 34):
                overrides["model.family"] = "imagenet"
                overrides["model.stem"] = "cifar"
            if study in ("cifar10", "card") and depth >= 110:
                overrides["schedule.warmup_until_error"] = 0.8  # the paper's ResNet-110 rule
            add(**overrides)
