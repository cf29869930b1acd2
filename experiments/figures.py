"""Figures of a study: the paper's error curves and layer responses, and two diagnostics.

``plot_curves`` (Fig. 1/4/6: plain nets left, residual right, training error
dashed, test error bold, one colour per depth), ``plot_responses`` (Fig. 7:
std of each block's response), and one panel per network for
``plot_step_losses`` (every step's training loss and its spread per log
interval) and ``plot_fit_gap`` (training vs held-out error, the gap shaded).
Each writes ``OUT_BASE.png`` and ``OUT_BASE.svg`` and returns their paths.
"""

from __future__ import annotations

import statistics

from experiments.study import Row, Run


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
