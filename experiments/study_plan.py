"""A study's plan: its runs (names, directories, commands), validated, and cut into packs.

``plan`` expands a config file's ``sweep(add, arg)`` list times the
``--sweep`` lists into runs, each with its own directory ``STUDY/<name>``
(the name made of its swept values) and its own ``train.py`` command, and
validates every one before anything runs. ``make_packs`` groups the runs
that may train as one pack (``training.pack``: runs of one network that
differ only in seeds and scalar optimizer values) in plan order, cut into
packs of at most K. A pack of one run is a plain run, with the
``--workdir`` command. Light: no JAX here (``check_runs`` runs the
validation that needs it in a trainer-side process).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from training import command_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NAME = 120
DONE = ("finished", "diverged")  # a run in either state is not trained again


@dataclass
class Run:
    name: str
    overrides: dict[str, str]  # swept values, as command-line strings
    workdir: str
    command: list[str] = field(default_factory=list)  # its train.py command, alone
    settings: dict[str, str] = field(default_factory=dict)  # every override of its config
    group: str | None = None  # runs of one group may share a pack; None: never packs
    config: dict = field(default_factory=dict)  # its final config, as config.json holds it


@dataclass
class Pack:
    """Runs trained by one ``train.py``; ``command()`` of one run is that run's own."""

    index: int
    runs: list[Run]
    python: str
    train_script: str
    config: str  # FILE[:ARG], absolute

    def command(self, runs: list[Run] | None = None) -> list[str]:
        """The pack's train.py command, or that of ``runs`` (some of its runs: the rest dropped).

        Overrides that every run gives with the same value are shared
        (``--config.KEY=VALUE``); each run's ``--run DIR KEY=VALUE ...`` gives the others.
        """
        runs = self.runs if runs is None else runs
        if len(runs) == 1:
            return runs[0].command
        first, rest = runs[0].settings, runs[1:]
        shared = {k: v for k, v in first.items() if all(r.settings.get(k) == v for r in rest)}
        own = [(r.workdir, {k: v for k, v in r.settings.items() if k not in shared})
               for r in runs]
        return command_line.pack_command(self.python, self.train_script, self.config, shared,
                                         own)


def _value_text(v) -> str:
    return str(v) if not isinstance(v, tuple | list) else repr(tuple(v))


def expand(config_path: str, swept: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The runs of a study: the file's sweep() list times the product of ``--sweep`` lists."""
    path, arg = command_line.split_config_arg(config_path)
    module = command_line.load_module(path)
    base: list[dict[str, str]] = []
    if hasattr(module, "sweep"):

        def add(**overrides):
            base.append({k: _value_text(v) for k, v in overrides.items()})

        try:
            command_line.call_with_arg(module.sweep, arg, add)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"sweep() in {path} failed: {type(e).__name__}: {e}") from e
    if not base:
        base = [{}]
    keys = [k for k, _ in swept]
    product = [dict(zip(keys, values, strict=True))
               for values in itertools.product(*(v for _, v in swept))]
    return [{**b, **p} for b in base for p in product]


def run_name(overrides: dict[str, str]) -> str:
    """'depth=56,plain=True' from the swept values; safe as one path component."""
    if not overrides:
        return "run"
    leaves = [k.split(".")[-1] for k in overrides]
    parts = []
    for key, value in overrides.items():
        short = key.split(".")[-1]
        parts.append(f"{short if leaves.count(short) == 1 else key}={value}")
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    name = re.sub(r"\.{2,}", "_", name).strip(".") or "run"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def absolute_config(config_path: str) -> str:
    """'configs/x.py:ARG' -> '/abs/.../configs/x.py:ARG', resolved against the cwd.

    An absolute path that holds a ':' (which would start the argument) is
    given relative to the repository instead, where the launcher runs trainers.
    """
    path, arg = command_line.split_config_arg(config_path)
    path = os.path.abspath(path)
    if ":" in path:
        path = os.path.relpath(path, REPO)
        if ":" in path:
            raise ValueError(f"the config file's path {path!r} must not contain ':'")
    return path if arg is None else f"{path}:{arg}"


def plan(config_path: str, workdir: str, global_overrides: dict[str, str],
         swept: list[tuple[str, list[str]]], python: str, train_script: str) -> list[Run]:
    """Expands, names and validates every run before any compute.

    Each run's config is loaded here (an unknown key or a bad value is named
    at once), then every check that needs the networks runs in one trainer-side
    process (``training.check_runs``), which also says which runs may share a
    pack. Each run's command names every file by its absolute path (the
    config file resolved against the working directory): it runs from any
    directory.
    """
    study = os.path.realpath(workdir)
    config_arg = absolute_config(config_path)
    train_script = os.path.abspath(train_script)
    runs, seen = [], set()
    for overrides in expand(config_path, swept):
        config = command_line.load_config(config_path, {**global_overrides, **overrides})
        name = run_name(overrides)
        if name in seen:
            raise ValueError(f"two runs of the sweep share the name {name!r}")
        seen.add(name)
        run_dir = os.path.realpath(os.path.join(study, name))
        if os.path.dirname(run_dir) != study:
            raise ValueError(f"run name {name!r} would leave the study directory")
        settings = {**global_overrides, **overrides}
        command = [python, train_script, "--config", config_arg, "--workdir", run_dir]
        command += [f"--config.{k}={v}" for k, v in settings.items()]
        runs.append(Run(name, overrides, run_dir, command, settings, config=config.to_dict()))
    for run, group in zip(runs, check_runs(python, config_arg, [r.settings for r in runs]),
                          strict=True):
        run.group = group
    return runs


def check_runs(python: str, config_arg: str, settings: list[dict[str, str]]) -> list[str | None]:
    """Every run's full validation, in a process of its own; each run's pack group.

    The checks need JAX and the networks (``training.check_runs``); the
    launcher imports neither. Raises the first failing run's one-line
    ValueError.
    """
    out = subprocess.run([python, "-m", "training.check_runs", config_arg], cwd=REPO,
                         input=json.dumps(settings), capture_output=True, text=True)
    if out.returncode == 0:
        return json.loads(out.stdout.strip().splitlines()[-1])
    last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
    raise ValueError(last.removeprefix("error: "))


def make_packs(runs: list[Run], size: int | Callable[[list[Run]], int], *, python: str,
               train_script: str, config: str) -> list[Pack]:
    """The runs cut into packs: by group, in plan order, at most ``size`` runs each.

    ``size`` is K, or a function of a group's runs (``AutoSize``) giving its K.
    A run that cannot pack (``Run.group`` None) is a group of its own.
    """
    groups: dict[object, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.group if run.group is not None else -1 - i, []).append(i)
    chunks: list[list[int]] = []
    for members in groups.values():
        k = size if isinstance(size, int) else size([runs[i] for i in members])
        chunks += [members[start:start + k] for start in range(0, len(members), max(k, 1))]
    chunks.sort()  # packs in the order of their first run: with K = 1, the plan's order
    return [Pack(i, [runs[j] for j in chunk], python, train_script, config)
            for i, chunk in enumerate(chunks)]
