"""Packs: K runs of one network trained as one program, one jitted step advancing all K.

Why: a small network (CIFAR ResNet-20 at batch 128, the digits study) does
not fill a GPU, and every run compiles its own program; seeds and learning
rate sweeps of one network share everything but a few numbers. A pack holds
the K runs' ``TrainState``s stacked along a leading run axis (parameters,
optimizer state, BatchNorm statistics, step counters) and steps them
together, so K runs cost one compilation and, where the device has room,
less than K times the time.

What may differ inside a pack (``PACK_KEYS``): the seed (initial weights,
example order, augmentation, dropout-like layers), ``data_seed`` when it
selects no data, and scalar optimizer and schedule values. They reach the
program as arrays with a leading run axis (``PackedState.hparams``), not as
constants, so one compiled program serves any values. Every other key
changes shapes or the program (depth, widths, family, dataset, batch size,
dtype, number of steps, BatchNorm mode, ...) and must be equal:
``check_packable`` names the first that is not, in one line.

The step is ``steps.train_step`` itself, unchanged, run per run with that
run's traced values as its ``hyper`` argument (``training.hyper``: the
schedule and the optimizer read them from there). Two ways to run the K
steps (``STRATEGIES``):
``'vmap'`` batches them (convolutions become grouped convolutions; GPUs and
TPUs are filled better) and ``'map'`` loops over runs inside the program
(``lax.map``: each run's step is the lone run's, which XLA:CPU runs at full
speed); ``default_strategy`` picks per backend (BENCHMARKS.md has the CPU
figures behind the choice).

Everything a pack needs lives here: stacking and unstacking the runs'
states, the packed step, the packed feed (each run's batches from its own
seed) and ``Packed``, the program the training loop (``training.loop``)
steps a pack with; a lone run is ``training.programs.Lone``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from data import feeds
from data.datasets import IN_MEMORY_DATASETS
from data.device import replicate
from training import dispatch, hyper, parallel, schedule, steps

# Every key that may differ between the runs of a pack; all others must be equal. The
# step reads hyper.KEYS' values from ``PackedState.hparams`` (traced, one per run).
PACK_KEYS = (*hyper.KEYS.values(), "data_seed")
STRATEGIES = ("vmap", "map")


@flax.struct.dataclass
class PackedState:
    """K runs' train states, every leaf with a leading run axis, and their per-run values."""

    runs: steps.TrainState  # leaves (K, ...); graphdef shared
    hparams: hyper.Hyper  # each run's seed and scalar values, each field (K,)
    # The pack's step: the step every updating run takes next. A run whose own
    # ``runs.step`` is ahead (resumed from a newer checkpoint) waits until the
    # pack reaches it; a run whose loss stopped being finite waits for good.
    step: jax.Array


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Dotted key -> value, in ``to_dict``'s (alphabetical) order."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(config.to_dict(), "")
    return out


def check_packable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises a one-line ValueError unless the configs may share one pack.

    Every key but ``PACK_KEYS`` must be equal (the first that is not is
    named); ``data_seed`` may differ only while it selects no data (no
    validation split, no class imbalance), since the pack holds one copy of
    the data; seeds must fit int32, the dtype they are traced in.
    """
    if not configs:
        raise ValueError("a pack needs at least one config")
    first = _flat(configs[0])
    for i, config in enumerate(configs[1:], start=1):
        flat = _flat(config)
        for key in [*first, *(k for k in flat if k not in first)]:
            a, b = first.get(key), flat.get(key)
            if key not in PACK_KEYS and a != b:
                raise ValueError(
                    f"runs 0 and {i} of a pack differ in {key} ({a!r} vs {b!r}); a pack is "
                    f"one program, so only {', '.join(PACK_KEYS)} may differ")
        selects = first["val_examples"] or first["imbalance.classes"] is not None
        if selects and flat["data_seed"] != first["data_seed"]:
            raise ValueError(
                f"runs 0 and {i} of a pack differ in data_seed ({first['data_seed']} vs "
                f"{flat['data_seed']}), which selects their data (val_examples or "
                "imbalance.classes); a pack holds one copy of the data")
    for config in configs:
        if not -2**31 <= config.seed < 2**31:
            raise ValueError(f"seed {config.seed} of a packed run must fit int32")


def group_key(config: ml_collections.ConfigDict) -> str:
    """What the runs of one pack share: the config less the keys that may differ (JSON).

    Runs with equal keys may be packed (``check_packable``); the sweep
    launcher groups its runs by it.
    """
    flat = _flat(config)
    selects = flat["val_examples"] or flat["imbalance.classes"] is not None
    free = set(PACK_KEYS) - ({"data_seed"} if selects else set())
    return json.dumps({k: v for k, v in flat.items() if k not in free}, sort_keys=True,
                      default=repr)


def group_of(config: ml_collections.ConfigDict) -> str | None:
    """The run's pack group (``group_key``), or None when it cannot pack.

    Runs of a streamed dataset, or whose seed does not fit the pack's int32,
    never pack.
    """
    if config.dataset not in IN_MEMORY_DATASETS or not -2**31 <= config.seed < 2**31:
        return None
    return group_key(config)


def create_packed_state(configs: Sequence[ml_collections.ConfigDict]) -> PackedState:
    """Each run's fresh ``steps.create_train_state``, stacked along a leading run axis.

    On the default device, as ``create_train_state``'s; ``data.device.replicate``
    puts the pack on every device of a mesh.
    """
    check_packable(configs)
    return stack_states(configs, [steps.create_train_state(c) for c in configs])


def stack_states(configs: Sequence[ml_collections.ConfigDict],
                 states: Sequence[steps.TrainState]) -> PackedState:
    """The pack of these runs' states (fresh or restored), at the step of the one furthest behind.

    The runs ahead wait there until the pack catches up with them
    (``make_packed_step``), so runs resumed from checkpoints of different
    steps (a pack killed while its checkpoints were being written) all end
    as if trained in one go.
    """
    graphdef = states[0].graphdef  # equal configs: equal
    runs = jax.tree.map(lambda *xs: jnp.stack(xs), *[s.replace(graphdef=graphdef)
                                                      for s in states])
    hparams = hyper.Hyper(**{
        name: np.asarray([hyper.config_value(c, key) for c in configs],
                         np.int32 if name == "seed" else np.float32)
        for name, key in hyper.KEYS.items()})
    return PackedState(runs=runs, hparams=hparams, step=jnp.min(runs.step))


def unpack(packed: PackedState, i: int) -> steps.TrainState:
    """Run ``i``'s train state, as a lone run of its config would hold it."""
    return jax.tree.map(lambda x: x[i], packed.runs)


def default_strategy(backend: str | None = None) -> str:
    """'map' on CPU (XLA:CPU's grouped convolutions are slow), 'vmap' on GPU and TPU."""
    backend = jax.default_backend() if backend is None else backend
    return "map" if backend == "cpu" else "vmap"


def make_packed_step(config: ml_collections.ConfigDict, sched: schedule.Schedule, mesh: Mesh, *,
                     strategy: str | None = None, class_weights: Any = None
                     ) -> Callable[[PackedState, steps.Batch], tuple[PackedState, dict]]:
    """``step(packed, batch) -> (packed, metrics)``: one ``steps.train_step`` of every run.

    ``config`` is any run's (its pack keys are ignored: each run's come from
    ``packed.hparams``); ``batch`` holds every run's batch, leaves (K, B, ...)
    (``PackedFeed``); ``metrics`` are each run's ``loss`` and ``error``, (K,).
    Only the runs at the pack's step whose loss has stayed finite move on
    (``PackedState.step``); the others' metrics are to be ignored. A run
    stops after its first non-finite step (``first_bad_step``), with the
    state that step left: never saved, since its last checkpoint is the
    last finite state.

    Data parallelism as for a lone run (``parallel.data_parallel``): one
    ``jax.shard_map`` over the mesh, the pack replicated, each batch split
    along its batch axis (the second), and the runs vmapped (or mapped)
    inside its body, so each device trains its share of every run's batch
    and averages each run's gradients and statistics over the mesh axis.
    """
    strategy = default_strategy() if strategy is None else strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"pack strategy must be one of {', '.join(STRATEGIES)}, "
                         f"got {strategy!r}")

    def one_run(state, batch, hparams, pack_step, axis_name):
        def train(state):
            return steps.train_step(state, batch, config=config, sched=sched, hyper=hparams,
                                    class_weights=class_weights, axis_name=axis_name)

        def wait(state):
            return state, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), metrics_shape)

        # A run ahead of the pack, or one whose loss stopped being finite, waits: under
        # 'map' it is not computed at all; under 'vmap' both branches are, and selected.
        metrics_shape = jax.eval_shape(train, state)[1]
        active = (state.step == pack_step) & (state.first_bad_step < 0)
        return jax.lax.cond(active, train, wait, state)

    def body(packed, batch, axis_name):
        run = functools.partial(one_run, pack_step=packed.step, axis_name=axis_name)
        if strategy == "vmap":
            runs, metrics = jax.vmap(run)(packed.runs, batch, packed.hparams)
        else:
            runs, metrics = jax.lax.map(lambda args: run(*args),
                                        (packed.runs, batch, packed.hparams))
        return packed.replace(runs=runs, step=packed.step + 1), metrics

    return jax.shard_map(functools.partial(body, axis_name=parallel.DATA_AXIS), mesh=mesh,
                         in_specs=(P(), P(None, parallel.DATA_AXIS)), out_specs=(P(), P()))


class PackedFeed:
    """Every run's training batch out of one in-memory feed, each from its own seed.

    Run k's batch of step s is what a lone run of seed k draws at step s
    (``feeds.InMemoryFeed.train_batch`` with that seed's keys): its own
    example order and augmentation, from the one copy of the data on the
    devices. The keys ride in ``arrays`` (an argument of the program, not a
    constant), one row per run, like the pack's other per-run values.
    ``feed`` is built from any run's config: the runs of a pack share their
    data (``check_packable``).
    """

    input_wait_s = 0.0  # in memory: no host input on the hot path

    def __init__(self, feed: feeds.InMemoryFeed, seeds: Sequence[int]):
        self.base, self.mesh, self.runs = feed, feed.mesh, len(seeds)
        self.arrays = {**feed.arrays, "seed_keys": replicate(
            np.stack([feeds.seed_keys(seed) for seed in seeds]), feed.mesh)}

    def train_batch(self, arrays: dict[str, Any], step: jax.Array) -> steps.Batch:
        """Every run's batch of step ``step``: leaves (K, B, ...)."""
        def one(keys):
            return self.base.train_batch({**arrays, "seed_keys": keys}, step)

        return jax.vmap(one)(arrays["seed_keys"])


class Packed:
    """A pack as the training loop steps it (``training.programs``): the runs' states stacked.

    ``feed`` is the runs' shared in-memory feed, ``start`` the pack's first
    step. The chunk advances every run at the pack's step to the next log
    step; ``views`` hands each run its own sums and schedule state.
    """

    def __init__(self, configs: Sequence[ml_collections.ConfigDict], sched: schedule.Schedule,
                 mesh: Mesh, feed: feeds.InMemoryFeed, *, start: int,
                 strategy: str | None = None, class_weights: Any = None):
        self.configs, self.mesh = list(configs), mesh
        config = self.configs[0]
        step_fn = make_packed_step(config, sched, mesh, strategy=strategy,
                                   class_weights=class_weights)
        self.chunk = dispatch.make_train_chunk(
            PackedFeed(feed, [c.seed for c in self.configs]), step_fn,
            log_every=config.log_every_steps, total_steps=sched.total_steps, start_step=start,
            loop_on_device=config.loop_on_device, metrics_shape=(len(self.configs),))

    def initial(self, states: Sequence[steps.TrainState]) -> PackedState:
        return replicate(stack_states(self.configs, states), self.mesh)

    def step_of(self, packed: PackedState) -> int:
        return int(packed.step)

    def views(self, packed: PackedState, sums: dict[str, jax.Array]) -> list[dispatch.RunView]:
        runs = packed.runs
        sums, bad, warm, scale = jax.device_get(
            (sums, runs.first_bad_step, runs.warm, runs.plateau.scale))
        return [dispatch.RunView(
            sums=dispatch.read_chunk_sums({k: v if k == "steps" else v[i]
                                           for k, v in sums.items()}),
            first_bad_step=int(bad[i]), warm=warm[i], plateau_scale=scale[i])
            for i in range(len(self.configs))]

    def run_state(self, packed: PackedState, k: int) -> steps.TrainState:
        return unpack(packed, k)

    def with_plateau(self, packed: PackedState, k: int,
                     plateau: schedule.PlateauState) -> PackedState:
        """The pack with run ``k``'s reduce-on-plateau state replaced (host values)."""
        host = jax.tree.map(lambda a: np.array(jax.device_get(a)), packed.runs.plateau)
        for leaf, value in zip(jax.tree.leaves(host), jax.tree.leaves(plateau), strict=True):
            leaf[k] = value
        return packed.replace(runs=packed.runs.replace(plateau=replicate(host, self.mesh)))
