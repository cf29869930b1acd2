"""Datasets to device batches: embedded digits, CIFAR in memory, ImageNet streaming.

Small datasets (digits, CIFAR-10/100) are loaded once into host memory as
uint8 and then held on the accelerators by the trainer; the functions
``batch_indices``, ``augment_batch`` and ``normalize`` are pure JAX and run
inside the jitted training step, so no batch crosses from host to device.
ImageNet streams through a tf.data pipeline, each process reading its shard.

Training inputs go: random crop/flip (and optional scale augmentation), then
to float pixels in [0, 1], optional colour augmentation (HSV jitter, AlexNet
PCA lighting), then normalisation (``normalize_batch``); evaluation applies
the same normalisation and nothing else. The statistics these need (mean
image, per-channel mean/std, the colour covariance's eigenvectors, a
whitening matrix) are fitted on the training split at load.

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
# Eigenvalues (pixels in [0, 1]) and eigenvectors (columns) of ImageNet's RGB
# covariance, as used for AlexNet-style lighting by fb.resnet.torch (the streamed
# training set cannot be scanned at load).
IMAGENET_EIGVALS = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVECS = np.array([[-0.5675, 0.7192, 0.4009],
                             [-0.5808, -0.0045, -0.8140],
                             [-0.5836, -0.6948, 0.4203]], np.float32)
NORMALIZATIONS: tuple[str, ...] = ("pixel_mean", "channel_standardize", "zca", "pca")
WHITEN_OVER: tuple[str, ...] = ("image", "channel")


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
    data = InMemoryData(name, num_classes, train, test, val, mean)
    return with_statistics(data, config)


# --------------------------------------------------------------------------- statistics

_CHUNK = 2048  # images per float64 chunk when scanning the training set


def _chunks(images: np.ndarray) -> Iterator[np.ndarray]:
    for i in range(0, len(images), _CHUNK):
        yield images[i:i + _CHUNK].astype(np.float64) / 255.0


def colour_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) mean and (C, C) covariance of every pixel's colour, pixels in [0, 1]."""
    c = images.shape[-1]
    total, outer, n = np.zeros(c), np.zeros((c, c)), 0
    for x in _chunks(images):
        x = x.reshape(-1, c)
        total += x.sum(0)
        outer += x.T @ x
        n += len(x)
    mean = total / n
    return mean, outer / n - np.outer(mean, mean)


def image_covariance(images: np.ndarray, mean_image: np.ndarray) -> np.ndarray:
    """(D, D) covariance of the flattened images (D = H*W*C), pixels in [0, 1]."""
    mean = mean_image.reshape(-1).astype(np.float64)
    cov = np.zeros((mean.size, mean.size))
    for x in _chunks(images):
        x = (x.reshape(len(x), -1) - mean).astype(np.float32)
        cov += (x.T @ x).astype(np.float64)
    return cov / len(images)


def eigh_descending(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and unit eigenvectors (columns) of ``cov``.

    Each eigenvector's largest component is made positive, so the signs (and
    with them PCA whitening) do not depend on the LAPACK build of each process.
    """
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    top = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])]
    return np.maximum(vals, 0.0), vecs * np.where(top < 0, -1.0, 1.0)


def whitening_matrix(cov: np.ndarray, kind: str, epsilon: float) -> np.ndarray:
    """W with cov(W x) ~ identity: PCA ``diag(1/sqrt(l+eps)) U^T`` (rows: the components,
    largest first) or ZCA ``U diag(1/sqrt(l+eps)) U^T`` (the rotation back keeps the
    result closest to the input: still an image, with decorrelated pixels)."""
    vals, vecs = eigh_descending(cov)
    pca = vecs.T / np.sqrt(vals + epsilon)[:, None]
    return pca if kind == "pca" else vecs @ pca


def fit_statistics(images: np.ndarray, mean_image: np.ndarray, config: Any) -> dict:
    """The ``InMemoryData`` statistics fields, fitted on the train images for ``config``.

    The colour moments are cheap and always fitted; the whitening matrix only
    for ``normalize`` = zca/pca (over whole images: one D x D covariance).
    """
    mean, cov = colour_moments(images)
    vals, vecs = eigh_descending(cov)
    out = {"channel_mean": mean.astype(np.float32),
           "channel_std": np.sqrt(np.maximum(np.diag(cov), 0.0)).astype(np.float32),
           "rgb_eigvals": vals.astype(np.float32), "rgb_eigvecs": vecs.astype(np.float32),
           "whitening": None}
    kind = config.get("normalize", "pixel_mean")
    if kind in ("zca", "pca"):
        if config.get("whiten_over", "image") == "image":
            cov = image_covariance(images, mean_image)
        out["whitening"] = whitening_matrix(cov, kind, float(config.whiten_epsilon)).astype(
            np.float32)
    return out


def with_statistics(data: InMemoryData, config: Any) -> InMemoryData:
    """``data`` with its training-set statistics fitted (kept if already there for
    ``config``: a whitening matrix is fitted when one is needed and missing)."""
    needs_whitening = config.get("normalize", "pixel_mean") in ("zca", "pca")
    if data.channel_mean is not None and (data.whitening is not None or not needs_whitening):
        return data
    return dataclasses.replace(data, **fit_statistics(data.train.images, data.mean_image,
                                                      config))


def normalization_arrays(data: InMemoryData, config: Any) -> dict[str, np.ndarray]:
    """What ``normalize_batch`` needs for ``config.normalize`` (and the PCA lighting's
    eigenvectors when ``augment.pca_lighting`` is on), to be replicated on device."""
    kind = config.get("normalize", "pixel_mean")
    if kind == "pixel_mean":
        out = {"mean": data.mean_image}
    elif kind == "channel_standardize":
        out = {"mean": data.channel_mean, "std": np.maximum(data.channel_std, 1e-8)}
    elif config.get("whiten_over", "image") == "image":
        out = {"mean": data.mean_image, "image_matrix": data.whitening}
    else:
        out = {"mean": data.channel_mean, "channel_matrix": data.whitening}
    if config.augment.get("pca_lighting", 0.0):
        out.update(eigvals=data.rgb_eigvals, eigvecs=data.rgb_eigvecs)
    return out


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
    """uint8 pixels to [0, 1] (float images are taken to be there already), minus ``mean``
    (ImageNet: per channel), divided by ``std`` when given."""
    x = to_unit(images) - mean
    if std is not None:
        x = x / std
    return x.astype(dtype)


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1]; float images are taken to be there already."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) / 255.0
    return images


def normalize_batch(images: jax.Array, stats: dict[str, jax.Array]) -> jax.Array:
    """Pixels (uint8, or float in [0, 1]) to network inputs, as ``normalization_arrays`` says.

    ``mean`` is subtracted (a per-pixel mean image or a per-channel mean), then
    the images are divided by a per-channel ``std``, or whitened by a matrix
    over each pixel's channels (``channel_matrix``) or over whole flattened
    images (``image_matrix``). The same function serves training and evaluation.
    """
    x = to_unit(images) - stats["mean"]
    if "std" in stats:
        x = x / stats["std"]
    if "channel_matrix" in stats:
        x = jnp.einsum("bhwc,dc->bhwd", x, stats["channel_matrix"],
                       precision=jax.lax.Precision.HIGHEST)
    if "image_matrix" in stats:
        flat = jnp.dot(x.reshape(x.shape[0], -1), stats["image_matrix"].T,
                       precision=jax.lax.Precision.HIGHEST)
        x = flat.reshape(x.shape)
    return x


def scale_crop_batch(key: jax.Array, images: jax.Array, scale_range: tuple[float, float]
                     ) -> jax.Array:
    """Per example: resize by a factor uniform in ``scale_range`` (>= 1; both sides, so
    the shorter side is scaled by it) and crop a random window of the original size.

    One bilinear ``jax.image.scale_and_translate`` per image, whose output shape
    is static (the crop) while scale and offset are traced: the resized image
    is never materialised. Factor 1 with offset 0 gives the image back.
    """
    images = to_unit(images)
    b, h, w, _ = images.shape
    scale_key, offset_key = jax.random.split(key)
    lo, hi = scale_range
    s = jax.random.uniform(scale_key, (b,), minval=lo, maxval=hi)
    room = jnp.array([h, w], jnp.float32) * (s[:, None] - 1.0)  # resized size - crop size
    offsets = jax.random.uniform(offset_key, (b, 2)) * room

    return jax.vmap(scale_crop)(images, s, offsets)


def scale_crop(image: jax.Array, scale: jax.Array, offset: jax.Array) -> jax.Array:
    """(H, W, C) image resized (bilinear) by ``scale``, then the H x W window at ``offset``
    (row, column; in resized pixels, may be fractional) of the result."""
    return jax.image.scale_and_translate(image, image.shape, (0, 1), jnp.stack([scale, scale]),
                                         -jnp.asarray(offset, jnp.float32), method="linear")


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """(..., 3) RGB in [0, 1] to HSV in [0, 1] (hue in turns; grey pixels get hue 0)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, -1)
    delta = v - jnp.min(rgb, -1)
    s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
    d = jnp.where(delta > 0, delta, 1.0)
    h = jnp.where(v == r, (g - b) / d, jnp.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, v], -1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """(..., 3) HSV in [0, 1] to RGB: channel n is V - V S clip(min(k, 4 - k), 0, 1),
    k = (n + 6 H) mod 6 with n = 5, 3, 1 for R, G, B."""
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = jnp.mod(jnp.array([5.0, 3.0, 1.0]) + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


HSV_FACTORS: tuple[str, ...] = ("hue_shift", "s_power", "s_mult", "s_add",
                                "v_power", "v_mult", "v_add")


def hsv_adjust(images: jax.Array, factors: dict[str, jax.Array]) -> jax.Array:
    """Per image (factors of shape (B,)): S and V to a power, times a factor, plus an
    offset, clipped to [0, 1]; H shifted (mod 1). Images RGB in [0, 1]."""
    hsv = rgb_to_hsv(images)
    f = {k: v[:, None, None] for k, v in factors.items()}
    h = jnp.mod(hsv[..., 0] + f["hue_shift"], 1.0)
    s = jnp.clip(hsv[..., 1] ** f["s_power"] * f["s_mult"] + f["s_add"], 0.0, 1.0)
    v = jnp.clip(hsv[..., 2] ** f["v_power"] * f["v_mult"] + f["v_add"], 0.0, 1.0)
    return hsv_to_rgb(jnp.stack([h, s, v], -1))


def sample_hsv_factors(key: jax.Array, batch: int, strength: float) -> dict[str, jax.Array]:
    """Random ``hsv_adjust`` factors (Dosovitskiy et al. 2014's colour/contrast ranges at
    strength 1): powers log-uniform in [1/4, 4] (so 1 is the median), multipliers
    uniform in [0.7, 1.4], offsets in [-0.1, 0.1], hue shift in [-0.1, 0.1]; S and V
    drawn independently. ``strength`` in [0, 1] shrinks every range towards identity."""
    u = jax.random.uniform(key, (len(HSV_FACTORS), batch), minval=-1.0, maxval=1.0)
    d = dict(zip(HSV_FACTORS, u, strict=True))
    out = {"hue_shift": 0.1 * strength * d["hue_shift"]}
    for ch in ("s", "v"):
        out[f"{ch}_power"] = 4.0 ** (strength * d[f"{ch}_power"])
        # [-1, 1] -> [1 - 0.3 strength, 1 + 0.4 strength]
        out[f"{ch}_mult"] = 1.0 + strength * (0.05 + 0.35 * d[f"{ch}_mult"])
        out[f"{ch}_add"] = 0.1 * strength * d[f"{ch}_add"]
    return out


def pca_lighting(key: jax.Array, images: jax.Array, eigvals: jax.Array, eigvecs: jax.Array,
                 std: float) -> jax.Array:
    """AlexNet's lighting noise: every pixel of an image gets sum_i alpha_i lambda_i p_i,
    alpha_i ~ N(0, std) per image, (lambda_i, p_i) the train set's colour covariance's
    eigenpairs (pixels in [0, 1]). Not clipped, as in AlexNet."""
    alpha = std * jax.random.normal(key, (images.shape[0], eigvals.shape[0]))
    shift = (alpha * eigvals) @ eigvecs.T  # (B, C)
    return images + shift[:, None, None, :]


def colour_augment(key: jax.Array, images: jax.Array, augment: Any,
                   stats: dict[str, jax.Array]) -> jax.Array:
    """HSV jitter then PCA lighting, as ``augment`` says; float images in [0, 1]."""
    strength = float(augment.get("hsv_jitter", 0.0))
    if strength:
        images = hsv_adjust(images, sample_hsv_factors(jax.random.fold_in(key, 2),
                                                       images.shape[0], strength))
    std = float(augment.get("pca_lighting", 0.0))
    if std:
        images = pca_lighting(jax.random.fold_in(key, 3), images, stats["eigvals"],
                              stats["eigvecs"], std)
    return images


def train_inputs(key: jax.Array, images: jax.Array, augment: Any,
                 stats: dict[str, jax.Array]) -> jax.Array:
    """A sampled uint8 training batch to network inputs: scale augmentation, pad and
    crop, flip, colour augmentation, normalisation (each as ``augment`` says).

    Crop and flip draw from ``key`` itself, the other steps from keys folded
    from it, so adding an option leaves the crops and flips of a seed unchanged.
    """
    x = images
    scale = augment.get("scale")
    if scale is not None:
        x = scale_crop_batch(jax.random.fold_in(key, 1), x, tuple(scale))
    x = augment_batch(key, x, crop_padding=augment.crop_padding, flip=augment.flip)
    x = colour_augment(key, to_unit(x), augment, stats)
    return normalize_batch(x, stats)


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
