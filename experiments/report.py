"""Study report: the paper's curves, a results table and verdicts, from run directories.

    python -m experiments.report STUDY_DIR

Reads only files (config.json, metrics.jsonl, summary.json,
layer_responses.json; JSON, never pickle) and writes into STUDY_DIR:
``curves.png/.svg`` (plain nets left, residual right, training error dashed,
test error bold, one colour per depth), ``results.md/.csv`` (one row per
network, mean +- std over seeds, the paper's number beside ours), verdict
lines computed from the data, ``layer_responses.png/.svg`` (Fig. 7), and two
diagnostics, one panel per network: ``train_loss.png/.svg`` (every step's
training loss, its mean and spread per log interval: the gradient noise of
the batch size) and ``fit_gap.png/.svg`` (training vs validation error, or
test error without a validation split, the gap shaded: over/under-fitting).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from experiments import paper
from training.run_dir import MetricsLog, flatten, read_json

# Two training errors closer than this (in percentage points) count as equal.
TOLERANCE_PP = 0.5
IGNORED_KEYS = ("seed",)
# Keys that the row label already names (the architecture), never listed as a variant.
ARCH_KEYS = ("model.depth", "model.plain", "model.family", "model.preact", "model.width_factor",
             "model.stochastic_depth", "model.block", "model.stem")


@dataclass
class Run:
    path: str
    config: dict
    metrics: list[dict]
    summary: dict | None
    responses: list[float] | None

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status", "unfinished")


@dataclass
class Row:
    """One network of the study (several seeds pooled)."""

    label: str
    dataset: str
    depth: int
    plain: bool
    variant: str  # the other config keys that distinguish it ('' if none)
    runs: list[Run] = field(default_factory=list)
    params: int | None = None
    train_error: float | None = None  # %, mean over seeds
    train_error_std: float | None = None
    test_error: float | None = None
    test_error_std: float | None = None
    best_test_error: float | None = None
    paper_error: float | None = None
    status: str = ""
    arch: str = ""  # the architecture besides depth and shortcuts ('' = the paper's nets)


def _pct(v) -> float | None:
    return None if v is None or not math.isfinite(v) else 100.0 * v


def load_runs(study_dir: str) -> list[Run]:
    """Every directory under ``study_dir`` holding a config.json."""
    if not os.path.isdir(study_dir):
        raise ValueError(f"study directory {study_dir} does not exist")
    runs = []
    for root, dirs, files in os.walk(study_dir):
        dirs[:] = sorted(d for d in dirs if d != "checkpoints")
        if "config.json" not in files:
            continue
        metrics = MetricsLog(root, False).read()
        summary = responses = None
        if "summary.json" in files:
            summary = read_json(os.path.join(root, "summary.json"))
        if "layer_responses.json" in files:
            blocks = read_json(os.path.join(root, "layer_responses.json"))["blocks"]
            responses = [b["std"] for b in blocks]
        runs.append(Run(root, read_json(os.path.join(root, "config.json")), metrics,
                        summary, responses))
    if not runs:
        raise ValueError(f"no run directories (with config.json) under {study_dir}")
    return runs


def _label(plain: bool, depth: int) -> str:
    return f"plain-{depth}" if plain else f"ResNet-{depth}"


def network_label(flat: dict) -> tuple[str, str]:
    """(row label, architecture) of a flattened config: ``pre-act ResNet-164``, ``WRN-28-10``."""
    depth, plain = int(flat["model.depth"]), bool(flat["model.plain"])
    if flat.get("model.family") == "wrn":
        k = flat.get("model.width_factor", 1)
        arch = f"WRN-k{k}"
        label = f"{'plain ' if plain else ''}WRN-{depth}-{k}"
    else:
        arch = "pre-act" if flat.get("model.preact") else ""
        label = (f"{arch} " if arch else "") + _label(plain, depth)
    if flat.get("model.stochastic_depth"):
        arch = f"{arch} + stoch. depth".strip(" +")
        label += " + stoch. depth"
    return label, arch


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def build_rows(runs: list[Run]) -> list[Row]:
    """Groups runs that differ only in their seed into one row each.

    A config key is listed as a row's variant only where it tells apart runs of
    the same network: keys that follow from the network (a recipe for depth
    110, the ImageNet family of the 18/34-layer nets of a CIFAR study) do not.
    """
    flat = [flatten(r.config) for r in runs]
    names = [(f.get("dataset"), *network_label(f)) for f in flat]
    keys = sorted(set().union(*flat))
    # A key missing from some runs (written by an older version) is not a variant.
    varying = [k for k in keys if k not in (*ARCH_KEYS, *IGNORED_KEYS)
               and all(k in f for f in flat) and any(
        len({json.dumps(f.get(k)) for f, n in zip(flat, names, strict=True) if n == name}) > 1
        for name in set(names))]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run, f, (dataset, label, arch) in zip(runs, flat, names, strict=True):
        variant = ",".join(f"{k.split('.')[-1]}={f.get(k)}" for k in varying)
        groups[(dataset, bool(f["model.plain"]), int(f["model.depth"]), label, arch,
                variant)].append(run)
    rows = []
    for (dataset, plain, depth, label, arch, variant), members in groups.items():
        row = Row(label + (f" ({variant})" if variant else ""), dataset, depth, plain, variant,
                  members, arch=arch)
        finished = [r for r in members if r.summary and r.summary.get("final_train_error")
                    is not None]
        row.params = next((r.summary.get("params") for r in members
                           if r.summary and r.summary.get("params")), None)
        row.train_error, row.train_error_std = _mean_std(
            [_pct(r.summary["final_train_error"]) for r in finished])
        row.test_error, row.test_error_std = _mean_std(
            [_pct(r.summary.get("final_test_error")) for r in finished])
        bests = [_pct(r.summary.get("best_test_error")) for r in finished]
        bests = [b for b in bests if b is not None]
        row.best_test_error = min(bests) if bests else None
        model_keys = {k.removeprefix("model."): v
                      for k, v in flatten(members[0].config).items()
                      if k.startswith("model.")}
        row.paper_error = paper.published_test_error(dataset, model_keys)
        row.status = _status_text(members)
        rows.append(row)
    rows.sort(key=lambda r: (r.variant, r.arch, not r.plain, r.depth))
    return rows


def _status_text(members: list[Run]) -> str:
    parts = []
    for status in ("finished", "diverged", "failed", "unfinished"):
        hit = [r for r in members if r.status == status]
        if not hit:
            continue
        text = status
        if status == "diverged":
            steps = [str(r.summary.get("diverged_at_step")) for r in hit]
            text = f"diverged at step {', '.join(steps)}"
        parts.append(text if len(members) == 1 else f"{len(hit)} {text}")
    return "; ".join(parts)


def _fmt(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f} ± {std:.2f}" if std is not None else f"{v:.2f}"


def verdicts(rows: list[Row]) -> list[str]:
    """Plain-language findings from the rows (training error, mean over seeds)."""
    lines = []
    for variant, arch in sorted({(r.variant, r.arch) for r in rows}):
        group = [r for r in rows if (r.variant, r.arch) == (variant, arch)]
        suffix = f" [{variant}]" if variant else ""
        plain = sorted((r for r in group if r.plain), key=lambda r: r.depth)
        res = sorted((r for r in group if not r.plain), key=lambda r: r.depth)
        for row in group:
            if "diverged" in row.status or "failed" in row.status:
                lines.append(f"{row.label} failed to train ({row.status}).{suffix}")
        for a, b in zip(plain, plain[1:], strict=False):
            ea, eb = _effective(a), _effective(b)
            if ea is None or eb is None:
                continue
            if eb > ea + TOLERANCE_PP:
                lines.append(f"Degradation: {b.label} ends with a higher training error than "
                             f"{a.label} ({eb:.1f}% vs {ea:.1f}%).{suffix}")
            else:
                lines.append(f"No degradation: {b.label} trains as well as {a.label} "
                             f"({eb:.1f}% vs {ea:.1f}%).{suffix}")
        for a, b in zip(res, res[1:], strict=False):
            ea, eb = _effective(a), _effective(b)
            if ea is None or eb is None:
                continue
            verdict = "no worse than" if eb <= ea + TOLERANCE_PP else "worse than"
            lines.append(f"Residual nets: {b.label} trains {verdict} {a.label} "
                         f"({eb:.1f}% vs {ea:.1f}% training error).{suffix}")
        for p in plain:
            r = next((x for x in res if x.depth == p.depth), None)
            ep, er = _effective(p), _effective(r) if r else None
            if r is None or ep is None or er is None:
                continue
            if er < ep - TOLERANCE_PP:
                word = "beats"
            elif er <= ep + TOLERANCE_PP:
                word = "matches"
            else:
                word = "loses to"
            test = (f", test {r.test_error:.1f}% vs {p.test_error:.1f}%"
                    if r.test_error is not None and p.test_error is not None else "")
            lines.append(f"At depth {p.depth} the residual net {word} the plain net: "
                         f"train {er:.1f}% vs {ep:.1f}%{test}.{suffix}")
    return lines + failure_verdicts(rows) + ranking_verdicts(rows)


def failure_verdicts(rows: list[Row]) -> list[str]:
    """Nets whose final training error is within 5 points of chance: they did not learn."""
    lines = []
    for row in rows:
        classes = (row.runs[0].config.get("model") or {}).get("num_classes") if row.runs else None
        if row.train_error is None or not classes:
            continue
        chance = 100.0 * (1 - 1 / classes)
        if row.train_error >= chance - 5.0:
            lines.append(f"{row.label} fails to learn: final training error {row.train_error:.1f}% "
                         f"(chance: {chance:.1f}%).")
    return lines


def ranking_verdicts(rows: list[Row]) -> list[str]:
    """Where several nets share a depth (a knob or variant study), rank them by test error."""
    lines = []
    for depth, plain in sorted({(r.depth, r.plain) for r in rows}):
        group = [r for r in rows if (r.depth, r.plain) == (depth, plain)
                 and r.test_error is not None]
        if len(group) < 2:
            continue
        group.sort(key=lambda r: r.test_error)
        ranked = ", ".join(f"{r.label} {r.test_error:.1f}%" for r in group)
        lines.append(f"Depth {depth} ({'plain' if plain else 'residual'}), by final test error: "
                     f"{ranked}.")
    return lines


def _effective(row: Row | None) -> float | None:
    """Training error for comparisons; a net that diverged or failed counts as 100%."""
    if row is None:
        return None
    if row.train_error is None and ("diverged" in row.status or "failed" in row.status):
        return 100.0
    return row.train_error


# --------------------------------------------------------------------------- figures


def _curve(runs: list[Run], key: str) -> tuple[list[int], list[float]]:
    """Mean over runs of a metric, at the steps every run logged it."""
    per_run = [{m["step"]: m[key] for m in r.metrics if m.get(key) is not None} for r in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return [], []
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    return steps, [100.0 * statistics.fmean(p[s] for p in per_run) for s in steps]


def _colours(rows: list[Row]) -> dict[int, str]:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    palette = plt.get_cmap("tab10").colors
    nets = sorted({_colour_key(r) for r in rows})
    return {n: palette[i % len(palette)] for i, n in enumerate(nets)}


def _colour_key(row: Row) -> tuple:
    """A plain net and its residual counterpart share a colour (they sit in separate panels)."""
    return (row.depth, row.arch, row.variant)


def plot_curves(rows: list[Row], out_base: str) -> list[str]:
    """The paper's Fig. 1/4/6 layout: plain nets left, residual nets right."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    colours = _colours(rows)
    kinds = [p for p in (True, False) if any(r.plain == p for r in rows)] or [False]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), sharey=True,
                             squeeze=False)
    axes = axes[0]
    top = 0.0
    for ax, plain in zip(axes, kinds, strict=True):
        for row in (r for r in rows if r.plain == plain):
            c = colours[_colour_key(row)]
            steps, train = _curve(row.runs, "train_error")
            ax.plot(steps, train, "--", color=c, linewidth=1.0)
            steps_t, test = _curve(row.runs, "test_error")
            label = row.label + ("" if row.status == "finished" else f" ({row.status})")
            ax.plot(steps_t, test, "-", color=c, linewidth=2.2, label=label)
            if row.status != "finished" and steps:
                ax.plot(steps[-1], train[-1], "x", color=c, markersize=9, mew=2)
            top = max([top, *train, *test])
        ax.set_title(f"{'plain' if plain else 'residual'} networks")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100.0, max(5.0, top * 1.1)))
    dataset = rows[0].dataset if rows else ""
    fig.suptitle(f"{dataset}: training error (dashed) and test error (bold)")
    return _save(plt, fig, out_base)


def plot_responses(rows: list[Row], out_base: str) -> list[str]:
    """The paper's Fig. 7: std of each block's response, in layer order and sorted."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    colours = _colours(rows)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7))
    for row in rows:
        stds = [r.responses for r in row.runs if r.responses]
        if not stds:
            continue
        mean = [statistics.fmean(v) for v in zip(*stds, strict=False)]
        style = dict(color=colours[_colour_key(row)], linestyle="--" if row.plain else "-",
                     label=row.label)
        ax1.plot(range(1, len(mean) + 1), mean, **style)
        ax2.plot(range(1, len(mean) + 1), sorted(mean, reverse=True), **style)
    ax1.set_xlabel("block index (original order)")
    ax2.set_xlabel("block index (sorted by magnitude)")
    for ax in (ax1, ax2):
        ax.set_ylabel("std of response")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Std of each block's branch response (after BN, before addition)")
    return _save(plt, fig, out_base)


# --------------------------------------------------------------------------- diagnostics


def step_losses(runs: list[Run]) -> dict[str, list[float]]:
    """What the training-loss figure plots for one network (several seeds averaged).

    ``steps``/``loss``: every step's loss, from the metric lines' ``train_losses``
    (empty for runs logged before it existed); per log line (``interval_steps``):
    the logged mean loss (``interval_mean``), the standard deviation of the
    steps' losses around it (``interval_std``) and their range
    (``interval_min``/``interval_max``; without per-step losses: std 0, range
    the mean). Each is the mean over the runs, at the steps every run logged.
    """
    per_step, per_line = [], []
    for r in runs:
        steps, lines = {}, {}
        for m in r.metrics:
            if m.get("train_loss") is None:
                continue
            losses = m.get("train_losses") or []
            for i, v in enumerate(losses):
                steps[m["step"] - len(losses) + 1 + i] = v
            lines[m["step"]] = (m["train_loss"],
                                statistics.pstdev(losses) if len(losses) > 1 else 0.0,
                                min(losses, default=m["train_loss"]),
                                max(losses, default=m["train_loss"]))
        if lines:
            per_step.append(steps)
            per_line.append(lines)
    fields = ("interval_mean", "interval_std", "interval_min", "interval_max")
    if not per_line:
        return {k: [] for k in ("steps", "loss", "interval_steps", *fields)}
    common = sorted(set.intersection(*(set(s) for s in per_step)))
    logged = sorted(set.intersection(*(set(s) for s in per_line)))
    out = {"steps": common, "loss": [statistics.fmean(s[t] for s in per_step) for t in common],
           "interval_steps": logged}
    for i, name in enumerate(fields):
        out[name] = [statistics.fmean(s[t][i] for s in per_line) for t in logged]
    return out


def fit_gap(runs: list[Run]) -> dict:
    """What the fit figure plots for one network: training and held-out error (%) at the
    evaluation steps, and which held-out split (val when every run has one, else test).

    The training error is the logged one: the mean over the log interval's
    training batches (augmented, BatchNorm in training mode).
    """
    held = "val" if runs and all(any("val_error" in m for m in r.metrics) for r in runs) \
        else "test"
    steps_h, heldout = _curve(runs, f"{held}_error")
    steps_t, train = _curve(runs, "train_error")
    at = dict(zip(steps_t, train, strict=True))
    keep = [i for i, s in enumerate(steps_h) if s in at]
    return {"heldout_name": held, "steps": [steps_h[i] for i in keep],
            "train": [at[steps_h[i]] for i in keep], "heldout": [heldout[i] for i in keep]}


def _panels(n: int):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = min(4, max(1, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False,
                             sharex=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def _save(plt, fig, out_base: str) -> list[str]:
    fig.tight_layout()
    paths = [f"{out_base}.png", f"{out_base}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def plot_step_losses(rows: list[Row], out_base: str) -> tuple[list[str], dict[str, dict]]:
    """Every step's training loss per network (thin), the log interval's mean (bold) and
    the range of its steps (shaded); log scale. Panel titles give the median over
    intervals of std / mean of the steps' losses (the relative gradient noise).

    Returns the files and, per network label, the series plotted (``step_losses``).
    """
    plt, fig, axes = _panels(len(rows))
    plotted = {}
    for ax, row in zip(axes, rows, strict=False):
        d = plotted[row.label] = step_losses(row.runs)
        if d["steps"]:
            ax.plot(d["steps"], d["loss"], color="tab:blue", linewidth=0.5, alpha=0.5,
                    label="each step")
        ax.fill_between(d["interval_steps"], d["interval_min"], d["interval_max"],
                        color="tab:orange", alpha=0.3, label="range of the interval's steps")
        ax.plot(d["interval_steps"], d["interval_mean"], color="tab:orange", linewidth=1.8,
                label="interval mean")
        if d["interval_mean"] and min(d["interval_min"]) > 0:
            ax.set_yscale("log")
        relative = [s / m for s, m in zip(d["interval_std"], d["interval_mean"], strict=True)
                    if s > 0 and m > 0]
        spread = f", median std/mean {statistics.median(relative):.2f}" if relative else ""
        ax.set_title(f"{row.label}{spread}", fontsize=9)
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
    if rows:
        axes[0].set_ylabel("training loss")
        axes[0].legend(fontsize=7)
    fig.suptitle("Training loss of every step (spread: gradient noise of the batch size)")
    return _save(plt, fig, out_base), plotted


def plot_fit_gap(rows: list[Row], out_base: str) -> tuple[list[str], dict[str, dict]]:
    """Training vs held-out error per network, the gap between them shaded.

    Returns the files and, per network label, the series plotted (``fit_gap``).
    """
    plt, fig, axes = _panels(len(rows))
    plotted = {}
    for ax, row in zip(axes, rows, strict=False):
        d = plotted[row.label] = fit_gap(row.runs)
        ax.plot(d["steps"], d["train"], "--", color="tab:blue", label="training")
        ax.plot(d["steps"], d["heldout"], "-", color="tab:red", linewidth=1.8,
                label=d["heldout_name"])
        ax.fill_between(d["steps"], d["train"], d["heldout"], color="tab:red", alpha=0.2,
                        label=f"gap ({d['heldout_name']} - training)")
        gap = (f", final gap {d['heldout'][-1] - d['train'][-1]:+.1f} pp"
               if d["steps"] else "")
        ax.set_title(f"{row.label}{gap}", fontsize=9)
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
    if rows:
        axes[0].set_ylabel("error (%)")
        axes[0].legend(fontsize=7)
    fig.suptitle("Training vs held-out error (a wide gap: over-fitting; both high: "
                 "under-fitting)")
    return _save(plt, fig, out_base), plotted


# --------------------------------------------------------------------------- tables


COLUMNS = ["network", "depth", "params", "runs", "final train error %", "final test error %",
           "best test error %", "paper test error %", "ours - paper", "status"]


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        diff = (f"{r.test_error - r.paper_error:+.2f}"
                if r.test_error is not None and r.paper_error is not None else "—")
        out.append([r.label, str(r.depth), f"{r.params:,}" if r.params else "—",
                    str(len(r.runs)), _fmt(r.train_error, r.train_error_std),
                    _fmt(r.test_error, r.test_error_std), _fmt(r.best_test_error),
                    _fmt(r.paper_error), diff, r.status])
    return out


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines)


def write_report(study_dir: str | os.PathLike) -> dict:
    """Writes the figures, tables and verdicts into ``study_dir``; returns what it wrote."""
    study_dir = os.fspath(study_dir)
    rows = build_rows(load_runs(study_dir))
    found = verdicts(rows)
    written = {"verdicts": found, "table": markdown_table(rows)}
    figs = plot_curves(rows, os.path.join(study_dir, "curves"))
    written["figure_png"], written["figure_svg"] = figs
    if any(r.responses for row in rows for r in row.runs):
        written["responses_png"] = plot_responses(rows, os.path.join(study_dir,
                                                                     "layer_responses"))[0]
    written["loss_png"], written["loss_svg"] = plot_step_losses(
        rows, os.path.join(study_dir, "train_loss"))[0]
    written["gap_png"], written["gap_svg"] = plot_fit_gap(rows,
                                                          os.path.join(study_dir, "fit_gap"))[0]
    csv_path = os.path.join(study_dir, "results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(table_rows(rows))
    md_path = os.path.join(study_dir, "results.md")
    parts = [f"# Results: {study_dir}", "", written["table"], "", "## Verdicts", ""]
    parts += [f"- {v}" for v in found] or ["- (not enough finished runs to compare)"]
    parts += ["", "![training and test error](curves.png)", ""]
    if "responses_png" in written:
        parts += ["![std of layer responses](layer_responses.png)", ""]
    parts += ["## Diagnostics", "",
              "Every step's training loss (its spread is the gradient noise of the batch size):",
              "", "![training loss of every step](train_loss.png)", "",
              "Training vs held-out error, the gap shaded (over- and under-fitting):", "",
              "![training vs held-out error](fit_gap.png)", ""]
    with open(md_path, "w") as f:
        f.write("\n".join(parts))
    written["markdown"], written["csv"] = md_path, csv_path
    return written


def render_text(written: dict) -> str:
    lines = [written["table"], "", *written["verdicts"], ""]
    lines += [f"wrote {written[k]}" for k in ("markdown", "csv", "figure_png", "figure_svg",
                                               "responses_png", "loss_png", "gap_png")
              if k in written]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m experiments.report STUDY_DIR"
    if argv in (["-h"], ["--help"]):
        print(f"{usage}\n\n{__doc__}")
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"error: {usage}", file=sys.stderr)
        return 2
    try:
        written = write_report(argv[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_text(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
