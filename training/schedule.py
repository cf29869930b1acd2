"""The learning rate: durations in steps, the schedules, the warm-up rules, reduce-on-plateau.

``derive_schedule`` converts every duration of a run (epochs, fractions of
the run) to steps in one place, from the final config, so a command-line
override of the batch size never leaves stale values. ``learning_rate`` is
the LR of a step (traced inside the jitted step): piecewise constant (the
paper), cosine, or reduce-on-plateau, times an optional linear warm-up, and
the paper's ResNet-110 rule (a small LR until the training error drops
below a threshold). The plateau rule's state (``PlateauState``) lives in
the train state, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from training.hyper import Hyper

KNOWN_SCHEDULES = ("piecewise", "cosine", "plateau")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """All durations of a run in steps, derived in one place from the final config."""

    total_steps: int
    steps_per_epoch: int
    boundaries: tuple[int, ...]
    warmup_steps: int


def derive_schedule(config: ml_collections.ConfigDict, num_train: int) -> Schedule:
    """Converts epochs and fractions to steps, after every command-line override."""
    steps_per_epoch = max(1, num_train // config.batch_size)
    if config.num_epochs is not None:
        if not config.num_epochs > 0:
            raise ValueError(f"num_epochs must be positive, got {config.num_epochs}")
        total = math.ceil(config.num_epochs * steps_per_epoch)
    else:
        total = config.num_steps
    s = config.schedule
    if s.boundaries_steps is not None:
        boundaries = tuple(int(b) for b in s.boundaries_steps)
    elif s.boundaries_epochs is not None:
        boundaries = tuple(round(e * steps_per_epoch) for e in s.boundaries_epochs)
    else:
        boundaries = tuple(round(f * total) for f in s.boundaries_fraction)
    if list(boundaries) != sorted(boundaries) or any(b < 0 for b in boundaries):
        raise ValueError(f"LR boundaries must be non-negative and increasing, got {boundaries}")
    return Schedule(total, steps_per_epoch, boundaries, int(s.warmup_steps))


def learning_rate(config: ml_collections.ConfigDict, sched: Schedule, step, warm,
                  plateau_scale=1.0, hyper: Hyper | None = None) -> jax.Array:
    """LR at ``step`` (traced); ``warm`` is the state of the warm-up-until-error rule.

    ``plateau_scale`` is the reduce-on-plateau factor (``TrainState.plateau.scale``),
    used by the 'plateau' schedule only. The base LR, decay factor and warm-up
    LR are ``hyper``'s (a packed run's, traced), else the config's.
    """
    hyper = Hyper.of(config) if hyper is None else hyper
    base = hyper.lr
    step = jnp.asarray(step, jnp.float32)
    if config.schedule.name == "plateau":
        lr = base * jnp.asarray(plateau_scale, jnp.float32)
    elif config.schedule.name == "cosine":
        span = max(1, sched.total_steps - sched.warmup_steps)
        progress = jnp.clip((step - sched.warmup_steps) / span, 0.0, 1.0)
        lr = base * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
        passed = sum((step >= b).astype(jnp.float32) for b in sched.boundaries)
        lr = base * jnp.asarray(hyper.decay_factor, jnp.float32) ** passed
    if sched.warmup_steps:
        lr = lr * jnp.minimum(1.0, (step + 1) / sched.warmup_steps)
    if config.schedule.warmup_until_error is not None:
        lr = jnp.where(warm, hyper.warmup_lr, lr)
    return lr


@flax.struct.dataclass
class PlateauState:
    """Reduce-on-plateau bookkeeping, checkpointed with the rest of the train state."""

    scale: jax.Array  # float32: the LR is config.optimizer.lr * scale
    best: jax.Array  # float32: best validation error so far (inf before the first)
    since_best: jax.Array  # int32: evaluations since the last improvement or reduction

    @classmethod
    def initial(cls) -> PlateauState:
        return cls(scale=np.float32(1.0), best=np.float32(np.inf), since_best=np.int32(0))


def plateau_update(state: PlateauState, error: float, *, factor: float, patience: int,
                   threshold: float = 0.0, min_scale: float = 0.0) -> PlateauState:
    """One evaluation's step of the rule (host side, on plain numbers).

    An error counts as an improvement when it is below ``best - threshold``;
    otherwise the evaluation is one more without improvement. After
    ``patience`` such evaluations in a row the scale is divided by ``factor``
    (not below ``min_scale``) and the count starts again; the best error is
    kept, so the new LR also has to beat it.
    """
    scale, best, since = float(state.scale), float(state.best), int(state.since_best)
    error = float(np.float32(error))  # compared at the precision the best error is stored in
    if error < best - threshold:
        best, since = error, 0
    else:
        since += 1
    if since >= patience:
        scale, since = max(scale / factor, min_scale), 0
    return PlateauState(scale=np.float32(scale), best=np.float32(best),
                        since_best=np.int32(since))


def plateau_step(config: ml_collections.ConfigDict, plateau: PlateauState,
                 val_error: float) -> PlateauState:
    """The 'plateau' schedule's state after an evaluation (host values)."""
    s = config.schedule
    min_lr = s.plateau_min_lr or 0.0
    return plateau_update(
        plateau, val_error, factor=s.plateau_factor,
        patience=s.plateau_patience, threshold=s.plateau_threshold,
        min_scale=min_lr / config.optimizer.lr)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the run's length and ``schedule.*``; one-line ValueErrors."""
    s = config.schedule
    if s.name not in KNOWN_SCHEDULES:
        raise ValueError(
            f"unknown schedule.name {s.name!r}; allowed: {', '.join(KNOWN_SCHEDULES)}"
        )
    if config.num_epochs is None and not config.num_steps > 0:
        raise ValueError(f"num_steps must be positive, got {config.num_steps}")
    if s.name != "plateau":
        return
    if not config.val_examples > 0:
        raise ValueError("schedule.name='plateau' reduces the LR when the validation error "
                         "stops improving: set val_examples > 0 (the test set is never used)")
    if not s.plateau_factor > 1:
        raise ValueError(f"schedule.plateau_factor must be > 1, got {s.plateau_factor}")
    if not s.plateau_patience >= 1:
        raise ValueError(f"schedule.plateau_patience must be >= 1, got {s.plateau_patience}")
    if not s.plateau_threshold >= 0:
        raise ValueError(f"schedule.plateau_threshold must be >= 0, got {s.plateau_threshold}")
    if s.plateau_min_lr is not None and not 0 <= s.plateau_min_lr <= config.optimizer.lr:
        raise ValueError(f"schedule.plateau_min_lr must be in [0, optimizer.lr], "
                         f"got {s.plateau_min_lr}")
