"""A search's report: its trials ranked by validation error, the chosen one, Optuna's plots.

    python -m experiments.search_report STUDY [--storage URL] [--study-name NAME] [--top K]

Reads the study (its Optuna storage, ``STUDY/search.json``) and its trials'
run directories (``summary.json``), and writes into STUDY:

- ``results.md`` and ``results.csv``: one row per trial (a retried trial
  once), named by its run directory: its values, final and best validation
  error, status, steps trained. Finished trials first, by final validation
  error (the objective), then pruned ones (those that went furthest first),
  diverged, failed and unfinished ones. Then the chosen trial (the lowest
  final validation error), its config, the command that retrains it with
  five seeds (``experiments.sweep ... --sweep seed=0,1,2,3,4``) and the one
  that ensembles the top K trials (``experiments.ensemble``); only then its
  test error, which played no part in the choice; and the steps pruning saved.
- ``history``, ``importance`` (fANOVA; two finished trials or more),
  ``slice`` and ``intermediate`` (each trial's validation error at each
  evaluation: where pruning stopped trials) as ``.png`` and ``.svg``:
  Optuna's matplotlib plots.

Light: no JAX (Optuna, matplotlib, scikit-learn for the importances).
"""

from __future__ import annotations

import contextlib
import csv
import os
import shlex
import sys
import threading
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments import search_study
from experiments.search_space import override_text
from experiments.study_plan import REPO
from training import command_line
from training.run_dir import read_json, read_summary

ORDER = {"finished": 0, "pruned": 1, "diverged": 2, "failed": 3}
TOP_K = 3
SEEDS = "0,1,2,3,4"
PLOTS = ("history", "importance", "slice", "intermediate")


@dataclass
class Row:
    """One logical trial: its latest attempt and its run directory's summary."""

    trial: FrozenTrial
    number: int  # the logical trial's (a retry's origin)
    name: str
    summary: dict

    @property
    def status(self) -> str:
        if self.trial.state == TrialState.RUNNING:
            return "running"
        if self.trial.state == TrialState.WAITING:
            return "waiting"
        return self.trial.user_attrs.get("status") or self.summary.get("status") or \
            self.trial.state.name.lower()

    @property
    def steps(self) -> int | None:
        steps = self.summary.get("steps", self.summary.get("last_logged_step"))
        return steps if isinstance(steps, int) else None

    def sort_key(self) -> tuple:
        last = max(self.trial.intermediate_values, default=0)
        value = self.trial.value if self.trial.value is not None else \
            self.trial.intermediate_values.get(last, 1.0)
        return (ORDER.get(self.status, 4), -(self.steps or 0) if self.status != "finished"
                else 0, value, self.number)


def load_rows(study_dir: str, study: optuna.Study) -> list[Row]:
    """The study's logical trials, ranked."""
    rows = []
    for number, trial in search_study.latest_attempts(study.get_trials()).items():
        name = trial.user_attrs.get("run", "")
        summary = read_summary(os.path.join(study_dir, name)) if name else {}
        rows.append(Row(trial, number, name, summary))
    return sorted(rows, key=Row.sort_key)


def _pct(v) -> str:
    return "—" if not isinstance(v, int | float) else f"{100 * v:.2f}"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(rows: list[Row], keys: list[str], total: int | None) -> list[list[str]]:
    """The ranking's cells: rank, run, values, final and best val error %, status, steps."""
    out = []
    for rank, r in enumerate(rows, 1):
        steps = "—" if r.steps is None else f"{r.steps}" + (f"/{total}" if total else "")
        out.append([str(rank), r.name or f"(trial {r.number})",
                    *(_value(r.trial.params.get(k, "")) for k in keys),
                    _pct(r.summary.get("final_val_error")), _pct(r.summary.get("best_val_error")),
                    r.status, steps])
    return out


def _markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def _shown_path(path: str) -> str:
    """A path as a command shows it: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def commands(study_dir: str, record: dict, best: Row, top: list[Row]) -> dict[str, str]:
    """The commands that retrain the chosen trial with seeds and ensemble the top trials."""
    config = record["config"]
    path, sep, arg = config.partition(":")
    if os.path.dirname(os.path.abspath(path)).startswith(REPO):
        config = os.path.relpath(path, REPO) + sep + arg
    settings = {**record.get("overrides", {}),
                **{k: override_text(v) for k, v in best.trial.params.items()}}
    retrain = ["python", "-m", "experiments.sweep", config, "--workdir",
               _shown_path(study_dir) + "-best",
               *(f"--config.{k}={v}" for k, v in settings.items()), "--sweep", f"seed={SEEDS}"]
    ensemble = ["python", "-m", "experiments.ensemble",
                *(_shown_path(os.path.join(study_dir, r.name)) for r in top)]
    return {"retrain": shlex.join(retrain), "ensemble": shlex.join(ensemble)}


def _save(ax, base: str) -> tuple[str, str]:
    axes = ax if hasattr(ax, "figure") else ax.flatten()[0]
    figure = axes.figure
    figure.tight_layout()
    paths = (base + ".png", base + ".svg")
    for p in paths:  # whole files only: workers that end together both write the report
        tmp = f"{p}.tmp-{os.getpid()}-{threading.get_ident()}"
        figure.savefig(tmp, dpi=120, format=p.rsplit(".", 1)[1])
        os.replace(tmp, p)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.close(figure)
    return paths


@contextlib.contextmanager
def _whole_file(path: str, **kwargs):
    """A text file written to a temporary name and renamed when complete."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "w", **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _labelled(ax, ylabel: str, log: bool = False):
    """The axis with its label; ``log``: a log y-axis (a diverging trial's error near 1
    would otherwise flatten every other curve), when every plotted value is positive."""
    ax.set_ylabel(ylabel)
    if log and all(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        ax.set_yscale("log")
    return ax


def plots(study: optuna.Study, study_dir: str) -> tuple[list[str], list[str]]:
    """Optuna's plots of the study, PNG and SVG; (files written, notes on those not drawn)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from optuna.importance import FanovaImportanceEvaluator  # noqa: PLC0415
    from optuna.visualization import matplotlib as vm  # noqa: PLC0415

    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    makers = {
        "history": lambda: vm.plot_optimization_history(study, target_name="validation error"),
        "importance": lambda: vm.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0)),
        "slice": lambda: vm.plot_slice(study, target_name="validation error"),
        "intermediate": lambda: _labelled(vm.plot_intermediate_values(study),
                                          "validation error at each evaluation (log)", log=True),
    }
    files, notes = [], []
    for name, make in makers.items():
        if name == "importance" and finished < 2:
            notes.append("importance.png: needs two finished trials or more")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                files += _save(make(), os.path.join(study_dir, name))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            notes.append(f"{name}.png not drawn: {e}")
    return files, notes


def write_report(study_dir: str, storage: str | None = None, study_name: str | None = None,
                 top_k: int = TOP_K) -> dict:
    """Writes results.md/.csv and the plots into ``study_dir``; returns what it wrote."""
    study_dir = os.path.realpath(study_dir)
    try:
        record = read_json(os.path.join(study_dir, "search.json"))
    except (OSError, ValueError):
        raise ValueError(f"{study_dir} holds no search (no readable search.json)") from None
    url = search_study.storage_url(study_dir, storage)
    try:
        study = optuna.load_study(study_name=study_name or record["study_name"],
                                  storage=optuna.storages.RDBStorage(url))
    except Exception as e:  # noqa: BLE001 - a missing study, an unreachable database
        raise ValueError(f"cannot read the study from {search_study.describe_url(url)}: "
                         f"{e}") from None
    rows = load_rows(study_dir, study)
    keys = list(record["space"])
    total = record.get("num_steps")
    header = ["rank", "run", *keys, "final val error %", "best val error %", "status", "steps"]
    cells = table(rows, keys, total)
    written = {"table": _markdown(header, cells), "rows": rows, "lines": []}
    finished = [r for r in rows if r.status == "finished"]
    pruned = [r for r in rows if r.status == "pruned" and r.steps is not None]
    lines = written["lines"]
    if pruned and total:
        saved = sum(total - r.steps for r in pruned)
        lines.append(f"Pruning stopped {len(pruned)} of {len(rows)} trials early and saved "
                     f"{saved:,} of {len(rows) * total:,} training steps "
                     f"({100 * saved / (len(rows) * total):.0f}%).")
    if finished:
        best = finished[0]
        top = finished[:top_k]
        cmd = commands(study_dir, record, best, top)
        written.update(best=best, commands=cmd)
        lines += [f"Chosen on validation: **{best.name}**, final validation error "
                  f"{_pct(best.summary.get('final_val_error'))}% (its config: "
                  f"`{_shown_path(os.path.join(study_dir, best.name, 'config.json'))}`).",
                  "", "Retrain it with five seeds:", "", "```bash", cmd["retrain"], "```", "",
                  f"Ensemble the top {len(top)} trials:", "", "```bash", cmd["ensemble"], "```",
                  "", f"Only now, its test error: {_pct(best.summary.get('final_test_error'))}% "
                  "(final; not used to choose)."]
    else:
        lines.append("No trial has finished yet: nothing to choose.")
    files, notes = plots(study, study_dir)
    csv_path, md_path = os.path.join(study_dir, "results.csv"), \
        os.path.join(study_dir, "results.md")
    with _whole_file(csv_path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "run", "trial", *keys, "final val error", "best val error",
                         "status", "steps", "total steps", "detail"])
        for rank, r in enumerate(rows, 1):
            writer.writerow([rank, r.name, r.number, *(r.trial.params.get(k, "") for k in keys),
                             r.summary.get("final_val_error", ""),
                             r.summary.get("best_val_error", ""), r.status,
                             "" if r.steps is None else r.steps, total or "",
                             r.trial.user_attrs.get("detail", "")])
    parts = [f"# Search: {study_dir}", "",
             f"{len(rows)} trials, {record['sampler']} sampler, {record['pruner']} pruner, "
             f"space: {', '.join(f'`{k}={v}`' for k, v in record['space'].items())}; "
             f"objective: {record['objective']}.", "", written["table"], "", *lines, ""]
    parts += [f"![{name}]({name}.png)\n" for name in PLOTS
              if os.path.join(study_dir, f"{name}.png") in files]
    parts += [f"**Note:** {n}\n" for n in notes]
    with _whole_file(md_path) as f:
        f.write("\n".join(parts))
    written["files"] = [md_path, csv_path, *files]
    written["notes"] = notes
    return written


def render_text(written: dict) -> str:
    out = [written["table"], "", *written["lines"], ""]
    out += [f"note: {n}" for n in written["notes"]]
    out += [f"wrote {p}" for p in written["files"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = command_line.ArgumentParser(prog="python -m experiments.search_report",
                                    description=__doc__.splitlines()[0])
    p.add_argument("study", help="the search's study directory")
    p.add_argument("--storage", default=None, help="the RDB URL the search used, if any")
    p.add_argument("--study-name", default=None)
    p.add_argument("--top", type=int, default=TOP_K, help="trials in the ensemble command")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        written = write_report(args.study, args.storage, args.study_name, args.top)
    except ValueError as e:
        return command_line.bad_input(e)
    print(render_text(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
