"""The blocks of plain and residual networks: basic and bottleneck, original and pre-activation.

A plain block and a residual block hold exactly the same layers; the only
difference is whether the block input is added back. That is what makes the
plain-vs-residual comparison of He et al. (2015) fair, and why one class
with a ``residual`` flag implements both.

Two orderings of the layers:

- the original (He et al. 2015): conv-BN-ReLU units, ReLU after the addition
  (``BasicBlock``, ``BottleneckBlock``);
- pre-activation (He et al. 2016, "Identity Mappings in Deep Residual
  Networks"): BN-ReLU-conv units and nothing after the addition, so the
  identity path is clean from the input to the final BN-ReLU of the network
  (``PreActBasicBlock``, ``PreActBottleneckBlock``). Wide ResNets use the
  pre-activation basic block with dropout between its convolutions.

Every block may drop its residual branch at random in training (stochastic
depth, Huang et al. 2016): ``block(x, rng, survival)`` keeps the branch with
probability ``survival`` for the whole batch and, at test time, scales it by
``survival``. Randomness is explicit: ``rng`` is a JAX key in training and may
be ``None`` in evaluation (``model.eval()`` makes every block deterministic).

The units they are made of live in ``models.layers``, the shortcuts in
``models.shortcuts``.
"""


from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import BNAct, ConvBN, LayerOptions, fold, make_conv
from models.shortcuts import IdentityShortcut, make_shortcut


class _Block(nnx.Module):
    """What every block shares: the residual addition with optional stochastic depth."""

    residual: bool
    stochastic_depth: bool
    deterministic: bool

    def _combine(self, shortcut: jax.Array | None, response: jax.Array,
                 rng: jax.Array | None, survival) -> jax.Array:
        if not self.residual:
            return response
        if self.stochastic_depth:
            if self.deterministic:
                response = response * jnp.asarray(survival, response.dtype)
            else:
                if rng is None:
                    raise ValueError("stochastic depth needs a random key in training")
                keep = jax.random.bernoulli(rng, survival)
                response = response * keep.astype(response.dtype)
        return response + shortcut

    def _init_common(self, residual: bool, stochastic_depth: bool) -> None:
        self.residual = residual
        self.stochastic_depth = stochastic_depth
        self.deterministic = False


class _PostActBlock(_Block):
    """The original ordering: the activation comes after the addition.

    Subclasses define ``_branch(x, rng) -> (response, inner activations)``.
    """

    shortcut: nnx.Module | None
    act_out: nnx.Module

    def branch(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """The residual function alone (after its last BN, before any addition)."""
        return self._branch(x, rng)[0]

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 survival: float | jax.Array = 1.0) -> tuple[jax.Array, dict]:
        """Returns (block output, {'response': branch after its last BN, 'activations': [...]})."""
        response, hidden = self._branch(x, rng)
        y = self._combine(self.shortcut(x) if self.residual else None, response,
                          fold(rng, 2), survival)
        y = self.act_out(y, fold(rng, 3))
        return y, {"response": response, "activations": [*hidden, y]}


class _PreActBlock(_Block):
    """The pre-activation ordering: BN-act first, nothing after the addition.

    When the shortcut is a projection, it takes the block's pre-activated
    input, as the branch does (He et al. 2016); an identity takes the raw
    input. Without ``pre`` (the first block after an ImageNet stem that
    already ends in BN-ReLU) the input goes in as it is. Subclasses define
    ``_branch(pre, rng) -> (response, inner activations)``.
    """

    shortcut: nnx.Module | None
    pre: BNAct | None

    def _preactivate(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
        return x if self.pre is None else self.pre(x, fold(rng, 0))

    def branch(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """The residual function alone (the last conv's output, before the addition)."""
        return self._branch(self._preactivate(x, rng), rng)[0]

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 survival: float | jax.Array = 1.0) -> tuple[jax.Array, dict]:
        """Returns (block output, {'response': branch output, 'activations': [...]})."""
        pre = self._preactivate(x, rng)
        response, hidden = self._branch(pre, rng)
        shortcut = None
        if self.residual:
            shortcut = self.shortcut(x if isinstance(self.shortcut, IdentityShortcut) else pre)
        y = self._combine(shortcut, response, fold(rng, 3), survival)
        acts = hidden if self.pre is None else [pre, *hidden]
        return y, {"response": response, "activations": acts}


def _dropout(rate: float) -> nnx.Dropout | None:
    return nnx.Dropout(rate) if rate > 0 else None


class BasicBlock(_PostActBlock):
    """Two 3x3 conv-BN units; activation between them and after the (optional) addition."""

    expansion = 1

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        *,
        residual: bool,
        shortcut: str,
        opts: LayerOptions,
        rngs: nnx.Rngs,
        stochastic_depth: bool = False,
    ):
        self._init_common(residual, stochastic_depth)
        self.out_features = width
        self.unit1 = ConvBN(in_features, width, 3, stride, opts, rngs=rngs)
        self.act1 = opts.activation_module(width)
        self.dropout = _dropout(opts.block_dropout)
        zero = residual and opts.zero_init_residual
        self.unit2 = ConvBN(width, width, 3, 1, opts, rngs=rngs, zero_scale=zero)
        self.act_out = opts.activation_module(width)
        self.shortcut = (
            make_shortcut(shortcut, in_features, width, stride, opts, rngs) if residual else None
        )

    def _branch(self, x: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h = self.act1(self.unit1(x), fold(rng, 0))
        hidden = [h]
        if self.dropout is not None:
            h = self.dropout(h, rngs=fold(rng, 1))
        return self.unit2(h), hidden


class BottleneckBlock(_PostActBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4), each conv followed by BN.

    ``stride_on='first'`` puts the stride on the first 1x1 conv, as in the
    paper (and the original Caffe models); ``'middle'`` puts it on the 3x3
    conv, as torchvision's later "ResNet v1.5" does.
    """

    expansion = 4

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        *,
        residual: bool,
        shortcut: str,
        opts: LayerOptions,
        rngs: nnx.Rngs,
        stride_on: str = "first",
        stochastic_depth: bool = False,
    ):
        self._init_common(residual, stochastic_depth)
        out = width * self.expansion
        self.out_features = out
        s1, s2 = (stride, 1) if stride_on == "first" else (1, stride)
        self.unit1 = ConvBN(in_features, width, 1, s1, opts, rngs=rngs)
        self.act1 = opts.activation_module(width)
        self.unit2 = ConvBN(width, width, 3, s2, opts, rngs=rngs)
        self.act2 = opts.activation_module(width)
        zero = residual and opts.zero_init_residual
        self.unit3 = ConvBN(width, out, 1, 1, opts, rngs=rngs, zero_scale=zero)
        self.act_out = opts.activation_module(out)
        self.shortcut = (
            make_shortcut(shortcut, in_features, out, stride, opts, rngs) if residual else None
        )

    def _branch(self, x: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h1 = self.act1(self.unit1(x), fold(rng, 0))
        h2 = self.act2(self.unit2(h1), fold(rng, 1))
        return self.unit3(h2), [h1, h2]


class PreActBasicBlock(_PreActBlock):
    """BN-act-conv3x3, BN-act-(dropout)-conv3x3, then the addition and nothing after it.

    ``preact_input=False`` skips the first BN-act, for the first block after
    an ImageNet stem that already ends in BN-ReLU.
    """

    expansion = 1

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        *,
        residual: bool,
        shortcut: str,
        opts: LayerOptions,
        rngs: nnx.Rngs,
        stochastic_depth: bool = False,
        preact_input: bool = True,
    ):
        self._init_common(residual, stochastic_depth)
        self.out_features = width
        self.pre = BNAct(in_features, opts, rngs=rngs) if preact_input else None
        self.conv1 = make_conv(in_features, width, 3, stride, opts, rngs)
        self.mid = BNAct(width, opts, rngs=rngs)
        self.dropout = _dropout(opts.block_dropout)
        zero = residual and opts.zero_init_residual
        self.conv2 = make_conv(width, width, 3, 1, opts, rngs, zero=zero)
        self.shortcut = (
            make_shortcut(shortcut, in_features, width, stride, opts, rngs, preact=True)
            if residual else None
        )

    def _branch(self, pre: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h = self.mid(self.conv1(pre), fold(rng, 1))
        hidden = [h]
        if self.dropout is not None:
            h = self.dropout(h, rngs=fold(rng, 2))
        return self.conv2(h), hidden


class PreActBottleneckBlock(_PreActBlock):
    """BN-act-conv1x1, BN-act-conv3x3, BN-act-conv1x1 (x4 channels), then the addition."""

    expansion = 4

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        *,
        residual: bool,
        shortcut: str,
        opts: LayerOptions,
        rngs: nnx.Rngs,
        stride_on: str = "first",
        stochastic_depth: bool = False,
        preact_input: bool = True,
    ):
        self._init_common(residual, stochastic_depth)
        out = width * self.expansion
        self.out_features = out
        s1, s2 = (stride, 1) if stride_on == "first" else (1, stride)
        self.pre = BNAct(in_features, opts, rngs=rngs) if preact_input else None
        self.conv1 = make_conv(in_features, width, 1, s1, opts, rngs)
        self.mid1 = BNAct(width, opts, rngs=rngs)
        self.conv2 = make_conv(width, width, 3, s2, opts, rngs)
        self.mid2 = BNAct(width, opts, rngs=rngs)
        zero = residual and opts.zero_init_residual
        self.conv3 = make_conv(width, out, 1, 1, opts, rngs, zero=zero)
        self.shortcut = (
            make_shortcut(shortcut, in_features, out, stride, opts, rngs, preact=True)
            if residual else None
        )

    def _branch(self, pre: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, list[jax.Array]]:
        h1 = self.mid1(self.conv1(pre), fold(rng, 1))
        h2 = self.mid2(self.conv2(h1), fold(rng, 2))
        return self.conv3(h2), [h1, h2]
