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
A study of connectivity patterns (dense, fractal, ... nets beside plain and
residual ones) also gets ``complexity.png/.svg``: accuracy against multiply-adds,
parameters as marker area, for its nets and for the ImageNet zoo
(``experiments.complexity``), and a Cost section in ``results.md``.

With several seeds the best test error is the mean of each seed's best (the
header says so) and the lowest of them has a column of its own; with one
seed per network the table is the single-run one. ``results.csv`` holds
plain numbers (empty where there is none; std in columns of their own). A
study evaluated fewer than twice says so and writes no ``fit_gap``. The
"wrote" lines list every file written.
"""

from __future__ import annotations

import csv
import functools
import os
import sys

from experiments import complexity
from experiments.figures import (
    MIN_EVALUATIONS,
    evaluations,
    plot_curves,
    plot_fit_gap,
    plot_responses,
    plot_step_losses,
)
from experiments.study import Row, build_rows, load_runs
from experiments.verdicts import verdicts
from training import command_line


def _fmt(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f} ± {std:.2f}" if std is not None else f"{v:.2f}"


COLUMNS = ["network", "depth", "params", "runs", "final train error %", "final test error %",
           "best test error %", "paper test error %", "ours - paper", "status"]
# With several seeds, the best-test-error column is the mean of each seed's best (so
# it sits beside the other means), and the lowest of them gets a column of its own.
BEST_MEAN = "best test error % (mean of each seed's best)"
BEST_MIN = "best test error % (min over seeds)"
# results.csv: numbers only (empty where there is none), std in columns of their own.
CSV_COLUMNS = ["network", "depth", "params", "runs", "final train error % (mean)",
               "final train error % (std)", "final test error % (mean)",
               "final test error % (std)", BEST_MEAN, "best test error % (std of seeds' best)",
               BEST_MIN, "paper test error %", "ours - paper", "status"]
SHORT_STUDY = ("Fewer than two evaluations per network (at most {n}): the test error is "
               "drawn as points, not curves, and fit_gap.png is not written; train longer "
               "or evaluate more often (eval_every_steps).")


def _several_seeds(rows: list[Row]) -> bool:
    return any(len(r.runs) > 1 for r in rows)


def columns(rows: list[Row]) -> list[str]:
    """The markdown table's header: ``COLUMNS``, with the best test error labelled (mean,
    and min in a column of its own) where a network has several seeds."""
    if not _several_seeds(rows):
        return list(COLUMNS)
    at = COLUMNS.index("best test error %")
    return [*COLUMNS[:at], BEST_MEAN, BEST_MIN, *COLUMNS[at + 1:]]


def _diff(r: Row) -> float | None:
    if r.test_error is None or r.paper_error is None:
        return None
    return r.test_error - r.paper_error


def table_rows(rows: list[Row]) -> list[list[str]]:
    """The markdown table's cells, in the order of ``columns(rows)``."""
    several = _several_seeds(rows)
    out = []
    for r in rows:
        diff = _diff(r)
        best = [_fmt(r.best_test_error, r.best_test_error_std)]
        if several:
            best.append(_fmt(r.best_test_error_min))
        out.append([r.label, str(r.depth), f"{r.params:,}" if r.params else "—",
                    str(len(r.runs)), _fmt(r.train_error, r.train_error_std),
                    _fmt(r.test_error, r.test_error_std), *best,
                    _fmt(r.paper_error), f"{diff:+.2f}" if diff is not None else "—",
                    r.status])
    return out


def markdown_table(rows: list[Row]) -> str:
    header = columns(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines)


def _num(v: float | int | None) -> str:
    return "" if v is None else str(v) if isinstance(v, int) else f"{v:.6g}"


def csv_rows(rows: list[Row]) -> list[list[str]]:
    """The cells of results.csv, in the order of ``CSV_COLUMNS``: plain numbers, empty
    where there is none (no thousands separators, no dashes, no ``±``)."""
    return [[r.label, _num(r.depth), _num(r.params), _num(len(r.runs)),
             _num(r.train_error), _num(r.train_error_std), _num(r.test_error),
             _num(r.test_error_std), _num(r.best_test_error), _num(r.best_test_error_std),
             _num(r.best_test_error_min), _num(r.paper_error), _num(_diff(r)), r.status]
            for r in rows]


# Every file the report writes, in the order of its "wrote" lines.
FILE_KEYS = ("markdown", "csv", "figure_png", "figure_svg", "responses_png", "responses_svg",
             "loss_png", "loss_svg", "gap_png", "gap_svg", "complexity_png", "complexity_svg")


def _zoo_study(rows: list[Row]) -> bool:
    """A study of connectivity patterns beyond plain and residual (``configs/connectivity.py``)."""
    return any(r.pattern not in ("", "plain", "residual") for r in rows)


def write_report(study_dir: str | os.PathLike) -> dict:
    """Writes the figures, tables and verdicts into ``study_dir``; returns what it wrote.

    ``files`` lists every file written, in order; ``notices`` what the reader
    should know before reading the figures (a study too short for test curves).
    """
    study_dir = os.fspath(study_dir)
    rows = build_rows(load_runs(study_dir))
    found = verdicts(rows)
    evals = evaluations(rows)
    short = evals < MIN_EVALUATIONS
    notices = [SHORT_STUDY.format(n=evals)] if short else []
    written = {"verdicts": found, "table": markdown_table(rows), "notices": notices}
    base = functools.partial(os.path.join, study_dir)
    (written["figure_png"], written["figure_svg"]), _ = plot_curves(rows, base("curves"))
    if any(r.responses for row in rows for r in row.runs):
        (written["responses_png"], written["responses_svg"]), _ = plot_responses(
            rows, base("layer_responses"))
    (written["loss_png"], written["loss_svg"]), _ = plot_step_losses(rows, base("train_loss"))
    if not short:
        (written["gap_png"], written["gap_svg"]), _ = plot_fit_gap(rows, base("fit_gap"))
    cost = []
    if _zoo_study(rows):  # the cost side: accuracy against multiply-adds and parameters
        points = complexity.study_points(rows)
        (written["complexity_png"], written["complexity_svg"]) = complexity.plot_complexity(
            points, complexity.imagenet_points(), base("complexity"), rows[0].dataset)
        cost = complexity.describe(points)
    csv_path = base("results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_rows(rows))
    md_path = base("results.md")
    parts = [f"# Results: {study_dir}", "", written["table"], "", "## Verdicts", ""]
    parts += [f"- {v}" for v in found] or ["- (not enough finished runs to compare)"]
    parts += [""] + [f"**Note:** {n}" for n in notices] + ([""] if notices else [])
    parts += ["![training and test error](curves.png)", ""]
    if "responses_png" in written:
        parts += ["![std of layer responses](layer_responses.png)", ""]
    parts += ["## Diagnostics", "",
              "Every step's training loss (its spread is the gradient noise of the batch size):",
              "", "![training loss of every step](train_loss.png)", ""]
    if "gap_png" in written:
        parts += ["Training vs held-out error, the gap shaded (over- and under-fitting):", "",
                  "![training vs held-out error](fit_gap.png)", ""]
    if cost:
        parts += ["## Cost", "", "Parameters and multiply-adds per image (counted from each "
                  "network at the study's input size) and final test accuracy:", ""]
        parts += [f"- {line}" for line in cost]
        parts += ["", "![accuracy against multiply-adds](complexity.png)", ""]
    with open(md_path, "w") as f:
        f.write("\n".join(parts))
    written["markdown"], written["csv"] = md_path, csv_path
    written["files"] = [written[k] for k in FILE_KEYS if k in written]
    return written


def render_text(written: dict) -> str:
    lines = [written["table"], "", *written["verdicts"], ""]
    lines += [f"note: {n}" for n in written.get("notices", [])]
    lines += [f"wrote {path}" for path in written["files"]]
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
