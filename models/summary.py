"""Parameter and multiply-add counts of a network, per stage and in total.

Multiply-adds are counted from the traced computation (``jax.make_jaxpr``):
every convolution contributes ``out_pixels * k_h * k_w * c_in/groups * c_out``
and every matrix product ``M * N * K``, the convention of the paper's Table 1
(BatchNorm, ReLU, pooling and additions are not counted). Counting the traced
program rather than a formula means every architecture variant is counted
the same way, with no bookkeeping to keep in sync.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

from models.resnet import ResNet


def _jaxpr_macs(jaxpr: jax.extend.core.Jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            out = eqn.outvars[0].aval
            dn = eqn.params["dimension_numbers"]
            kernel_spatial = math.prod(rhs.shape[i] for i in dn.rhs_spec[2:])
            in_per_group = rhs.shape[dn.rhs_spec[1]]
            out_elems = math.prod(out.shape)
            total += out_elems * kernel_spatial * in_per_group
        elif name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            (lc, _), _ = eqn.params["dimension_numbers"]
            contracted = math.prod(lhs.shape[i] for i in lc)
            total += math.prod(eqn.outvars[0].aval.shape) * contracted
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _jaxpr_macs(sub)
    return total


def count_macs(fn: Callable, *args) -> int:
    """Multiply-adds of ``fn(*args)`` (convolutions and matrix products only)."""
    return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def count_params(module: nnx.Module) -> int:
    """Trainable parameters (conv/linear weights, BN scale and bias); running stats excluded."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@dataclasses.dataclass
class StageRow:
    name: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def summarize(model: ResNet, image_size: int) -> list[StageRow]:
    """One row per part of the network (stem, each stage, head), for one image."""
    model.eval()
    x = jnp.zeros((1, image_size, image_size, model.spec.in_channels), jnp.float32)
    rows = []

    def add(name: str, module: nnx.Module, fn: Callable, x: jax.Array) -> jax.Array:
        out = jax.eval_shape(fn, x)
        rows.append(StageRow(name, tuple(out.shape[1:]), count_params(module), count_macs(fn, x)))
        return jnp.zeros(out.shape, out.dtype)

    x = add("stem", model.stem, model.stem, x)
    for i, stage in enumerate(model.stages):
        x = add(f"stage{i + 1} ({len(stage.blocks)} blocks)", stage, lambda y, s=stage: s(y)[0], x)

    def head(y: jax.Array) -> jax.Array:
        return model.head(jnp.mean(y, axis=(1, 2)))

    add("pool + fc", model.head, head, x)
    model.train()
    return rows
