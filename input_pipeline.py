"""Datasets to device batches: embedded digits, CIFAR in memory, ImageNet streaming.

Small datasets (digits, CIFAR-10/100) are loaded once into host memory as
uint8 and then held on the accelerators by the trainer; the functions
``batch_indices``, ``augment_batch`` and ``normalize`` are pure JAX and run
inside the jitted training step, so no batch crosses from host to device.
ImageNet streams through a tf.data pipeline, each process reading its shard.

TensorFlow and TFDS are imported lazily, so digits runs never pay for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KNOWN_DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagenet2012")
IN_MEMORY_DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100")
STREAMED_SPLITS: dict[str, tuple[str, str]] = {"imagenet2012": ("train", "validation")}
DIGITS_TEST_EXAMPLES = 360
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in host memory."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int32


@dataclasses.dataclass(frozen=True)
class InMemoryData:
    name: str
    num_classes: int
    train: Split
    test: Split
    val: Split | None
    mean_image: np.ndarray  # (H, W, C) float32: per-pixel mean of the train images, in [0, 1]


def _check_known(name: str) -> None:
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")


def _stratified_split(labels: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with ``n_out`` held out, class proportions preserved."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    idx = np.arange(len(labels))
    kept, held = train_test_split(idx, test_size=n_out, random_state=seed, stratify=labels)
    return np.sort(kept), np.sort(held)


def _take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx])


def imbalanced_subset(labels: np.ndarray, classes, keep_fraction: float,
                      seed: int) -> np.ndarray:
    """Sorted indices of a deterministically imbalanced subset of a training split.

    Every class in ``classes`` keeps ``max(1, round(keep_fraction * n_c))`` of
    its ``n_c`` examples, drawn without replacement by a generator seeded with
    (seed, class); the other classes keep all theirs. Same seed, same subset.
    """
    keep = [np.arange(len(labels))[~np.isin(labels, list(classes))]]
    for c in sorted(int(c) for c in classes):
        members = np.flatnonzero(labels == c)
        n = max(1, round(keep_fraction * len(members))) if len(members) else 0
        keep.append(np.random.default_rng([seed, c]).permutation(members)[:n])
    return np.sort(np.concatenate(keep))


def inverse_frequency_weights(class_counts: np.ndarray) -> np.ndarray:
    """Per-class loss weights proportional to 1 / n_c, averaging 1 over the training examples.

    With ``w_c = N / (K * n_c)`` (K classes present, N examples) the weighted
    mean loss over the training set is the unweighted mean of the per-class
    mean losses: every class counts as much as if the data were balanced.
    Classes without examples get weight 0 (they never appear in a batch).
    """
    counts = np.asarray(class_counts, np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def _load_digits() -> tuple[Split, Split, int]:
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int32)
    train_idx, test_idx = _stratified_split(labels, DIGITS_TEST_EXAMPLES, seed=0)
    everything = Split(images, labels)
    return _take(everything, train_idx), _take(everything, test_idx), 10


def _import_tfds():
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tf.config.set_visible_devices([], "GPU")  # or TF takes the accelerator's memory
    return tf, tfds


def _not_prepared(name: str, data_dir: str | None, err: Exception) -> ValueError:
    where = data_dir or "~/tensorflow_datasets"
    manual = (
        f"; ImageNet needs the archives in {where}/downloads/manual first" if
        name == "imagenet2012" else ""
    )
    return ValueError(
        f"dataset {name} is not prepared in {where} and could not be downloaded "
        f"({type(err).__name__}); run `tfds build {name} --data_dir DIR` on a machine with "
        f"internet and pass --config.data_dir=DIR{manual}"
    )


def _load_tfds_split(name: str, split: str, data_dir: str | None) -> Split:
    """A whole TFDS split as numpy (finite batches: batch_size=-1 breaks under mock_data)."""
    _, tfds = _import_tfds()
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, batch_size=10_000)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds when offline/unprepared
        raise _not_prepared(name, data_dir, e) from e
    images, labels = [], []
    for batch in tfds.as_numpy(ds):
        images.append(batch["image"])
        labels.append(batch["label"])
    return Split(np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32))


def load_in_memory(config: Any) -> InMemoryData:
    """Train/test (and optional validation) splits of an in-memory dataset, as uint8 NHWC."""
    name = config.dataset
    _check_known(name)
    if name not in IN_MEMORY_DATASETS:
        raise ValueError(
            f"dataset {name} is streamed, not held in memory; in-memory: "
            f"{', '.join(IN_MEMORY_DATASETS)}"
        )
    if name == "digits":
        train, test, num_classes = _load_digits()
    else:
        data_dir = config.get("data_dir")
        train = _load_tfds_split(name, "train", data_dir)
        test = _load_tfds_split(name, "test", data_dir)
        num_classes = 10 if name == "cifar10" else 100
    val = None
    n_val = int(config.get("val_examples", 0) or 0)
    if n_val:
        if n_val >= len(train.labels):
            raise ValueError(
                f"val_examples ({n_val}) must be smaller than the training set "
                f"({len(train.labels)} examples)"
            )
        kept, held = _stratified_split(train.labels, n_val, seed=int(config.get("data_seed", 0)))
        train, val = _take(train, kept), _take(train, held)
    imbalance = config.get("imbalance")
    if imbalance is not None and imbalance.get("classes") is not None:
        train = _take(train, imbalanced_subset(
            train.labels, imbalance.classes, float(imbalance.keep_fraction),
            seed=int(config.get("data_seed", 0))))
    mean = (train.images.astype(np.float64) / 255.0).mean(axis=0).astype(np.float32)
    return InMemoryData(name, num_classes, train, test, val, mean)


# --------------------------------------------------------------------------- on device


def batch_indices(key: jax.Array, step, num_examples: int, batch_size: int) -> jax.Array:
    """Indices of the examples of training step ``step``: a pure function of (key, step).

    Each epoch is a fresh permutation (keyed by the epoch number) cut into
    ``num_examples // batch_size`` batches; the remainder is dropped.
    """
    steps_per_epoch = max(1, num_examples // batch_size)
    step = jnp.asarray(step, jnp.int32)
    epoch, within = step // steps_per_epoch, step % steps_per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice(perm, (within * batch_size,), (batch_size,)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ClassIndex:
    """Training examples grouped by class, for class-balanced sampling on device."""

    order: np.ndarray  # (N,) int32: example indices sorted by class
    offsets: np.ndarray  # (K,) int32: where each present class starts in ``order``
    counts: np.ndarray  # (K,) int32: examples of each present class (all > 0)

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ClassIndex:
        order = np.argsort(labels, kind="stable").astype(np.int32)
        _, offsets, counts = np.unique(labels[order], return_index=True, return_counts=True)
        return cls(order, offsets.astype(np.int32), counts.astype(np.int32))


def balanced_batch_indices(key: jax.Array, step, index: dict[str, jax.Array],
                           batch_size: int) -> jax.Array:
    """Indices of a class-balanced batch: each example draws a class uniformly, then a member.

    ``index`` holds a ``ClassIndex``'s arrays (on device). Sampling is with
    replacement, a pure function of (key, step) like ``batch_indices``, so a
    resumed run sees the same batches; rare classes repeat, common ones are
    seen less often (class-balanced re-sampling).
    """
    class_key, member_key = jax.random.split(jax.random.fold_in(key, step))
    k = jax.random.randint(class_key, (batch_size,), 0, index["counts"].shape[0])
    within = jax.random.randint(member_key, (batch_size,), 0, index["counts"][k])
    return index["order"][index["offsets"][k] + within]


def augment_batch(key: jax.Array, images: jax.Array, *, crop_padding: int, flip: bool) -> jax.Array:
    """Per example: zero-pad and take a random crop of the original size; random h-flip."""
    if not crop_padding and not flip:
        return images
    b, h, w, _ = images.shape
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * p + 1)

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (b,))
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1, :], images)
    return images


def normalize(images: jax.Array, mean: jax.Array, dtype=jnp.float32, *,
              std: jax.Array | None = None) -> jax.Array:
    """uint8 pixels to [0, 1], minus ``mean`` (CIFAR: the paper's per-pixel mean image;
    ImageNet: per channel), divided by ``std`` when given."""
    x = images.astype(jnp.float32) / 255.0 - mean
    if std is not None:
        x = x / std
    return x.astype(dtype)


# --------------------------------------------------------------------------- streaming


def num_examples(config: Any, split: str) -> int:
    """Examples in a split (``train``, ``train[5000:]``) of a TFDS dataset.

    From the prepared dataset's metadata; counted from the data itself where
    there is none (under ``tfds.testing.mock_data``).
    """
    _check_known(config.dataset)
    _, tfds = _import_tfds()
    data_dir = config.get("data_dir")
    try:
        return tfds.builder(config.dataset, data_dir=data_dir).info.splits[split].num_examples
    except Exception:  # noqa: BLE001 - no metadata: count below, or fail there
        pass
    try:
        ds = tfds.load(config.dataset, split=split, data_dir=data_dir, batch_size=1024)
        return sum(len(batch["label"]) for batch in tfds.as_numpy(ds))
    except Exception as e:  # noqa: BLE001
        raise _not_prepared(config.dataset, data_dir, e) from e


def make_streaming_dataset(
    config: Any,
    split: str,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of each global batch of a streamed (ImageNet-style) dataset.

    Images come out as uint8 crops (a quarter of float32's host-to-device
    traffic); the step normalises them on device. Train: shuffled (``seed``),
    repeated, scale augmentation (shorter side uniform in
    ``augment.scale_range``), random ``crop_size`` crop and flip. Eval: shorter
    side resized to crop_size * 256/224, centre crop, one pass followed by
    padding without end; ``mask`` marks real examples, so the caller counts each
    once and stops when a whole global batch is padding (every process then
    runs the same number of batches, whatever the size of its shard).
    """
    tf, tfds = _import_tfds()
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must divide across {process_count} processes")
    local = batch_size // process_count
    aug = config.augment
    crop = int(aug.get("crop_size", 224))
    lo, hi = (int(v) for v in aug.get("scale_range", (256, 480)))
    shard = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
    try:
        ds = tfds.load(config.dataset, split=shard, data_dir=config.get("data_dir"),
                       shuffle_files=train)
    except Exception as e:  # noqa: BLE001
        raise _not_prepared(config.dataset, config.get("data_dir"), e) from e
    def resize_shorter(image, size):
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)
        new = tf.cast(tf.round(shape * scale), tf.int32)
        return tf.image.resize(image, new)

    def prepare(example):
        image = tf.cast(example["image"], tf.float32)
        if train:
            image = resize_shorter(image, tf.random.uniform([], lo, hi + 1, tf.int32))
            image = tf.image.random_crop(image, (crop, crop, 3))
            image = tf.image.random_flip_left_right(image)
        else:
            image = resize_shorter(image, int(round(crop * 256 / 224)))
            image = tf.image.resize_with_crop_or_pad(image, crop, crop)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return {"image": image, "label": tf.cast(example["label"], tf.int32),
                "mask": tf.constant(1.0, tf.float32)}

    if train:
        ds = ds.repeat().shuffle(10 * local, seed=seed * 1009 + process_index)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if not train:
        pad = {"image": tf.zeros((crop, crop, 3), tf.uint8), "label": tf.constant(0, tf.int32),
               "mask": tf.constant(0.0, tf.float32)}
        ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))
