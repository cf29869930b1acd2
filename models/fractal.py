"""FractalNet (Larsson et al. 2017, "FractalNet: Ultra-Deep Neural Networks without Residuals").

A fractal block of ``C`` columns expands ``f_1(z) = conv(z)``,
``f_{C+1}(z) = join(f_C(f_C(z)), conv(z))``: column ``c`` holds ``2^c`` conv units
(conv3x3-(dropout)-BN-ReLU, the order of the authors' Caffe code), its deepest column
``2^(C-1)``, and a *join* averages the columns wherever they meet (element-wise mean, no
parameters). No signal skips a layer untransformed: there are no identity shortcuts.
``B`` blocks, each followed by a 2x2 max-pool, make a net of depth ``B * 2^(C-1)``
(its deepest path); then the classifier. CIFAR (paper Sec. 4): B = 5 blocks of
64/128/256/512/512 channels, C = 3 (20 layers) or 4 (40 layers).

Drop-path regularises the columns (training only; at test every path is kept and joined):

- local: each join drops each of its inputs with probability ``drop_path`` (paper 0.15),
  keeping at least one;
- global: for a fraction ``global_drop_path`` of the batches (paper 0.5) one column, drawn
  at random, is the whole network: every join passes that column only.

Draws are per batch (and device), as stochastic depth's are here. Per-block dropout
``block_dropout * b / (B - 1)`` for block ``b`` (the paper's 0, 10, 20, 30, 40%). Blocks
differ in shape and columns in depth, so nothing is scanned.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerOptions, fold, make_bn, make_conv
from models.network import FamilySpec, Network, positive_widths
from models.pooling import pool

CIFAR_WIDTHS = (64, 128, 256, 512, 512)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FractalSpec(FamilySpec):
    columns: int
    widths: tuple[int, ...]  # one block per width

    connectivity = "fractal"

    @property
    def name(self) -> str:
        return f"fractal-{self.depth}"

    @property
    def label(self) -> str:
        return f"FractalNet-{self.depth} (C={self.columns})"


def fractal_spec(depth: int, *, columns: int | None = None,
                 widths: tuple[int, ...] | None = None, **kw) -> FractalSpec:
    """Depth ``B * 2^(C-1)`` with B = len(widths) (CIFAR: 5 blocks, 20 = C3, 40 = C4)."""
    widths = positive_widths(widths or CIFAR_WIDTHS, len(widths or CIFAR_WIDTHS), "FractalNet")
    blocks = len(widths)
    if columns is None:
        per_block = depth // blocks if isinstance(depth, int) and depth % blocks == 0 else 0
        c = int(math.log2(per_block)) + 1 if per_block > 0 else 0
        if per_block < 1 or 2 ** (c - 1) != per_block:
            depths = ", ".join(str(blocks * 2 ** i) for i in range(5))
            raise ValueError(f"FractalNet depth must be B * 2^(C-1) with B = {blocks} blocks "
                             f"(model.widths): {depths}, ...; got {depth}")
        columns = c
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"model.columns must be an integer >= 1, got {columns}")
    if depth != blocks * 2 ** (columns - 1):
        raise ValueError(f"FractalNet with {blocks} blocks of C={columns} columns has depth "
                         f"{blocks * 2 ** (columns - 1)}, not {depth}")
    return FractalSpec(family="fractal", depth=depth, stage_sizes=(1,) * blocks,
                       columns=columns, widths=widths, **kw)


class FractalUnit(nnx.Module):
    """conv3x3 - (dropout) - BN - act; returns (output, its activation)."""

    def __init__(self, in_features: int, out_features: int, dropout: float, opts: LayerOptions,
                 *, rngs: nnx.Rngs):
        self.conv = make_conv(in_features, out_features, 3, 1, opts, rngs)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.bn = make_bn(out_features, opts, rngs)
        self.act = opts.activation_module(out_features)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        y = self.conv(x)
        if self.dropout is not None:
            y = self.dropout(y, rngs=fold(rng, 0))
        return self.act(self.bn(y), fold(rng, 1))


def join(inputs: list[jax.Array], keep: jax.Array | None) -> jax.Array:
    """The mean of the kept inputs (all without ``keep``); zero where none is kept."""
    if keep is None:
        return sum(inputs) / len(inputs)
    total = sum(jnp.where(k, x, jnp.zeros((), x.dtype)) for k, x in zip(keep, inputs,
                                                                       strict=True))
    return total / jnp.maximum(keep.sum(), 1).astype(total.dtype)


def local_keep(rng: jax.Array, n: int, drop: float) -> jax.Array:
    """Each of ``n`` inputs kept with probability 1 - drop; one at random if none was."""
    k1, k2 = jax.random.split(rng)
    keep = jax.random.bernoulli(k1, 1.0 - drop, (n,))
    rescue = jnp.arange(n) == jax.random.randint(k2, (), 0, n)
    return keep | (rescue & ~keep.any())


class FractalBlock(nnx.Module):
    """C columns of conv units joined by their mean where they meet, then a 2x2 max-pool."""

    def __init__(self, in_features: int, out_features: int, columns: int, dropout: float,
                 opts: LayerOptions, *, rngs: nnx.Rngs):
        self.num_columns = columns
        self.num_blocks = 1
        self.repeated = None
        self.remat = False
        self.deterministic = False
        self.columns = nnx.List([
            nnx.List([FractalUnit(in_features if j == 0 else out_features, out_features,
                                  dropout, opts, rngs=rngs) for j in range(2 ** c)])
            for c in range(columns)])
        self.out_features = out_features

    def __call__(self, x: jax.Array, rng: jax.Array | None = None, *, collect: bool = True,
                 drop: tuple[float, jax.Array, jax.Array] | None = None):
        """``drop``: (local drop probability, whether this batch drops globally, the global
        column), or None (every path: evaluation, or no drop-path)."""
        cols = self.num_columns
        depth = 2 ** (cols - 1)
        current = [x] * cols
        activations = []
        for i in range(depth):
            active = [c for c in range(cols) if (i + 1) % 2 ** (cols - 1 - c) == 0]
            outs = []
            for c in active:
                unit = self.columns[c][(i + 1) // 2 ** (cols - 1 - c) - 1]
                outs.append(unit(current[c], fold(rng, i * cols + c)))
            activations += outs if collect else []
            keep = None
            if drop is not None and len(outs) > 1 and not self.deterministic:
                p, use_global, column = drop
                local = local_keep(fold(rng, depth * cols + i), len(outs), p)
                keep = jnp.where(use_global, jnp.asarray(active) == column, local)
            joined = outs[0] if len(outs) == 1 else join(outs, keep)
            for c in active:
                current[c] = joined
        y = current[0]
        return pool(y, "max", 2, 2), [y] if collect else [], [y] if collect else [], activations


class FractalNet(Network):
    """B fractal blocks (each ending in a 2x2 max-pool), global average pool, linear."""

    def __init__(self, spec: FractalSpec, opts: LayerOptions, *, rngs: nnx.Rngs,
                 drop_path: float = 0.0, global_drop_path: float = 0.0,
                 head_dropout: float = 0.0):
        spec.validate()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"model.drop_path must be in [0, 1), got {drop_path}")
        if not 0.0 <= global_drop_path <= 1.0:
            raise ValueError(f"model.global_drop_path must be in [0, 1], got {global_drop_path}")
        self.spec = spec
        self.dtype = opts.dtype
        self.drop_path, self.global_drop_path = drop_path, global_drop_path
        self.deterministic = False
        self.stem = _Identity()
        blocks, features, n = [], spec.in_channels, len(spec.widths)
        for b, width in enumerate(spec.widths):
            rate = opts.block_dropout * (b / (n - 1) if n > 1 else 1.0)
            blocks.append(FractalBlock(features, width, spec.columns, rate, opts, rngs=rngs))
            features = width
        self.stages = nnx.List(blocks)
        self.final = None
        self.dropout = nnx.Dropout(head_dropout) if head_dropout > 0 else None
        self.head = nnx.Linear(features, spec.num_classes, kernel_init=opts.head_init(),
                               dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.num_features = features

    def __call__(self, x: jax.Array, *, rng: jax.Array | None = None,
                 return_features: bool = False):
        drop = None
        if not self.deterministic and (self.drop_path > 0 or self.global_drop_path > 0):
            if rng is None:
                raise ValueError("drop-path needs a random key in training (model(x, rng=key))")
            k1, k2 = jax.random.split(fold(rng, 10_000))
            drop = (self.drop_path, jax.random.bernoulli(k1, self.global_drop_path),
                    jax.random.randint(k2, (), 0, self.spec.columns))
        x = x.astype(self.dtype)
        outputs, responses, activations = [], [], []
        for i, block in enumerate(self.stages):
            x, outs, resps, acts = block(x, fold(rng, i + 1), collect=return_features,
                                         drop=drop)
            outputs += outs
            responses += resps
            activations += acts
        logits = self.classify(x, fold(rng, len(self.stages) + 1))
        if return_features:
            return logits, {"block_outputs": outputs, "branch_responses": responses,
                            "activations": activations}
        return logits


class _Identity(nnx.Module):
    """FractalNet has no stem: the first block takes the image."""

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        return x
