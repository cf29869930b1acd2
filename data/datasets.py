"""Datasets held in host memory: the embedded 8x8 digits and CIFAR-10/100 through TFDS.

Each loads once as uint8 NHWC arrays (``InMemoryData``): train and test
splits, an optional validation split held out of the training set (a pure
function of ``data_seed``) and an optional class-imbalanced training subset.
The normalisation statistics are fitted on the training split at load
(``data.statistics``). TensorFlow and TFDS are imported lazily, so digits
runs never pay for them; ``data.tfds_source`` reads CIFAR (offline when prepared,
one error line saying how to prepare it when not).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
from typing import Any

import numpy as np

from data import statistics, tfds_source

KNOWN_DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagenet2012")
IN_MEMORY_DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100")
STREAMED_SPLITS: dict[str, tuple[str, str]] = {"imagenet2012": ("train", "validation")}
DIGITS_TEST_EXAMPLES = 360


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
    # Fitted on the train images by ``fit_statistics`` (None: not fitted yet).
    channel_mean: np.ndarray | None = None  # (C,) mean of every pixel's colour
    channel_std: np.ndarray | None = None  # (C,)
    rgb_eigvals: np.ndarray | None = None  # (C,) eigenvalues of the colour covariance, descending
    rgb_eigvecs: np.ndarray | None = None  # (C, C) the matching unit eigenvectors, as columns
    whitening: np.ndarray | None = None  # (D, D) or (C, C) for normalize=zca/pca, else None



def check_known(name: str) -> None:
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")


def _stratified_split(labels: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with ``n_out`` held out, class proportions preserved.

    The held-out set of scikit-learn's ``train_test_split(..., stratify=labels,
    random_state=seed)`` (its ``StratifiedShuffleSplit``), draw for draw, in
    numpy: importing scikit-learn takes seconds at every run's start.
    ``tests/test_datasets.py`` checks the two agree.
    """
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_kept = len(labels) - n_out
    if counts.min() < 2:
        raise ValueError(f"class {classes[counts.argmin()]} has a single example: too few to "
                         "split off a stratified held-out set")
    if min(n_kept, n_out) < len(classes):
        raise ValueError(f"a stratified split of {len(labels)} examples into {n_kept} and "
                         f"{n_out} needs at least {len(classes)} (the classes) on each side")
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    kept_per_class = _approximate_mode(counts, n_kept, rng)
    out_per_class = _approximate_mode(counts - kept_per_class, n_out, rng)
    kept, held = [], []
    for members, k, t in zip(by_class, kept_per_class, out_per_class, strict=True):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        kept.extend(shuffled[:k])
        held.extend(shuffled[k:k + t])
    return np.sort(np.asarray(kept, int)), np.sort(np.asarray(held, int))


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per class, how many of ``draws`` it gets (scikit-learn's ``_approximate_mode``):
    the floor of its share, then one more for the largest remainders, ties drawn at random."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1] if need > 0 else []:
        (inds,) = np.where(remainder == value)
        add_now = min(len(inds), need)
        floored[rng.choice(inds, size=add_now, replace=False)] += 1
        need -= add_now
        if need == 0:
            break
    return floored.astype(int)


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



def _load_digits() -> tuple[Split, Split, int]:
    """The 1,797 8x8 digits scikit-learn ships (``load_digits``), read from its data file.

    Read directly (the file's values, 0-16, as ``load_digits`` parses them) so
    that a digits run does not import scikit-learn.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the digits data come with scikit-learn: pip install -r requirements.txt")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    images = np.round(data[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = data[:, -1].astype(np.int32)
    train_idx, test_idx = _stratified_split(labels, DIGITS_TEST_EXAMPLES, seed=0)
    everything = Split(images, labels)
    return _take(everything, train_idx), _take(everything, test_idx), 10


def _load_tfds_split(name: str, split: str, data_dir: str | None) -> Split:
    """A whole TFDS split as numpy (finite batches: batch_size=-1 breaks under mock_data)."""
    _, tfds = tfds_source.import_tfds()
    ds, _ = tfds_source.load(name, split, data_dir, batch_size=10_000)
    images, labels = [], []
    for batch in tfds.as_numpy(ds):
        images.append(batch["image"])
        labels.append(batch["label"])
    return Split(np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32))


def load_in_memory(config: Any) -> InMemoryData:
    """Train/test (and optional validation) splits of an in-memory dataset, as uint8 NHWC."""
    name = config.dataset
    check_known(name)
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
    data = InMemoryData(name, num_classes, train, test, val, mean)
    return statistics.with_statistics(data, config)
