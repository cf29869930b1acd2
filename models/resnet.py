"""Plain and residual networks: He et al. (2015) and the follow-ups researchers compare against.

One ``ResNet`` class covers every family: a stem, stages of blocks and a
global-average-pool + linear head. The families differ only in their
``NetworkSpec`` (stem, block type, blocks per stage, widths, layer order),
built from a depth by ``cifar_spec``, ``imagenet_spec`` and ``wrn_spec``.

- CIFAR (paper Sec. 4.2): depth 6n+2; 3x3 stem with 16 filters; three stages
  of n basic blocks with 16/32/64 filters; the first block of stages 2 and 3
  downsamples with a stride-2 conv. With bottleneck blocks (He et al. 2016's
  ResNet-164 and ResNet-1001) the depth is 9n+2 and the stages output
  64/128/256 channels.
- ImageNet (paper Table 1): 7x7/2 stem + 3x3/2 max-pool; basic blocks for
  18/34 and bottlenecks for 50/101/152. ``stem='cifar'`` swaps in the CIFAR
  stem (3x3/1, no max-pool) so these nets run on 32x32 images.
- Wide ResNets (Zagoruyko & Komodakis 2016): WRN-d-k, depth 6n+4,
  pre-activation basic blocks with 16k/32k/64k filters.
- ResNeXt (Xie et al. 2017): these layouts with grouped bottleneck blocks
  (``models.resnext``).

``preact=True`` gives the pre-activation ordering of He et al. (2016): blocks
are BN-ReLU-conv, the CIFAR stem is a bare conv, and the net ends with
BN-ReLU before the pooling. Stochastic depth (Huang et al. 2016) drops each
residual branch with a probability growing linearly with its depth, up to
``1 - survival_last`` for the last block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.blocks import BasicBlock, BottleneckBlock, PreActBasicBlock, PreActBottleneckBlock
from models.layers import BNAct, LayerOptions, fold, make_bn, make_conv
from models.resnext import make_resnext_block
from models.specs import NetworkSpec, check_regularisers


def survival_probabilities(num_blocks: int, survival_last: float) -> tuple[float, ...]:
    """Huang et al. (2016)'s linear decay: block l of L survives with 1 - l/L (1 - p_L)."""
    return tuple(1.0 - (i + 1) / num_blocks * (1.0 - survival_last) for i in range(num_blocks))


class Stem(nnx.Module):
    """CIFAR: 3x3/1 conv (+BN-act). ImageNet: 7x7/2 conv-BN-act then 3x3/2 max-pool.

    A pre-activation CIFAR-style stem is the bare conv: the first block
    normalises and activates its input itself.
    """

    def __init__(self, spec: NetworkSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        self.max_pool = spec.stem == "imagenet"
        k, s = (7, 2) if self.max_pool else (3, 1)
        self.conv = make_conv(spec.in_channels, spec.stem_width, k, s, opts, rngs)
        bare = spec.preact and not self.max_pool
        self.bn = None if bare else make_bn(spec.stem_width, opts, rngs)
        self.act = None if bare else opts.activation_module(spec.stem_width)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.act(self.bn(x), rng)
        if self.max_pool:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


def make_block(
    spec: NetworkSpec, in_features: int, width: int, stride: int, opts: LayerOptions,
    rngs: nnx.Rngs, *, stochastic_depth: bool = False, preact_input: bool = True,
) -> nnx.Module:
    """One block of the network's type; plain nets get the same layers without shortcut."""
    if spec.family == "resnext":
        return make_resnext_block(spec, in_features, width, stride, opts, rngs,
                                  stochastic_depth=stochastic_depth)
    kw = dict(residual=not spec.plain, shortcut=spec.shortcut, opts=opts, rngs=rngs,
              stochastic_depth=stochastic_depth)
    if spec.preact:
        kw["preact_input"] = preact_input
        if spec.block == "basic":
            return PreActBasicBlock(in_features, width, stride, **kw)
        return PreActBottleneckBlock(in_features, width, stride,
                                     stride_on=spec.bottleneck_stride, **kw)
    if spec.block == "basic":
        return BasicBlock(in_features, width, stride, **kw)
    return BottleneckBlock(in_features, width, stride, stride_on=spec.bottleneck_stride, **kw)


# 'auto' unrolls a scanned stage on GPU/TPU only up to this many repeated blocks:
# ResNet-110's 17 compile in seconds, ResNet-1202's 199 did not compile in minutes
# and unrolling them by 8 was no faster than the loop (BENCHMARKS.md).
AUTO_UNROLL_MAX_BLOCKS = 32


def resolve_scan_unroll(setting: str | int | bool, num_repeated: int,
                        backend: str | None = None) -> int | bool:
    """``lax.scan``'s ``unroll`` for a stage of ``num_repeated`` scanned blocks.

    'auto': on CPU, 1 (the loop reuses its buffers and beats straight-line
    code). On GPU/TPU, the whole stage (True) up to ``AUTO_UNROLL_MAX_BLOCKS``
    blocks: there a loop iteration waits on the host and XLA cannot fuse across
    blocks, so the unrolled stage is much faster (BENCHMARKS.md has both).
    Deeper stages stay loops, so compile time stays bounded.
    """
    if setting != "auto":
        return setting
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu" or num_repeated > AUTO_UNROLL_MAX_BLOCKS:
        return 1
    return True


def _call_block(block: nnx.Module, x: jax.Array, rng: jax.Array | None, survival):
    return block(x, rng, survival)


class Stage(nnx.Module):
    """A run of blocks at one resolution; the first one may downsample and widen.

    Every block after the first has the same shapes. With ``opts.scan_blocks``
    those are held stacked (a leading axis of ``num_blocks - 1`` on every
    parameter, in ``self.repeated``) and run by ``nnx.scan``: one compiled
    block body per stage whatever the depth (ResNet-1202's 200 blocks per
    stage compile like one). Otherwise all blocks are in ``self.blocks``.
    ``survivals`` holds each block's stochastic-depth survival probability.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        in_features: int,
        width: int,
        num_blocks: int,
        stride: int,
        opts: LayerOptions,
        *,
        rngs: nnx.Rngs,
        survivals: tuple[float, ...] | None = None,
        preact_first: bool = True,
    ):
        self.num_blocks = num_blocks
        self.remat = opts.remat_blocks
        self.unroll = resolve_scan_unroll(opts.scan_unroll, num_blocks - 1)
        self.survivals = survivals
        sd = survivals is not None
        first = make_block(spec, in_features, width, stride, opts, rngs, stochastic_depth=sd,
                           preact_input=preact_first)
        self.out_features = out = first.out_features
        if opts.scan_blocks and num_blocks > 1:

            @nnx.split_rngs(splits=num_blocks - 1)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_repeated(rngs: nnx.Rngs) -> nnx.Module:
                return make_block(spec, out, width, 1, opts, rngs, stochastic_depth=sd)

            self.blocks = nnx.List([first])
            self.repeated = make_repeated(rngs)
        else:
            rest = [make_block(spec, out, width, 1, opts, rngs, stochastic_depth=sd)
                    for _ in range(num_blocks - 1)]
            self.blocks = nnx.List([first, *rest])
            self.repeated = None

    def __call__(
        self, x: jax.Array, rng: jax.Array | None = None, *, collect: bool = True
    ) -> tuple[jax.Array, list[jax.Array], list[jax.Array], list[jax.Array]]:
        """Returns (output, each block's output, branch response, inner activations).

        ``collect=False`` leaves the lists empty, so a scanned stage does not
        stack every block's output when nobody asks for them.
        """
        call = nnx.remat(_call_block) if self.remat else _call_block
        survivals = self.survivals or (1.0,) * self.num_blocks
        outputs, responses, activations = [], [], []

        def keep(y, aux):
            if collect:
                outputs.append(y)
                responses.append(aux["response"])
                activations.extend(aux["activations"])

        for i, block in enumerate(self.blocks):
            x, aux = call(block, x, fold(rng, i), survivals[i])
            keep(x, aux)
        if self.repeated is not None:
            n = self.num_blocks - 1
            keys = None if rng is None else jax.vmap(lambda i: jax.random.fold_in(rng, i))(
                jnp.arange(1, n + 1))
            probs = jnp.asarray(np.asarray(survivals[1:], np.float32))

            @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0), unroll=self.unroll)
            def run(x: jax.Array, block: nnx.Module, key, survival):
                y, aux = call(block, x, key, survival)
                return y, ((y, aux) if collect else None)

            x, stacked = run(x, self.repeated, keys, probs)
            if collect:
                ys, aux = stacked
                for j in range(n):
                    keep(ys[j], jax.tree.map(lambda a, j=j: a[j], aux))
        return x, outputs, responses, activations


class ResNet(nnx.Module):
    """Stem, stages, (pre-activation nets: final BN-act), pool, (dropout), linear classifier.

    ``model(x)`` returns logits; ``model(x, rng=key)`` is how training passes
    randomness (dropout, stochastic depth, RReLU). ``model(x,
    return_features=True)`` returns ``(logits, features)`` where
    ``features['block_outputs']`` and ``features['branch_responses']`` list each
    block's output and its branch's response (after the last BN, before the
    addition: the data of the paper's Fig. 7), and ``features['activations']``
    every activation's output (for the dead-unit count).
    """

    def __init__(self, spec: NetworkSpec, opts: LayerOptions, *, rngs: nnx.Rngs,
                 survival_last: float = 1.0, head_dropout: float = 0.0):
        spec.validate()
        check_regularisers(spec, survival_last, head_dropout)
        self.spec = spec
        self.dtype = opts.dtype
        self.stem = Stem(spec, opts, rngs=rngs)
        survivals = (survival_probabilities(spec.num_blocks, survival_last)
                     if survival_last < 1.0 else None)
        stages, features, done = [], spec.stem_width, 0
        for i, (size, width) in enumerate(zip(spec.stage_sizes, spec.widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = Stage(spec, features, width, size, stride, opts, rngs=rngs,
                          survivals=None if survivals is None else survivals[done:done + size],
                          # after an ImageNet stem (ending in BN-act) the first pre-act block
                          # does not normalise again (fb.resnet.torch's preresnet)
                          preact_first=not (i == 0 and spec.stem == "imagenet"))
            stages.append(stage)
            features, done = stage.out_features, done + size
        self.stages = nnx.List(stages)
        self.final = BNAct(features, opts, rngs=rngs) if spec.preact else None
        self.dropout = nnx.Dropout(head_dropout) if head_dropout > 0 else None
        self.head = nnx.Linear(
            features,
            spec.num_classes,
            kernel_init=opts.head_init(),
            dtype=opts.dtype,
            param_dtype=opts.param_dtype,
            rngs=rngs,
        )
        self.num_features = features

    def classify(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """The last stage's output to logits: (final BN-act), pool, (dropout), linear."""
        if self.final is not None:
            x = self.final(x, fold(rng, 0))
        return self._pool_and_head(x, rng)

    def _pool_and_head(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
        pooled = jnp.mean(x, axis=(1, 2))
        if self.dropout is not None:
            pooled = self.dropout(pooled, rngs=fold(rng, 1))
        return self.head(pooled).astype(jnp.float32)

    def __call__(self, x: jax.Array, *, rng: jax.Array | None = None,
                 return_features: bool = False):
        x = self.stem(x.astype(self.dtype), fold(rng, 0))
        outputs, responses, activations = [], [], []
        if return_features and self.stem.act is not None:
            activations.append(x)
        for i, stage in enumerate(self.stages):
            x, outs, resps, acts = stage(x, fold(rng, i + 1), collect=return_features)
            outputs += outs
            responses += resps
            activations += acts
        head_rng = fold(rng, len(self.stages) + 1)
        if self.final is not None:
            x = self.final(x, fold(head_rng, 0))
            activations += [x] if return_features else []
        logits = self._pool_and_head(x, head_rng)
        if return_features:
            return logits, {"block_outputs": outputs, "branch_responses": responses,
                            "activations": activations}
        return logits
