"""On-device augmentation and normalisation of uint8 image batches (pure JAX, inside jit).

Training inputs go: optional scale augmentation, random pad-and-crop and
flip, then to float pixels in [0, 1], optional colour augmentation (HSV
jitter, AlexNet PCA lighting), then normalisation (``normalize_batch``);
evaluation applies the same normalisation and nothing else.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


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
