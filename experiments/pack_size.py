"""How many runs of one network to train as one pack (the sweep's ``--pack auto``), measured.

    python -m experiments.pack_size configs/cifar10.py:resnet-110 --max-runs 5 [--config.k=v ...]

``auto_pack_size(config, max_runs)`` is 1 for a streamed dataset (a pack
needs its data in memory) and, without measuring, up to ``CPU_PACK`` on CPU
(BENCHMARKS.md: a pack of 4 costs nothing per image there, and a sweep saves
a compilation per packed run). On a GPU or TPU it times a few
steps of the network's training step (``experiments.benchmark``, synthetic
data of the dataset's shape) alone and packed K = 2, 4, 8, 16 and
``max_runs`` (none above ``max_runs``), stops at the first K that runs out
of memory, and picks the largest K whose images/s (every run's images) is
within 5% of the best measured: as fast per image as any, in the fewest
trainers. It says in one line what it measured and chose.

The command prints that line, then one JSON line (``pack``, ``backend``,
``images_per_sec`` per K, ``line``): the sweep launcher runs it in a
subprocess (``AutoSize``), so that the launcher itself never holds the
accelerator memory its trainers need. ``parse_pack`` and ``default_pack``
read ``--pack`` and a config file's ``pack(arg)``; like ``AutoSize`` they run
in the launcher and import no JAX.
"""

from __future__ import annotations

import copy
import gc
import json
import subprocess
import sys
from collections.abc import Callable
from typing import TextIO

import ml_collections

from data.datasets import IN_MEMORY_DATASETS
from experiments.study_plan import REPO, Run
from training import command_line, compile_cache, exits
from training.run_dir import status_of

CANDIDATES = (1, 2, 4, 8, 16)
CPU_PACK = 4  # the largest pack measured on CPU (no slower per image than a lone run)
WITHIN = 0.05  # a K within this share of the best images/s counts as as fast
PROBE_STEPS, PROBE_REPEATS = 5, 2  # steps per timed chunk, timed chunks (after one compiling)


def candidates(max_runs: int) -> list[int]:
    """1, 2, 4, 8, 16 up to ``max_runs``, and ``max_runs`` itself below 16 (one pack of all)."""
    ks = [k for k in CANDIDATES if k <= max_runs]
    if max_runs < CANDIDATES[-1] and max_runs not in ks:
        ks.append(max_runs)
    return ks


def out_of_memory(error: BaseException) -> bool:
    """XLA's error for an allocation the device cannot hold."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure(config: ml_collections.ConfigDict, runs: int, *, steps: int = PROBE_STEPS,
            repeats: int = PROBE_REPEATS) -> float:
    """Images/s (every run's) of ``runs`` runs of ``config`` packed; 1: the lone run's step."""
    from experiments import benchmark  # noqa: PLC0415 - JAX only where it is measured

    try:
        result = benchmark.benchmark(copy.deepcopy(config), steps_per_chunk=steps,
                                     repeats=repeats, synthetic=True, conv_bound=False,
                                     pack_runs=None if runs == 1 else runs)
    finally:
        gc.collect()  # the measured pack's buffers, before the next one
    return float(result["images_per_sec"])


def choose(measured: dict[int, float]) -> int:
    """The largest K whose images/s is within ``WITHIN`` of the best."""
    best = max(measured.values())
    return max(k for k, v in measured.items() if v >= (1 - WITHIN) * best)


def auto_pack_size(config: ml_collections.ConfigDict, max_runs: int, backend: str | None = None,
                   *, measure_fn: Callable[[ml_collections.ConfigDict, int], float] | None = None,
                   out: TextIO | None = None) -> int:
    """The pack size for up to ``max_runs`` runs of ``config`` on this machine (see the top).

    ``backend`` (default: JAX's) decides whether to measure: a ``'gpu'`` given
    on a CPU machine measures on the CPU (tests). ``measure_fn(config, K)``
    gives K runs' images/s (default ``measure``). Says what it did on ``out``.
    """
    k, line, _, _ = _auto(config, max_runs, backend, measure_fn or measure)
    print(line, file=sys.stdout if out is None else out, flush=True)
    return k


def _auto(config: ml_collections.ConfigDict, max_runs: int, backend: str | None,
          measure_fn: Callable[[ml_collections.ConfigDict, int], float]
          ) -> tuple[int, str, dict[int, float], str]:
    """(K, the line that says why, images/s per K measured, the backend)."""
    if backend is None:
        import jax  # noqa: PLC0415

        backend = jax.default_backend()
    if config.dataset not in IN_MEMORY_DATASETS:
        return (1, f"pack auto: 1 (a pack needs an in-memory dataset, not {config.dataset})",
                {}, backend)
    if backend == "cpu":
        k = min(max_runs, CPU_PACK)
        return k, (f"pack auto: {k} on CPU (not measured: packs of up to {CPU_PACK} cost nothing "
                   "per image there and compile once: BENCHMARKS.md)"), {}, backend
    if max_runs <= 1:
        return 1, "pack auto: 1 (one run)", {}, backend
    measured: dict[int, float] = {}
    oom = None
    for k in candidates(max_runs):
        try:
            measured[k] = measure_fn(config, k)
        except Exception as e:  # noqa: BLE001 - out of memory ends the probe; others raise
            if not out_of_memory(e) or not measured:
                raise
            oom = k
            break
    k = choose(measured)
    shown = ", ".join(f"K={n}: {v:,.0f}" for n, v in measured.items())
    if oom is not None:
        shown += f", K={oom}: out of memory"
    line = (f"pack auto: images/s on {backend} (batch {config.batch_size} per run) {shown} "
            f"-> packs of {k} (the largest within {WITHIN:.0%} of the best)")
    return k, line, measured, backend


def parse_pack(text: str | int, where: str = "--pack") -> int | str:
    """'auto' or a positive integer (as text or as a number); one-line ValueError otherwise."""
    if text == "auto":
        return "auto"
    if isinstance(text, int) and not isinstance(text, bool) and text >= 1:
        return text
    if isinstance(text, str) and text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"{where} must be a positive integer or 'auto', got {text!r}")


def default_pack(config_path: str) -> int | str:
    """The config file's ``pack(arg)`` (called like its ``sweep``), or 1 when it has none."""
    path, arg = command_line.split_config_arg(config_path)
    module = command_line.load_module(path)
    if not hasattr(module, "pack"):
        return 1
    try:
        value = command_line.call_with_arg(module.pack, arg)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is bad input
        raise ValueError(f"pack() in {path} failed: {type(e).__name__}: {e}") from e
    return 1 if value is None else parse_pack(value, f"pack() in {path}")


class AutoSize:
    """``--pack auto``: each group's K, measured by ``experiments.pack_size`` in a subprocess.

    Once a probe says the backend is the CPU (where K is ``pack_size.CPU_PACK``,
    unmeasured), no other group is probed; nor is a group with fewer than two
    runs left to train (K changes nothing).
    """

    def __init__(self, python: str, config: str, env: dict[str, str], out: TextIO):
        self.python, self.config, self.env, self.out = python, config, env, out
        self.backend: str | None = None

    def __call__(self, runs: list[Run]) -> int:
        left = [run for run in runs if status_of(run.workdir) not in ("finished", "diverged")]
        if len(left) < 2:
            return 1
        if self.backend == "cpu":
            return min(len(runs), CPU_PACK)
        command = [self.python, "-m", "experiments.pack_size", self.config,
                   "--max-runs", str(len(runs)),
                   *(f"--config.{k}={v}" for k, v in runs[0].settings.items())]
        out = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True)
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
            k, self.backend, line = int(result["pack"]), result["backend"], result["line"]
            if result["images_per_sec"]:
                line += f" [the network of {runs[0].name}: {len(runs)} runs]"
        except (IndexError, ValueError, KeyError, TypeError):
            last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            k, line = 1, f"pack auto: the probe of {runs[0].name} failed ({last}): no packing"
        print(line, file=self.out, flush=True)
        return k


def main(argv: list[str] | None = None) -> int:
    exits.die_with_parent()  # started by the sweep launcher: not to outlive it
    compile_cache.enable()
    p = command_line.ArgumentParser(prog="python -m experiments.pack_size",
                                    description=__doc__.splitlines()[0])
    p.add_argument("config", help="configs/FILE.py[:ARG]")
    p.add_argument("--max-runs", type=int, required=True, help="runs to pack at most")
    p.add_argument("--backend", default=None, help="measure as on this backend (tests)")
    try:
        args, extra = p.parse_known_args(sys.argv[1:] if argv is None else argv)
        if args.max_runs < 1:
            raise ValueError(f"--max-runs must be >= 1, got {args.max_runs}")
        config = command_line.load_config(args.config, command_line.parse_overrides(extra))
        k, line, measured, backend = _auto(config, args.max_runs, args.backend, measure)
    except ValueError as e:
        return command_line.bad_input(e)
    print(line)
    print(json.dumps({"pack": k, "backend": backend, "line": line,
                      "images_per_sec": {str(n): v for n, v in measured.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
