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
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

from models.resnet import ResNet


def iter_eqns(jaxpr: jax.extend.core.Jaxpr, times: int = 1) -> Iterator[tuple[Any, int]]:
    """Every equation of a traced program, nested ones included, with how often it runs.

    A ``scan`` body runs ``length`` times (scan-over-layers puts most of a
    deep network there); other nested programs (remat, pjit, custom VJPs)
    run once per call.
    """
    for eqn in jaxpr.eqns:
        yield eqn, times
        inner = times * eqn.params["length"] if eqn.primitive.name == "scan" else times
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from iter_eqns(sub, inner)


def _eqn_macs(eqn: Any) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval
        dn = eqn.params["dimension_numbers"]
        kernel_spatial = math.prod(rhs.shape[i] for i in dn.rhs_spec[2:])
        in_per_group = rhs.shape[dn.rhs_spec[1]]
        return math.prod(eqn.outvars[0].aval.shape) * kernel_spatial * in_per_group
    if name == "dot_general":
        lhs = eqn.invars[0].aval
        (lc, _), _ = eqn.params["dimension_numbers"]
        contracted = math.prod(lhs.shape[i] for i in lc)
        return math.prod(eqn.outvars[0].aval.shape) * contracted
    return 0


def _jaxpr_macs(jaxpr: jax.extend.core.Jaxpr) -> int:
    return sum(_eqn_macs(eqn) * times for eqn, times in iter_eqns(jaxpr))


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


def module_macs(module: nnx.Module, fn: Callable, *args) -> int:
    """Multiply-adds of ``fn(module, *args)``.

    The module goes in as state and is rebuilt inside the trace: NNX's lifted
    transforms (the ``nnx.scan`` of a scanned stage) refuse modules captured
    from outside the trace.
    """
    graphdef, state = nnx.split(module)
    return count_macs(lambda state, *a: fn(nnx.merge(graphdef, state), *a), state, *args)


def summarize(model: ResNet, image_size: int) -> list[StageRow]:
    """One row per part of the network (stem, each stage, head), for one image."""
    model.eval()
    x = jnp.zeros((1, image_size, image_size, model.spec.in_channels), jnp.float32)
    rows = []

    def add(name: str, module: nnx.Module, fn: Callable, x: jax.Array,
            params: int | None = None) -> jax.Array:
        graphdef, state = nnx.split(module)
        out = jax.eval_shape(lambda s, y: fn(nnx.merge(graphdef, s), y), state, x)
        params = count_params(module) if params is None else params
        rows.append(StageRow(name, tuple(out.shape[1:]), params, module_macs(module, fn, x)))
        return jnp.zeros(out.shape, out.dtype)

    x = add("stem", model.stem, lambda m, y: m(y), x)
    for i, stage in enumerate(model.stages):
        x = add(f"stage{i + 1} ({stage.num_blocks} blocks)", stage, lambda m, y: m(y)[0], x)

    head_params = count_params(model.head) + (count_params(model.final) if model.final else 0)
    name = "bn-act + pool + fc" if model.final is not None else "pool + fc"
    add(name, model, lambda m, y: m.classify(y), x, head_params)
    model.train()
    return rows
