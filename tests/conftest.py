"""Test set-up and shared helpers: four fake CPU devices, fast compilation, tiny runs.

The environment is set before JAX initialises. Tests use tiny models and few
steps, where XLA compile time dominates, so most compiler optimisations are
switched off. Subprocesses started by tests inherit the same environment
variables. Test modules import the helpers below with ``from conftest import ...``.
"""

import functools
import json
import os
import sys
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

from data import feeds  # noqa: E402
from data.device import replicate  # noqa: E402
from training import command_line, dispatch, parallel, schedule, steps  # noqa: E402

TINY = {  # depth 14: two blocks per stage, so the scanned-blocks path runs too
    "model.depth": "14",
    "model.widths": "(4,8,16)",
    "batch_size": "32",
    "num_steps": "20",
    "log_every_steps": "5",
    "eval_every_steps": "10",
    "checkpoint_every_steps": "10",
}


def tiny_config(path="configs/digits.py:resnet-14", **overrides):
    """A locked config for a tiny digits run (20 steps), with ``key=value`` overrides."""
    return command_line.load_config(path, {**TINY,
                                           **{k: str(v) for k, v in overrides.items()}})


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_cmd(workdir, *extra):
    """The command line of ``train.py`` for the tiny run in ``workdir``."""
    args = [f"--config.{k}={v}" for k, v in TINY.items()]
    return [sys.executable, "train.py", "--config", "configs/digits.py:resnet-14",
            "--workdir", str(workdir), *args, *extra]


def run_parts(config, data=None, num_train=None):
    """What ``train.train_and_evaluate`` builds before its loop, without a run directory.

    ``mesh``, ``feed`` (in-memory; ``data`` replaces the dataset), ``sched``,
    a replicated fresh ``state`` and ``chunk(state, step)``. With ``num_train``
    no feed is built (state and schedule only).
    """
    mesh = parallel.make_mesh()
    feed = None if num_train is not None else feeds.InMemoryFeed(config, mesh, data)
    sched = schedule.derive_schedule(config, feed.num_train if feed else num_train)
    state = replicate(steps.create_train_state(config), mesh)
    chunk = None
    if feed is not None:
        step_fn = parallel.data_parallel(
            functools.partial(steps.train_step, config=config, sched=sched), mesh)
        chunk = dispatch.make_train_chunk(feed, step_fn, log_every=config.log_every_steps,
                                          total_steps=sched.total_steps, start_step=0,
                                          loop_on_device=config.loop_on_device)
    return types.SimpleNamespace(mesh=mesh, feed=feed, sched=sched, state=state, chunk=chunk)
