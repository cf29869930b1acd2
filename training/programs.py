"""How a trainer's runs are stepped: one run by its own compiled step, or K runs as a pack.

The training loop (``training.loop``) sees its runs through a program:

- ``initial(states)``: the runs' restored states as the program holds them
  on the devices;
- ``chunk(state, step)``: every step to the next log step, and the chunk's
  sums (``training.dispatch``);
- ``views(state, sums)``: each run's part of the chunk on the host (its sums,
  whether its loss stayed finite, its schedule state);
- ``run_state(state, k)``: run k's ``TrainState`` (to evaluate and save it);
- ``with_plateau(state, k, plateau)``: run k's reduce-on-plateau state set.

``Lone`` runs one run with ``steps.train_step`` over the mesh, exactly the
program a run has always had (a pack of one would add a loop over runs and a
cond per step); ``training.pack.Packed`` runs a pack.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from data import statistics
from data.device import replicate
from training import dispatch, pack, parallel, schedule, steps


class Lone:
    """One run: the data-parallel ``steps.train_step``, its state a ``TrainState``."""

    def __init__(self, config: ml_collections.ConfigDict, sched: schedule.Schedule, mesh: Mesh,
                 feed: Any, *, start: int, class_weights: Any = None):
        self.mesh = mesh
        step_fn = parallel.data_parallel(functools.partial(
            steps.train_step, config=config, sched=sched, class_weights=class_weights), mesh)
        self.chunk = dispatch.make_train_chunk(
            feed, step_fn, log_every=config.log_every_steps, total_steps=sched.total_steps,
            start_step=start, loop_on_device=config.loop_on_device)

    def initial(self, states: Sequence[steps.TrainState]) -> steps.TrainState:
        (state,) = states
        return state

    def step_of(self, state: steps.TrainState) -> int:
        return int(state.step)

    def views(self, state: steps.TrainState, sums: dict[str, jax.Array]
              ) -> list[dispatch.RunView]:
        sums, bad, warm, scale = jax.device_get(
            (sums, state.first_bad_step, state.warm, state.plateau.scale))
        return [dispatch.RunView(sums=dispatch.read_chunk_sums(sums), first_bad_step=int(bad),
                                 warm=warm, plateau_scale=scale)]

    def run_state(self, state: steps.TrainState, k: int) -> steps.TrainState:
        return state

    def with_plateau(self, state: steps.TrainState, k: int,
                     plateau: schedule.PlateauState) -> steps.TrainState:
        return state.replace(plateau=replicate(plateau, self.mesh))


def make_program(configs: Sequence[ml_collections.ConfigDict], sched: schedule.Schedule,
                 mesh: Mesh, feed: Any, *, start: int, packed: bool | None = None,
                 strategy: str | None = None) -> Lone | pack.Packed:
    """The program of these runs: ``Lone`` for one run, else (or if ``packed``) a pack.

    ``feed`` is the runs' feed (in memory for a pack), ``start`` the step the
    first chunk starts at. Class weights (``imbalance.counter='reweight'``)
    come from the feed's training labels.
    """
    config = configs[0]
    weights = (statistics.inverse_frequency_weights(feed.class_counts)
               if config.imbalance.counter == "reweight" else None)
    if not (len(configs) > 1 if packed is None else packed):
        return Lone(config, sched, mesh, feed, start=start, class_weights=weights)
    return pack.Packed(configs, sched, mesh, feed, start=start, strategy=strategy,
                       class_weights=weights)
