"""What the zoo's non-ResNet families share: a conv unit, a stage of units, the network shell.

Every network of the zoo, ``ResNet`` included, has the same outline, which the trainer,
fine-tuning and ``python -m models`` rely on: ``stem``, ``stages`` (each
``stage(x, rng, collect=...) -> (x, block outputs, responses, activations)``), ``final``
(None or what comes between the last stage and the classifier), ``head`` (the classifier
alone: fine-tuning replaces it), ``classify(x, rng)`` and
``model(x, rng=..., return_features=...)``.
``Network`` implements that outline for DenseNet, FractalNet, VGG, AlexNet, NiN, GoogLeNet and
SqueezeNet; each family builds the parts.

A *response* is what the paper's Fig. 7 measures, per unit of the net: for a conv unit its
output after BatchNorm (or after the convolution, without BN) and before the non-linearity,
for a module with several branches (Inception, Fire) its output, for a dense layer the new
features it adds, for a fractal block its joined output. ``spec.stage_sizes`` says how many
responses each stage gives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerOptions, fold, make_bn, make_conv


class ConvUnit(nnx.Module):
    """conv (bias when there is no BatchNorm) -> (BatchNorm) -> activation.

    ``unit(x, rng)`` returns ``(output, response)``, the response being the input of the
    activation. ``bias`` forces the convolution's bias either way (torchvision's VGG-BN keeps
    it before its BatchNorm).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int,
                 opts: LayerOptions, *, rngs: nnx.Rngs, bn: bool, padding: int | None = None,
                 groups: int = 1, bias: bool | None = None, activate: bool = True):
        self.conv = make_conv(in_features, out_features, kernel_size, stride, opts, rngs,
                              bias=(not bn) if bias is None else bias, groups=groups,
                              padding=padding)
        self.bn = make_bn(out_features, opts, rngs) if bn else None
        self.act = opts.activation_module(out_features) if activate else None

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        pre = self.conv(x)
        if self.bn is not None:
            pre = self.bn(pre)
        return (pre if self.act is None else self.act(pre, rng)), pre


class Network(nnx.Module):
    """stem, stages, classify; the outline ``ResNet`` has, for the other families.

    Subclasses set ``spec``, ``dtype``, ``stem`` (``stem(x, rng) -> x``), ``stages``,
    ``final`` (``final(x, rng) -> x`` or None), ``dropout`` (before the head, or None),
    ``head`` (``nnx.Linear`` after a global average pool; or a 1x1 ``nnx.Conv`` classifier,
    followed by ``head_act`` if set and then the global average pool: NiN, SqueezeNet) and
    ``num_features``.
    """

    head_act: nnx.Module | None = None

    def classify(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """The last stage's output to logits: final part, (pool), (dropout), head."""
        if self.final is not None:
            x = self.final(x, fold(rng, 0))
        conv_head = isinstance(self.head, nnx.Conv)
        if x.ndim == 4 and not conv_head:
            x = jnp.mean(x, axis=(1, 2))
        if self.dropout is not None:
            x = self.dropout(x, rngs=fold(rng, 1))
        x = self.head(x)
        if conv_head:
            if self.head_act is not None:
                x = self.head_act(x, fold(rng, 2))
            x = jnp.mean(x, axis=(1, 2))
        return x.astype(jnp.float32)

    def __call__(self, x: jax.Array, *, rng: jax.Array | None = None,
                 return_features: bool = False):
        """Logits; with ``return_features``, also ``{'block_outputs', 'branch_responses',
        'activations'}``: each stage's units, in order (activations are the 4-D outputs of
        the stages' non-linearities)."""
        x = self.stem(x.astype(self.dtype), fold(rng, 0))
        outputs, responses, activations = [], [], []
        for i, stage in enumerate(self.stages):
            x, outs, resps, acts = stage(x, fold(rng, i + 1), collect=return_features)
            outputs += outs
            responses += resps
            activations += acts
        logits = self.classify(x, fold(rng, len(self.stages) + 1))
        if return_features:
            return logits, {"block_outputs": outputs, "branch_responses": responses,
                            "activations": activations}
        return logits


@dataclasses.dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """The architecture of a network of a non-ResNet family (``NetworkSpec``'s counterpart).

    ``stage_sizes`` counts each stage's responses; ``connectivity`` names the pattern that
    carries the signal from shallow to deep: 'plain' (a chain of layers), 'residual'
    (identity shortcuts), 'dense' (concatenation), 'fractal' (columns joined by their mean),
    'inception' (parallel branches concatenated).
    """

    family: str
    depth: int
    stage_sizes: tuple[int, ...]
    num_classes: int = 10
    in_channels: int = 3
    plain: bool = False  # no shortcuts to remove: these nets are what they are
    preact: bool = False
    width_factor: int = 1

    connectivity = "plain"

    @property
    def name(self) -> str:
        return f"{self.family}-{self.depth}"

    @property
    def label(self) -> str:
        return self.name

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_sizes)

    def describe(self) -> str:
        """One line for ``python -m models``."""
        return f"{self.label} ({self.family} family, {self.connectivity} connectivity)"

    def validate(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")


def positive_widths(widths: tuple[int, ...], count: int, what: str) -> tuple[int, ...]:
    """``widths`` as ints, checked: ``count`` entries, all positive (one-line ValueError)."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != count:
        raise ValueError(f"{what} widths must have one entry per stage ({count}), got {widths}")
    if any(w < 1 for w in widths):
        raise ValueError(f"widths must be positive, got {widths}")
    return widths
