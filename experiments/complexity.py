"""The complexity chart: accuracy against multiply-adds, parameters as the marker's area.

    python -m experiments.complexity [STUDY_DIR] [--out BASE]

The lecture's comparison of the CNN architectures (after Canziani et al. 2016), drawn from
our zoo: every network's parameters and multiply-adds are counted from the network itself
(``models.summary``, one image), so the chart and ``python -m models`` agree.

- With ``STUDY_DIR``: the left panel has the study's networks, final test accuracy against
  multiply-adds per image at the study's input size (digits 8x8, CIFAR 32x32, ImageNet
  224x224), one colour per connectivity pattern.
- Always: the right panel has the ImageNet zoo, torchvision's published top-1 accuracy of
  each net (one 224 crop; ``experiments.paper.IMAGENET_TORCHVISION_TOP1``) against the
  multiply-adds and parameters of our build of it at 224x224.

Writes ``BASE.png`` and ``BASE.svg`` (default ``STUDY_DIR/complexity``, or ``complexity``
in the current directory without a study) and prints one line per network (name, params,
multiply-adds, accuracy). ``experiments.report`` draws it for studies of connectivity
patterns (``configs/connectivity.py``).
"""

from __future__ import annotations

import functools
import json
import os
import sys

from experiments import paper
from experiments.study import Row, build_rows, load_runs

IMAGE_SIZES = {"digits": (8, 1), "cifar10": (32, 3), "cifar100": (32, 3),
               "imagenet2012": (224, 3)}
PATTERN_COLOURS = {"plain": "tab:gray", "residual": "tab:blue", "dense": "tab:green",
                   "fractal": "tab:orange", "inception": "tab:purple"}


@functools.cache
def _cost(model_json: str, image_size: int) -> tuple[int, int]:
    """(parameters, multiply-adds for one image) of ``config.model`` (as JSON), from shapes."""
    import models  # noqa: PLC0415
    from models.summary import network_totals  # noqa: PLC0415

    cfg = json.loads(model_json)
    if cfg.get("family", "cifar") in ("cifar", "imagenet", "wrn", "resnext"):
        cfg["scan_blocks"] = True  # the same counts; tracing deep nets stays fast
    return network_totals(models.abstract_model(cfg), image_size)


def network_cost(model: dict, image_size: int, in_channels: int | None = None
                 ) -> tuple[int, int]:
    """(parameters, multiply-adds per image) of the network ``model`` (``config.model``)."""
    cfg = dict(model)
    if in_channels is not None:
        cfg["in_channels"] = in_channels
    return _cost(json.dumps(cfg, sort_keys=True), image_size)


def study_points(rows: list[Row]) -> list[dict]:
    """One point per finished network: label, pattern, params, MACs, test accuracy %."""
    points = []
    for row in rows:
        if row.test_error is None or not row.runs:
            continue
        size, channels = IMAGE_SIZES.get(row.dataset, (32, 3))
        params, macs = network_cost(row.runs[0].config["model"], size, channels)
        points.append({"label": row.label, "pattern": row.pattern or "residual",
                       "params": params, "macs": macs, "accuracy": 100.0 - row.test_error})
    return points


def imagenet_points() -> list[dict]:
    """The ImageNet zoo: torchvision's top-1 accuracy, our parameter and multiply-add counts."""
    import models  # noqa: PLC0415

    points = []
    for name, top1 in paper.IMAGENET_TORCHVISION_TOP1.items():
        cfg = {"num_classes": 1000, **paper.IMAGENET_TORCHVISION_MODELS[name]}
        params, macs = network_cost(cfg, 224)
        spec = models.spec_from_config(cfg)
        points.append({"label": spec.label, "pattern": spec.connectivity, "params": params,
                       "macs": macs, "accuracy": top1, "name": name})
    return points


def _panel(ax, points: list[dict], title: str, ylabel: str) -> None:
    biggest = max((p["params"] for p in points), default=1)
    scale, unit = (1e9, "G") if max((p["macs"] for p in points), default=0) > 1e8 else (1e6, "M")
    ordered = sorted(points, key=lambda p: (p["macs"], p["accuracy"]))
    for i, p in enumerate(ordered):
        x = p["macs"] / scale
        ax.scatter(x, p["accuracy"], s=40 + 1500 * p["params"] / biggest, alpha=0.45,
                   color=PATTERN_COLOURS.get(p["pattern"], "tab:red"), edgecolors="black",
                   linewidths=0.6)
        # Labels beside the markers, alternately above and below, so neighbours stay legible.
        ax.annotate(f"{p['label']} ({p['params'] / 1e6:.2f}M)", (x, p["accuracy"]),
                    xytext=(8, 9 if i % 2 else -11), textcoords="offset points", fontsize=6.5,
                    ha="left", va="center")
    for pattern, colour in PATTERN_COLOURS.items():
        if any(p["pattern"] == pattern for p in points):
            ax.scatter([], [], color=colour, alpha=0.45, label=pattern, s=60)
    ax.set_xscale("log")
    ax.set_xlabel(f"multiply-adds per image ({unit}, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + "\n(marker area: parameters; label: parameters)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.25)
    ax.legend(fontsize=7, loc="lower right")


def plot_complexity(study: list[dict] | None, imagenet: list[dict], out_base: str,
                    dataset: str = "") -> list[str]:
    """The chart: the study's panel (when given) and the ImageNet zoo's; returns the files."""
    from experiments.figures import _pyplot, _save  # noqa: PLC0415

    plt = _pyplot()
    panels = 2 if study else 1
    fig, axes = plt.subplots(1, panels, figsize=(8 * panels, 6.5), squeeze=False,
                             layout="constrained")
    axes = list(axes[0])
    if study:
        _panel(axes[0], study, f"this study ({dataset})", "final test accuracy (%)")
    _panel(axes[-1], imagenet, "ImageNet: torchvision's top-1 (one 224 crop); our counts",
           "top-1 accuracy (%)")
    fig.suptitle("Accuracy against multiply-adds, parameters as marker area")
    return _save(plt, fig, out_base)


def describe(points: list[dict]) -> list[str]:
    return [f"{p['label']}: {p['params']:,} params, {p['macs']:,} multiply-adds, "
            f"accuracy {p['accuracy']:.2f}%" for p in points]


def main(argv: list[str] | None = None) -> int:
    from training import command_line  # noqa: PLC0415

    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m experiments.complexity [STUDY_DIR] [--out BASE]"
    if argv in (["-h"], ["--help"]):
        print(f"{usage}\n\n{__doc__}")
        return 0
    out = None
    if "--out" in argv:
        at = argv.index("--out")
        if at + 1 >= len(argv):
            return command_line.bad_input(usage)
        out, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    if len(argv) > 1 or any(a.startswith("-") for a in argv):
        return command_line.bad_input(usage)
    study, dataset = None, ""
    try:
        if argv:
            rows = build_rows(load_runs(argv[0]))
            study, dataset = study_points(rows), rows[0].dataset if rows else ""
    except ValueError as e:
        return command_line.bad_input(e)
    out = out or (os.path.join(argv[0], "complexity") if argv else "complexity")
    imagenet = imagenet_points()
    files = plot_complexity(study, imagenet, out, dataset)
    print("\n".join(describe(study or []) + describe(imagenet)))
    print("\n".join(f"wrote {f}" for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
