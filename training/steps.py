"""The train state and the two steps a run is made of: ``train_step`` and ``eval_step``.

Both are plain functions of (state, batch), read top to bottom; they know
nothing of where batches come from (``data.feeds``), how many devices share
the work (``training.parallel`` wraps ``train_step``; ``eval_step`` runs
under plain ``jit``) or how often they are dispatched (``training.dispatch``).
A batch is a dict of network inputs (``image``), integer ``label``s and, for
evaluation, a ``mask`` that is 0 on padding.

The state holds the model's parameters and BatchNorm statistics as NNX
``State``s next to the static graph definition that rebuilds the module
(``TrainState.model``), so jitted code stays pure (the NNX docs advise
``jax.jit`` over split state rather than ``nnx.jit`` for small models).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import models
from training import freeze, optimizer, parallel, schedule
from training.hyper import Hyper

Batch = dict[str, jax.Array]
# The random stream of dropout, stochastic depth and RReLU (init, example order and
# augmentation use streams 0, 1 and 2 of the same seed).
LAYER_RNG_STREAM = 3


@flax.struct.dataclass
class TrainState:
    """Everything a step changes (checkpointed), and the static parts that interpret it."""

    step: jax.Array  # int32 scalar: steps taken
    params: Any  # nnx.State of nnx.Param
    batch_stats: Any  # nnx.State of nnx.BatchStat (running mean and variance)
    opt_state: Any
    warm: jax.Array  # bool: the warm-up-until-error rule is still in force
    first_bad_step: jax.Array  # int32: first step whose loss was not finite, -1 if none
    plateau: schedule.PlateauState  # reduce-on-plateau scale and counters (schedule 'plateau')
    graphdef: Any = flax.struct.field(pytree_node=False)  # the module's structure

    def model(self, params: Any = None, batch_stats: Any = None, *,
              train: bool = False) -> models.ResNet:
        """The module with this state's (or the given) variables, in eval or training mode."""
        model = nnx.merge(self.graphdef, self.params if params is None else params,
                          self.batch_stats if batch_stats is None else batch_stats)
        if train:
            model.train()
        else:
            model.eval()
        return model


def create_train_state(config: ml_collections.ConfigDict) -> TrainState:
    """A fresh state for ``config``: initialised network, optimizer state, rules at rest.

    The arrays are on the default device; ``data.device.replicate`` puts them
    on every device of a mesh.
    """
    model = models.build_model(config.model, seed=config.seed,
                               bn_axis_name=parallel.bn_axis_name(config.batch_norm))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=optimizer.make_optimizer(config).init(params),
        warm=jnp.asarray(config.schedule.warmup_until_error is not None),
        first_bad_step=jnp.full((), -1, jnp.int32),
        plateau=schedule.PlateauState.initial(),
        graphdef=graphdef,
    )


def loss_fn(params: Any, state: TrainState, batch: Batch, rng: jax.Array, *,
            config: ml_collections.ConfigDict, class_weights: Any = None
            ) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    """Mean cross-entropy of the batch (each example times its class weight, if given).

    Returns ``(loss, (error, batch_stats))``: the batch's error rate and the
    BatchNorm statistics updated by this forward pass in training mode.
    """
    # Rebuild the statistics' containers inside this trace: NNX refuses to update
    # variables that were created at an outer trace level.
    model = state.model(params, jax.tree.map(lambda a: a, state.batch_stats), train=True)
    freeze.freeze_batch_norm(model, config.finetune.freeze)
    heads = models.training_logits(model, batch["image"], rng)
    logits, labels = heads[0][1], batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    for weight, aux in heads[1:]:  # auxiliary classifiers (GoogLeNet's), weighted
        loss = loss + weight * optax.softmax_cross_entropy_with_integer_labels(aux, labels)
    if class_weights is not None:
        loss = loss * jnp.asarray(class_weights)[labels]
    error = jnp.mean(jnp.argmax(logits, -1) != labels)
    return loss.mean(), (error, nnx.state(model, nnx.BatchStat))


def train_step(state: TrainState, batch: Batch, *, config: ml_collections.ConfigDict,
               sched: schedule.Schedule, hyper: Hyper | None = None,
               class_weights: Any = None, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step; returns the new state and the batch's ``loss`` and ``error``.

    ``hyper`` holds the run's seed and scalar optimizer and schedule values:
    the config's by default, a packed run's (traced) in a pack (``training.pack``).

    With ``axis_name`` (data parallelism, ``parallel.data_parallel``) each
    device runs this on its share of the batch: it differentiates its own
    loss with respect to its own copy of the parameters, then gradients,
    loss, error and BatchNorm statistics are averaged over the axis, so every
    device applies the same update. With sync BatchNorm the backward pass of
    the statistics' ``pmean`` carries every device's loss to every device's
    parameters, so the average is still the gradient of the global loss.
    """
    # Dropout, stochastic depth and RReLU draw from a stream of their own, a pure
    # function of (seed, step[, device]): a resumed run makes the draws an
    # uninterrupted one would.
    hyper = Hyper.of(config) if hyper is None else hyper
    rng = jax.random.fold_in(
        jax.random.fold_in(jax.random.key(hyper.seed), LAYER_RNG_STREAM), state.step)
    params = state.params
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        # Per-device copies: no implicit reduction of the gradient in the backward pass.
        params = jax.lax.pcast(params, axis_name, to="varying")
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (error, batch_stats)), grads = grad_fn(params, state, batch, rng, config=config,
                                                  class_weights=class_weights)
    if axis_name is not None:
        loss, error, batch_stats, grads = jax.lax.pmean((loss, error, batch_stats, grads),
                                                        axis_name)

    lr = schedule.learning_rate(config, sched, state.step, state.warm, state.plateau.scale,
                                hyper)
    tx = optimizer.make_optimizer(config, hyper)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates))
    is_frozen = freeze.frozen_predicate_of(config)
    if config.optimizer.max_norm is not None:
        params = optimizer.project_max_norm(params, config.optimizer.max_norm, is_frozen)
    if freeze.freezes(config.finetune.freeze):  # frozen BN layers ran on running stats
        batch_stats = freeze.keep_frozen(is_frozen, state.batch_stats, batch_stats)

    threshold = config.schedule.warmup_until_error
    warm = state.warm & (error >= threshold) if threshold is not None else state.warm
    bad = (state.first_bad_step < 0) & ~jnp.isfinite(loss)
    state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        warm=warm,
        first_bad_step=jnp.where(bad, state.step, state.first_bad_step),
    )
    return state, {"loss": loss, "error": error}


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """Sums over the real (mask=1) examples of one batch, by name.

    ``wrong`` and ``loss`` (summed), ``wrong_per_class`` and ``count_per_class``
    (one per class: the per-class error of an imbalanced run comes out of the
    same pass) and ``count``; ``measure.eval_metrics`` reads them.
    """
    logits = state.model()(batch["image"])
    labels, mask = batch["label"], batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    wrong = (jnp.argmax(logits, -1) != labels).astype(jnp.float32) * mask
    in_class = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * mask[:, None]
    return {"wrong": wrong.sum(), "loss": (loss * mask).sum(),
            "wrong_per_class": (wrong[:, None] * in_class).sum(0),
            "count_per_class": in_class.sum(0), "count": mask.sum()}
