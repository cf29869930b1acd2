"""A study's run directories, loaded and pooled over seeds into one row per network.

``load_runs`` reads every run directory under a study (config.json,
metrics.jsonl, summary.json, layer_responses.json; JSON, never pickle);
``build_rows`` groups the runs that differ only in their seed into a ``Row``
(label, mean +- std over seeds of the final errors and of each seed's best
test error, the lowest best, the paper's number, status). The
verdicts, figures and tables of ``experiments.report`` are computed from these.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import models
from experiments import paper
from training.exits import first_line
from training.run_dir import MetricsLog, flatten, read_json

IGNORED_KEYS = ("seed",)
# The architecture of the zoo's families beyond the ResNets (rows of one family share it).
ZOO_ARCH = {"resnext": "ResNeXt", "densenet": "DenseNet", "fractal": "FractalNet",
            "vgg": "VGG", "alexnet": "AlexNet", "nin": "NiN", "googlenet": "GoogLeNet",
            "squeezenet": "SqueezeNet"}
# Keys that the row label already names (the architecture), never listed as a variant.
ARCH_KEYS = ("model.depth", "model.plain", "model.family", "model.preact", "model.width_factor",
             "model.stochastic_depth", "model.block", "model.stem",
             # the zoo's labels name these too (k, CxDd, C, version, layout, BN)
             "model.growth_rate", "model.cardinality", "model.group_width", "model.columns",
             "model.version", "model.layout", "model.bn")


@dataclass
class Run:
    path: str
    config: dict
    metrics: list[dict]
    summary: dict | None
    responses: list[float] | None
    study: str = ""  # the study it belongs to, under the report's directory ('' = that one)

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status", "unfinished")


@dataclass
class Row:
    """One network of the study (several seeds pooled)."""

    label: str
    dataset: str
    depth: int
    plain: bool
    variant: str  # the other config keys that distinguish it ('' if none)
    runs: list[Run] = field(default_factory=list)
    params: int | None = None
    train_error: float | None = None  # %, mean over seeds
    train_error_std: float | None = None
    test_error: float | None = None
    test_error_std: float | None = None
    val_error: float | None = None  # %, mean over seeds (runs with a validation split)
    best_test_error: float | None = None  # %, mean over seeds of each seed's best
    best_test_error_std: float | None = None
    best_test_error_min: float | None = None  # %, the lowest of the seeds' bests
    paper_error: float | None = None
    status: str = ""
    arch: str = ""  # the architecture besides depth and shortcuts ('' = the paper's nets)
    # How the signal goes from shallow to deep: plain, residual, dense, fractal, inception.
    pattern: str = ""
    name: str = ""  # the network's name (``spec.name``)

    @property
    def shown_runs(self) -> list[Run]:
        """The runs the row's curves and figures average: the finished ones (all, if none
        finished: a study still in progress)."""
        done = [r for r in self.runs if r.status == "finished"]
        return done or self.runs

    @property
    def finished(self) -> bool:
        """Every seed of the network finished (``status`` then reads ``finished`` or
        ``N finished``)."""
        return bool(self.runs) and all(r.status == "finished" for r in self.runs)


def _pct(v) -> float | None:
    return None if v is None or not math.isfinite(v) else 100.0 * v


def load_runs(study_dir: str) -> list[Run]:
    """Every directory under ``study_dir`` holding a config.json.

    A file that cannot be read as what it should be (a summary that is not a
    JSON object, a cut-short file, a metrics file that is a directory) is left
    out with one ``warning:`` line naming it; the run counts as unfinished.
    """
    if not os.path.isdir(study_dir):
        raise ValueError(f"study directory {study_dir} does not exist")
    runs = []
    for root, dirs, files in os.walk(study_dir):
        dirs[:] = sorted(d for d in dirs if d != "checkpoints")
        if "config.json" not in files:
            continue
        config = _read_object(os.path.join(root, "config.json"))
        if config is None:
            continue
        metrics = []
        if os.path.isdir(os.path.join(root, "metrics.jsonl")):
            _warn(os.path.join(root, "metrics.jsonl"), "is a directory")
        else:
            metrics = MetricsLog(root, False).read()
        summary = responses = None
        if "summary.json" in files:
            summary = _read_object(os.path.join(root, "summary.json"))
        if "layer_responses.json" in files:
            blocks = (_read_object(os.path.join(root, "layer_responses.json")) or {})
            if isinstance(blocks.get("blocks"), list):
                responses = [b["std"] for b in blocks["blocks"]]
        runs.append(Run(root, config, metrics, summary, responses,
                        _study_of(study_dir, root)))
    if not runs:
        raise ValueError(f"no run directories (with config.json) under {study_dir}")
    return runs


def _study_of(study_dir: str, run_dir: str) -> str:
    """The nearest directory above a run that holds a sweep.json, relative to ``study_dir``
    ('' for ``study_dir`` itself, or when none does).

    A folder of several studies keeps them apart: the same settings and seed in
    two studies are one setting run twice, not two seeds.
    """
    top = os.path.realpath(study_dir)
    here = os.path.realpath(os.path.dirname(run_dir))
    while here.startswith(top):
        if os.path.exists(os.path.join(here, "sweep.json")):
            rel = os.path.relpath(here, top)
            return "" if rel == os.curdir else rel
        if here == top:
            break
        here = os.path.dirname(here)
    return ""


def _warn(path: str, why: str) -> None:
    print(f"warning: {path} {why}; left out of the report", file=sys.stderr)


def _read_object(path: str) -> dict | None:
    """A JSON object from ``path``; None (with a warning naming it) when it is not one."""
    try:
        value = read_json(path)
    except (OSError, ValueError) as e:
        _warn(path, f"cannot be read ({first_line(e)})")
        return None
    if not isinstance(value, dict):
        _warn(path, f"is not a JSON object (a {type(value).__name__})")
        return None
    return value


def network_label(model: dict) -> tuple[str, str]:
    """(row label, architecture) of a run's ``config['model']``.

    The label is the network's own (``NetworkSpec.label``: ``pre-act ResNet-164``,
    ``WRN-28-10``), plus `` + stoch. depth`` where the config drops branches at
    random (a training option, not part of the architecture spec).
    """
    spec = models.spec_from_config(model)
    label = spec.label
    # The architecture besides depth and shortcuts (WRNs are always pre-activation).
    arch = "pre-act" if spec.preact else ""
    if spec.family == "wrn":
        arch = f"WRN-k{spec.width_factor}"
    elif spec.family in ZOO_ARCH:
        arch = ZOO_ARCH[spec.family]
    if model.get("drop_path") or model.get("global_drop_path"):
        label += " + drop-path"
    if model.get("stochastic_depth"):
        arch = f"{arch} + stoch. depth".strip(" +")
        label += " + stoch. depth"
    return label, arch


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def build_rows(runs: list[Run]) -> list[Row]:
    """Groups runs that differ only in their seed into one row each.

    A config key is listed as a row's variant only where it tells apart runs of
    the same network: keys that follow from the network (a recipe for depth
    110, the ImageNet family of the 18/34-layer nets of a CIFAR study) do not.
    """
    flat = [flatten(r.config) for r in runs]
    names = [(f.get("dataset"), *network_label(r.config["model"]))
             for r, f in zip(runs, flat, strict=True)]
    keys = sorted(set().union(*flat))
    # A key missing from some runs (written by an older version) is not a variant.
    varying = [k for k in keys if k not in (*ARCH_KEYS, *IGNORED_KEYS)
               and all(k in f for f in flat) and any(
        len({json.dumps(f.get(k)) for f, n in zip(flat, names, strict=True) if n == name}) > 1
        for name in set(names))]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run, f, (dataset, label, arch) in zip(runs, flat, names, strict=True):
        variant = ",".join(f"{k.split('.')[-1]}={f.get(k)}" for k in varying)
        if len({r.study for r in runs}) > 1:  # a folder of studies: each kept apart
            variant = ",".join(x for x in (f"study={run.study or '.'}", variant) if x)
        groups[(dataset, bool(f["model.plain"]), int(f["model.depth"]), label, arch,
                variant)].append(run)
    rows = []
    for (dataset, plain, depth, label, arch, variant), members in groups.items():
        row = Row(label + (f" ({variant})" if variant else ""), dataset, depth, plain, variant,
                  members, arch=arch)
        # Means, stds and the lowest best come from finished runs only; the status column
        # says what became of the others.
        finished = [r for r in members if r.status == "finished"]
        row.params = next((r.summary.get("params") for r in members
                           if r.summary and r.summary.get("params")), None)
        row.train_error, row.train_error_std = _mean_std(
            [_pct(r.summary["final_train_error"]) for r in finished])
        row.test_error, row.test_error_std = _mean_std(
            [_pct(r.summary.get("final_test_error")) for r in finished])
        row.val_error, _ = _mean_std([_pct(r.summary.get("final_val_error")) for r in finished])
        bests = [_pct(r.summary.get("best_test_error")) for r in finished]
        row.best_test_error, row.best_test_error_std = _mean_std(bests)
        row.best_test_error_min = min((b for b in bests if b is not None), default=None)
        model_keys = {k.removeprefix("model."): v
                      for k, v in flatten(members[0].config).items()
                      if k.startswith("model.")}
        spec = models.spec_from_config(members[0].config["model"])
        row.pattern, row.name = spec.connectivity, spec.name
        if isinstance(spec, models.FamilySpec) or spec.family == "resnext":
            row.paper_error = paper.zoo_test_error(dataset, spec.name, model_keys)
        else:
            row.paper_error = paper.published_test_error(dataset, model_keys)
        row.status = _status_text(members)
        rows.append(row)
    rows.sort(key=lambda r: (r.variant, r.arch, not r.plain, r.depth))
    return rows


def _status_text(members: list[Run]) -> str:
    """What became of the row's runs: 'finished', or '2 finished; 1 failed' and so on."""
    order = ["finished", "diverged", "failed"]
    order += sorted({r.status for r in members} - {*order, "unfinished"}) + ["unfinished"]
    parts = []
    for status in order:
        hit = [r for r in members if r.status == status]
        if not hit:
            continue
        text = status
        if status == "diverged":
            steps = [str(r.summary.get("diverged_at_step")) for r in hit]
            text = f"diverged at step {', '.join(steps)}"
        parts.append(text if len(members) == 1 else f"{len(hit)} {text}")
    return "; ".join(parts)
