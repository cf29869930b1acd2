"""Hyperparameter search: Optuna samplers and pruners over ordinary runs, resumable and shared.

    python -m experiments.search configs/FILE.py[:ARG] --workdir STUDY --trials N
        [--space KEY=DIST ...] [--sampler tpe|random|qmc|grid] [--pruner none|median|asha]
        [--prune-startup K] [--workers N] [--seed S] [--storage URL] [--study-name NAME]
        [--heartbeat SECONDS] [--launcher slurm [--slurm KEY=VALUE ...]]
        [--config.KEY=VALUE ...]

Each trial is an ordinary run directory, ``STUDY/trial=0003,lr=0.0347``,
trained by ``train.py`` (``search_trial``); the objective is the validation
error (``val_examples`` > 0), reported to the pruner at each evaluation, and
the trial's value is its final validation error. The space is ``--space``
(``uniform(a,b)``, ``loguniform(a,b)``, ``int(a,b)``, ``choice(v1,v2,...)``;
``search_space``), else the config file's ``search_space(arg)``.

The study lives in a storage (``search_study``): by default the embedded
file ``STUDY/study.db``, or ``--storage URL`` (PostgreSQL...) for workers on
several machines (the study directory, which holds the runs, must then be
shared too). Running the same command again continues the study up to
``--trials`` trials in all; ``--workers N`` trains N trials at once, and
other commands on the same storage join as more workers (``--launcher slurm``:
``--workers`` SLURM jobs of one worker each, ``search_slurm``). A killed worker's
trial is failed once its heartbeat is ``2 x --heartbeat + 1`` seconds old, then
queued again and resumed from its run's checkpoint by whichever worker is
free; a worker whose budget is spent waits for the running trials, so the
command returns when the study is complete. Then ``search_report`` writes
``results.md/.csv`` and the plots into STUDY. Bad input is one ``error:``
line, exit 2, before anything is created; exit 1 when a trial failed or the
search was stopped (SIGINT/SIGTERM: the trainers checkpoint, their trials
are queued again for the rerun). A rerun with the same setup skips the
validation of the space (done when the study was made).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import filelock
import optuna

from experiments import search_space, search_study
from experiments.search_trial import Setup, TrialRun
from experiments.study_plan import REPO, absolute_config, check_runs
from experiments.sweep import Launcher, trainer_env
from experiments.sweep_console import say
from training import command_line
from training.run_dir import read_json, read_summary, write_json_atomic

SEARCH_FILE = "search.json"
ASK_LOCK = ".search.lock"
# What makes a study: a rerun must give the same (--trials, --workers, --seed and
# --heartbeat may change).
IDENTITY = ("config", "overrides", "space", "sampler", "pruner", "prune_startup", "storage",
            "study_name", "objective")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = command_line.ArgumentParser(prog="python -m experiments.search",
                                    description=__doc__.splitlines()[0])
    p.add_argument("config", help="configs/FILE.py[:ARG]")
    p.add_argument("--workdir", required=True, help="study directory")
    p.add_argument("--trials", type=int, default=None,
                   help="trials in all, counting those already done (grid: the grid's size)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=DIST",
                   help="a searched key: uniform(a,b), loguniform(a,b), int(a,b), "
                        "choice(v1,v2,...) (repeat; default: the file's search_space(arg))")
    p.add_argument("--sampler", default="tpe", choices=search_study.SAMPLERS)
    p.add_argument("--pruner", default="none", choices=search_study.PRUNERS)
    p.add_argument("--prune-startup", type=int, default=None, metavar="K",
                   help="median: finished trials before any pruning (default 5); "
                        "asha: trials at a rung before it prunes (default 0)")
    p.add_argument("--workers", type=int, default=1, help="trials trained at once here")
    p.add_argument("--seed", type=int, default=0,
                   help="the sampler's seed (worker k of the study draws with seed + k)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="an RDB URL shared by workers on several machines "
                        "(default: the embedded STUDY/study.db)")
    p.add_argument("--study-name", default=None,
                   help="the study's name in the storage (default: the study directory's)")
    p.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                   help="a lost worker's trial is retried after 2x this (+1) without a beat")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: the workers here (default); slurm: --workers SLURM jobs, one "
                        "worker each (experiments/search_slurm.py)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a SLURM job option (repeat), as for experiments.sweep")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    p.add_argument("--train-script", default=os.path.join(REPO, "train.py"),
                   help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    args.overrides = command_line.parse_overrides(extra)
    for flag, value, least in (("--trials", args.trials, 1), ("--workers", args.workers, 1),
                               ("--heartbeat", args.heartbeat, 1),
                               ("--prune-startup", args.prune_startup, 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if args.slurm and args.launcher != "slurm":
        raise ValueError("--slurm goes with --launcher slurm")
    return args


@dataclass
class Plan:
    """A validated search: what its trials share, its storage, and its total."""

    setup: Setup
    args: argparse.Namespace
    url: str
    study_name: str
    trials: int
    record: dict = field(default_factory=dict)  # search.json


def plan(args: argparse.Namespace) -> Plan:
    """Every check that needs no storage and no JAX; one-line ValueError for bad input."""
    base = command_line.load_config(args.config, args.overrides)
    if not base.val_examples > 0:
        raise ValueError("a search chooses on a validation split, never on the test set: set "
                         "val_examples > 0 (e.g. --config.val_examples=300)")
    texts = (search_space.parse_space_args(args.space) if args.space
             else search_space.file_space(args.config))
    space = search_space.parse_space(texts, base)
    for param in space:
        if param.key in args.overrides:
            raise ValueError(f"{param.key} is both searched (--space) and set "
                             f"(--config.{param.key}): drop one")
    if args.sampler == "grid":
        size = search_study.grid_size(space)
        if args.trials is not None and args.trials > size:
            raise ValueError(f"--trials {args.trials} is more than the grid's {size} points")
        trials = args.trials or size
    elif args.trials is None:
        raise ValueError("--trials N is needed (the study's total, counting trials done)")
    else:
        trials = args.trials
    if args.storage is not None:
        search_study.check_url(args.storage)
    study_dir = os.path.realpath(args.workdir)
    url = search_study.storage_url(study_dir, args.storage)
    setup = Setup(study_dir, absolute_config(args.config), dict(args.overrides), space,
                  args.pruner, args.python, os.path.abspath(args.train_script), args.heartbeat)
    record = {"config": setup.config, "overrides": setup.overrides,
              "space": {p.key: p.text for p in space}, "sampler": args.sampler,
              "pruner": args.pruner, "prune_startup": args.prune_startup,
              "storage": "embedded" if args.storage is None else
              search_study.describe_url(args.storage),
              "study_name": args.study_name or os.path.basename(study_dir),
              "objective": "final validation error (val_error at the last step)",
              "eval_every_steps": base.eval_every_steps, "num_steps": base.num_steps}
    _check_same_search(study_dir, record)
    return Plan(setup, args, url, record["study_name"], trials, record)


def _check_same_search(study_dir: str, record: dict) -> None:
    """A rerun continues the study only with the same setup."""
    path = os.path.join(study_dir, SEARCH_FILE)
    if not os.path.exists(path):
        return
    try:
        old = read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); use another --workdir") from None
    diffs = [f"{k}: {old.get(k)!r} -> {record[k]!r}" for k in IDENTITY
             if old.get(k) != record[k]]
    if diffs:
        raise ValueError(f"{study_dir} holds another search ({'; '.join(diffs)}); rerun it "
                         "as it was, or use another --workdir")


def validate_trials(p: Plan) -> None:
    """Every bound and choice of the space, in a trainer-side process (JAX: the networks,
    the optimizer, the data keys), before anything is created."""
    settings = [dict(p.setup.overrides)]
    for param in p.setup.space:
        for value in param.corners():
            settings.append({**p.setup.overrides,
                             param.key: search_space.override_text(value)})
    check_runs(p.setup.python, p.setup.config, settings)


class Search:
    """The workers of this process: threads, each asking trials and training them."""

    def __init__(self, p: Plan, storage):
        self.plan, self.storage = p, storage
        self.children: set = set()
        self.stopping = False
        self.results: dict[str, list[str]] = {}
        self.devices = Launcher._devices()  # noqa: SLF001 - the sweep's GPU list
        self._lock = threading.Lock()

    def stop(self, signum, _frame) -> None:
        self.stopping = True
        for child in list(self.children):
            child.send_signal(signum)

    def run(self) -> None:
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            workers = self.plan.args.workers
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for future in concurrent.futures.as_completed(
                        [pool.submit(self.worker, slot) for slot in range(workers)]):
                    future.result()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            for child in list(self.children):
                child.terminate()

    def _study(self, seed_offset: int | None) -> optuna.Study:
        args = self.plan.args
        offset = 0 if args.sampler == "grid" else seed_offset  # see make_sampler
        seed = None if offset is None or args.seed is None else args.seed + offset
        return optuna.load_study(
            study_name=self.plan.study_name, storage=self.storage,
            sampler=search_study.make_sampler(args.sampler, seed, self.plan.setup.space),
            pruner=search_study.make_pruner(args.pruner, args.prune_startup,
                                            self.plan.record["eval_every_steps"]))

    def worker(self, slot: int) -> None:
        """Asks trials until the study has its total, then waits for the running ones."""
        lock = filelock.FileLock(os.path.join(self.plan.setup.study_dir, ASK_LOCK))
        with lock:
            study = self._study(search_study.claim_worker(self._study(None)))
        env = trainer_env(self.devices, self.plan.args.workers, slot)
        dists = self.plan.setup.distributions()
        while not self.stopping:
            with lock:
                optuna.storages.fail_stale_trials(study)  # lost workers' trials: queued again
                trials = study.get_trials(deepcopy=False)
                waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
                running = any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
                trial = None
                if waiting or search_study.logical_count(trials) < self.plan.trials:
                    trial = study.ask(fixed_distributions=dists)
            if trial is None:
                if not running:
                    return
                time.sleep(min(self.plan.args.heartbeat, 5))
                continue
            self._train(study, trial, env)

    def _train(self, study: optuna.Study, trial: optuna.Trial, env: dict) -> None:
        t0 = time.time()
        run = TrialRun(self.plan.setup, study, self.storage, trial, env, self.children)
        values = ", ".join(f"{k.split('.')[-1]}={search_space.short_text(v)}"
                           for k, v in trial.params.items())
        again = f", retrying trial {run.number}" if run.number != trial.number else ""
        say(f"[start] {run.name} ({values}{again}; log: {run.workdir}/train.log)")
        status, detail = run.run()
        summary = read_summary(run.workdir)
        what = {"finished": f"validation error {_pct(summary.get('final_val_error'))}",
                "pruned": detail, "diverged": detail}.get(status, detail)
        say(f"[{status}] {run.name} ({time.time() - t0:.0f} s){': ' + what if what else ''}")
        with self._lock:
            self.results.setdefault(status, []).append(run.name)


def _pct(v) -> str:
    return "n/a" if not isinstance(v, int | float) else f"{100 * v:.2f}%"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cluster = None
    try:
        args = parse_args(argv)
        p = plan(args)
        if args.launcher == "slurm":
            from experiments import search_slurm  # noqa: PLC0415 - submitit for SLURM only

            cluster = search_slurm.check(args, p.setup.study_dir)
        creating = not os.path.isdir(p.setup.study_dir)
        if not os.path.exists(os.path.join(p.setup.study_dir, SEARCH_FILE)):
            validate_trials(p)  # a rerun continues a study checked when it was made
        storage = None
        if args.storage is not None:  # reached before the study directory is made
            storage = search_study.open_storage(p.url, args.heartbeat)
    except ValueError as e:
        return command_line.bad_input(e)
    try:
        os.makedirs(p.setup.study_dir, exist_ok=True)
        if storage is None:
            storage = search_study.open_storage(p.url, args.heartbeat)
        optuna.create_study(storage=storage, study_name=p.study_name, direction="minimize",
                            load_if_exists=True)
        write_json_atomic(os.path.join(p.setup.study_dir, SEARCH_FILE), p.record)
    except (OSError, ValueError) as e:
        if creating:
            import shutil  # noqa: PLC0415

            shutil.rmtree(p.setup.study_dir, ignore_errors=True)
        return command_line.bad_input(f"cannot create the study in {p.setup.study_dir}: {e}")
    print(f"search of {p.trials} trials ({args.sampler} sampler, {args.pruner} pruner) in "
          f"{p.setup.study_dir}; storage {p.record['storage']}", flush=True)
    if cluster is not None:
        try:
            return search_slurm.submit(args, argv, p.setup.study_dir, cluster)
        except ValueError as e:
            return command_line.bad_input(e)
    search = Search(p, storage)
    search.run()
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(search.results.items()))
    print(f"search done: {counts or 'no trial trained here'}", flush=True)
    if not args.no_report and not search.stopping:
        from experiments import search_report  # noqa: PLC0415

        try:
            written = search_report.write_report(p.setup.study_dir, storage=p.url,
                                                 study_name=p.study_name)
            print(search_report.render_text(written))
        except ValueError as e:
            print(f"report: {e}", file=sys.stderr)
    return 1 if search.stopping or search.results.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
