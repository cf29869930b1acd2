"""The CPU programs run XLA's own convolutions, not YNNPACK's (see compile_options.py)."""

import jax
import jax.numpy as jnp
import pytest

from models.conv import NHWC, conv_general_dilated
from training import compile_options


def _conv_grad(x, w):
    loss = lambda x, w: jnp.sum(conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                                     dimension_numbers=NHWC) ** 2)
    return jax.grad(loss, (0, 1))(x, w)


def test_cpu_programs_leave_convolutions_to_xla():
    x, w = jnp.ones((8, 8, 8, 32)), jnp.ones((3, 3, 32, 32))
    default = jax.jit(_conv_grad).lower(x, w).compile().as_text()
    ours = compile_options.jit(_conv_grad).lower(x, w).compile().as_text()
    assert "__ynn_fusion" in default  # what XLA does unasked: the option must matter
    assert ours.count("convolution(") == 3  # forward, input and kernel gradients
    assert "__ynn_fusion" not in ours
    got = compile_options.jit(_conv_grad)(x, w)
    want = jax.jit(_conv_grad)(x, w)
    for g, r in zip(got, want, strict=True):
        assert jnp.allclose(g, r, rtol=1e-5)


def test_options_only_on_cpu_and_only_when_not_set_by_hand(monkeypatch):
    assert compile_options.compiler_options("cpu") == compile_options.CPU_OPTIONS
    assert compile_options.compiler_options("gpu") is None
    assert compile_options.compiler_options("tpu") is None
    monkeypatch.setenv("XLA_FLAGS",
                       "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE")
    assert compile_options.compiler_options("cpu") is None


@pytest.mark.parametrize("flag", ["", "--xla_force_host_platform_device_count=4"])
def test_other_xla_flags_keep_the_options(monkeypatch, flag):
    monkeypatch.setenv("XLA_FLAGS", flag)
    assert compile_options.compiler_options("cpu") == compile_options.CPU_OPTIONS


def test_cpu_programs_keep_the_other_default_library_fusions():
    """Only convolutions leave YNNPACK: matrix products and reductions stay with it."""
    a, b = jnp.ones((64, 64)), jnp.ones((64, 64))
    f = lambda a, b: (a @ b).sum(0)  # noqa: E731
    default = jax.jit(f).lower(a, b).compile().as_text()
    ours = compile_options.jit(f).lower(a, b).compile().as_text()
    assert default.count("__ynn_fusion") == ours.count("__ynn_fusion") > 0
