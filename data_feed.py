"""Feeding the training step and the evaluations: in-memory data on device, or a host stream.

Two feeds behind one interface, so ``train.train_and_evaluate`` is the same
loop for every dataset:

- ``InMemoryFeed`` (digits, CIFAR-10/100): the whole dataset lives on every
  device as uint8; each step picks its batch (a pure function of seed and
  step), augments and normalises it inside the jitted step, so no batch ever
  crosses from host to device (the airbench recipe). Evaluation is one
  dispatch per split (``lax.scan`` over a padded, masked split).
- ``StreamingFeed`` (ImageNet): a tf.data pipeline per process reads its shard
  and hands uint8 crops to ``jax.make_array_from_process_local_data``; the
  step normalises on device. Evaluation streams the split once, padded so
  every process runs the same number of batches.

A feed exposes ``num_train`` and builds three callables for a ``Trainer``:
``make_train_chunk`` (every step up to the next log step), ``make_evaluate``
(error and loss per split) and ``make_responses`` (the paper's Fig. 7 std of
each block's branch response).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compile_options
import input_pipeline
import parallel

EvalFn = Callable[[Any, Any], dict[str, float]]


def eval_batch_sums(model, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Sums over the real (mask=1) examples of one batch, as one vector of 2K + 3 numbers.

    (wrong, summed loss, wrong per class (K), examples per class (K), count):
    the per-class error of an imbalanced run comes out of the same pass. The
    count is last, as in every sum vector here (``StreamingFeed.reduce_split``
    stops on it); ``eval_metrics`` reads the vector.
    """
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    wrong = (jnp.argmax(logits, -1) != y).astype(jnp.float32) * mask
    in_class = jax.nn.one_hot(y, logits.shape[-1], dtype=jnp.float32) * mask[:, None]
    return jnp.concatenate([jnp.stack([wrong.sum(), (loss * mask).sum()]),
                            (wrong[:, None] * in_class).sum(0), in_class.sum(0), mask.sum()[None]])


def eval_metrics(name: str, sums: np.ndarray) -> dict[str, Any]:
    """``{name}_error``, ``{name}_loss`` and ``{name}_error_per_class`` from ``eval_batch_sums``.

    A class without examples in the split has error None.
    """
    sums = np.asarray(sums, np.float64)
    k = (len(sums) - 3) // 2
    wrong, loss, count = sums[0], sums[1], sums[-1]
    per_class = [float(w / c) if c else None
                 for w, c in zip(sums[2:2 + k], sums[2 + k:2 + 2 * k], strict=True)]
    return {f"{name}_error": float(wrong / count), f"{name}_loss": float(loss / count),
            f"{name}_error_per_class": per_class}


def response_batch_sums(model, x: jax.Array, mask: jax.Array) -> jax.Array:
    """(blocks, 3): per block, the summed mean and mean square of its branch response, and count.

    The branch response is the block's residual function after its last BN,
    before the addition and the ReLU (plain nets: the same layer), as in the
    paper's Fig. 7; moments are over all units of all real examples.
    """
    _, feats = model(x, return_features=True)
    rows = []
    for r in feats["branch_responses"]:
        r = r.astype(jnp.float32)
        rows.append(jnp.stack([(r.mean((1, 2, 3)) * mask).sum(),
                               (jnp.square(r).mean((1, 2, 3)) * mask).sum(), mask.sum()]))
    return jnp.stack(rows)


def dead_unit_fraction(model, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of activation channels that are never positive on the real examples of ``x``.

    A rectifier channel that outputs zero (or, for leaky variants, only its
    negative slope) at every position of every example gets no useful
    gradient: it is "dead". Counted over every activation of the network.
    """
    _, feats = model(x, return_features=True)
    real = mask[:, None, None, None] > 0
    dead = [jnp.logical_not(jnp.any((a > 0) & real, axis=(0, 1, 2)))
            for a in feats["activations"]]
    return sum(d.sum() for d in dead) / sum(d.size for d in dead)


def std_from_sums(sums: np.ndarray) -> np.ndarray:
    """Per-block standard deviation from ``response_batch_sums`` totals."""
    mean = sums[:, 0] / sums[:, 2]
    return np.sqrt(np.maximum(sums[:, 1] / sums[:, 2] - mean**2, 0.0))


def _eval_batch_size(config, num_devices: int, n: int | None = None) -> int:
    size = config.eval_batch_size if n is None else min(config.eval_batch_size, max(n, 1))
    return math.ceil(size / num_devices) * num_devices


def _steps_until_log(config, total: int, step: int) -> int:
    return min(config.log_every_steps - step % config.log_every_steps, total - step)


def _zero_chunk_sums(config) -> jax.Array:
    return jnp.zeros(3 + config.log_every_steps)


def add_step(sums: jax.Array, loss: jax.Array, error: jax.Array) -> jax.Array:
    """Adds one step to a chunk's sums: (loss, error, steps) totals, then each step's loss.

    The vector has 3 + log_every_steps entries; step i of the chunk writes its
    loss at 3 + i, so the log line can show the step-to-step spread (the
    gradient noise of the batch size) for the price of one scalar store.
    """
    i = 3 + sums[2].astype(jnp.int32)
    return sums.at[i].set(loss).at[:3].add(jnp.stack([loss, error, 1.0]))


def read_chunk_sums(sums: np.ndarray) -> tuple[float, float, int, list[float]]:
    """(summed loss, summed error, steps, each step's loss) from ``add_step``'s vector."""
    sums = np.asarray(sums)
    count = int(sums[2])
    return float(sums[0]), float(sums[1]), count, [float(v) for v in sums[3:3 + count]]


# --------------------------------------------------------------------------- in memory


def device_data(mesh, split: input_pipeline.Split) -> dict[str, jax.Array]:
    """A split replicated on every device (every process passes the same host arrays)."""
    sharding = parallel.replicated(mesh)
    return {
        "images": jax.make_array_from_callback(split.images.shape, sharding,
                                               lambda i: split.images[i]),
        "labels": jax.make_array_from_callback(split.labels.shape, sharding,
                                               lambda i: split.labels[i]),
    }


def padded_eval_split(mesh, split: input_pipeline.Split, batch_size: int) -> dict:
    """(batches, batch, ...) arrays with a mask, so a partial last batch needs no recompile."""
    n = len(split.labels)
    nb = max(1, math.ceil(n / batch_size))
    pad = nb * batch_size - n
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros(pad, np.int32)])
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    host = {
        "images": images.reshape(nb, batch_size, *images.shape[1:]),
        "labels": labels.reshape(nb, batch_size),
        "mask": mask.reshape(nb, batch_size),
    }
    sharding = parallel.batch_sharded(mesh, leading_axes=1)
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
            for k, v in host.items()}


def _scan_split(trainer, batch_fn: Callable, init: jax.Array, params, batch_stats,
                split: dict[str, jax.Array], stats: dict[str, jax.Array]) -> tuple[jax.Array, Any]:
    """``batch_fn(model, x, batch) -> (sums, out)`` over a padded split in one ``lax.scan``.

    Images are normalised with ``stats`` exactly as in training, without augmentation.
    Returns the summed sums and the stacked outs. Parameters ride in the scan's
    carry and the model is built inside the body: nnx.scan (scanned stages)
    refuses variables from an outer trace level.
    """

    def body(carry, batch):
        acc, params, batch_stats = carry
        model = trainer.model(params, batch_stats)
        model.eval()
        x = input_pipeline.normalize_batch(batch["images"], stats)
        sums, out = batch_fn(model, x, batch)
        return (acc + sums, params, batch_stats), out

    (acc, _, _), outs = jax.lax.scan(body, (init, params, batch_stats), split)
    return acc, outs


def sum_over_split(trainer, batch_sums: Callable, init: jax.Array, params, batch_stats,
                   split: dict[str, jax.Array], stats: dict[str, jax.Array]) -> jax.Array:
    """Adds ``batch_sums(model, x, batch)`` over a padded split on device (one ``lax.scan``)."""
    return _scan_split(trainer, lambda model, x, batch: (batch_sums(model, x, batch), None),
                       init, params, batch_stats, split, stats)[0]


def make_class_probabilities(trainer, mesh, split: input_pipeline.Split,
                             stats: dict[str, np.ndarray]) -> Callable[[Any, Any], np.ndarray]:
    """``probs(params, batch_stats) -> (N, classes)``: the model's softmax on an in-memory split.

    Padded, batched and normalised as the evaluation pass is (same eval batch
    size, the run's own normalisation ``stats``), so the argmax gives the logged error. The
    probabilities are computed on device (one ``lax.scan``) and returned on
    the host; compiled once, for any parameters of the trainer's model.
    """
    n = len(split.labels)
    padded = padded_eval_split(mesh, split, _eval_batch_size(trainer.config, mesh.devices.size, n))
    stats = parallel.replicate(stats, mesh)

    def softmax(model, x, batch):
        return 0.0, jax.nn.softmax(model(x).astype(jnp.float32), axis=-1)

    probs_fn = compile_options.jit(lambda params, batch_stats, split, stats: _scan_split(
        trainer, softmax, jnp.zeros(()), params, batch_stats, split, stats)[1])

    def probs(params, batch_stats) -> np.ndarray:
        out = np.asarray(probs_fn(params, batch_stats, padded, stats))
        return out.reshape(-1, out.shape[-1])[:n]

    return probs


class InMemoryFeed:
    """digits / CIFAR: held on device; batches sampled, augmented and normalised inside jit."""

    def __init__(self, config, mesh, data: input_pipeline.InMemoryData | None = None):
        """Loads ``config.dataset``, or holds ``data`` (synthetic data for benchmarks)."""
        self.config, self.mesh = config, mesh
        data = input_pipeline.load_in_memory(config) if data is None else data
        data = input_pipeline.with_statistics(data, config)
        self.input_wait_s = 0.0  # no host input on the hot path, by construction
        self.num_train = len(data.train.labels)
        self.num_classes = data.num_classes
        self.train_labels = data.train.labels  # host copy, for class counts and balanced sampling
        self.class_counts = np.bincount(data.train.labels, minlength=data.num_classes)
        self.image_shape = data.train.images.shape[1:]
        # Normalisation (and PCA lighting) statistics of the train split, on every device.
        self.stats = parallel.replicate(input_pipeline.normalization_arrays(data, config), mesh)
        self.train = device_data(mesh, data.train)
        n_dev = mesh.devices.size
        self.eval_splits = {
            name: padded_eval_split(mesh, split, _eval_batch_size(config, n_dev,
                                                                  len(split.labels)))
            for name, split in (("test", data.test), ("val", data.val)) if split is not None
        }

    def make_train_chunk(self, trainer, start_step: int) -> Callable:
        """``run(state, step) -> (state, sums)``: every step up to the next log step.

        ``sums`` holds the summed (loss, error, steps) of the chunk and each step's
        loss (``add_step``), on device. The batch of step s is a pure function of
        (seed, s), so a resumed run sees the batches an uninterrupted one would
        (``start_step`` is not needed). With ``imbalance.counter='resample'``
        batches are class-balanced (``input_pipeline.balanced_batch_indices``). On
        accelerators the whole chunk is one dispatch (``lax.fori_loop``); on CPU,
        where XLA runs convolutions inside loops about 10x slower, each step is
        its own dispatch.
        """
        del start_step
        config, total = self.config, trainer.schedule.total_steps
        base = jax.random.key(config.seed)
        order_key, augment_key = jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)
        batch_sharding = parallel.batch_sharded(self.mesh)
        num_train, log_every = self.num_train, config.log_every_steps
        data = {**self.train, "stats": self.stats}
        resample = config.imbalance.counter == "resample"
        if resample:
            index = input_pipeline.ClassIndex.from_labels(self.train_labels)
            data["class_index"] = parallel.replicate(dataclasses.asdict(index), self.mesh)

        def one_step(state, data, sums):
            if resample:
                idx = input_pipeline.balanced_batch_indices(order_key, state.step,
                                                            data["class_index"], config.batch_size)
            else:
                idx = input_pipeline.batch_indices(order_key, state.step, num_train,
                                                   config.batch_size)
            idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
            x = input_pipeline.train_inputs(jax.random.fold_in(augment_key, state.step),
                                            data["images"][idx], config.augment, data["stats"])
            state, loss, error = trainer.apply_gradients(state, x, data["labels"][idx])
            return state, add_step(sums, loss, error)

        if config.loop_on_device:

            def chunk(state, data):
                n = jnp.minimum(log_every - state.step % log_every, total - state.step)
                body = lambda _, c: one_step(c[0], data, c[1])  # noqa: E731
                return jax.lax.fori_loop(0, n, body, (state, _zero_chunk_sums(config)))

            chunk_fn = compile_options.jit(chunk, donate_argnums=0)
            return lambda state, step: chunk_fn(state, data)

        step_fn = compile_options.jit(one_step, donate_argnums=(0, 2))
        zeros = compile_options.jit(lambda: _zero_chunk_sums(config),
                        out_shardings=parallel.replicated(self.mesh))

        def run(state, step):
            sums = zeros()
            for _ in range(_steps_until_log(config, total, step)):
                state, sums = step_fn(state, data, sums)
            return state, sums

        return run

    def make_evaluate(self, trainer) -> EvalFn:
        """``evaluate(params, batch_stats) -> {test_error, test_loss, test_error_per_class, ...}``.

        The same three for ``val`` when the run holds out a validation split.
        """
        size = 2 * trainer.config.model.num_classes + 3

        def sums(params, batch_stats, split, stats):
            return sum_over_split(
                trainer, lambda model, x, batch: eval_batch_sums(
                    model, x, batch["labels"], batch["mask"]),
                jnp.zeros(size), params, batch_stats, split, stats)

        sums_fn = compile_options.jit(sums)

        def evaluate(params, batch_stats):
            out = {}
            for name, split in self.eval_splits.items():
                out.update(eval_metrics(name, sums_fn(params, batch_stats, split, self.stats)))
            return out

        return evaluate

    def make_dead_units(self, trainer) -> Callable[[Any, Any], float]:
        """``dead(params, batch_stats)``: ``dead_unit_fraction`` on the first test batch."""

        @compile_options.jit
        def dead(params, batch_stats, split, stats):
            model = trainer.model(params, batch_stats)
            model.eval()
            x = input_pipeline.normalize_batch(split["images"][0], stats)
            return dead_unit_fraction(model, x, split["mask"][0])

        return lambda params, batch_stats: float(
            dead(params, batch_stats, self.eval_splits["test"], self.stats))

    def make_responses(self, trainer) -> Callable[[Any, Any], np.ndarray]:
        """``responses(params, batch_stats) -> std per block`` on the test split."""

        def sums(params, batch_stats, split, stats):
            n = sum(s.num_blocks for s in trainer.model(params, batch_stats).stages)
            return sum_over_split(
                trainer, lambda model, x, batch: response_batch_sums(model, x, batch["mask"]),
                jnp.zeros((n, 3)), params, batch_stats, split, stats)

        sums_fn = compile_options.jit(sums)
        return lambda params, batch_stats: std_from_sums(
            np.asarray(sums_fn(params, batch_stats, self.eval_splits["test"], self.stats)))


# --------------------------------------------------------------------------- streamed


class StreamingFeed:
    """ImageNet: each process streams its shard from TFDS; the step normalises on device."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        train_split, test_split = input_pipeline.STREAMED_SPLITS[config.dataset]
        n_val = int(config.get("val_examples", 0) or 0)
        if n_val:  # held out from the start of the training split
            self.train_split = f"{train_split}[{n_val}:]"
            self.eval_split_names = {"test": test_split, "val": f"{train_split}[:{n_val}]"}
        else:
            self.train_split, self.eval_split_names = train_split, {"test": test_split}
        self.num_train = input_pipeline.num_examples(config, self.train_split)
        self.mean = jnp.asarray(input_pipeline.IMAGENET_MEAN)
        self.std = jnp.asarray(input_pipeline.IMAGENET_STD)
        self.lighting = {"eigvals": jnp.asarray(input_pipeline.IMAGENET_EIGVALS),
                         "eigvecs": jnp.asarray(input_pipeline.IMAGENET_EIGVECS)}
        self.sharding = parallel.batch_sharded(mesh)
        self.input_wait_s = 0.0  # time the training loop spent waiting for the host stream

    def _stream(self, split: str, batch_size: int, train: bool, seed: int = 0) -> Iterator:
        return input_pipeline.make_streaming_dataset(
            self.config, split, batch_size=batch_size, train=train, seed=seed,
            process_index=jax.process_index(), process_count=jax.process_count())

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self.sharding, local)

    def make_train_chunk(self, trainer, start_step: int) -> Callable:
        """``run(state, step) -> (state, sums)``, one dispatch per step from the host stream.

        The shuffle is seeded with (seed, start_step): a resumed run continues
        from its checkpoint with a fresh order (tf.data's position is not
        checkpointed), instead of replaying the examples it saw first.
        """
        config, total = self.config, trainer.schedule.total_steps
        stream = self._stream(self.train_split, config.batch_size, train=True,
                              seed=config.seed * 1_000_003 + start_step)
        mean, std, lighting = self.mean, self.std, self.lighting
        augment_key = jax.random.fold_in(jax.random.key(config.seed), 2)

        def one_step(state, images, labels, sums):
            # Colour augmentation on device (crops, scale and flips were done by tf.data).
            images = input_pipeline.colour_augment(jax.random.fold_in(augment_key, state.step),
                                                   input_pipeline.to_unit(images),
                                                   config.augment, lighting)
            x = input_pipeline.normalize(images, mean, std=std)
            state, loss, error = trainer.apply_gradients(state, x, labels)
            return state, add_step(sums, loss, error)

        step_fn = compile_options.jit(one_step, donate_argnums=(0, 3))
        zeros = compile_options.jit(lambda: _zero_chunk_sums(config),
                        out_shardings=parallel.replicated(self.mesh))

        def run(state, step):
            sums = zeros()
            for _ in range(_steps_until_log(config, total, step)):
                t = time.perf_counter()
                batch = next(stream)
                self.input_wait_s += time.perf_counter() - t
                state, sums = step_fn(state, self._global(batch["image"]),
                                      self._global(batch["label"]), sums)
            return state, sums

        return run

    def reduce_split(self, split: str, batch_fn: Callable, params, batch_stats) -> np.ndarray:
        """Sums ``batch_fn`` over one pass of ``split``; stops on the first all-padding batch.

        The eval stream is padded without end, and the stop decision is taken
        on a global (all-process) count, so every process runs the same batches.
        """
        batch_size = _eval_batch_size(self.config, self.mesh.devices.size)
        total = None
        for batch in self._stream(split, batch_size, train=False):
            sums = np.asarray(batch_fn(params, batch_stats, self._global(batch["image"]),
                                       self._global(batch["label"]),
                                       self._global(batch["mask"])))
            if sums[..., -1].max() == 0:
                break
            total = sums if total is None else total + sums
        if total is None:
            raise ValueError(f"the {split} split of {self.config.dataset} is empty")
        return total

    def make_evaluate(self, trainer) -> EvalFn:
        mean, std = self.mean, self.std

        @compile_options.jit
        def batch_fn(params, batch_stats, images, labels, mask):
            model = trainer.model(params, batch_stats)
            model.eval()
            return eval_batch_sums(model, input_pipeline.normalize(images, mean, std=std),
                                   labels, mask)

        def evaluate(params, batch_stats):
            out = {}
            for name, split in self.eval_split_names.items():
                out.update(eval_metrics(name, self.reduce_split(split, batch_fn, params,
                                                                batch_stats)))
            return out

        return evaluate

    def make_dead_units(self, trainer) -> Callable[[Any, Any], float]:
        """``dead(params, batch_stats)``: ``dead_unit_fraction`` on the first test batch."""
        mean, std = self.mean, self.std
        batch_size = _eval_batch_size(self.config, self.mesh.devices.size)
        first = next(iter(self._stream(self.eval_split_names["test"], batch_size, train=False)))
        images, mask = self._global(first["image"]), self._global(first["mask"])

        @compile_options.jit
        def dead(params, batch_stats, images, mask):
            model = trainer.model(params, batch_stats)
            model.eval()
            return dead_unit_fraction(model, input_pipeline.normalize(images, mean, std=std),
                                      mask)

        return lambda params, batch_stats: float(dead(params, batch_stats, images, mask))

    def make_responses(self, trainer) -> Callable[[Any, Any], np.ndarray]:
        mean, std = self.mean, self.std

        @compile_options.jit
        def batch_fn(params, batch_stats, images, labels, mask):
            del labels
            model = trainer.model(params, batch_stats)
            model.eval()
            return response_batch_sums(model, input_pipeline.normalize(images, mean, std=std),
                                       mask)

        return lambda params, batch_stats: std_from_sums(
            self.reduce_split(self.eval_split_names["test"], batch_fn, params, batch_stats))


def make_feed(config, mesh) -> InMemoryFeed | StreamingFeed:
    """The feed for ``config.dataset``."""
    if config.dataset in input_pipeline.IN_MEMORY_DATASETS:
        return InMemoryFeed(config, mesh)
    return StreamingFeed(config, mesh)
