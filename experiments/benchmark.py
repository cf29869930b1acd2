"""Training-step benchmark: compile time, step time, throughput, achieved FLOP/s.

    python -m experiments.benchmark --config configs/cifar10.py:resnet-56 --synthetic
    python -m experiments.benchmark --config configs/digits.py:resnet-20 --steps 50
    python -m experiments.benchmark --config configs/cifar10.py:resnet-110 --synthetic \\
        --dtype bfloat16 --conv-bound

It times the real hot path of ``train.py`` (the same feed, the same jitted
step, the same chunking of steps between log lines): the first chunk pays the
compilation, then ``--repeats`` chunks of ``--steps`` steps are timed, each
ended by a device sync. ``--synthetic`` replaces the dataset by random uint8
images of its shape held on device (no download; in-memory feed), so CIFAR and
ImageNet networks can be timed anywhere. With a streamed dataset (ImageNet) it
also reports the share of the step time spent waiting for input.

``--pack K`` times K runs of the network as one pack (``training.pack``: seeds
``seed`` .. ``seed + K - 1``, one jitted step advancing all K, each with its own
batch; ``--pack-strategy`` vmap or map, default per backend);
``images_per_sec`` then counts every run's images, so it compares directly
with a lone run's (``--pack 1`` times the pack's own path with one run).

``--conv-bound`` also times the network's convolutions alone (forward and both
backward convolutions, the same shapes, each distinct one timed by itself and
summed over the layers): the floor that XLA's convolution kernels put under
the step, and the step time as a multiple of it.

Prints a table, then one JSON line: model, batch_size, devices, device_kind,
compile_s, step_ms (median; a pack's step advances all its runs),
images_per_sec, flops_per_image (training: 3x the forward multiply-adds x 2),
achieved_tflops, input_wait_fraction, pack (K, or null for a lone run)[,
pack_strategy][, conv_ms (a pack: K times one run's), step_over_conv].
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import models
import train
from data import datasets, feeds
from data.device import replicate
from models import conv
from models.summary import iter_eqns, module_macs
from training import command_line, compile_cache, pack, parallel, programs, schedule, steps
from training.compile_options import jit


def synthetic_data(config, num_examples: int) -> datasets.InMemoryData:
    """Random uint8 images and labels with the shape of ``config.dataset``'s images."""
    shape = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}.get(
        config.dataset)
    if shape is None:  # streamed datasets: the training crop
        size = int(config.augment.crop_size)
        shape = (size, size, 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_examples, *shape), dtype=np.uint8)
    labels = rng.integers(0, config.model.num_classes, num_examples).astype(np.int32)
    split = datasets.Split(images, labels)
    mean = (images / 255.0).mean(0).astype(np.float32)
    return datasets.InMemoryData("synthetic", config.model.num_classes, split, split,
                                       None, mean)


def forward_macs(state: steps.TrainState, image_shape) -> int:
    """Multiply-adds of one image's forward pass, counted from the traced program."""
    model = state.model()
    return module_macs(model, lambda m, x: m(x), jnp.zeros((1, *image_shape), jnp.float32))


def _model_conv(lhs: jax.Array, rhs: jax.Array, params: dict) -> jax.Array:
    """The convolution of a traced ``conv_general_dilated`` equation, as the model runs it.

    ``models.conv.conv_general_dilated`` (with its loop-friendly gradients) for
    the NHWC case the networks use, XLA's own otherwise.
    """
    return conv.conv_general_dilated(
        lhs, rhs, params["window_strides"], params["padding"], params["lhs_dilation"],
        params["rhs_dilation"], params["dimension_numbers"], params["feature_group_count"],
        params["batch_group_count"], params["precision"], params["preferred_element_type"])


def model_convolutions(state: steps.TrainState, x) -> list[tuple[Any, Any, dict, int]]:
    """The distinct convolutions of the model's forward pass on ``x``, with their counts.

    Read from the traced forward pass of the real model (so every architecture
    variant is covered): ``(lhs aval, rhs aval, equation params, count)``.
    """
    def forward(x, params, batch_stats):
        return state.model(params, batch_stats, train=True)(x)

    jaxpr = jax.make_jaxpr(forward)(x, state.params, state.batch_stats).jaxpr
    counts: dict[tuple, list] = {}
    for e, times in iter_eqns(jaxpr):
        if e.primitive.name != "conv_general_dilated":
            continue
        lhs, rhs = e.invars[0].aval, e.invars[1].aval
        key = (lhs.shape, lhs.dtype, rhs.shape, rhs.dtype, repr(sorted(e.params.items())))
        counts.setdefault(key, [lhs, rhs, e.params, 0])[3] += times
    if not counts:
        raise ValueError("found no convolution in the traced model")
    return [tuple(v) for v in counts.values()]


def conv_bound_ms(state: steps.TrainState, x, repeats: int) -> float:
    """Milliseconds the step's convolutions take alone: each timed by itself, summed.

    Each distinct convolution runs forward and through its VJP (input and
    kernel gradients, the model's own ``models.conv`` formulation) as its own
    jitted program, median of ``repeats`` runs, times the number of layers that
    use it. Timed one at a time, each has the machine to itself: the sum is a
    floor under the step, tighter than one program holding all of them, where
    XLA:CPU runs independent convolutions side by side and they compete for
    the cores and caches.
    """
    total = 0.0
    for i, (lhs, rhs, eqn_params, count) in enumerate(
            model_convolutions(state, x)):
        k1, k2 = jax.random.split(jax.random.key(i))
        a = jax.random.normal(k1, lhs.shape, lhs.dtype)
        b = jax.random.normal(k2, rhs.shape, rhs.dtype)

        def forward_and_vjp(a, b, p=eqn_params):
            out, vjp = jax.vjp(functools.partial(_model_conv, params=p), a, b)
            return out, *vjp(out)

        fn = jit(forward_and_vjp)
        _time(fn, a, b)
        total += count * statistics.median(_time(fn, a, b) for _ in range(repeats))
    return 1e3 * total


def _time(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def pack_configs(config, runs: int) -> list:
    """``runs`` copies of ``config`` with seeds ``seed``, ``seed + 1``, ...: a pack of seeds."""
    configs = []
    for i in range(runs):
        c = copy.deepcopy(config)
        c.seed = config.seed + i
        configs.append(c)
    return configs


def benchmark(config, *, steps_per_chunk: int, repeats: int, synthetic: bool,
              conv_bound: bool, pack_runs: int | None = None,
              pack_strategy: str | None = None) -> dict:
    mesh = parallel.make_mesh()
    config.log_every_steps = steps_per_chunk  # one timed chunk = one log interval of train.py
    config.num_steps = steps_per_chunk * (repeats + 1)
    config.eval_every_steps = config.checkpoint_every_steps = config.num_steps  # not timed
    train.validate_config(config, mesh.devices.size)
    if synthetic:
        feed = feeds.InMemoryFeed(config, mesh, synthetic_data(config, 8 * config.batch_size))
        image_shape = feed.image_shape
    else:
        feed = feeds.make_feed(config, mesh)
        image_shape = getattr(feed, "image_shape", None) or (
            config.augment.crop_size, config.augment.crop_size, 3)
    sched = schedule.derive_schedule(config, feed.num_train)
    if pack_runs is not None and not isinstance(feed, feeds.InMemoryFeed):
        raise ValueError("--pack needs an in-memory dataset (digits, CIFAR) or --synthetic")
    configs = [config] if pack_runs is None else pack_configs(config, pack_runs)
    states = [steps.create_train_state(c) for c in configs]
    macs = forward_macs(states[0], image_shape)
    if pack_runs is not None:
        pack_strategy = pack_strategy or pack.default_strategy()
    # The training loop's own program (training.programs): a lone run's step, or a pack's.
    program = programs.make_program(configs, sched, mesh, feed, start=0,
                                    packed=pack_runs is not None, strategy=pack_strategy)
    state = program.initial([replicate(s, mesh) for s in states])
    runs = pack_runs or 1
    chunk = program.chunk
    t = time.perf_counter()
    state, sums = chunk(state, 0)
    jax.block_until_ready((state, sums))
    first_s = time.perf_counter() - t
    wait_before = feed.input_wait_s
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        state, sums = chunk(state, (r + 1) * steps_per_chunk)
        jax.block_until_ready((state, sums))
        times.append(time.perf_counter() - t)
    chunk_s = statistics.median(times)
    step_s = chunk_s / steps_per_chunk
    images_per_sec = runs * config.batch_size / step_s  # every run's images
    flops_per_image = 6 * macs
    result = {
        "model": models.spec_from_config(config.model).name,
        "dataset": "synthetic" if synthetic else config.dataset,
        "image_shape": list(image_shape),
        "dtype": config.model.dtype,
        "scan_blocks": bool(config.model.scan_blocks),
        "remat_blocks": bool(config.model.remat_blocks),
        "loop_on_device": bool(config.loop_on_device),
        "batch_size": config.batch_size,
        "devices": mesh.devices.size,
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "compile_s": round(max(first_s - chunk_s, 0.0), 2),
        "step_ms": round(1e3 * step_s, 3),
        "step_ms_min": round(1e3 * min(times) / steps_per_chunk, 3),
        "images_per_sec": round(images_per_sec, 1),
        "flops_per_image": flops_per_image,
        "achieved_tflops": round(flops_per_image * images_per_sec / 1e12, 4),
        "input_wait_fraction": round((feed.input_wait_s - wait_before) / sum(times), 4),
        "steps_timed": steps_per_chunk * repeats,
        "pack": pack_runs,
    }
    if pack_runs is not None:
        result["pack_strategy"] = pack_strategy
    if conv_bound:
        x = jnp.zeros((config.batch_size // mesh.devices.size, *image_shape), jnp.float32)
        one = program.run_state(state, 0)
        conv_ms = runs * conv_bound_ms(one, x, max(repeats, 5))
        result["conv_ms"] = round(conv_ms, 3)
        result["step_over_conv"] = round(1e3 * step_s / conv_ms, 3)
    return result


def render(result: dict) -> str:
    width = max(map(len, result))
    return "\n".join(f"{k:<{width}}  {v}" for k, v in result.items())


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    p = command_line.ArgumentParser(prog="python -m experiments.benchmark",
                                    description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="configs/FILE.py[:ARG]")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: config)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
    p.add_argument("--repeats", type=int, default=5, help="timed chunks (median reported)")
    p.add_argument("--synthetic", action="store_true", help="random data of the dataset's shape")
    p.add_argument("--dtype", default=None, help="compute dtype: float32 | bfloat16")
    p.add_argument("--conv-bound", action="store_true", help="also time the convolutions alone")
    p.add_argument("--pack", type=int, default=None, metavar="K",
                   help="time K runs (seeds seed..seed+K-1) trained as one pack")
    p.add_argument("--pack-strategy", choices=pack.STRATEGIES, default=None,
                   help="how a pack runs its K steps (default: map on CPU, vmap elsewhere)")
    args, extra = p.parse_known_args(argv)
    if args.steps < 1 or args.repeats < 1:
        raise ValueError("--steps and --repeats must be >= 1")
    if args.pack is not None and args.pack < 1:
        raise ValueError(f"--pack must be >= 1, got {args.pack}")
    if args.pack_strategy is not None and args.pack is None:
        raise ValueError("--pack-strategy needs --pack K")
    overrides = command_line.parse_overrides(extra)
    if args.batch_size is not None:
        overrides["batch_size"] = str(args.batch_size)
    if args.dtype is not None:
        overrides["model.dtype"] = args.dtype
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    compile_cache.enable()
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        config = command_line.load_config(args.config, overrides)
        result = benchmark(config, steps_per_chunk=args.steps, repeats=args.repeats,
                           synthetic=args.synthetic, conv_bound=args.conv_bound,
                           pack_runs=args.pack, pack_strategy=args.pack_strategy)
    except ValueError as e:
        return command_line.bad_input(e)
    print(render(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
