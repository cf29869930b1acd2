"""ImageNet streamed through tf.data: each process reads its shard as uint8 crops.

Scale augmentation (shorter side in ``augment.scale_range``), crop and flip
run in tf.data on the host; colour augmentation and normalisation run on
device (``data.feeds.StreamingFeed``). Evaluation streams a centre crop,
padded so every process runs the same number of batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from data.datasets import check_known
from data.tfds_source import import_tfds, load

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Eigenvalues (pixels in [0, 1]) and eigenvectors (columns) of ImageNet's RGB
# covariance, as used for AlexNet-style lighting by fb.resnet.torch (the streamed
# training set cannot be scanned at load).
IMAGENET_EIGVALS = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVECS = np.array([[-0.5675, 0.7192, 0.4009],
                             [-0.5808, -0.0045, -0.8140],
                             [-0.5836, -0.6948, 0.4203]], np.float32)


def num_examples(config: Any, split: str) -> int:
    """Examples in a split (``train``, ``train[5000:]``) of a TFDS dataset.

    From the prepared dataset's metadata; counted from the data itself where
    there is none (under ``tfds.testing.mock_data``).
    """
    check_known(config.dataset)
    _, tfds = import_tfds()
    ds, info = load(config.dataset, split, config.get("data_dir"), batch_size=1024)
    try:
        return info.splits[split].num_examples
    except Exception:  # noqa: BLE001 - no metadata: count the examples
        return sum(len(batch["label"]) for batch in tfds.as_numpy(ds))


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
    tf, tfds = import_tfds()
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must divide across {process_count} processes")
    local = batch_size // process_count
    aug = config.augment
    crop = int(aug.get("crop_size", 224))
    lo, hi = (int(v) for v in aug.get("scale_range", (256, 480)))
    shard = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
    ds, _ = load(config.dataset, shard, config.get("data_dir"), shuffle_files=train)
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
