"""Where the training loop's batches come from: in-memory data on device, or a host stream.

A feed only produces batches; the step that consumes them and the
measurements that reduce over them live in ``training``. Two feeds behind
one interface:

- ``InMemoryFeed`` (digits, CIFAR-10/100): the whole dataset lives on every
  device as uint8 (``arrays``); ``train_batch(arrays, step)`` picks the
  step's examples (a pure function of seed and step), augments and
  normalises them inside jit, so no batch crosses from host to device (the
  airbench recipe). Evaluation splits are held padded and masked, as
  (batches, batch, ...) arrays, so a whole split is one ``lax.scan``.
- ``StreamingFeed`` (ImageNet): a tf.data pipeline per process reads its
  shard; ``train_stream`` yields global uint8 batches and
  ``train_batch(raw, step)`` colour-augments and normalises them on device.
  ``eval_stream`` yields padded batches without end (the consumer stops at
  the first all-padding one).

Both give ``eval_batch(arrays, batch)``: a raw evaluation batch normalised as
in training, without augmentation. Batches are dicts: ``image`` (network
input, or uint8 before ``train_batch``/``eval_batch``), ``label`` and, for
evaluation, ``mask`` (1 for real examples, 0 for padding).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data import augment, datasets, sampling, statistics, streaming
from data.device import batch_sharded, put, replicate

Batch = dict[str, jax.Array]


def eval_batch_size(config: Any, num_devices: int, n: int | None = None) -> int:
    """``eval_batch_size`` (at most ``n``), rounded up to a multiple of the devices."""
    size = config.eval_batch_size if n is None else min(config.eval_batch_size, max(n, 1))
    return math.ceil(size / num_devices) * num_devices


def padded_split(mesh, split: datasets.Split, batch_size: int) -> dict[str, jax.Array]:
    """(batches, batch, ...) arrays with a mask, so a partial last batch needs no recompile."""
    n = len(split.labels)
    nb = max(1, math.ceil(n / batch_size))
    pad = nb * batch_size - n
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros(pad, np.int32)])
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    host = {"image": images.reshape(nb, batch_size, *images.shape[1:]),
            "label": labels.reshape(nb, batch_size), "mask": mask.reshape(nb, batch_size)}
    sharding = batch_sharded(mesh, leading_axes=1)
    return {k: put(v, sharding) for k, v in host.items()}


def seed_keys(seed: int) -> np.ndarray:
    """The raw data of a run's (example order, augmentation) keys: streams 1 and 2 of ``seed``.

    Held among a feed's ``arrays`` (an argument of the program, not a
    constant of it), so that a pack of runs (``training.pack``) draws each
    run's batches with its own keys from one copy of the data.
    """
    base = jax.random.key(seed)
    return np.stack([np.asarray(jax.random.key_data(jax.random.fold_in(base, stream)))
                     for stream in (1, 2)])


class InMemoryFeed:
    """digits / CIFAR: held on device; batches sampled, augmented and normalised inside jit."""

    def __init__(self, config: Any, mesh, data: datasets.InMemoryData | None = None):
        """Loads ``config.dataset``, or holds ``data`` (synthetic data for benchmarks)."""
        self.config, self.mesh = config, mesh
        data = datasets.load_in_memory(config) if data is None else data
        data = statistics.with_statistics(data, config)
        self.input_wait_s = 0.0  # no host input on the hot path, by construction
        self.num_train = len(data.train.labels)
        self.num_classes = data.num_classes
        self.class_counts = np.bincount(data.train.labels, minlength=data.num_classes)
        self.image_shape = data.train.images.shape[1:]
        # The train split and the normalisation (and PCA lighting) statistics, on every device.
        self.stats = replicate(statistics.normalization_arrays(data, config), mesh)
        self.arrays = {**replicate({"image": data.train.images, "label": data.train.labels,
                                    "seed_keys": seed_keys(config.seed)}, mesh),
                       "stats": self.stats}
        if config.imbalance.counter == "resample":
            index = sampling.ClassIndex.from_labels(data.train.labels)
            self.arrays["class_index"] = replicate(dataclasses.asdict(index), mesh)
        n_dev = mesh.devices.size
        self.eval_splits = {
            name: padded_split(mesh, split, eval_batch_size(config, n_dev, len(split.labels)))
            for name, split in (("test", data.test), ("val", data.val)) if split is not None
        }
        self.eval_names = tuple(self.eval_splits)
        self._sharding = batch_sharded(mesh)

    def train_batch(self, arrays: dict[str, Any], step: jax.Array) -> Batch:
        """The batch of training step ``step``, a pure function of (seed, step), on device.

        The seed's keys come from ``arrays['seed_keys']`` (``seed_keys``). With
        ``imbalance.counter='resample'`` batches are class-balanced.
        """
        config = self.config
        order_key, augment_key = jax.random.wrap_key_data(arrays["seed_keys"])
        if "class_index" in arrays:
            idx = sampling.balanced_batch_indices(order_key, step, arrays["class_index"],
                                                  config.batch_size)
        else:
            idx = sampling.batch_indices(order_key, step, self.num_train, config.batch_size)
        idx = jax.lax.with_sharding_constraint(idx, self._sharding)
        x = augment.train_inputs(jax.random.fold_in(augment_key, step),
                                 arrays["image"][idx], config.augment, arrays["stats"])
        return {"image": x, "label": arrays["label"][idx]}

    def eval_batch(self, arrays: dict[str, Any], batch: Batch) -> Batch:
        """An evaluation batch normalised with the train split's statistics."""
        return {**batch, "image": augment.normalize_batch(batch["image"], arrays["stats"])}


class StreamingFeed:
    """ImageNet: each process streams its shard from TFDS; the step normalises on device."""

    arrays = None  # nothing is held on device

    def __init__(self, config: Any, mesh):
        self.config, self.mesh = config, mesh
        train_split, test_split = datasets.STREAMED_SPLITS[config.dataset]
        n_val = int(config.get("val_examples", 0) or 0)
        if n_val:  # held out from the start of the training split
            self.train_split = f"{train_split}[{n_val}:]"
            self.eval_split_names = {"test": test_split, "val": f"{train_split}[:{n_val}]"}
        else:
            self.train_split, self.eval_split_names = train_split, {"test": test_split}
        self.eval_names = tuple(self.eval_split_names)
        self.num_train = streaming.num_examples(config, self.train_split)
        self.num_classes = config.model.num_classes
        self.mean = jnp.asarray(streaming.IMAGENET_MEAN)
        self.std = jnp.asarray(streaming.IMAGENET_STD)
        self.lighting = {"eigvals": jnp.asarray(streaming.IMAGENET_EIGVALS),
                         "eigvecs": jnp.asarray(streaming.IMAGENET_EIGVECS)}
        self._sharding = batch_sharded(mesh)
        self._augment_key = jax.random.fold_in(jax.random.key(config.seed), 2)
        self.input_wait_s = 0.0  # time the training loop spent waiting for the host stream

    def _stream(self, split: str, batch_size: int, train: bool, seed: int = 0) -> Iterator[Batch]:
        for local in streaming.make_streaming_dataset(
                self.config, split, batch_size=batch_size, train=train, seed=seed,
                process_index=jax.process_index(), process_count=jax.process_count()):
            yield {k: jax.make_array_from_process_local_data(self._sharding, v)
                   for k, v in local.items()}

    def train_stream(self, start_step: int) -> Iterator[Batch]:
        """Global uint8 training batches without end; time spent waiting adds to input_wait_s.

        The shuffle is seeded with (seed, start_step): a resumed run continues
        from its checkpoint with a fresh order (tf.data's position is not
        checkpointed), instead of replaying the examples it saw first.
        """
        stream = self._stream(self.train_split, self.config.batch_size, train=True,
                              seed=self.config.seed * 1_000_003 + start_step)
        while True:
            t = time.perf_counter()
            batch = next(stream)
            self.input_wait_s += time.perf_counter() - t
            yield {"image": batch["image"], "label": batch["label"]}

    def train_batch(self, raw: Batch, step: jax.Array) -> Batch:
        """Colour augmentation and normalisation on device (tf.data did crop, scale, flip)."""
        images = augment.colour_augment(jax.random.fold_in(self._augment_key, step),
                                        augment.to_unit(raw["image"]), self.config.augment,
                                        self.lighting)
        return {"image": augment.normalize(images, self.mean, std=self.std),
                "label": raw["label"]}

    def eval_stream(self, name: str) -> Iterator[Batch]:
        """One pass of split ``name`` ('test' or 'val'), then all-padding batches without end."""
        size = eval_batch_size(self.config, self.mesh.devices.size)
        return self._stream(self.eval_split_names[name], size, train=False)

    def eval_batch(self, arrays: None, batch: Batch) -> Batch:
        """An evaluation batch normalised with ImageNet's per-channel statistics."""
        del arrays
        return {**batch, "image": augment.normalize(batch["image"], self.mean, std=self.std)}


def make_feed(config: Any, mesh) -> InMemoryFeed | StreamingFeed:
    """The feed for ``config.dataset``."""
    if config.dataset in datasets.IN_MEMORY_DATASETS:
        return InMemoryFeed(config, mesh)
    return StreamingFeed(config, mesh)
