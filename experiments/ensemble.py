"""Ensembles of trained runs: the mean of the members' softmax, and its error beside theirs.

    python -m experiments.ensemble RUN_DIR [RUN_DIR ...] [--checkpoints latest|all|STEP,...]
                                   [--split test|val] [--out FILE|DIR]

Each member is one checkpoint of one run directory: by default the latest
checkpoint of each run (an ensemble of independently trained networks);
``--checkpoints all`` takes every checkpoint Orbax kept (``keep_checkpoints``
of them; with one run, a snapshot ensemble of its last checkpoints) and
``--checkpoints 400,600`` those steps of every run. Every member is rebuilt
from its run's ``config.json``, so members may differ in depth, width or
shortcuts, but must share the dataset and the number of classes (and, for
``--split val``, the held-out examples). Each member's class probabilities
are computed on device, in the evaluation pass's batches and with the run's
own mean image; the ensemble averages them on the host and predicts the
argmax. Prints a table (error %, negative log-likelihood), the path of the
result file, and one JSON line, the result, also written to that file.

The result file is ``--out FILE``, or, when ``--out`` is an existing directory
or not given, ``ensemble-<runs>[@<checkpoints>][-val].json`` in that directory
or by default in the directory that holds the run directories (their common
parent), never inside a run: ``<runs>`` are the run directories' names joined
by ``+``, e.g. ``runs/c10/ensemble-depth=20,plain=False+depth=56,plain=False.json``
or ``runs/ensemble-digits-resnet-20@all.json`` (a name too long for a file
system becomes ``ensemble-<first run>+<N>-more-<hash>...``). Bad input,
``--out`` in a directory that does not exist included, is one ``error:`` line
and exit code 2, before any member is evaluated.

In-memory datasets (digits, CIFAR) only, in one process; ImageNet (streamed)
is refused with an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys

import ml_collections
import numpy as np

import models
import train
from configs import default
from data import datasets
from data.device import replicate
from data.feeds import InMemoryFeed
from training import command_line, compile_cache, measure, parallel, steps
from training.checkpoints import Checkpointer
from training.run_dir import read_json, write_json_atomic

SPLITS = ("test", "val")
MAX_NAME = 200  # characters of a default result file's name (file systems allow 255 bytes)
DATA_KEYS = ("dataset", "data_dir", "data_seed", "val_examples", "imbalance", "normalize",
             "whiten_over", "whiten_epsilon")


def config_from_json(saved: dict) -> ml_collections.ConfigDict:
    """A run's locked config from its config.json: lists back to tuples, keys a run
    saved before they existed take today's defaults (which keep the old behaviour)."""

    def update(node: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
                update(node[key], value)
            else:
                with node.ignore_type():
                    node[key] = tuple(value) if isinstance(value, list) else value

    config = default.get_config()
    update(config, saved)
    config.lock()
    return config


@dataclasses.dataclass
class Member:
    """One checkpoint of one run."""

    run_dir: str
    step: int
    config: ml_collections.ConfigDict
    name: str  # the network's name, e.g. resnet-20


def parse_checkpoints(text: str) -> str | list[int]:
    """'latest' | 'all' | '400,600' -> the selection."""
    if text in ("latest", "all"):
        return text
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        steps = []
    if not steps or any(s < 0 for s in steps):
        raise ValueError(f"--checkpoints must be latest, all or steps like 400,600; got {text!r}")
    return steps


def find_members(run_dirs: list[str], checkpoints: str | list[int]) -> list[Member]:
    """The (run, step) members, in the order given; each run's config read and validated."""
    if len({os.path.realpath(d) for d in run_dirs}) != len(run_dirs):
        raise ValueError("a run directory is given twice (it would count double)")
    members = []
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"{run_dir} is not a run directory (no config.json)")
        config = config_from_json(read_json(path))
        train.validate_config(config, None)
        steps = []
        if os.path.isdir(os.path.join(run_dir, "checkpoints")):
            ckpt = Checkpointer(run_dir, config.keep_checkpoints)
            steps = ckpt.all_steps()
            ckpt.close()
        if not steps:
            raise ValueError(f"{run_dir} has no checkpoint")
        if checkpoints == "latest":
            chosen = steps[-1:]
        elif checkpoints == "all":
            chosen = steps
        else:
            missing = [s for s in checkpoints if s not in steps]
            if missing:
                raise ValueError(f"{run_dir} has no checkpoint at step "
                                 f"{', '.join(map(str, missing))}; it has {steps}")
            chosen = list(checkpoints)
        name = models.spec_from_config(config.model).name
        members += [Member(run_dir, s, config, name) for s in chosen]
    return members


def check_compatible(members: list[Member], split: str) -> None:
    """Members must predict the same classes of the same examples."""
    first = members[0]

    def differ(what: str, get) -> None:
        values = {json.dumps(get(m.config), sort_keys=True) for m in members}
        if len(values) > 1:
            listing = ", ".join(f"{m.run_dir}: {json.dumps(get(m.config))}" for m in members)
            raise ValueError(f"ensemble members must share {what}; got {listing}")

    differ("the dataset", lambda c: c.dataset)
    differ("model.num_classes", lambda c: c.model.num_classes)
    if first.config.dataset not in datasets.IN_MEMORY_DATASETS:
        raise ValueError(f"ensembles of streamed datasets ({first.config.dataset}) are not "
                         f"supported; in-memory: {', '.join(datasets.IN_MEMORY_DATASETS)}")
    if split == "val":
        if any(not m.config.val_examples for m in members):
            raise ValueError("--split val needs runs trained with val_examples > 0")
        differ("the validation split (val_examples, data_seed)",
               lambda c: [c.val_examples, c.data_seed])


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = probs[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(p, np.finfo(np.float32).tiny))))


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    wrong = np.argmax(probs, -1) != labels
    return {"error": float(wrong.mean()), "wrong": int(wrong.sum()), "loss": _nll(probs, labels)}


def member_probabilities(members: list[Member], split: str, mesh=None
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(labels, one (N, classes) softmax per member) on ``split``, computed on device.

    Data is loaded once per distinct data config (a member's normalisation
    statistics and its training subset depend on it); each run's model is built and compiled
    once, then every chosen checkpoint is restored into it.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    loaded: dict[str, datasets.InMemoryData] = {}
    labels, probs, feeds = None, [], {}
    for m in members:
        saved = m.config.to_dict()
        key = json.dumps({k: saved.get(k) for k in DATA_KEYS}, sort_keys=True)
        if key not in loaded:
            loaded[key] = datasets.load_in_memory(m.config)
        data = loaded[key]
        examples = data.test if split == "test" else data.val
        if labels is None:
            labels = examples.labels
        elif not np.array_equal(labels, examples.labels):
            raise ValueError(f"{m.run_dir}: its {split} split differs from the first member's")
        if m.run_dir not in feeds:
            feeds[m.run_dir] = (InMemoryFeed(m.config, mesh, data),
                                replicate(steps.create_train_state(m.config), mesh))
        feed, like = feeds[m.run_dir]
        ckpt = Checkpointer(m.run_dir, m.config.keep_checkpoints)
        try:
            state = ckpt.restore(m.step, like)
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds for a mismatched tree
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"cannot restore {m.run_dir} step {m.step} into the model of its "
                             f"config.json ({type(e).__name__}: {first})") from e
        finally:
            ckpt.close()
        probs.append(measure.class_probabilities(feed, split, state))
    return labels, probs


def ensemble(run_dirs: list[str], checkpoints: str | list[int] = "latest",
             split: str = "test") -> dict:
    """Evaluates every member and the mean of their softmax on ``split``; returns the result."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    members = find_members(run_dirs, checkpoints)
    check_compatible(members, split)
    labels, probs = member_probabilities(members, split)
    rows = [{"run": m.run_dir, "step": m.step, "name": m.name, **_scores(p, labels)}
            for m, p in zip(members, probs, strict=True)]
    mean = np.mean(np.stack(probs).astype(np.float64), axis=0)
    return {
        "split": split,
        "dataset": members[0].config.dataset,
        "num_examples": len(labels),
        "members": rows,
        "mean_member_error": float(np.mean([r["error"] for r in rows])),
        "ensemble": {"num_members": len(members), **_scores(mean, labels)},
    }


def render_table(result: dict) -> str:
    """The members and the ensemble, one row each."""
    width = max(len("ensemble"), *(len(f"{r['run']} @{r['step']}") for r in result["members"]))
    lines = [f"{'member':<{width}}  {'network':<12} {'error %':>8} {'NLL':>8}"]
    for r in result["members"]:
        label = f"{r['run']} @{r['step']}"
        lines.append(f"{label:<{width}}  {r['name']:<12} {100 * r['error']:8.2f} "
                     f"{r['loss']:8.4f}")
    e = result["ensemble"]
    lines.append(f"{'ensemble':<{width}}  {str(e['num_members']) + ' members':<12} "
                 f"{100 * e['error']:8.2f} {e['loss']:8.4f}")
    lines.append(f"({result['split']} split of {result['dataset']}, {result['num_examples']} "
                 f"examples; mean member error {100 * result['mean_member_error']:.2f}%)")
    return "\n".join(lines)


def default_name(run_dirs: list[str], checkpoints: str | list[int] = "latest",
                 split: str = "test") -> str:
    """``ensemble-<run names joined by +>[@<checkpoints>][-val].json``: what was ensembled."""
    names = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    suffix = "" if checkpoints == "latest" else "@" + (
        checkpoints if isinstance(checkpoints, str) else ",".join(map(str, checkpoints)))
    suffix += "" if split == "test" else f"-{split}"
    name = f"ensemble-{'+'.join(names)}{suffix}.json"
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha1("\0".join([*map(os.path.abspath, run_dirs), suffix]).encode())
    head = names[0][:80]
    return f"ensemble-{head}+{len(names) - 1}-more-{digest.hexdigest()[:10]}{suffix[:60]}.json"


def default_dir(run_dirs: list[str]) -> str:
    """The common parent of the run directories: a directory none of them contains.

    Relative to the working directory when the run directories were given so.
    """
    parent = os.path.commonpath([os.path.dirname(os.path.abspath(d)) for d in run_dirs])
    return parent if any(os.path.isabs(d) for d in run_dirs) else os.path.relpath(parent)


def output_path(out: str | None, run_dirs: list[str], checkpoints: str | list[int] = "latest",
                split: str = "test") -> str:
    """Where the result goes (see the module docstring); ValueError if it cannot be written."""
    if out is not None and not os.path.isdir(out):
        directory = out if out.endswith(os.sep) else os.path.dirname(out) or os.curdir
        if not os.path.isdir(directory):
            raise ValueError(f"--out {out}: directory {directory} does not exist")
        path = out
    else:
        directory = default_dir(run_dirs) if out is None else out
        path = os.path.join(directory, default_name(run_dirs, checkpoints, split))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: directory {directory} is not writable "
                         "(choose another with --out)")
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = command_line.ArgumentParser(prog="python -m experiments.ensemble",
               description="Average the softmax of several runs (or checkpoints) on a split.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--checkpoints", default="latest",
                   help="latest (default), all, or steps like 400,600 (each run)")
    p.add_argument("--split", default="test", help="test (default) or val")
    p.add_argument("--out", default=None, metavar="FILE|DIR",
                   help="JSON result file, or a directory for the default name (default: "
                   "ensemble-<runs>[@<checkpoints>][-val].json beside the run directories)")
    args = p.parse_args(argv)
    args.checkpoints = parse_checkpoints(args.checkpoints)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    compile_cache.enable()
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        args = parse_args(argv)
        out = output_path(args.out, args.run_dirs, args.checkpoints, args.split)
        result = ensemble(args.run_dirs, args.checkpoints, args.split)
        try:
            write_json_atomic(out, result)
        except OSError as e:
            raise ValueError(f"cannot write {out}: {e.strerror}") from e
    except ValueError as e:
        return command_line.bad_input(e)
    print(render_table(result))
    print(f"written to {out}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
