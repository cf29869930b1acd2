"""A 2-D convolution whose gradients are convolutions in XLA's canonical layout.

Why: inside a loop (``lax.scan`` over layers, ``fori_loop`` over steps),
XLA:CPU does not rewrite the backward convolutions that ``jax.grad`` produces
(kernel gradient ``f01b_i01o->01bf``, input gradient ``b01f_01oi->b01f``) into
the NHWC/HWIO form its fast (Eigen) kernels implement, and runs them with a
generic loop instead, more than ten times slower (BENCHMARKS.md has the
figures). Outside loops XLA does this rewrite itself. This
function states the rewrite explicitly, as a ``custom_vjp``:

- input gradient: the output gradient, dilated by the stride, correlated with
  the spatially flipped kernel with its in/out channels swapped;
- kernel gradient: a convolution with the input channels as the batch, the
  batch as the input features and the output gradient as the (dilated) kernel.

Both are NHWC/HWIO convolutions, so Eigen runs them in or out of a loop. The
values are those of ``lax.conv_general_dilated``'s own VJP (tested).

Only the case the networks use is handled (NHWC input, HWIO kernel, explicit
padding, no dilation, one group); anything else goes to XLA unchanged.

The kernel gradient needs the input with its batch innermost, (C, H, W, N).
XLA:CPU runs a transpose inside a program as a plain loop over the output, so
NHWC -> CHWN reads with a stride of a whole image (64 KiB at 32x32x16), where
NHWC -> HWNC and HWNC -> CHWN read within a few KiB and together cost less.
The forward pass therefore saves the input as (H, W, N, C). In a scanned
stage the saved input is materialised (the scan stacks it), so the two halves
run as two cheap loops (BENCHMARKS.md). Outside a scan XLA fuses them back
into one transpose, which costs what it did before.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x: jax.Array, w: jax.Array, strides: tuple[int, int],
               padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _conv_nhwc_fwd(x, w, strides, padding):
    # The input is saved as (H, W, N, C), half-way to the kernel gradient's (C, H, W, N).
    return _conv_nhwc(x, w, strides, padding), (jnp.transpose(x, (1, 2, 0, 3)), w)


def _conv_nhwc_bwd(strides, padding, residuals, g):
    x_hwnc, w = residuals
    k = w.shape[:2]
    in_size, out_size = x_hwnc.shape[:2], g.shape[1:3]
    # Input gradient: a transposed convolution, written as a forward one.
    w_flipped = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
    dx_padding = [(k[d] - 1 - padding[d][0],
                   in_size[d] - (out_size[d] - 1) * strides[d] - 1 + padding[d][0])
                  for d in range(2)]
    dx = lax.conv_general_dilated(g, w_flipped, (1, 1), dx_padding, lhs_dilation=strides,
                                  dimension_numbers=NHWC)
    # Kernel gradient: channels of x as the batch, the batch as input features.
    x_t = jnp.transpose(x_hwnc, (3, 0, 1, 2))  # (c_in, H, W, N)
    g_t = jnp.transpose(g, (1, 2, 0, 3))  # (H_out, W_out, N, c_out)
    dw = lax.conv_general_dilated(x_t, g_t, (1, 1), padding, rhs_dilation=strides,
                                  dimension_numbers=NHWC)  # (c_in, >=kh, >=kw, c_out)
    dw = jnp.transpose(dw[:, : k[0], : k[1], :], (1, 2, 0, 3))
    return dx.astype(x_hwnc.dtype), dw.astype(w.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """Drop-in for ``lax.conv_general_dilated`` (``nnx.Conv(conv_general_dilated=...)``)."""
    simple = (
        lhs.ndim == 4
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and out_sharding is None
        and _is_nhwc(dimension_numbers)
    )
    if not simple:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
            out_sharding=out_sharding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv_nhwc(lhs, rhs, tuple(int(s) for s in window_strides), pads)


def _is_nhwc(dimension_numbers: Any) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers(
            (1, 1, 1, 1), (1, 1, 1, 1), NHWC)
    return tuple(dimension_numbers) == NHWC
