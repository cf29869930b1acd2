"""Model summary CLI: ``python -m models FAMILY DEPTH [--plain] [--shortcut A|B|C] [--stages] ...``.

Prints one row per layer, in the order of the forward pass: every convolution,
BatchNorm, identity shortcut (options A/B; a projection is its conv and BN
rows) and the classifier (``head``), each with its path in the model, its type,
its output shape (for one image), parameters and multiply-accumulates (MACs:
the paper's "FLOPs" of Table 1; BatchNorm, activations, pooling and additions
count 0). Pooling has no row: the ImageNet stem's 3x3/2 max-pool comes after
``stem.bn``, the global average pool before ``head``.
Then a ``total`` row, counted over the whole traced network (the rows add up
to it), and one JSON line for scripts: family, depth, plain, shortcut, params,
macs, image_size, ... ``--stages`` prints one row per stage (stem, each stage,
head) instead of one per layer. Bad input is one ``error:`` line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import models
from models.families import NEW_FAMILIES, imagenet_input
from models.summary import layer_rows, network_totals, summarize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    p.add_argument("family", help="cifar | imagenet | wrn | resnext | densenet | fractal | vgg "
                                  "| alexnet | nin | googlenet | squeezenet")
    p.add_argument("depth", type=int,
                   help="cifar: 6n+2 (basic) or 9n+2 (bottleneck); imagenet: 18/34/50/101/152; "
                        "wrn: 6n+4; resnext: 9n+2 or 50/101/152; densenet: 3n+4, BC 6n+4 or "
                        "121/169/201/264/161; fractal: B*2^(C-1); vgg: 11/13/16/19; alexnet: 8; "
                        "nin: 9; googlenet: 22; squeezenet: 18")
    p.add_argument("--plain", action="store_true", help="no shortcuts")
    p.add_argument("--shortcut", default=None, help="A | B | C (default: the paper's)")
    p.add_argument("--num-classes", type=int, default=None, help="default 10 / 1000")
    p.add_argument("--image-size", type=int, default=None, help="default 32 / 224")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--bottleneck-stride", default="first", help="first (paper) | middle (v1.5)")
    p.add_argument("--stem", default=None, help="cifar | imagenet (ImageNet family only)")
    p.add_argument("--block", default=None, help="basic | bottleneck (CIFAR family)")
    p.add_argument("--preact", action="store_true", help="pre-activation ordering (He 2016)")
    p.add_argument("--width-factor", type=int, default=None, help="WRN's k (family wrn)")
    p.add_argument("--widths", default=None,
                   help="stage widths, comma-separated (cifar, imagenet, resnext, fractal, vgg; "
                        "alexnet: its 5 convs)")
    p.add_argument("--cardinality", type=int, default=None, help="ResNeXt's C (groups)")
    p.add_argument("--group-width", type=int, default=None, help="ResNeXt's d (group width)")
    p.add_argument("--growth-rate", type=int, default=None, help="DenseNet's k")
    p.add_argument("--compression", type=float, default=None, help="DenseNet's theta")
    p.add_argument("--bc", action="store_true",
                   help="DenseNet-BC: bottleneck layers (and compression 0.5 unless given)")
    p.add_argument("--columns", type=int, default=None, help="FractalNet's C")
    p.add_argument("--bn", action="store_const", const=True, default=None,
                   help="BatchNorm after every conv (vgg, alexnet, nin, googlenet, squeezenet)")
    p.add_argument("--layout", default=None, help="paper | torchvision (alexnet, googlenet)")
    p.add_argument("--version", default=None, help="SqueezeNet's 1.0 | 1.1")
    p.add_argument("--aux-heads", action="store_const", const=True, default=None,
                   help="GoogLeNet's auxiliary classifiers")
    p.add_argument("--fc-width", type=int, default=None, help="VGG's and AlexNet's fc width")
    p.add_argument("--stages", action="store_true",
                   help="one row per stage (stem, stages, head) instead of one per layer")
    return p.parse_args(argv)


def _widths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"--widths must be integers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    imagenet = imagenet_input(args.family, args.depth, args.stem)
    cfg = {
        "family": args.family,
        "depth": args.depth,
        "plain": args.plain,
        "shortcut": args.shortcut,
        "num_classes": args.num_classes or (1000 if imagenet else 10),
        "in_channels": args.in_channels,
        "bottleneck_stride": args.bottleneck_stride,
        "stem": args.stem,
        "block": args.block,
        "preact": args.preact,
        "width_factor": args.width_factor,
        "cardinality": args.cardinality,
        "group_width": args.group_width,
        "growth_rate": args.growth_rate,
        "compression": args.compression,
        "columns": args.columns,
        "bn": args.bn,
        "layout": args.layout,
        "version": args.version,
        "aux_heads": args.aux_heads,
        "fc_width": args.fc_width,
    }
    if args.bc:
        cfg["block"] = "bottleneck"
    image_size = args.image_size or (224 if imagenet and args.stem != "cifar" else 32)
    try:
        cfg["widths"] = _widths(args.widths)
        if image_size < 1:
            raise ValueError(f"--image-size must be positive, got {image_size}")
        # The new families as shapes only: VGG's 138M parameters need no values here.
        build = models.abstract_model if cfg["family"] in NEW_FAMILIES else models.build_model
        model = build(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = model.spec
    if isinstance(spec, models.FamilySpec):
        print(f"{spec.describe()}, input {image_size}x{image_size}x{spec.in_channels}")
        return _table(args, model, image_size, {"family": spec.family, "depth": spec.depth,
                                                "name": spec.name,
                                                "connectivity": spec.connectivity})
    order = ", pre-activation" if spec.preact else ""
    print(f"{spec.name} ({spec.family} family, {spec.block} blocks{order}", end="")
    if spec.family == "resnext":
        print(f", {spec.cardinality} groups of {spec.group_width} channels, stride on the "
              "grouped 3x3 conv", end="")
    elif spec.block == "bottleneck":
        where = "first 1x1 conv (paper)" if spec.bottleneck_stride == "first" else "3x3 conv (v1.5)"
        print(f", stride on the {where}", end="")
    shortcut = "none (plain)" if spec.plain else spec.shortcut
    print(f"), shortcut {shortcut}, input {image_size}x{image_size}x{spec.in_channels}")
    return _table(args, model, image_size, {
        "family": spec.family, "depth": spec.depth, "plain": spec.plain,
        "shortcut": None if spec.plain else spec.shortcut, "bottleneck_stride":
        spec.bottleneck_stride, "block": spec.block, "preact": spec.preact, "name": spec.name,
        "connectivity": spec.connectivity})


def _table(args: argparse.Namespace, model, image_size: int, facts: dict) -> int:
    """The rows, the total and the JSON line (``facts`` plus params, macs, image_size)."""
    if args.stages:
        rows = [(r.name, "", r.output_shape, r.params, r.macs)
                for r in summarize(model, image_size)]
    else:
        rows = [(r.name, r.kind, r.output_shape, r.params, r.macs)
                for r in layer_rows(model, image_size)]
    params, macs = network_totals(model, image_size)
    width = max(len("total"), *(len(r[0]) for r in rows)) + 2
    kind = max((len(r[1]) for r in rows), default=0)
    kind = kind + 2 if kind else 0
    print(f"{'layer' if not args.stages else 'part':<{width}}{'type' if kind else '':<{kind}}"
          f"{'output':>14}{'params':>14}{'MACs':>16}")
    for name, what, out_shape, n, m in rows:
        shape = "x".join(map(str, out_shape))
        print(f"{name:<{width}}{what:<{kind}}{shape:>14}{n:>14,}{m:>16,}")
    print(f"{'total':<{width}}{'':<{kind}}{'':>14}{params:>14,}{macs:>16,}")
    print(json.dumps({**facts, "params": params, "macs": macs, "image_size": image_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
