"""Model summary CLI: ``python -m models FAMILY DEPTH [--plain] [--shortcut A|B|C] ...``.

Prints a per-stage table (output shape, parameters, multiply-adds) and ends
with one JSON line (family, depth, plain, shortcut, params, flops) for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys

import models
from models.summary import summarize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    p.add_argument("family", help="cifar | imagenet | wrn")
    p.add_argument("depth", type=int,
                   help="cifar: 6n+2 (basic) or 9n+2 (bottleneck); imagenet: 18/34/50/101/152; "
                        "wrn: 6n+4")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    imagenet = args.family == "imagenet"
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
    }
    image_size = args.image_size or (224 if imagenet and args.stem != "cifar" else 32)
    try:
        if image_size < 1:
            raise ValueError(f"--image-size must be positive, got {image_size}")
        model = models.build_model(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = model.spec
    rows = summarize(model, image_size)
    order = ", pre-activation" if spec.preact else ""
    print(f"{spec.name} ({spec.family} family, {spec.block} blocks{order}", end="")
    if spec.block == "bottleneck":
        where = "first 1x1 conv (paper)" if spec.bottleneck_stride == "first" else "3x3 conv (v1.5)"
        print(f", stride on the {where}", end="")
    shortcut = "none (plain)" if spec.plain else spec.shortcut
    print(f"), shortcut {shortcut}, input {image_size}x{image_size}x{spec.in_channels}")
    print(f"{'part':<24}{'output':>16}{'params':>14}{'mult-adds':>16}")
    for r in rows:
        shape = "x".join(map(str, r.output_shape))
        print(f"{r.name:<24}{shape:>16}{r.params:>14,}{r.macs:>16,}")
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    print(f"{'total':<24}{'':>16}{params:>14,}{macs:>16,}")
    print(
        json.dumps(
            {
                "family": spec.family,
                "depth": spec.depth,
                "plain": spec.plain,
                "shortcut": None if spec.plain else spec.shortcut,
                "params": params,
                "flops": macs,
                "image_size": image_size,
                "bottleneck_stride": spec.bottleneck_stride,
                "block": spec.block,
                "preact": spec.preact,
                "name": spec.name,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
