"""GoogLeNet, Inception v1 (Szegedy et al. 2015, "Going Deeper with Convolutions").

An Inception module runs four branches side by side and concatenates them: a 1x1 conv;
1x1 "reduce" then 3x3; 1x1 reduce then 5x5; 3x3/1 max-pool then a 1x1 "pool projection".
The 1x1 reductions keep the 22 layers cheap (1.5 G multiply-adds). Stem: 7x7/2 conv,
3x3/2 max-pool, LRN, 1x1 and 3x3 convs, LRN, 3x3/2 max-pool; modules 3a-3b, max-pool,
4a-4e, max-pool, 5a-5b; global average pool, dropout 0.4, linear (paper Table 1).

``layout='paper'``: convs with biases, no BatchNorm, LRN in the stem (the paper's 6.8M
parameters). ``layout='torchvision'``: torchvision's ``googlenet``: BatchNorm (eps 1e-3)
after every bias-free conv, no LRN, 2x2 final max-pool, and its "5x5" branch with a 3x3 conv
(6,624,904 parameters without the auxiliary heads).

``aux_heads=True`` adds the two auxiliary classifiers on 4a and 4d (average pool to 4x4,
1x1 conv to 128, fc 1024, dropout 0.7, fc): in training their losses count 0.3 each
(``Network.training_logits``); at test they are not used.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.classic import ClassicSpec
from models.layers import LayerOptions, fold
from models.network import ConvUnit, Network
from models.pooling import adaptive_avg_pool, local_response_norm, pool

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), paper Table 1.
MODULES = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
STAGES = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))
AUX_AFTER = ("4a", "4d")
AUX_WEIGHT = 0.3
GOOGLENET_LRN = (5, 1e-4, 0.75, 1.0)


class Inception(nnx.Module):
    """The four branches, concatenated: 1x1 | 1x1-3x3 | 1x1-5x5 (torchvision: 3x3) | pool-1x1."""

    def __init__(self, in_features: int, widths: tuple[int, ...], opts: LayerOptions, *,
                 rngs: nnx.Rngs, bn: bool, wide_kernel: int):
        c1, r3, c3, r5, c5, cp = widths
        unit = lambda i, o, k: ConvUnit(i, o, k, 1, opts, rngs=rngs, bn=bn)  # noqa: E731
        self.b1 = unit(in_features, c1, 1)
        self.b2_reduce, self.b2 = unit(in_features, r3, 1), unit(r3, c3, 3)
        self.b3_reduce, self.b3 = unit(in_features, r5, 1), unit(r5, c5, wide_kernel)
        self.b4 = unit(in_features, cp, 1)
        self.out_features = c1 + c3 + c5 + cp

    def __call__(self, x: jax.Array, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, list[jax.Array]]:
        """(the concatenated branches, every activation)."""
        y1 = self.b1(x, fold(rng, 0))[0]
        h2 = self.b2_reduce(x, fold(rng, 1))[0]
        y2 = self.b2(h2, fold(rng, 2))[0]
        h3 = self.b3_reduce(x, fold(rng, 3))[0]
        y3 = self.b3(h3, fold(rng, 4))[0]
        y4 = self.b4(pool(x, "max", 3, 1, pad=1, ceil=True), fold(rng, 5))[0]
        return jnp.concatenate([y1, y2, y3, y4], -1), [y1, h2, y2, h3, y3, y4]


class AuxHead(nnx.Module):
    """Average-pool to 4x4, 1x1 conv to 128, fc 1024, dropout 0.7, fc to the classes."""

    def __init__(self, in_features: int, spec: ClassicSpec, opts: LayerOptions, *,
                 rngs: nnx.Rngs):
        conv, fc = spec.w(128), spec.w(1024)
        self.conv = ConvUnit(in_features, conv, 1, 1, opts, rngs=rngs, bn=spec.bn)
        kw = dict(dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(conv * 16, fc, kernel_init=opts.kernel_init(), **kw)
        self.act = opts.activation_module(fc)
        self.dropout = nnx.Dropout(0.7)
        self.fc2 = nnx.Linear(fc, spec.num_classes, kernel_init=opts.head_init(), **kw)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        x = self.conv(adaptive_avg_pool(x, 4), fold(rng, 0))[0].reshape(x.shape[0], -1)
        x = self.dropout(self.act(self.fc1(x), fold(rng, 1)), rngs=fold(rng, 2))
        return self.fc2(x).astype(jnp.float32)


class InceptionStage(nnx.Module):
    """Inception modules, then (except after 5b) a max-pool; auxiliary heads where asked."""

    def __init__(self, names: tuple[str, ...], in_features: int, opts: LayerOptions, *,
                 rngs: nnx.Rngs, spec: ClassicSpec, pool_after: tuple | None):
        modules, aux = [], []
        for name in names:
            widths = tuple(spec.w(c) for c in MODULES[name])
            modules.append(Inception(in_features, widths, opts, rngs=rngs, bn=spec.bn,
                                     wide_kernel=3 if spec.layout == "torchvision" else 5))
            in_features = modules[-1].out_features
            if spec.aux_heads and name in AUX_AFTER:
                aux.append(AuxHead(in_features, spec, opts, rngs=rngs))
        self.blocks = nnx.List(modules)
        self.aux = nnx.List(aux)
        self.aux_at = tuple(i for i, n in enumerate(names) if spec.aux_heads and n in AUX_AFTER)
        self.pool_after = pool_after
        self.out_features = in_features
        self.num_blocks = len(names)
        self.repeated = None
        self.remat = False

    def __call__(self, x: jax.Array, rng: jax.Array | None = None, *, collect: bool = True,
                 aux: list | None = None):
        """The stage protocol; ``aux``, a list, receives the auxiliary heads' logits."""
        outputs, activations = [], []
        for i, module in enumerate(self.blocks):
            x, acts = module(x, fold(rng, i))
            if collect:
                outputs.append(x)
                activations += acts
            if aux is not None and i in self.aux_at:
                head = self.aux[self.aux_at.index(i)]
                aux.append(head(x, fold(rng, 100 + i)))
        if self.pool_after is not None:
            x = pool(x, "max", *self.pool_after, ceil=True)
        return x, outputs, list(outputs), activations


class GoogLeNetStem(nnx.Module):
    """conv 7x7/2, max-pool 3x3/2, (LRN), conv 1x1, conv 3x3, (LRN), max-pool 3x3/2."""

    def __init__(self, spec: ClassicSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        unit = lambda i, o, k, s=1: ConvUnit(i, o, k, s, opts, rngs=rngs, bn=spec.bn)  # noqa: E731
        w = spec.w
        self.conv1 = unit(spec.in_channels, w(64), 7, 2)
        self.conv2 = unit(w(64), w(64), 1)
        self.conv3 = unit(w(64), w(192), 3)
        self.lrn = spec.layout == "paper"

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        x = pool(self.conv1(x, fold(rng, 0))[0], "max", 3, 2, ceil=True)
        if self.lrn:
            x = local_response_norm(x, *GOOGLENET_LRN)
        x = self.conv3(self.conv2(x, fold(rng, 1))[0], fold(rng, 2))[0]
        if self.lrn:
            x = local_response_norm(x, *GOOGLENET_LRN)
        return pool(x, "max", 3, 2, ceil=True)


class GoogLeNet(Network):
    """Stem, Inception 3a-3b / 4a-4e / 5a-5b, average pool, dropout 0.4, linear."""

    def __init__(self, spec: ClassicSpec, opts: LayerOptions, *, rngs: nnx.Rngs):
        spec.validate()
        if spec.layout == "torchvision":
            opts = dataclasses.replace(opts, bn_epsilon=1e-3)
        self.spec, self.dtype = spec, opts.dtype
        self.stem = GoogLeNetStem(spec, opts, rngs=rngs)
        last_pool = (2, 2) if spec.layout == "torchvision" else (3, 2)
        pools = ((3, 2), last_pool, None)
        stages, features = [], spec.w(192)
        for names, after in zip(STAGES, pools, strict=True):
            stages.append(InceptionStage(names, features, opts, rngs=rngs, spec=spec,
                                         pool_after=after))
            features = stages[-1].out_features
        self.stages = nnx.List(stages)
        self.final = None
        self.dropout = nnx.Dropout(0.4)
        self.head = nnx.Linear(features, spec.num_classes, kernel_init=opts.head_init(),
                               dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.num_features = features
        self.deterministic = False

    def training_logits(self, x: jax.Array, rng: jax.Array | None = None
                        ) -> list[tuple[float, jax.Array]]:
        """(loss weight, logits) of the main classifier and of each auxiliary head."""
        if not self.spec.aux_heads:
            return [(1.0, self(x, rng=rng))]
        x = self.stem(x.astype(self.dtype), fold(rng, 0))
        aux: list[jax.Array] = []
        for i, stage in enumerate(self.stages):
            x = stage(x, fold(rng, i + 1), collect=False, aux=aux)[0]
        logits = self.classify(x, fold(rng, len(self.stages) + 1))
        return [(1.0, logits)] + [(AUX_WEIGHT, a) for a in aux]
