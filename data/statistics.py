"""Statistics of a training split that inputs are normalised and augmented with.

Fitted once on the host when an in-memory dataset loads: the mean image, the
per-channel mean and std, the colour covariance's eigenpairs (PCA lighting)
and, for ``normalize`` = zca/pca, a whitening matrix; plus per-class loss
weights for re-weighting an imbalanced training set. ``normalization_arrays``
hands the device what ``data.augment.normalize_batch`` needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from data.datasets import InMemoryData

NORMALIZATIONS: tuple[str, ...] = ("pixel_mean", "channel_standardize", "zca", "pca")
WHITEN_OVER: tuple[str, ...] = ("image", "channel")


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

