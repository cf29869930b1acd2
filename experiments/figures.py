"""Figures of a study: the paper's error curves and layer responses, and two diagnostics.

``plot_curves`` (Fig. 1/4/6: plain nets left, residual right, training error
dashed, test error bold, one colour per depth), ``plot_responses`` (Fig. 7:
std of each block's response), and one panel per network for
``plot_step_losses`` (every step's training loss and its spread per log
interval) and ``plot_fit_gap`` (training vs held-out error, the gap shaded).
Each writes ``OUT_BASE.png`` and ``OUT_BASE.svg`` and returns their paths and,
per network, what it drew. Legends sit outside the axes, so they cover no
curve; a held-out error measured fewer than twice is a point or a note, never
an empty curve.
"""

from __future__ import annotations

import statistics

from experiments.study import Row, Run

# A held-out curve needs two evaluations; with fewer, the figures say so instead.
MIN_EVALUATIONS = 2
# One marker per network in the layer-response figure, where curves of one depth overlap.
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*", "h", "p")


def _curve(runs: list[Run], key: str) -> tuple[list[int], list[float]]:
    """Mean over runs of a metric, at the steps every run logged it."""
    per_run = [{m["step"]: m[key] for m in r.metrics if m.get(key) is not None} for r in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return [], []
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    return steps, [100.0 * statistics.fmean(p[s] for p in per_run) for s in steps]


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


# The panels of the error curves, in this order: one per connectivity pattern present.
PATTERNS = ("plain", "residual", "dense", "fractal", "inception")


def _panel(row: Row) -> str:
    """The pattern a row is drawn with; rows without one (older code) by their plain flag."""
    if row.pattern in PATTERNS:
        return row.pattern
    return "plain" if row.plain else "residual"


def _colours(rows: list[Row]) -> dict[int, str]:
    palette = _pyplot().get_cmap("tab10").colors
    nets = sorted({_colour_key(r) for r in rows})
    return {n: palette[i % len(palette)] for i, n in enumerate(nets)}


def _colour_key(row: Row) -> tuple:
    """A plain net and its residual counterpart share a colour (they sit in separate panels)."""
    return (row.depth, row.arch, row.variant)


def evaluations(rows: list[Row]) -> int:
    """The most evaluations (steps with a test error, in every seed) of any network."""
    return max((len(_curve(r.shown_runs, "test_error")[0]) for r in rows), default=0)


def _legend_outside(ax, *, below: bool, ncol: int = 1, fontsize: int = 8) -> None:
    """The axes' legend outside them (below, or to the right), so that it covers no curve."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol,
                  fontsize=fontsize, frameon=False)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=fontsize)


def plot_curves(rows: list[Row], out_base: str) -> tuple[list[str], dict[str, dict]]:
    """The paper's Fig. 1/4/6 layout: plain nets left, residual nets right (and, in a study of
    connectivity patterns, one panel per pattern: dense, fractal, inception).

    A network all of whose seeds finished is labelled by name; otherwise the
    label adds its status and a cross marks where its training curve ends. A
    test error measured fewer than ``MIN_EVALUATIONS`` times is a point, not a
    curve. Returns the files and, per network label, what was drawn: the
    series (``train_steps``, ``train``, ``test_steps``, ``test``), ``test_drawn``
    (``line``, ``point`` or ``none``), ``label`` and ``failure_marker``.
    """
    plt = _pyplot()
    colours = _colours(rows)
    kinds = [p for p in PATTERNS if any(_panel(r) == p for r in rows)] or ["residual"]
    lines = 1 if len(kinds) <= 2 else 2
    cols = -(-len(kinds) // lines)
    fig, axes = plt.subplots(lines, cols, figsize=(6 * cols, 5.5 * lines), sharey=True,
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    axes = list(axes.flat)[:len(kinds)]
    top = 0.0
    plotted = {}
    for ax, kind in zip(axes, kinds, strict=True):
        for row in (r for r in rows if _panel(r) == kind):
            c = colours[_colour_key(row)]
            steps, train = _curve(row.shown_runs, "train_error")
            steps_t, test = _curve(row.shown_runs, "test_error")
            label = row.label + ("" if row.finished else f" ({row.status})")
            drawn = ("line" if len(steps_t) >= MIN_EVALUATIONS else "point" if steps_t
                     else "none")
            ax.plot(steps, train, "--", color=c, linewidth=1.0,
                    label=label if drawn == "none" else None)
            if drawn == "line":
                ax.plot(steps_t, test, "-", color=c, linewidth=2.2, label=label)
            elif drawn == "point":
                ax.plot(steps_t, test, "o", color=c, markersize=7, label=label)
            marker = not row.finished and bool(steps)
            if marker:
                ax.plot(steps[-1], train[-1], "x", color=c, markersize=9, mew=2)
            plotted[row.label] = {"train_steps": steps, "train": train, "test_steps": steps_t,
                                  "test": test, "test_drawn": drawn, "label": label,
                                  "failure_marker": marker}
            top = max([top, *train, *test])
        ax.set_title(f"{kind} networks")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        _legend_outside(ax, below=True, ncol=2)
    for ax in axes[::cols]:
        ax.set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100.0, max(5.0, top * 1.1)))
    dataset = rows[0].dataset if rows else ""
    title = f"{dataset}: training error (dashed) and test error (bold)"
    if evaluations(rows) < MIN_EVALUATIONS:
        title += "\n(fewer than two evaluations: test error as points, no test curves)"
    fig.suptitle(title)
    return _save(plt, fig, out_base), plotted


def plot_responses(rows: list[Row], out_base: str) -> tuple[list[str], dict[str, dict]]:
    """The paper's Fig. 7: std of each block's response, in layer order and sorted.

    Each network has its own colour and marker (plain dashed with large hollow
    markers drawn on top, residual solid with small filled ones), so curves
    that coincide stay distinguishable; one legend, right of the axes. Returns
    the files and, per network label, its ``mean`` responses and ``style``
    (colour, linestyle, marker).
    """
    plt = _pyplot()
    palette = plt.get_cmap("tab10").colors
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), layout="constrained")
    plotted = {}
    for i, row in enumerate(r for r in rows if any(x.responses for x in r.runs)):
        stds = [r.responses for r in row.shown_runs if r.responses]
        mean = [statistics.fmean(v) for v in zip(*stds, strict=False)]
        colour = palette[i % len(palette)]
        every = max(1, len(mean) // 30)  # at most ~30 markers a curve, staggered
        # Plain nets: hollow markers, larger and on top, so a residual net's filled
        # marker shows inside them where the curves coincide.
        style = dict(color=colour, linestyle="--" if row.plain else "-",
                     marker=MARKERS[i % len(MARKERS)], markevery=(i % every, every),
                     markersize=7 if row.plain else 4, zorder=3 if row.plain else 2,
                     markerfacecolor="none" if row.plain else colour)
        plotted[row.label] = {"mean": mean, "style": style}
        ax1.plot(range(1, len(mean) + 1), mean, label=row.label, **style)
        ax2.plot(range(1, len(mean) + 1), sorted(mean, reverse=True), **style)
    ax1.set_xlabel("block index (original order)")
    ax2.set_xlabel("block index (sorted by magnitude)")
    for ax in (ax1, ax2):
        ax.set_ylabel("std of response")
        ax.grid(alpha=0.3)
    _legend_outside(ax1, below=False)
    fig.suptitle("Std of each block's branch response (after BN, before addition)")
    return _save(plt, fig, out_base), plotted


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


def _save(plt, fig, out_base: str) -> list[str]:
    paths = [f"{out_base}.png", f"{out_base}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def _per_network(rows: list[Row], out_base: str, draw, ylabel: str,
                 title: str) -> tuple[list[str], dict[str, dict]]:
    """One panel per network, up to four a row: ``draw(ax, row)`` plots the network and
    returns (the series plotted, a suffix for the panel's title). One legend for all
    panels, below them. Returns the files and the series per network label."""
    plt = _pyplot()
    n = len(rows)
    cols = min(4, max(1, n))
    lines = max(1, -(-n // cols))
    fig, axes = plt.subplots(lines, cols, figsize=(3.6 * cols, 3.0 * lines + 0.6),
                             squeeze=False, sharex=True, layout="constrained")
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    plotted = {}
    for ax, row in zip(axes, rows, strict=False):
        plotted[row.label], suffix = draw(ax, row)
        ax.set_title(f"{row.label}{suffix}", fontsize=9)
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
    if rows:
        axes[0].set_ylabel(ylabel)
        handles, labels = max((ax.get_legend_handles_labels() for ax in axes[:n]),
                              key=lambda hl: len(hl[0]))
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=len(handles),
                       fontsize=7, frameon=False)
    fig.suptitle(title)
    return _save(plt, fig, out_base), plotted


def plot_step_losses(rows: list[Row], out_base: str) -> tuple[list[str], dict[str, dict]]:
    """Every step's training loss per network (thin), the log interval's mean (bold) and
    the range of its steps (shaded); log scale. Panel titles give the median over
    intervals of std / mean of the steps' losses (the relative gradient noise).

    Returns the files and, per network label, the series plotted (``step_losses``).
    """
    def draw(ax, row):
        d = step_losses(row.shown_runs)
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
        return d, (f", median std/mean {statistics.median(relative):.2f}" if relative else "")

    return _per_network(rows, out_base, draw, "training loss",
                        "Training loss of every step (spread: gradient noise of the batch size)")


def plot_fit_gap(rows: list[Row], out_base: str) -> tuple[list[str], dict[str, dict]]:
    """Training vs held-out error per network, the gap between them shaded; a network
    evaluated fewer than ``MIN_EVALUATIONS`` times gets a note instead of a curve.

    Returns the files and, per network label, the series plotted (``fit_gap``).
    """
    def draw(ax, row):
        d = fit_gap(row.shown_runs)
        if len(d["steps"]) < MIN_EVALUATIONS:
            ax.text(0.5, 0.5, "fewer than two evaluations", transform=ax.transAxes,
                    ha="center", va="center", fontsize=9)
            return d, ""
        ax.plot(d["steps"], d["train"], "--", color="tab:blue", label="training")
        ax.plot(d["steps"], d["heldout"], "-", color="tab:red", linewidth=1.8,
                label=d["heldout_name"])
        ax.fill_between(d["steps"], d["train"], d["heldout"], color="tab:red", alpha=0.2,
                        label=f"gap ({d['heldout_name']} - training)")
        return d, f", final gap {d['heldout'][-1] - d['train'][-1]:+.1f} pp"

    return _per_network(rows, out_base, draw, "error (%)",
                        "Training vs held-out error (a wide gap: over-fitting; both high: "
                        "under-fitting)")
