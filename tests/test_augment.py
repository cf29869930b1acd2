"""Tests of the augmentation and normalisation options (input_pipeline, on device)."""

import colorsys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import read_metrics, run_parts, tiny_config

import train
from data import augment, datasets, statistics
from training import command_line


def _augment(**kw):
    base = dict(crop_padding=0, flip=False, scale=None, hsv_jitter=0.0, pca_lighting=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def _correlated_images(n=3000, hw=4, seed=0):
    """uint8 images whose pixels and channels are strongly correlated: independent noise,
    three factors shared by all pixels and a grey level per pixel (so every covariance
    eigenvalue is well above the tests' epsilon)."""
    rng = np.random.default_rng(seed)
    d = hw * hw * 3
    loadings = 1.5 * rng.normal(size=(d, 3))
    x = rng.normal(size=(n, d)) + rng.normal(size=(n, 3)) @ loadings.T
    x = x.reshape(n, hw, hw, 3) + rng.normal(size=(n, hw, hw, 1)) * np.array([1.5, 1.2, 0.9])
    return np.clip(np.round(128 + 10 * x), 0, 255).astype(np.uint8)


def _data(images, config):
    split = datasets.Split(images, np.zeros(len(images), np.int32))
    mean = (images / 255.0).mean(0).astype(np.float32)
    data = datasets.InMemoryData("t", 10, split, split, None, mean)
    return statistics.with_statistics(data, config)


def _norm_config(normalize, whiten_over="image", epsilon=1e-6, pca_lighting=0.0):
    return ml_collections.ConfigDict(dict(normalize=normalize, whiten_over=whiten_over,
                                          whiten_epsilon=epsilon,
                                          augment=_augment(pca_lighting=pca_lighting)))


# --------------------------------------------------------------------------- geometry


def test_default_recipe_is_the_old_crop_flip_and_mean_subtraction():
    """train_inputs with the paper's options gives bit for bit what the old step computed."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    mean = jnp.asarray(rng.random((8, 8, 3), dtype=np.float32))
    key = jax.random.key(3)
    new = augment.train_inputs(key, images, _augment(crop_padding=4, flip=True), {"mean": mean})
    old = augment.normalize(augment.augment_batch(key, images, crop_padding=4, flip=True), mean)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


def test_crop_is_a_window_of_the_padded_image_and_flip_mirrors_some():
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (64, 6, 6, 1), dtype=np.uint8)
    out = np.asarray(augment.augment_batch(jax.random.key(0), jnp.asarray(images), crop_padding=2,
                                      flip=False))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for img, pad in zip(out, padded, strict=True):
        hits = [(i, j) for i in range(5) for j in range(5)
                if np.array_equal(pad[i:i + 6, j:j + 6], img)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 10  # random offsets, not one
    out = np.asarray(augment.augment_batch(jax.random.key(0), jnp.asarray(images), crop_padding=0,
                                      flip=True))
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 10 < sum(mirrored) < 54


def test_scale_one_is_identity_and_scale_crop_is_resize_then_crop():
    rng = np.random.default_rng(2)
    images = rng.random((4, 8, 8, 3), dtype=np.float32)
    same = augment.scale_crop_batch(jax.random.key(0), jnp.asarray(images), (1.0, 1.0))
    np.testing.assert_allclose(np.asarray(same), images, atol=1e-6)
    resized = jax.image.resize(jnp.asarray(images[0]), (12, 12, 3), "linear")
    window = augment.scale_crop(jnp.asarray(images[0]), jnp.float32(1.5), jnp.array([3.0, 1.0]))
    np.testing.assert_allclose(np.asarray(window), np.asarray(resized)[3:11, 1:9], atol=1e-5)
    out = np.asarray(augment.scale_crop_batch(jax.random.key(1), jnp.asarray(images * 255).astype(
        jnp.uint8), (1.2, 2.0)))
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and not np.allclose(out, images, atol=0.05)


# --------------------------------------------------------------------------- colour


def test_hsv_conversion_matches_colorsys_and_round_trips():
    rng = np.random.default_rng(3)
    rgb = rng.random((200, 3), dtype=np.float32)
    rgb[:3] = [[1, 0, 0], [0.3, 0.3, 0.3], [0, 0, 0]]  # a pure hue, a grey, black
    hsv = np.asarray(augment.rgb_to_hsv(jnp.asarray(rgb)))
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-5)
    np.testing.assert_allclose(np.asarray(augment.hsv_to_rgb(jnp.asarray(hsv))), rgb, atol=1e-5)


def test_hsv_adjust_matches_a_hand_computation_and_identity_factors_change_nothing():
    pixel = (0.2, 0.5, 0.7)
    image = jnp.asarray(np.array(pixel, np.float32).reshape(1, 1, 1, 3))
    f = dict(hue_shift=0.95, s_power=2.0, s_mult=0.8, s_add=0.05,
             v_power=0.5, v_mult=1.2, v_add=-0.1)
    out = augment.hsv_adjust(image, {k: jnp.array([v], jnp.float32) for k, v in f.items()})
    h, s, v = colorsys.rgb_to_hsv(*pixel)
    expected = colorsys.hsv_to_rgb((h + 0.95) % 1.0, min(max(s**2 * 0.8 + 0.05, 0), 1),
                                   min(max(v**0.5 * 1.2 - 0.1, 0), 1))
    np.testing.assert_allclose(np.asarray(out).ravel(), expected, atol=1e-5)

    identity = augment.sample_hsv_factors(jax.random.key(0), 5, strength=0.0)
    images = jnp.asarray(np.random.default_rng(4).random((5, 4, 4, 3), dtype=np.float32))
    np.testing.assert_allclose(np.asarray(augment.hsv_adjust(images, identity)), images, atol=1e-5)


def test_hsv_factors_cover_the_issue_ranges_at_strength_one():
    f = {k: np.asarray(v) for k, v in augment.sample_hsv_factors(jax.random.key(1), 20000, 1.0)
         .items()}
    for ch in ("s", "v"):
        assert 0.25 <= f[f"{ch}_power"].min() < 0.27 and 3.7 < f[f"{ch}_power"].max() <= 4.0
        assert abs(np.median(np.log(f[f"{ch}_power"]))) < 0.05  # log-uniform: median 1
        assert 0.7 <= f[f"{ch}_mult"].min() < 0.71 and 1.39 < f[f"{ch}_mult"].max() <= 1.4
        assert -0.1 <= f[f"{ch}_add"].min() < -0.099 and 0.099 < f[f"{ch}_add"].max() <= 0.1
    assert -0.1 <= f["hue_shift"].min() < -0.099 and 0.099 < f["hue_shift"].max() <= 0.1
    assert abs(np.corrcoef(f["s_power"], f["v_power"])[0, 1]) < 0.05  # drawn independently


def test_pca_lighting_adds_alpha_times_eigval_times_eigvec_per_image():
    images = _correlated_images(n=500)
    data = _data(images, _norm_config("pixel_mean"))
    pixels = images.reshape(-1, 3) / 255.0
    cov = np.cov(pixels, rowvar=False, bias=True)
    vals, vecs = data.rgb_eigvals, data.rgb_eigvecs
    np.testing.assert_allclose(vecs @ np.diag(vals) @ vecs.T, cov, atol=1e-6)
    assert np.all(np.diff(vals) <= 0)
    assert np.all(vecs[np.argmax(np.abs(vecs), 0), np.arange(3)] > 0)  # sign convention
    np.testing.assert_allclose(data.channel_mean, pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(data.channel_std, pixels.std(0), atol=1e-6)

    x = jnp.asarray(np.random.default_rng(5).random((4000, 2, 2, 3), dtype=np.float32))
    out = np.asarray(augment.pca_lighting(jax.random.key(2), x, jnp.asarray(vals),
                                     jnp.asarray(vecs), 0.1))
    shift = out - np.asarray(x)
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1], shift.shape), atol=1e-6)
    alpha = (shift[:, 0, 0] @ vecs) / vals  # coordinates along each eigenvector / eigenvalue
    np.testing.assert_allclose(alpha.std(0), 0.1, rtol=0.06)
    np.testing.assert_allclose(alpha.mean(0), 0.0, atol=0.01)


# --------------------------------------------------------------------------- normalisation


def _normalized_train(config, images):
    data = _data(images, config)
    stats = {k: jnp.asarray(v) for k, v in statistics.normalization_arrays(data, config).items()}
    return np.asarray(augment.normalize_batch(jnp.asarray(images), stats), np.float64), data


def test_channel_standardize_gives_mean_zero_std_one_per_channel():
    x, _ = _normalized_train(_norm_config("channel_standardize"), _correlated_images())
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-4)


def test_pixel_mean_is_the_paper_subtraction():
    images = _correlated_images(n=100)
    x, data = _normalized_train(_norm_config("pixel_mean"), images)
    np.testing.assert_allclose(x, images / 255.0 - data.mean_image, atol=1e-6)


@pytest.mark.parametrize("kind,over", [("zca", "image"), ("zca", "channel"),
                                       ("pca", "channel")])
def test_whitened_training_data_has_identity_covariance(kind, over):
    images = _correlated_images()
    x, data = _normalized_train(_norm_config(kind, over), images)
    dims = x.reshape(len(x), -1) if over == "image" else x.reshape(-1, 3)
    before = (images.reshape(len(images), -1) if over == "image" else images.reshape(-1, 3))
    assert np.abs(np.corrcoef(before, rowvar=False) - np.eye(before.shape[1])).max() > 0.3
    np.testing.assert_allclose(np.cov(dims, rowvar=False, bias=True), np.eye(dims.shape[1]),
                               atol=2e-3)
    np.testing.assert_allclose(dims.mean(0), 0.0, atol=1e-4)
    w = data.whitening
    if kind == "zca":  # symmetric: the whitening closest to the input
        np.testing.assert_allclose(w, w.T, atol=1e-4)


def test_whitening_epsilon_shrinks_low_variance_directions():
    images = _correlated_images()
    cov = statistics.image_covariance(images, (images / 255.0).mean(0))
    strong = statistics.whitening_matrix(cov, "pca", 1e-8)
    mild = statistics.whitening_matrix(cov, "pca", 1.0)
    vals, _ = statistics.eigh_descending(cov)
    np.testing.assert_allclose(np.linalg.norm(mild, axis=1), 1 / np.sqrt(vals + 1.0), rtol=1e-6)
    assert np.all(np.linalg.norm(strong, axis=1) > np.linalg.norm(mild, axis=1))


# --------------------------------------------------------------------------- config and runs


@pytest.mark.parametrize(
    "path,overrides,message",
    [
        ("digits", {"augment.scale": "(0.5,1.0)"}, "1 <= lo <= hi"),
        ("digits", {"augment.scale": "(1.5,1.2)"}, "1 <= lo <= hi"),
        ("digits", {"augment.scale": "(1.0,1.2,1.4)"}, "augment.scale must be (lo, hi)"),
        ("digits", {"augment.hsv_jitter": "0.5"}, "needs RGB images"),
        ("cifar10", {"augment.hsv_jitter": "1.5"}, "hsv_jitter must be in [0, 1]"),
        ("digits", {"augment.pca_lighting": "-0.1"}, "pca_lighting must be >= 0"),
        ("digits", {"augment.crop_padding": "-1"}, "crop_padding must be >= 0"),
        ("digits", {"normalize": "l2"}, "allowed: pixel_mean, channel_standardize, zca, pca"),
        ("digits", {"normalize": "pca"}, "whiten_over='channel'"),
        ("digits", {"whiten_over": "row"}, "allowed: image, channel"),
        ("digits", {"whiten_epsilon": "0"}, "whiten_epsilon must be > 0"),
        ("imagenet", {"augment.scale": "(1.0,1.2)"}, "uses augment.scale_range"),
        ("imagenet", {"normalize": "pixel_mean"}, "must be 'channel_standardize'"),
    ],
)
def test_bad_augment_and_normalize_keys_are_one_line_errors(path, overrides, message):
    c = command_line.load_config(f"configs/{path}.py", overrides)
    with pytest.raises(ValueError, match=None) as e:
        train.validate_config(c, 4)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_defaults_keep_the_paper_recipe():
    for path in ("cifar10", "digits"):
        c = command_line.load_config(f"configs/{path}.py")
        assert c.normalize == "pixel_mean" and c.augment.scale is None
        assert c.augment.hsv_jitter == 0 and c.augment.pca_lighting == 0
        train.validate_config(c, 4)
    c = command_line.load_config("configs/cifar10.py")
    assert (c.augment.crop_padding, c.augment.flip) == (4, True)
    c = command_line.load_config("configs/digits.py")
    assert (c.augment.crop_padding, c.augment.flip) == (0, False)
    c = command_line.load_config("configs/imagenet.py")
    assert c.normalize == "channel_standardize"
    train.validate_config(c, 4)


def test_evaluation_normalises_with_the_training_sets_whitening():
    """The eval scan sees the test images whitened by the matrix fitted on the train split."""
    from data.feeds import InMemoryFeed
    from training import measure, parallel

    def masked_image_sum(state, batch):
        return (batch["image"] * batch["mask"][:, None, None, None]).sum(0)

    c = tiny_config(normalize="zca", whiten_over="image")
    feed = InMemoryFeed(c, parallel.make_mesh())
    assert sorted(feed.stats) == ["image_matrix", "mean"]
    got = measure.reduce_split(feed, "test", masked_image_sum, None)
    data = datasets.load_in_memory(c)
    flat = (data.test.images.reshape(len(data.test.images), -1) / 255.0
            - data.mean_image.reshape(-1))
    expected = (flat @ data.whitening.T.astype(np.float64)).sum(0).reshape(8, 8, 1)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-3, atol=1e-2)
    assert not np.allclose(expected, flat.sum(0).reshape(8, 8, 1), atol=1.0)  # not a no-op


def test_digits_run_with_scale_lighting_and_zca_finishes_with_a_finite_loss(tmp_path):
    c = tiny_config(**{"augment.scale": "(1.0,1.25)", "augment.pca_lighting": "0.1",
                       "normalize": "zca", "layer_responses": False})
    summary = train.train_and_evaluate(c, str(tmp_path))
    lines = read_metrics(tmp_path)
    assert summary["status"] == "finished" and lines[-1]["step"] == 20
    assert all(np.isfinite(m["train_loss"]) for m in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert 0 <= lines[-1]["test_error"] <= 1


def test_rgb_train_step_with_every_colour_option_stays_finite():
    """HSV jitter, PCA lighting, scale and colour PCA whitening inside the jitted step."""
    from training import dispatch, measure

    c = tiny_config("configs/cifar10.py:resnet-8", **{
        "augment.hsv_jitter": "1.0", "augment.pca_lighting": "0.1", "augment.scale": "(1.0,1.3)",
        "normalize": "pca", "whiten_over": "channel", "num_steps": "5"})
    train.validate_config(c, 4)
    images = _correlated_images(n=64, hw=8)
    labels = np.arange(64, dtype=np.int32) % 10
    split = datasets.Split(images, labels)
    data = datasets.InMemoryData("rgb", 10, split, split, None, (images / 255.0).mean(0))
    parts = run_parts(c, data)
    assert sorted(parts.feed.stats) == ["channel_matrix", "eigvals", "eigvecs", "mean"]
    state, sums = parts.chunk(parts.state, 0)
    sums = dispatch.read_chunk_sums(sums)
    loss, error, steps = sums["loss"], sums["error"], sums["steps"]
    assert int(state.step) == 5 and steps == 5 and np.isfinite(loss) and 0 <= error <= 5
    out = measure.evaluate(parts.feed, state)
    assert np.isfinite(out["test_loss"]) and 0 <= out["test_error"] <= 1
