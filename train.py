"""Trains one network from one config: ``python train.py --config FILE[:ARG] --workdir DIR``.

``train_and_evaluate(config, workdir)`` is the importable function behind the
command. A run is a directory: ``config.json``, ``metrics.jsonl`` (one JSON
object per logged step), ``summary.json``, TensorBoard events and Orbax
checkpoints. Running the same command on an existing workdir resumes from the
latest checkpoint; for in-memory datasets it ends with the same numbers as an
uninterrupted run (the order of examples and the augmentation are pure
functions of (seed, step)).

Where the batches come from is ``data_feed.py``'s job: in-memory datasets
(digits, CIFAR) live on the devices and are sampled, augmented and normalised
inside the jitted step; ImageNet streams from TFDS, each process reading its
shard. This module holds the schedule, the optimizer, the train state, the
SGD step and the loop that logs, evaluates, checkpoints and stops cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import checkpointing
import data_feed
import distributed
import finetune
import input_pipeline
import models
import optim
import parallel
import run_files
from checkpointing import Checkpointer

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 4
EXIT_PEER_FAILED = 5  # multi-process: a collective failed, another process probably died
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Diverged(RuntimeError):
    """The training loss became non-finite."""

    def __init__(self, step: int, last_checkpoint: int | None):
        self.step, self.last_checkpoint = step, last_checkpoint
        where = f"step {last_checkpoint}" if last_checkpoint is not None else "none"
        super().__init__(f"loss is not finite at step {step}; last good checkpoint: {where}")


class WriteFailed(RuntimeError):
    """A metrics line or checkpoint could not be written (disk full, quota, lost mount)."""

    def __init__(self, what: str, step: int, err: BaseException, last_checkpoint: int | None):
        where = f"step {last_checkpoint}" if last_checkpoint is not None else "none"
        super().__init__(f"cannot write the {what} at step {step} ({err}); the last complete "
                         f"checkpoint ({where}) is intact: free space and run again to resume")


@contextlib.contextmanager
def _writing(what: str, step: int, ckpt: Checkpointer):
    """Turns a failed write into ``WriteFailed``, naming the checkpoint a rerun resumes from."""
    try:
        yield
    except OSError as e:
        raise WriteFailed(what, step, e, ckpt.latest_step()) from e
    except Exception as e:  # Orbax's async save re-raises the writer's error wrapped
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):
            raise WriteFailed(what, step, cause, ckpt.latest_step()) from e
        raise


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved before stopping."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved; run again to resume")


# --------------------------------------------------------------------------- schedule


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
                  plateau_scale=1.0) -> jax.Array:
    """LR at ``step`` (traced); ``warm`` is the state of the warm-up-until-error rule.

    ``plateau_scale`` is the reduce-on-plateau factor (``TrainState.plateau.scale``),
    used by the 'plateau' schedule only.
    """
    base = config.optimizer.lr
    step = jnp.asarray(step, jnp.float32)
    if config.schedule.name == "plateau":
        lr = base * jnp.asarray(plateau_scale, jnp.float32)
    elif config.schedule.name == "cosine":
        span = max(1, sched.total_steps - sched.warmup_steps)
        progress = jnp.clip((step - sched.warmup_steps) / span, 0.0, 1.0)
        lr = base * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
        passed = sum((step >= b).astype(jnp.float32) for b in sched.boundaries)
        lr = base * jnp.asarray(config.schedule.decay_factor, jnp.float32) ** passed
    if sched.warmup_steps:
        lr = lr * jnp.minimum(1.0, (step + 1) / sched.warmup_steps)
    if config.schedule.warmup_until_error is not None:
        lr = jnp.where(warm, config.schedule.warmup_lr, lr)
    return lr


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """L2 weight decay added to the gradient (as Caffe), then momentum; LR applied in the step.

    Options: L1 (``l1 * sign(p)``, also added to the gradient), L2 decoupled
    from the momentum (added after it, so the step is ``p -= lr * (m + wd * p)``)
    and frozen parameters (fine-tuning), which get a zero update and no state.
    The paper's recipe builds exactly the chain (and optimizer state) it always did.
    """
    opt = config.optimizer

    def decay_mask(params):
        if opt.weight_decay_on == "all":
            return jax.tree.map(lambda _: True, params)
        return nnx.map_state(lambda path, _: path[-1] == "kernel", params)

    decay = optax.add_decayed_weights(opt.weight_decay, mask=decay_mask)
    coupled = opt.weight_decay_mode == "coupled"
    tx = optax.chain(
        *([decay] if coupled else []),
        *([optim.add_l1(opt.l1, mask=decay_mask)] if opt.l1 else []),
        optax.trace(decay=opt.momentum, nesterov=opt.nesterov),
        *([] if coupled else [decay]),
    )
    if finetune.freezes(config.finetune.freeze):
        labels = finetune.param_labels(frozen_predicate(config))
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def frozen_predicate(config: ml_collections.ConfigDict):
    """``is_frozen(path)`` for ``config.finetune.freeze`` on this config's network."""
    num_stages = len(models.spec_from_config(config.model).stage_sizes)
    return finetune.frozen_predicate(config.finetune.freeze, num_stages)


def plateau_update(config: ml_collections.ConfigDict, plateau: optim.PlateauState,
                   val_error: float) -> optim.PlateauState:
    """The 'plateau' schedule's state after an evaluation (host values)."""
    s = config.schedule
    min_lr = s.plateau_min_lr or 0.0
    return optim.plateau_update(
        plateau, val_error, factor=s.plateau_factor,
        patience=s.plateau_patience, threshold=s.plateau_threshold,
        min_scale=min_lr / config.optimizer.lr)


# --------------------------------------------------------------------------- validation

KNOWN_SCHEDULES = ("piecewise", "cosine", "plateau")
IMBALANCE_COUNTERS = ("none", "resample", "reweight")


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    """Checks everything that can be checked before any compute; raises a one-line ValueError.

    ``num_devices=None`` skips the checks that depend on the machine (the sweep
    launcher validates every run before starting any, on a machine that may differ).
    """
    if config.dataset not in input_pipeline.KNOWN_DATASETS:
        raise ValueError(
            f"unknown dataset {config.dataset!r}; known: "
            f"{', '.join(input_pipeline.KNOWN_DATASETS)}"
        )
    models.validate_config(config.model)
    parallel.bn_axis_name(config.batch_norm)
    opt = config.optimizer
    if not (math.isfinite(opt.lr) and opt.lr > 0):
        raise ValueError(f"optimizer.lr must be a positive finite number, got {opt.lr}")
    if not (math.isfinite(opt.weight_decay) and opt.weight_decay >= 0):
        raise ValueError(f"optimizer.weight_decay must be >= 0, got {opt.weight_decay}")
    if not 0 <= opt.momentum < 1:
        raise ValueError(f"optimizer.momentum must be in [0, 1), got {opt.momentum}")
    if opt.weight_decay_on not in ("all", "kernels"):
        raise ValueError(
            f"optimizer.weight_decay_on must be 'all' or 'kernels', got {opt.weight_decay_on!r}"
        )
    if config.schedule.name not in KNOWN_SCHEDULES:
        raise ValueError(
            f"unknown schedule.name {config.schedule.name!r}; allowed: {', '.join(KNOWN_SCHEDULES)}"
        )
    if config.num_epochs is None and not config.num_steps > 0:
        raise ValueError(f"num_steps must be positive, got {config.num_steps}")
    for key in ("batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                "keep_checkpoints", "eval_batch_size"):
        if not config[key] > 0:
            raise ValueError(f"{key} must be positive, got {config[key]}")
    if num_devices is not None and config.batch_size % num_devices:
        raise ValueError(
            f"batch_size {config.batch_size} does not divide evenly across {num_devices} "
            f"devices; use a multiple of {num_devices}"
        )
    for key in ("eval_every_steps", "checkpoint_every_steps"):
        if config[key] % config.log_every_steps:
            raise ValueError(
                f"{key} ({config[key]}) must be a multiple of log_every_steps "
                f"({config.log_every_steps})"
            )
    if config.val_examples < 0:
        raise ValueError(f"val_examples must be >= 0, got {config.val_examples}")
    validate_inputs(config)
    _validate_extras(config)
    _validate_imbalance(config)


def validate_inputs(config: ml_collections.ConfigDict) -> None:
    """Checks ``augment.*``, ``normalize`` and ``whiten_*``; one-line ValueErrors."""
    aug, in_memory = config.augment, config.dataset in input_pipeline.IN_MEMORY_DATASETS
    if aug.crop_padding < 0:
        raise ValueError(f"augment.crop_padding must be >= 0, got {aug.crop_padding}")
    if aug.scale is not None:
        if not in_memory:
            raise ValueError(f"augment.scale is for in-memory datasets; {config.dataset} "
                             "uses augment.scale_range (shorter side in pixels)")
        if not (len(aug.scale) == 2 and all(math.isfinite(v) for v in aug.scale)
                and 1 <= aug.scale[0] <= aug.scale[1]):
            raise ValueError(f"augment.scale must be (lo, hi) with 1 <= lo <= hi, got {aug.scale}")
    if not 0 <= aug.hsv_jitter <= 1:
        raise ValueError(f"augment.hsv_jitter must be in [0, 1], got {aug.hsv_jitter}")
    if aug.hsv_jitter and config.model.in_channels != 3:
        raise ValueError(f"augment.hsv_jitter needs RGB images, but {config.dataset} has "
                         f"{config.model.in_channels} channel(s) (model.in_channels)")
    if not (math.isfinite(aug.pca_lighting) and aug.pca_lighting >= 0):
        raise ValueError(f"augment.pca_lighting must be >= 0, got {aug.pca_lighting}")
    if config.normalize not in input_pipeline.NORMALIZATIONS:
        raise ValueError(f"unknown normalize {config.normalize!r}; allowed: "
                         f"{', '.join(input_pipeline.NORMALIZATIONS)}")
    if not in_memory and config.normalize != "channel_standardize":
        raise ValueError(f"{config.dataset} is streamed and normalised with fixed per-channel "
                         f"statistics: normalize must be 'channel_standardize', got "
                         f"{config.normalize!r}")
    if config.whiten_over not in input_pipeline.WHITEN_OVER:
        raise ValueError(f"unknown whiten_over {config.whiten_over!r}; allowed: "
                         f"{', '.join(input_pipeline.WHITEN_OVER)}")
    if config.normalize == "pca" and config.whiten_over == "image":
        raise ValueError("normalize='pca' over whole images would scramble the pixel layout "
                         "the convolutions need: set whiten_over='channel', or use 'zca'")
    if not (math.isfinite(config.whiten_epsilon) and config.whiten_epsilon > 0):
        raise ValueError(f"whiten_epsilon must be > 0, got {config.whiten_epsilon}")


def _validate_extras(config: ml_collections.ConfigDict) -> None:
    """Regularisers, the plateau schedule and fine-tuning (issue 8)."""
    opt, s, ft = config.optimizer, config.schedule, config.finetune
    if opt.weight_decay_mode not in ("coupled", "decoupled"):
        raise ValueError(f"optimizer.weight_decay_mode must be 'coupled' or 'decoupled', "
                         f"got {opt.weight_decay_mode!r}")
    if not (math.isfinite(opt.l1) and opt.l1 >= 0):
        raise ValueError(f"optimizer.l1 must be >= 0, got {opt.l1}")
    if opt.max_norm is not None and not (math.isfinite(opt.max_norm) and opt.max_norm > 0):
        raise ValueError(f"optimizer.max_norm must be positive (or None = off), got {opt.max_norm}")
    if s.name == "plateau":
        if not config.val_examples > 0:
            raise ValueError("schedule.name='plateau' reduces the LR when the validation error "
                             "stops improving: set val_examples > 0 (the test set is never used)")
        if not s.plateau_factor > 1:
            raise ValueError(f"schedule.plateau_factor must be > 1, got {s.plateau_factor}")
        if not s.plateau_patience >= 1:
            raise ValueError(f"schedule.plateau_patience must be >= 1, got {s.plateau_patience}")
        if not s.plateau_threshold >= 0:
            raise ValueError(f"schedule.plateau_threshold must be >= 0, got {s.plateau_threshold}")
        if s.plateau_min_lr is not None and not 0 <= s.plateau_min_lr <= opt.lr:
            raise ValueError(f"schedule.plateau_min_lr must be in [0, optimizer.lr], "
                             f"got {s.plateau_min_lr}")
    frozen_predicate(config)  # validates finetune.freeze against the number of stages
    if ft.from_run is None and (finetune.freezes(ft.freeze) or ft.from_step is not None):
        raise ValueError("finetune.freeze and finetune.from_step need finetune.from_run "
                         "(the run to start from)")
    if ft.from_step is not None and ft.from_step < 0:
        raise ValueError(f"finetune.from_step must be >= 0 (or None = latest), got {ft.from_step}")


def _validate_imbalance(config: ml_collections.ConfigDict) -> None:
    imb = config.imbalance
    # None is what the command line makes of --config.imbalance.counter=none.
    if imb.counter not in (None, *IMBALANCE_COUNTERS):
        raise ValueError(f"imbalance.counter must be one of {', '.join(IMBALANCE_COUNTERS)}, "
                         f"got {imb.counter!r}")
    used = imb.classes is not None or imb.counter not in (None, "none")
    if used and config.dataset not in input_pipeline.IN_MEMORY_DATASETS:
        raise ValueError(f"imbalance is available for in-memory datasets only "
                         f"({', '.join(input_pipeline.IN_MEMORY_DATASETS)}), not {config.dataset}")
    if imb.classes is None:
        return
    k = config.model.num_classes
    if (not all(isinstance(c, int) and 0 <= c < k for c in imb.classes)
            or len(set(imb.classes)) != len(imb.classes) or not imb.classes):
        raise ValueError(f"imbalance.classes must be distinct class ids in [0, {k}), "
                         f"got {tuple(imb.classes)}")
    if not 0 < imb.keep_fraction <= 1:
        raise ValueError(f"imbalance.keep_fraction must be in (0, 1], got {imb.keep_fraction}")


# --------------------------------------------------------------------------- state and steps


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    warm: jax.Array  # bool: the warm-up-until-error rule is still in force
    first_bad_step: jax.Array  # int32: first step whose loss was not finite, -1 if none
    plateau: optim.PlateauState  # reduce-on-plateau scale and counters (schedule 'plateau')


@dataclasses.dataclass
class Trainer:
    """The compiled pieces of one run and the static facts they close over."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    graphdef: Any
    rest: Any
    tx: optax.GradientTransformation
    schedule: Schedule
    class_weights: Any = None  # (classes,) loss weight per label (imbalance.counter='reweight')

    def model(self, params, batch_stats) -> models.ResNet:
        return nnx.merge(self.graphdef, params, batch_stats, self.rest)

    def loss_fn(self, params, batch_stats, x, y, rng):
        model = self.model(params, batch_stats)
        model.train()
        finetune.freeze_batch_norm(model, self.config.finetune.freeze)
        logits = model(x, rng=rng)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        if self.class_weights is not None:
            loss = loss * jnp.asarray(self.class_weights)[y]
        loss = loss.mean()
        error = jnp.mean(jnp.argmax(logits, -1) != y)
        return loss, (error, nnx.state(model, nnx.BatchStat))

    def apply_gradients(self, state: TrainState, x, y) -> tuple[TrainState, jax.Array, jax.Array]:
        """One SGD step on a global batch already laid out along the mesh."""
        grads_fn = parallel.data_parallel_grads(self.loss_fn, self.mesh)
        # Dropout, stochastic depth and RReLU draw from a stream of their own, a pure
        # function of (seed, step): a resumed run makes the draws an uninterrupted one would.
        rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed), 3),
                                 state.step)
        loss, error, batch_stats, grads = grads_fn(state.params, state.batch_stats, x, y, rng)
        lr = learning_rate(self.config, self.schedule, state.step, state.warm,
                           state.plateau.scale)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates))
        is_frozen = frozen_predicate(self.config)
        if self.config.optimizer.max_norm is not None:
            params = optim.project_max_norm(params, self.config.optimizer.max_norm, is_frozen)
        if finetune.freezes(self.config.finetune.freeze):  # frozen BN layers ran on running stats
            batch_stats = finetune.keep_frozen(is_frozen, state.batch_stats, batch_stats)
        threshold = self.config.schedule.warmup_until_error
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
        return state, loss, error


def init_state(trainer_parts: tuple, config: ml_collections.ConfigDict, mesh) -> TrainState:
    graphdef, params, batch_stats, _ = trainer_parts
    tx = make_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        warm=jnp.asarray(config.schedule.warmup_until_error is not None),
        first_bad_step=jnp.full((), -1, jnp.int32),
        plateau=optim.PlateauState.initial(),
    )
    return parallel.replicate(state, mesh)


def build_trainer(config: ml_collections.ConfigDict, mesh, schedule: Schedule,
                  class_weights=None):
    """The Trainer and the initial (graphdef, params, batch_stats, rest) of ``config.model``.

    ``class_weights`` (classes,) multiplies each example's loss by its label's
    weight (``input_pipeline.inverse_frequency_weights`` for re-weighting).
    """
    model = models.build_model(
        config.model, seed=config.seed, bn_axis_name=parallel.bn_axis_name(config.batch_norm)
    )
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    trainer = Trainer(config, mesh, graphdef, rest, make_optimizer(config), schedule,
                      class_weights)
    return trainer, (graphdef, params, batch_stats, rest)


# --------------------------------------------------------------------------- the run


class _SignalFlag:
    """Records SIGTERM/SIGINT so the loop can checkpoint and stop between dispatches."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in EXIT_INTERRUPTED:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict:
    """Trains and evaluates one config in ``workdir``; returns the summary dict.

    Raises ValueError for bad input (before anything is written), ``Diverged``
    when the loss stops being finite and ``Interrupted`` after a SIGTERM/SIGINT
    (both after writing what must survive), ``WriteFailed`` when a metrics line
    or checkpoint cannot be written (the last complete checkpoint stays usable).
    """
    # Signals are caught from the very start, so a SIGTERM during set-up or
    # compilation still ends with a checkpoint instead of a lost run.
    with _SignalFlag() as sig:
        return _train_and_evaluate(config, workdir, allow_config_change, sig)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        allow_config_change: bool, sig: _SignalFlag) -> dict:
    mesh = parallel.make_mesh()
    validate_config(config, mesh.devices.size)
    feed = data_feed.make_feed(config, mesh)
    schedule = derive_schedule(config, feed.num_train)
    if config.finetune.from_run is not None and not checkpointing.checkpoint_steps(workdir):
        finetune.source_step(config)  # a resumed fine-tuning run never reads its source again
    run = run_files.RunDir(workdir, is_writer=jax.process_index() == 0)
    run.prepare(config.to_dict(), allow_config_change=allow_config_change)
    # Input is validated; a ValueError from here on is a bug, not bad input, and
    # must not be reported as one (exit 2, "error: ...").
    try:
        return _run(config, workdir, mesh, feed, schedule, run, sig)
    except ValueError as e:
        raise RuntimeError(f"internal error after the input was validated: {e}") from e


def _run(config: ml_collections.ConfigDict, workdir: str, mesh, feed, schedule,
         run: run_files.RunDir, sig: _SignalFlag) -> dict:
    weights = None
    if config.imbalance.counter == "reweight":
        weights = input_pipeline.inverse_frequency_weights(feed.class_counts)
    trainer, parts = build_trainer(config, mesh, schedule, weights)
    num_params = sum(x.size for x in jax.tree.leaves(parts[1]))
    ckpt = Checkpointer(workdir, config.keep_checkpoints)
    start = ckpt.latest_step()
    if start is None and config.finetune.from_run is not None:
        graphdef, params, batch_stats, rest = parts
        parts = (graphdef, *finetune.import_source(config, params, batch_stats), rest)
    state = init_state(parts, config, mesh)
    if start is not None:
        state = ckpt.restore(start, state)
    start = int(state.step)
    run.metrics.truncate_after(start)
    elapsed_before = run.metrics.last_value("elapsed_s", 0.0)

    chunk_fn = feed.make_train_chunk(trainer, start)
    evaluate = feed.make_evaluate(trainer)
    dead_units = (feed.make_dead_units(trainer)
                  if config.dead_units and config.model.activation in models.RECTIFIERS else None)

    progress = run_files.Progress(schedule.total_steps, start, config.log_every_steps)
    t0, t_log, step = time.time(), time.time(), start
    while step < schedule.total_steps:
        state, sums = chunk_fn(state, step)
        loss_sum, err_sum, count, step_losses = data_feed.read_chunk_sums(jax.device_get(sums))
        step = int(state.step)
        now = time.time()
        bad = int(state.first_bad_step)
        if bad >= 0:
            ckpt.wait()
            raise Diverged(bad, ckpt.latest_step())
        line = {
            "step": step,
            "epoch": round(step / schedule.steps_per_epoch, 3),
            "lr": float(learning_rate(config, schedule, step - 1, state.warm,
                                      state.plateau.scale)),
            "train_loss": loss_sum / count,
            "train_losses": step_losses,  # each step's loss (its spread: gradient noise)
            "train_error": err_sum / count,
            "images_per_sec": count * config.batch_size / max(now - t_log, 1e-9),
            "elapsed_s": elapsed_before + now - t0,
        }
        if step % config.eval_every_steps == 0 or step == schedule.total_steps:
            line.update(evaluate(state.params, state.batch_stats))
            if dead_units is not None:
                line["dead_units"] = dead_units(state.params, state.batch_stats)
            if config.schedule.name == "plateau":  # before the checkpoint, which must hold it
                state = state.replace(plateau=parallel.replicate(
                    plateau_update(config, state.plateau, line["val_error"]), mesh))
        with _writing("metrics", step, ckpt):
            run.metrics.append(line)
        progress.update(line)
        t_log = time.time()
        if (step % config.checkpoint_every_steps == 0 or step == schedule.total_steps
                or sig.signum is not None):
            with _writing("checkpoint", step, ckpt):
                ckpt.save(step, state)
        if sig.signum is not None and step < schedule.total_steps:
            with _writing("checkpoint", step, ckpt):
                ckpt.wait()
            raise Interrupted(sig.signum, step)
    with _writing("checkpoint", step, ckpt):
        ckpt.wait()
    progress.close()

    if config.layer_responses:
        stds = feed.make_responses(trainer)(state.params, state.batch_stats)
        stages = [s for s, stage in enumerate(trainer.model(state.params, state.batch_stats)
                                              .stages) for _ in range(stage.num_blocks)]
        with _writing("layer responses", step, ckpt):
            run.write_json("layer_responses.json", {"blocks": [
                {"index": i, "stage": stages[i], "std": float(v)} for i, v in enumerate(stds)]})
    summary = run_files.summarize(run.metrics.read(), status="finished",
                                  name=models.spec_from_config(config.model).name,
                                  params=num_params, steps=schedule.total_steps)
    with _writing("summary", step, ckpt):
        run.write_json("summary.json", summary)
    ckpt.close()
    return summary


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    import config_loading  # noqa: PLC0415  (keeps `import train` free of CLI machinery)

    try:
        args = config_loading.parse_train_args(sys.argv[1:] if argv is None else argv)
        config = config_loading.load_config(args.config, args.overrides)
        group = distributed.from_args(args.coordinator, args.num_processes, args.process_id,
                                      args.heartbeat_timeout)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    distributed.initialize(group)
    try:
        summary = train_and_evaluate(config, args.workdir,
                                     allow_config_change=args.allow_config_change)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Diverged as e:
        run_files.record_failure(args.workdir, config, "diverged", str(e),
                                 diverged_at_step=e.step)
        print(f"error: diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return EXIT_INTERRUPTED[e.signum]
    except WriteFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: process {jax.process_index()}: a cross-process operation failed "
              f"({first}); another process of this job has probably died; start the job "
              "again to resume from its last checkpoint", file=sys.stderr)
        return EXIT_PEER_FAILED
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
