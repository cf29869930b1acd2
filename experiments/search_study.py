"""The Optuna side of a search: storage, study, sampler, pruner, and the trials' accounting.

Storage: an embedded SQLite file in the study directory (``STUDY/study.db``,
Optuna's ``RDBStorage``), or the database that ``--storage URL`` names
(PostgreSQL, MySQL: workers on several machines share one study). Both keep
heartbeats: a trial whose worker stops beating (killed, its machine lost)
for twice the interval is failed and queued again with its parameters
(``RetryHeartbeatStaleTrialCallback``), so a worker takes it up and its run
directory resumes. Trials are counted as *logical* trials: a retry counts as
the trial it retries (``origin``), so ``--trials N`` is N runs, never more,
whatever was killed. Light: no JAX.
"""

from __future__ import annotations

import os
import warnings

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from experiments.search_space import Param
from training import exits

EMBEDDED = "study.db"
SAMPLERS = ("tpe", "random", "qmc", "grid")
PRUNERS = ("none", "median", "asha")
MAX_RETRY = 3  # a trial whose worker was lost this many times is left failed
ASHA_REDUCTION = 3  # ASHA keeps the best third of the trials at each rung

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints its own lines
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# The trials are asked and told by hand (a trainer process each), with heartbeats recorded
# by the search itself (``search_trial``), not by Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def storage_url(study_dir: str, url: str | None) -> str:
    """``--storage URL``, or the study directory's embedded SQLite file."""
    return url or f"sqlite:///{os.path.join(os.path.abspath(study_dir), EMBEDDED)}"


def describe_url(url: str) -> str:
    """The URL with its password hidden, for messages and search.json."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "(unparsable URL)"


def check_url(url: str) -> None:
    """What can be checked without connecting: the URL parses, its driver is installed,
    an SQLite file's directory exists. One-line ValueError otherwise."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
        dialect = parsed.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ValueError(f"--storage {describe_url(url)}: not a database URL "
                         f"({exits.first_line(e)}); e.g. postgresql://USER@HOST/DB") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise ValueError(f"--storage {describe_url(url)}: its driver is not installed "
                         f"({exits.first_line(e)}); for PostgreSQL: pip install "
                         "psycopg2-binary") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = os.path.dirname(os.path.abspath(parsed.database))
        if not os.path.isdir(folder):
            raise ValueError(f"--storage {describe_url(url)}: cannot reach the storage: "
                             f"directory {folder} does not exist")
    elif parsed.get_backend_name() == "sqlite":
        raise ValueError("--storage: an in-memory SQLite database cannot hold a study that "
                         "workers share or a rerun continues")


def grace_period(heartbeat_s: int) -> int:
    """Seconds without a heartbeat after which a trial's worker counts as lost: two beats
    missed, and one second more (SQLite's clock counts whole seconds)."""
    return 2 * heartbeat_s + 1


def open_storage(url: str, heartbeat_s: int) -> RDBStorage:
    """The study's storage, with heartbeats and retry of lost trials; ValueError if unreachable."""
    kwargs = {}
    if url.startswith("sqlite"):  # workers wait for each other's writes instead of failing
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s,
                          grace_period=grace_period(heartbeat_s),
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                              max_retry=MAX_RETRY))
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and the drivers' many errors
        raise ValueError(f"--storage {describe_url(url)}: cannot reach the storage "
                         f"({type(e).__name__}: {exits.first_line(e)})") from None


def make_sampler(name: str, seed: int | None, space: list[Param]) -> optuna.samplers.BaseSampler:
    """The sampler of ``SAMPLERS``; ``seed`` None draws a fresh one.

    Every worker's grid sampler must get the same seed: it numbers the grid's
    points in an order shuffled by it, and marks the trials with those numbers.
    """
    if name == "tpe":  # the constant liar keeps parallel workers from drawing alike
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return _Grid({p.key: p.grid() for p in space}, seed=seed)


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, less its ``study.stop()`` when the grid is exhausted (it
    works inside ``Study.optimize`` only): the search stops at ``--trials``, at most
    the grid's size."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def grid_size(space: list[Param]) -> int:
    size = 1
    for p in space:
        size *= len(p.grid())
    return size


def make_pruner(name: str, startup: int | None, first_eval: int) -> optuna.pruners.BasePruner:
    """``median``: below the median of the finished trials at the same step, after
    ``startup`` trials finished (default 5); ``asha``: successive halving with
    rungs at ``first_eval`` x 3^k steps, judged once ``startup`` trials reached a
    rung (default 0); ``none``: never."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5 if startup is None else startup)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first_eval, reduction_factor=ASHA_REDUCTION,
            bootstrap_count=0 if startup is None else startup)
    return optuna.pruners.NopPruner()


def origin(trial: FrozenTrial) -> int:
    """The number of the logical trial this one is (itself, or the one it retries)."""
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if first is None else first


def latest_attempts(trials: list[FrozenTrial]) -> dict[int, FrozenTrial]:
    """Each logical trial's latest attempt, by origin."""
    out: dict[int, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        out[origin(t)] = t
    return out


def logical_count(trials: list[FrozenTrial]) -> int:
    """Trials as ``--trials`` counts them: retries are not new trials."""
    return len({origin(t) for t in trials})


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial stopped from outside (its worker or trainer interrupted): failed, and queued
    again with its parameters for the next worker, as a lost worker's trial is."""
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def claim_worker(study: optuna.Study) -> int:
    """This worker's index among all that joined the study (call under the ask lock).

    Worker k draws with ``seed + k``: two workers started with one command
    (or one command on two machines) never draw the same values.
    """
    index = int(study.user_attrs.get("workers_started", 0))
    study.set_user_attr("workers_started", index + 1)
    return index
