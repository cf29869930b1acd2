"""Parameter and multiply-accumulate (MAC) counts of a network: per layer, per stage, in total.

Multiply-accumulates are counted from the traced computation (``jax.make_jaxpr``):
every convolution contributes ``out_pixels * k_h * k_w * c_in/groups * c_out``
and every matrix product ``M * N * K``, the convention of the paper's Table 1,
whose "FLOPs" are multiply-adds (BatchNorm, ReLU, pooling and additions are
not counted). Counting the traced program rather than a formula means every
architecture variant is counted the same way, with no bookkeeping to keep in
sync. ``layer_rows`` gives each layer's share from its kernel and output
shapes, by the same convention; ``tests/test_models.py`` checks that the
layers add up to the traced totals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

from models.activations import Activation
from models.batch_norm import BatchNorm
from models.layers import BNAct
from models.resnet import ResNet
from models.shortcuts import IdentityShortcut


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
    """Multiply-accumulates of ``fn(*args)`` (convolutions and matrix products only)."""
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
    """Multiply-accumulates of ``fn(module, *args)``.

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
    name = "pool + fc"
    if isinstance(model.final, BNAct):
        name = "bn-act + pool + fc"
    elif model.final is not None:
        name = "classifier"  # VGG's and AlexNet's fully connected layers
    elif isinstance(model.head, nnx.Conv):
        name = "conv + pool"  # NiN's and SqueezeNet's 1x1 conv classifier
    add(name, model, lambda m, y: m.classify(y), x, head_params)
    model.train()
    return rows


# --------------------------------------------------------------------------- per layer

@dataclasses.dataclass
class LayerRow:
    """One call of one layer in the forward pass, for one image."""

    name: str  # the layer's path in the model, e.g. stages.1.blocks.0.unit1.conv
    kind: str  # e.g. 'conv 3x3/2', 'bn', 'identity /2 +16ch', 'dense'
    output_shape: tuple[int, ...]
    params: int
    macs: int


def _kind(module: nnx.Module) -> str:
    if isinstance(module, nnx.Conv):
        kernel = "x".join(map(str, module.kernel_size))
        strides = module.strides if isinstance(module.strides, int) else max(module.strides)
        groups = f" g{module.feature_group_count}" if module.feature_group_count > 1 else ""
        return f"conv {kernel}/{strides}{groups}"
    if isinstance(module, nnx.Linear):
        return "dense"
    if isinstance(module, BatchNorm):
        return "bn"
    if isinstance(module, IdentityShortcut):
        down = f" /{module.stride}" if module.stride > 1 else ""
        return f"identity{down}" + (f" +{module.pad}ch" if module.pad else "")
    return module.kind  # an Activation with parameters (prelu)


def _layer_macs(module: nnx.Module, out: jax.Array) -> int:
    """The layer's multiply-accumulates, by the convention of ``_eqn_macs``."""
    if isinstance(module, nnx.Conv):  # kernel (k_h, k_w, c_in/groups, c_out)
        return math.prod(out.shape[1:]) * math.prod(module.kernel.shape[:-1])
    if isinstance(module, nnx.Linear):  # kernel (c_in, c_out)
        return math.prod(out.shape[1:]) * module.kernel.shape[0]
    return 0


# The layers a row is made for; an Activation only when it has parameters (PReLU).
LAYER_TYPES = (nnx.Conv, nnx.Linear, BatchNorm, IdentityShortcut, Activation)


@contextlib.contextmanager
def _calls_recorded(record: Callable[[nnx.Module, jax.Array], None]) -> Iterator[None]:
    """Every call of a ``LAYER_TYPES`` layer goes to ``record(layer, output)`` meanwhile.

    The classes' ``__call__`` are wrapped for the duration (as ``nnx.tabulate``
    does) and restored after; a layer called from inside another recorded one
    is not recorded again.
    """
    originals = {cls: cls.__dict__["__call__"] for cls in LAYER_TYPES}
    depth = [0]

    def wrap(orig: Callable) -> Callable:
        @functools.wraps(orig)
        def call(self, *args, **kwargs):
            depth[0] += 1
            try:
                out = orig(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                record(self, out)
            return out

        return call

    try:
        for cls, orig in originals.items():
            cls.__call__ = wrap(orig)
        yield
    finally:
        for cls, orig in originals.items():
            cls.__call__ = orig


def layer_rows(model: ResNet, image_size: int) -> list[LayerRow]:
    """One row per layer call of the forward pass of one image (evaluation mode), in order.

    Layers are the convolutions, BatchNorms, identity shortcuts (options A/B;
    projections are a conv and a BN), the classifier and activations that
    have parameters; pooling has none. The model must hold its blocks unscanned and without
    remat (``scan_blocks=False``, ``remat_blocks=False``, the defaults):
    inside ``nnx.scan`` a block is traced once for the whole stage.
    """
    if any(getattr(stage, "repeated", None) is not None or getattr(stage, "remat", False)
           for stage in model.stages):
        raise ValueError("a per-layer summary needs a model built with scan_blocks=False and "
                         "remat_blocks=False")
    model.eval()
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, model.spec.in_channels), jnp.float32)
    rows: list[LayerRow] = []

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        names = {id(node): ".".join(map(str, path)) for path, node in nnx.iter_graph(m)
                 if isinstance(node, nnx.Module)}
        seen: set[int] = set()

        def record(layer: nnx.Module, out: jax.Array) -> None:
            params = 0 if id(layer) in seen else count_params(layer)
            seen.add(id(layer))
            if isinstance(layer, Activation) and not params:
                return
            rows.append(LayerRow(names[id(layer)], _kind(layer), tuple(out.shape[1:]), params,
                                 _layer_macs(layer, out)))

        with _calls_recorded(record):
            return m(x)

    try:
        jax.eval_shape(forward, state, x)
    finally:
        model.train()
    return rows


def network_totals(model: ResNet, image_size: int) -> tuple[int, int]:
    """(parameters, multiply-accumulates) of the whole network for one image, from the trace."""
    model.eval()
    x = jax.ShapeDtypeStruct((1, image_size, image_size, model.spec.in_channels), jnp.float32)
    try:
        return count_params(model), module_macs(model, lambda m, y: m(y), x)
    finally:
        model.train()
