"""Fine-tuning: start a run from another run's checkpoint, optionally with frozen layers.

``finetune.from_run`` names another run directory. Its ``config.json`` is
read, its network built (shapes only) and its checkpoint restored; every
parameter and BatchNorm statistic except the classifier head is copied into
the new network, whose head keeps its fresh initialisation (so
``model.num_classes`` may differ from the source's). Every other shape must
match: the first one that does not is named in a one-line error.

``finetune.freeze`` keeps the first layers fixed (``training.freeze``), so
the frozen part computes exactly the features it computed in the source.

The import happens only when the run starts from nothing: a fine-tuning run
that resumes from its own checkpoint never reads the source again (which
may since have been moved or deleted).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

import models
from training import checkpoints, param_paths, progress, run_dir
from training.freeze import HEAD, freezes, frozen_predicate_of


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks ``finetune.*`` against the network (its stages); one-line ValueErrors."""
    ft = config.finetune
    frozen_predicate_of(config)  # validates finetune.freeze against the number of stages
    if ft.from_run is None and (freezes(ft.freeze) or ft.from_step is not None):
        raise ValueError("finetune.freeze and finetune.from_step need finetune.from_run "
                         "(the run to start from)")
    if ft.from_step is not None and ft.from_step < 0:
        raise ValueError(f"finetune.from_step must be >= 0 (or None = latest), got {ft.from_step}")


# --------------------------------------------------------------------------- the source run


def _flat_shapes(model: nnx.Module) -> dict[tuple, Any]:
    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    flat = {}
    for tree in (params, batch_stats):
        param_paths.map_with_names(lambda path, a: flat.setdefault(path, a.shape), tree)
    return flat


def _abstract_model(model_config: Any) -> nnx.Module:
    return nnx.eval_shape(lambda: models.build_model(model_config))


def source_step(config: ml_collections.ConfigDict) -> tuple[dict, int]:
    """Checks the source run against ``config``; returns its config and checkpoint step.

    Reads files and builds both networks' shapes only (no compute): a missing
    run, a run without (that) checkpoint, inputs of another channel count or
    a parameter whose shape differs is a one-line ValueError.
    """
    run, want = config.finetune.from_run, config.finetune.from_step
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        what = "is not a run directory (no config.json)" if os.path.isdir(run) else "does not exist"
        raise ValueError(f"finetune.from_run {run!r} {what}")
    try:
        source = run_dir.read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"finetune.from_run {run!r}: cannot read config.json ({e})") from e
    steps = checkpoints.checkpoint_steps(run)
    if not steps:
        raise ValueError(f"finetune.from_run {run!r} has no checkpoint")
    step = steps[-1] if want is None else int(want)
    if step not in steps:
        raise ValueError(f"finetune.from_step {step} is not a checkpoint of {run!r}; it has "
                         f"steps {', '.join(map(str, steps))}")
    src_model = source.get("model", {})
    src_in, new_in = int(src_model.get("in_channels", 3)), int(config.model.in_channels)
    if src_in != new_in:
        raise ValueError(
            f"finetune: {run!r} was trained on {src_in}-channel inputs "
            f"(dataset {source.get('dataset')}), this run has {new_in} (dataset {config.dataset})")
    if bool(src_model.get("scan_blocks", False)) != bool(config.model.scan_blocks):
        raise ValueError(f"finetune: model.scan_blocks must match the source run's "
                         f"({src_model.get('scan_blocks')}): it changes the parameter layout")
    try:
        src_shapes = _flat_shapes(_abstract_model(src_model))
    except (ValueError, TypeError) as e:
        raise ValueError(f"finetune: cannot build the network of {run!r}: {e}") from e
    new_shapes = _flat_shapes(_abstract_model(config.model))
    for p, shape in new_shapes.items():  # in the network's own (sorted) order
        if p[0] == HEAD:
            continue
        if p not in src_shapes:
            raise ValueError(f"finetune: parameter {'/'.join(map(str, p))} is not in {run!r} "
                             "(another architecture?); only the classifier head may differ")
        if src_shapes[p] != shape:
            raise ValueError(f"finetune: parameter {'/'.join(map(str, p))} has shape {shape} "
                             f"here but {src_shapes[p]} in {run!r}; only the classifier head "
                             "may differ")
    extra = [p for p in src_shapes if p[0] != HEAD and p not in new_shapes]
    if extra:
        raise ValueError(f"finetune: parameter {'/'.join(map(str, extra[0]))} of {run!r} has no "
                         "place in this network (another architecture?)")
    return source, step


def import_source(config: ml_collections.ConfigDict, params: Any,
                  batch_stats: Any) -> tuple[Any, Any]:
    """``(params, batch_stats)`` of a fresh network with everything but the head from the source.

    The source checkpoint's params and BatchNorm statistics are restored
    (nothing else of its state: its optimizer may differ) onto this process's
    first device, then copied leaf by leaf, cast to this network's dtypes.
    """
    source, step = source_step(config)
    _, src_params, src_stats, _ = nnx.split(_abstract_model(source["model"]), nnx.Param,
                                            nnx.BatchStat, ...)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                        {"params": src_params, "batch_stats": src_stats})
    restored = checkpoints.restore_subtrees(config.finetune.from_run, step, like)
    flat = {}
    for tree in (restored["params"], restored["batch_stats"]):
        param_paths.map_with_names(lambda path, a: flat.setdefault(path, a), tree)

    def take(path, new):
        if path[0] == HEAD:
            return new
        return np.asarray(flat[path]).astype(new.dtype)

    params, batch_stats = (param_paths.map_with_names(take, params),
                           param_paths.map_with_names(take, batch_stats))
    progress.say(describe(config, params, step))
    return params, batch_stats


def describe(config: ml_collections.ConfigDict, params: Any, step: int) -> str:
    """One line: what a fine-tuning run loaded from its source and what it froze."""
    paths = []
    param_paths.map_with_names(lambda path, _: paths.append(path), params)
    is_frozen = frozen_predicate_of(config)
    loaded = sum(p[0] != HEAD for p in paths)
    frozen = sum(is_frozen(p) for p in paths)
    freeze = config.finetune.freeze
    what = (f"froze {freeze} ({frozen} parameter arrays; their BatchNorm runs in inference mode)"
            if freezes(freeze) else "nothing frozen")
    return (f"fine-tuning from {config.finetune.from_run} (checkpoint {step}): loaded "
            f"{loaded} of {len(paths)} parameter arrays and the BatchNorm statistics; the "
            f"classifier head starts fresh; {what}")
