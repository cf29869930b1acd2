"""models.batch_norm: the same values and gradients as nnx.BatchNorm, with fewer residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.batch_norm import BatchNorm, batch_norm_train


def _pair(features=6, **kw):
    """Our BatchNorm and Flax's, with the same random scale and bias."""
    ours = BatchNorm(features, rngs=nnx.Rngs(0), **kw)
    flax = nnx.BatchNorm(features, rngs=nnx.Rngs(0), **kw)
    k1, k2 = jax.random.split(jax.random.key(7))
    for bn in (ours, flax):
        bn.scale[...] = jax.random.normal(k1, (features,))
        bn.bias[...] = jax.random.normal(k2, (features,))
    return ours, flax


def _loss_and_grads(bn, x, weights):
    def loss(bn, x):
        return jnp.sum(jnp.sin(bn(x, use_running_average=False)) * weights)

    return nnx.value_and_grad(loss, argnums=(0, 1))(bn, x)


@pytest.mark.parametrize("constant_channel", [False, True])
def test_training_values_gradients_and_statistics_match_flax(constant_channel):
    k1, k2 = jax.random.split(jax.random.key(3))
    x = 3.0 * jax.random.normal(k1, (8, 5, 5, 6)) + 1.0
    if constant_channel:  # variance 0 (or rounded below it, then clipped)
        x = x.at[..., 2].set(0.7)
    weights = jax.random.normal(k2, x.shape)
    ours, flax = _pair()
    (loss_a, (g_bn_a, g_x_a)), (loss_b, (g_bn_b, g_x_b)) = (
        _loss_and_grads(ours, x, weights), _loss_and_grads(flax, x, weights))
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    np.testing.assert_allclose(g_x_a, g_x_b, rtol=1e-4, atol=1e-5)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(g_bn_a[name][...], g_bn_b[name][...], rtol=1e-4, atol=1e-5)
    for name in ("mean", "var"):  # running averages updated alike
        np.testing.assert_allclose(getattr(ours, name)[...], getattr(flax, name)[...],
                                   rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(g_x_a))


def test_gradients_through_the_returned_statistics_are_exact():
    """The batch mean and variance are outputs too: their cotangents reach x."""
    k = jax.random.split(jax.random.key(8), 4)
    x = 2.0 * jax.random.normal(k[0], (6, 3, 3, 5)) - 0.5
    scale, bias = jax.random.normal(k[1], (5,)), jax.random.normal(k[2], (5,))
    w = jax.random.normal(k[3], x.shape)

    def reference(x, scale, bias):  # plain jnp, differentiated by JAX
        mean = x.mean((0, 1, 2))
        var = jnp.square(x).mean((0, 1, 2)) - jnp.square(mean)
        return (x - mean) * (scale / jnp.sqrt(var + 1e-5)) + bias, mean, var

    def loss(fn):
        def f(x, scale, bias):
            y, mean, var = fn(x, scale, bias)
            return jnp.sum(y * w) + jnp.sum(jnp.cos(mean) * scale) + jnp.sum(jnp.sqrt(var) * bias)
        return f

    ours = jax.grad(loss(lambda *a: batch_norm_train(*a, 1e-5)), argnums=(0, 1, 2))(x, scale, bias)
    ref = jax.grad(loss(reference), argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_matches_flax():
    x = jax.random.normal(jax.random.key(4), (16, 4, 4, 8)).astype(jnp.bfloat16)
    ours, flax = _pair(8, dtype=jnp.bfloat16)
    ya, yb = ours(x, use_running_average=False), flax(x, use_running_average=False)
    assert ya.dtype == yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(ya.astype(np.float32), yb.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_evaluation_mode_uses_the_running_statistics_as_flax_does():
    x = jax.random.normal(jax.random.key(5), (8, 3, 3, 6))
    ours, flax = _pair()
    for bn in (ours, flax):
        bn(x, use_running_average=False)
    np.testing.assert_allclose(ours(x, use_running_average=True),
                               flax(x, use_running_average=True), rtol=1e-6, atol=1e-6)


def test_the_backward_pass_keeps_one_activation_sized_array_not_two():
    x = jax.random.normal(jax.random.key(6), (8, 5, 5, 6))

    def saved(bn):
        graphdef, state = nnx.split(bn)
        fn = lambda x, s: nnx.merge(graphdef, s)(x, use_running_average=False)  # noqa: E731
        return [leaf for leaf in jax.tree.leaves(jax.vjp(fn, x, state)[1])
                if leaf.shape == x.shape]

    ours, flax = _pair()
    assert len(saved(ours)) == 1
    assert len(saved(flax)) == 2  # what this avoids: 2 * x and x - mean
