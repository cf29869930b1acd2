"""Test set-up and shared helpers: four fake CPU devices, fast compilation, tiny runs.

The environment is set before JAX initialises. Tests use tiny models and few
steps, where XLA compile time dominates, so most compiler optimisations are
switched off (and XLA:CPU's faster-compiling emitters chosen where jaxlib has
them, ``xla_flags``), and every process of the suite (pytest-xdist workers and the
``train.py`` subprocesses they start, which inherit these variables) shares
one persistent compilation cache (``training.compile_cache``), in a
directory of its own beside the users' one: each program is compiled once
per machine, not once per test.

Expensive runs are trained once per session and shared (``shared_run``):
tests read them, or copy them into their own directory to change them. Test
modules import the helpers below with ``from conftest import ...``.
"""

import contextlib
import io
import json
import os
import shutil
import sys
import time
import types

import numpy as np

from training import compile_cache


def _fast_compile_flags():
    """XLA flags that halve XLA:CPU's compile time of the tiny test programs, where known.

    jaxlib 0.10 still has XLA:CPU's older elemental emitters beside its MLIR fusion
    emitters (``--xla_cpu_use_fusion_emitters=false``); they compile a tiny training
    chunk in half the time. Later jaxlibs have no such flag (and XLA aborts on an
    unknown one), so they get none. Tests only: users' programs keep XLA's defaults.
    """
    from importlib.metadata import version  # noqa: PLC0415

    major, minor = (int(x) for x in version("jaxlib").split(".")[:2])
    return ["--xla_cpu_use_fusion_emitters=false"] if (major, minor) < (0, 11) else []


def xla_flags(devices, env=None):
    """``XLA_FLAGS`` for a test process with ``devices`` fake CPU devices (and the suite's
    compile-time flags), keeping the other flags of ``env`` (default: this process's)."""
    env = os.environ if env is None else env
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags += [f for f in _fast_compile_flags() if f not in flags]
    return " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])


def env_with_devices(devices, env=None):
    """``env`` (default: this process's environment) for a subprocess with ``devices`` fake
    CPU devices (``xla_flags``)."""
    env = os.environ if env is None else env
    return {**env, "XLA_FLAGS": xla_flags(devices, env)}


os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = xla_flags(4)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", compile_cache.default_dir() + "-tests")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
compile_cache.enable()

import filelock  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import models  # noqa: E402
from data import feeds  # noqa: E402
from data.device import replicate  # noqa: E402
from training import command_line, parallel, programs, schedule, steps  # noqa: E402

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


TIMING = ("images_per_sec", "elapsed_s")  # metrics that vary from one run to the next


def without_timing(lines):
    """Metrics lines less their timing fields: what two runs of one config must agree on."""
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def tiny_argv(workdir, path="configs/digits.py:resnet-14", **overrides):
    """``train.main``'s arguments for the tiny run in ``workdir``, with ``key=value`` overrides."""
    settings = {**TINY, **{k: str(v) for k, v in overrides.items()}}
    return ["--config", path, "--workdir", str(workdir),
            *[f"--config.{k}={v}" for k, v in settings.items()]]


def checkpoint_steps(workdir):
    """The complete checkpoints of a run, oldest first (none: [])."""
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def wait_until(condition, *, proc=None, timeout=300, what="the condition"):
    """Polls ``condition()`` until it holds; fails if ``proc`` ends first or time runs out.

    Kill tests use it to strike when the run has written something (a
    checkpoint, a metrics line), not after a guessed sleep.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.005)


def _shared_root(tmp_path_factory):
    """A directory every pytest-xdist worker of this session sees (the base temp's parent)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs"
    root.mkdir(exist_ok=True)
    return root


def shared_run(tmp_path_factory, name, argv):
    """The run ``train.main(argv + ['--workdir', DIR])`` trains, once per test session.

    Every worker of the session gets the same directory (the first to ask
    trains it, under a file lock, the others wait for it). Tests must not
    change it: ``copy_run`` it into their own directory first. Returns
    ``(workdir, result)``: the exit code, stdout and stderr of the training.
    Files get mode 0644 (umask 022), whatever the caller's umask.
    """
    root = _shared_root(tmp_path_factory)
    workdir, done = root / name, root / f"{name}.json"
    with filelock.FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            import train  # noqa: PLC0415

            shutil.rmtree(workdir, ignore_errors=True)
            out, err = io.StringIO(), io.StringIO()
            old_mask = os.umask(0o022)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = train.main([*argv, "--workdir", str(workdir)])
            finally:
                os.umask(old_mask)
            done.write_text(json.dumps({"code": code, "stdout": out.getvalue(),
                                        "stderr": err.getvalue()}))
    return workdir, types.SimpleNamespace(**json.loads(done.read_text()))


def copy_run(src, dst):
    """A copy of a run directory (a shared run) that a test may change; returns ``dst``."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def tiny_run(tmp_path_factory, **overrides):
    """The tiny run (``TINY`` with these overrides), trained once per session: (dir, result)."""
    name = "tiny" + "".join(f",{k}={v}" for k, v in sorted(overrides.items()))
    argv = tiny_argv("unused", **overrides)
    return shared_run(tmp_path_factory, name, argv[:2] + argv[4:])


def train_cmd(workdir, *extra):
    """The command line of ``train.py`` for the tiny run in ``workdir``."""
    args = [f"--config.{k}={v}" for k, v in TINY.items()]
    return [sys.executable, "train.py", "--config", "configs/digits.py:resnet-14",
            "--workdir", str(workdir), *args, *extra]


def launch_sweep(config, fake_train, study, *extra):
    """The sweep launcher on ``config`` with ``fake_train`` standing in for train.py."""
    import subprocess  # noqa: PLC0415

    return subprocess.run([sys.executable, "-m", "experiments.sweep", str(config), "--workdir",
                           str(study), "--train-script", str(fake_train), "--no-report", *extra],
                          capture_output=True, text=True)


def run_parts(config, data=None, num_train=None):
    """What the training loop builds for one fresh run, without a run directory.

    ``mesh``, ``feed`` (in-memory; ``data`` replaces the dataset), ``sched``,
    a replicated fresh ``state`` and ``chunk(state, step)`` (the loop's own
    program, ``training.programs``). With ``num_train`` no feed is built
    (state and schedule only).
    """
    mesh = parallel.make_mesh()
    feed = None if num_train is not None else feeds.InMemoryFeed(config, mesh, data)
    sched = schedule.derive_schedule(config, feed.num_train if feed else num_train)
    state = replicate(steps.create_train_state(config), mesh)
    chunk = None
    if feed is not None:
        chunk = programs.make_program([config], sched, mesh, feed, start=0).chunk
    return types.SimpleNamespace(mesh=mesh, feed=feed, sched=sched, state=state, chunk=chunk)


def unrolled_and_scanned(**cfg):
    """Two models of one architecture, unrolled and scanned, holding the same weights."""
    base = dict(family="cifar", depth=20, widths=(4, 8, 16), num_classes=3, in_channels=1)
    base.update(cfg)
    unrolled = models.build_model(base, seed=0)
    scanned = models.build_model({**base, "scan_blocks": True}, seed=1)
    for a, b in zip(unrolled.stages, scanned.stages, strict=True):
        assert len(b.blocks) == 1 and b.num_blocks == len(a.blocks) == 3
        nnx.update(b.blocks[0], nnx.state(a.blocks[0]))
        rest = [nnx.state(block) for block in list(a.blocks)[1:]]
        nnx.update(b.repeated, jax.tree.map(lambda *xs: jnp.stack(xs), *rest))
    nnx.update(scanned.stem, nnx.state(unrolled.stem))
    nnx.update(scanned.head, nnx.state(unrolled.head))
    if unrolled.final is not None:
        nnx.update(scanned.final, nnx.state(unrolled.final))
    return unrolled, scanned


def make_run(study, name, *, depth, plain, train_errors, test_errors, seed=0, status="finished",
             diverged_at=None, params=1000, responses=None, step_losses=None, val_errors=None):
    run = study / name
    run.mkdir(parents=True)
    config = {"dataset": "cifar10", "seed": seed,
              "model": {"family": "cifar", "depth": depth, "plain": plain, "shortcut": None}}
    (run / "config.json").write_text(json.dumps(config))
    lines = []
    for i, (tr, te) in enumerate(zip(train_errors, test_errors, strict=True)):
        line = {"step": 100 * (i + 1), "train_error": tr, "train_loss": 1.0}
        if step_losses is not None:
            line["train_losses"] = step_losses[i]
            line["train_loss"] = float(np.mean(step_losses[i]))
        if te is not None:
            line["test_error"] = te
            if val_errors is not None:
                line["val_error"] = val_errors[i]
        lines.append(line)
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if status is not None:
        tests = [te for te in test_errors if te is not None]
        summary = {"status": status, "params": params, "final_train_error": train_errors[-1],
                   "final_test_error": tests[-1] if tests else None,
                   "best_test_error": min(tests) if tests else None}
        if status == "diverged":
            summary.update(final_train_error=None, diverged_at_step=diverged_at)
        (run / "summary.json").write_text(json.dumps(summary))
    if responses:
        blocks = [{"index": i, "stage": 0, "std": s} for i, s in enumerate(responses)]
        (run / "layer_responses.json").write_text(json.dumps({"blocks": blocks}))
    return run
