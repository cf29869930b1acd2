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
import os
import sys

from experiments.figures import plot_curves, plot_fit_gap, plot_responses, plot_step_losses
from experiments.study import Row, build_rows, load_runs
from experiments.verdicts import verdicts
from training import command_line


def _fmt(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f} ± {std:.2f}" if std is not None else f"{v:.2f}"


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
        return command_line.bad_input(usage)
    try:
        written = write_report(argv[0])
    except ValueError as e:
        return command_line.bad_input(e)
    print(render_text(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
