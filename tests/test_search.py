"""Tests of the hyperparameter search (experiments.search): real Optuna with its embedded
SQLite storage, real trainers on tiny digits runs.

Two studies are searched once per session and shared between the tests (and the
pytest-xdist workers): a random search of 1 trial, continued to 3 by two workers at
once; and a grid search with a median pruner whose first worker is SIGKILLed in the
middle of its trial and whose rerun recovers that trial."""

import json
import os
import signal
import subprocess
import sys
import time

import filelock
import optuna
import pytest
from conftest import TINY, _shared_root, read_metrics, wait_until

from experiments import search, search_report, search_space, search_study, search_trial
from training import command_line

REPO = search.REPO
# The tiny run, with a validation split to choose on; no layer responses or dead units
# (two programs fewer to compile per trial).
TRIAL = {**TINY, "val_examples": "100", "layer_responses": "False", "dead_units": "False"}
LR_SPACE = "optimizer.lr=loguniform(0.01,1)"
FIRST, MORE = 1, 3  # the random study's trials: a first search, then the same command to MORE


def search_cmd(study, *extra, **overrides):
    settings = {**TRIAL, **{k: str(v) for k, v in overrides.items()}}
    return [sys.executable, "-m", "experiments.search", "configs/digits.py:resnet-14",
            "--workdir", str(study), *extra, *(f"--config.{k}={v}" for k, v in settings.items())]


def trials_of(study):
    storage = optuna.storages.RDBStorage(f"sqlite:///{study}/study.db")
    return optuna.load_study(study_name=os.path.basename(study), storage=storage).get_trials()


def _snapshot(study):
    """What a test needs to know of a study at one moment: its trials and run directories."""
    trials = [{"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
               "run": t.user_attrs.get("run"), "system_attrs": t.system_attrs,
               "intermediate": {str(k): v for k, v in t.intermediate_values.items()}}
              for t in trials_of(study)]
    runs = {d.name: (d / "summary.json").read_text() for d in study.iterdir()
            if (d / "config.json").exists()}
    return {"trials": trials, "runs": runs, "results": (study / "results.md").read_text()}


def _run(cmd):
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return {"code": out.returncode, "stdout": out.stdout, "stderr": out.stderr}


def shared_study(tmp_path_factory, name, build):
    """``build(study_dir)``'s result, computed once per session (a file lock per name)."""
    root = _shared_root(tmp_path_factory)
    done = root / f"{name}.json"
    with filelock.FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            done.write_text(json.dumps(build(root / name)))
    return root / name, json.loads(done.read_text())


def _random_study(study):
    """FIRST random trials, then the same command with --trials MORE by two workers at once."""
    args = ["--sampler", "random", "--space", LR_SPACE]
    first = _run(search_cmd(study, "--trials", str(FIRST), *args, checkpoint_every_steps=20))
    before = _snapshot(study)
    procs = [subprocess.Popen(search_cmd(study, "--trials", str(MORE), *args,
                                         checkpoint_every_steps=20), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    workers = [dict(zip(("stdout", "stderr"), p.communicate(), strict=True), code=p.returncode)
               for p in procs]
    return {"first": first, "before": before, "workers": workers, "after": _snapshot(study)}


@pytest.fixture(scope="module")
def random_study(tmp_path_factory):
    return shared_study(tmp_path_factory, "search-random", _random_study)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pruned_study(study):
    """lr 0.1 then lr 50 (the grid's order for seed 0), 100 steps each, a median pruner
    from the first finished trial on. The first worker is SIGKILLed at lr 0.1's first log
    line; once its heartbeat (every 1 s) is stale, the same command runs again."""
    cmd = search_cmd(study, "--trials", "2", "--sampler", "grid", "--space",
                     "optimizer.lr=choice(50,0.1)", "--pruner", "median", "--prune-startup",
                     "1", "--heartbeat", "1", "--seed", "0", num_steps=100,
                     checkpoint_every_steps=50)
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = study / "trial=0000,lr=0.1"
    wait_until(lambda: (run / "metrics.jsonl").exists(), proc=first,
               what="trial 0 (lr 0.1)'s first log line")
    trainer = int((run / ".train.lock").read_text())
    first.send_signal(signal.SIGKILL)
    first.communicate()
    wait_until(lambda: not _alive(trainer), timeout=60, what="the trainer's parent-death stop")
    killed = sorted(os.listdir(run / "checkpoints"))
    time.sleep(search_study.grace_period(1) + 1.5)  # the killed worker's heartbeat is stale
    rerun = _run(cmd)
    return {"killed_checkpoints": killed, "rerun": rerun, "after": _snapshot(study)}


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    return shared_study(tmp_path_factory, "search-pruned", _pruned_study)


def test_a_random_search_trains_ordinary_runs_holding_the_drawn_values(random_study):
    study, result = random_study
    assert result["first"]["code"] == 0, result["first"]["stdout"] + result["first"]["stderr"]
    before = result["before"]
    assert [t["state"] for t in before["trials"]] == ["COMPLETE"] * FIRST
    assert len(before["runs"]) == FIRST
    for t in before["trials"]:
        run = study / t["run"]
        assert t["run"].startswith(f"trial={t['number']:04d},lr=")
        config = json.loads((run / "config.json").read_text())
        assert config["optimizer"]["lr"] == t["params"]["optimizer.lr"]  # exact, not rounded
        assert 0.01 <= t["params"]["optimizer.lr"] <= 1
        summary = json.loads(before["runs"][t["run"]])
        assert summary["status"] == "finished" and summary["final_val_error"] == t["value"]
        vals = [m["val_error"] for m in read_metrics(run) if "val_error" in m]
        assert [t["intermediate"][s] for s in ("10", "20")] == vals  # each evaluation reported
    best = min(before["trials"], key=lambda t: t["value"])
    assert f"Chosen on validation: **{best['run']}**" in before["results"]
    table = [line for line in before["results"].splitlines() if line.startswith("| 1 |")]
    assert table and best["run"] in table[0]


def test_the_report_ranks_by_validation_and_gives_the_commands_and_plots(random_study):
    study, result = random_study
    text = (study / "results.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line[:3] in ("| 1", "| 2", "| 3")]
    errors = [float(r[3]) for r in rows]
    assert errors == sorted(errors)
    assert "--sweep seed=0,1,2,3,4" in text and "python -m experiments.sweep" in text
    assert "python -m experiments.ensemble" in text
    assert text.index("Chosen on validation") < text.index("Only now, its test error")
    assert "test error" not in text.split("Chosen on validation")[0]  # not in the ranking
    for name in search_report.PLOTS:
        assert (study / f"{name}.png").stat().st_size > 0 and (study / f"{name}.svg").exists()
    csv_lines = (study / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,run,trial,optimizer.lr,final val error")
    assert len(csv_lines) == 1 + MORE


def test_a_rerun_with_more_trials_adds_exactly_those_even_from_two_workers(random_study):
    study, result = random_study
    for w in result["workers"]:
        assert w["code"] == 0, w["stdout"] + w["stderr"]
    after = result["after"]
    assert [t["state"] for t in after["trials"]] == ["COMPLETE"] * MORE
    assert [t["number"] for t in after["trials"]] == list(range(MORE))
    assert len({t["params"]["optimizer.lr"] for t in after["trials"]}) == MORE
    started = "".join(w["stdout"] for w in result["workers"]).count("[start]")
    assert started == MORE - FIRST  # the missing trials trained once each, none twice
    assert len(after["runs"]) == MORE
    for name, summary in result["before"]["runs"].items():
        assert after["runs"][name] == summary  # the first search's trials were not touched
    for name in set(after["runs"]) - set(result["before"]["runs"]):
        assert [m["step"] for m in read_metrics(study / name)] == [5, 10, 15, 20]


def test_every_run_writes_its_tensorboard_hparams_session(random_study):
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.plugins.hparams import metadata

    study, result = random_study
    t = result["after"]["trials"][0]
    run = study / t["run"]
    (path,) = [run / n for n in os.listdir(run) if n.endswith(".hparams")]
    values, hparams = {}, None
    for event in event_file_loader.EventFileLoader(str(path)).Load():
        for v in event.summary.value:
            if v.tag == metadata.SESSION_START_INFO_TAG:
                hparams = metadata.parse_session_start_info_plugin_data(
                    v.metadata.plugin_data.content).hparams
            elif v.tag.startswith("hparams/"):
                values[v.tag] = v.tensor.float_val[0] if v.HasField("tensor") else v.simple_value
    assert hparams["optimizer.lr"].number_value == t["params"]["optimizer.lr"]
    assert hparams["status"].string_value == "finished"
    assert hparams["val_examples"].number_value == 100
    assert values["hparams/final_val_error"] == pytest.approx(t["value"], abs=1e-6)
    assert set(values) >= {"hparams/best_val_error", "hparams/final_test_error"}


def test_the_median_pruner_stops_a_hopeless_trial_at_its_evaluation(pruned_study):
    study, result = pruned_study
    assert result["rerun"]["code"] == 0, result["rerun"]["stdout"] + result["rerun"]["stderr"]
    states = {t["params"]["optimizer.lr"]: t["state"] for t in result["after"]["trials"]}
    assert states[50.0] == "PRUNED"
    run = study / "trial=0002,lr=50"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["pruned_at_step"] == 10
    assert summary["steps"] == 10 < summary["total_steps"] == 100
    assert "median" in summary["error"] and "step 10" in summary["error"]
    assert [m["step"] for m in read_metrics(run)] == [5, 10]  # not one step past it
    assert sorted(os.listdir(run / "checkpoints")) == ["10"]
    assert "saved 90 of 200 training steps" in (study / "results.md").read_text()
    assert "[pruned] trial=0002,lr=50" in result["rerun"]["stdout"]


def test_the_asha_pruner_keeps_the_best_third_at_rungs_of_the_first_evaluation_times_three():
    """``--pruner asha`` as the search builds it (rungs at the first evaluation's step x 3^k),
    on trials that report as the trainers do; the trainers' side is the median test's."""
    study = optuna.create_study(direction="minimize",
                                pruner=search_study.make_pruner("asha", None, first_eval=40))
    pruned = []
    for errors in ({40: 0.10, 80: 0.09, 120: 0.08}, {40: 0.50}, {40: 0.05, 80: 0.90},
                   {40: 0.60}, {40: 0.04, 80: 0.06, 120: 0.30}):
        trial = study.ask()
        for step, error in errors.items():
            trial.report(error, step)
            if trial.should_prune():
                pruned.append((trial.number, step))
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, error)
    # Rung 40: a trial goes on if among the best third (at least the best one) of the values
    # reported there; 80 is no rung, so the third trial's 90% there is not judged; rung 120:
    # the fifth trial's 30% is not the best of 8% and 30%.
    assert pruned == [(1, 40), (3, 40), (4, 120)]
    reason = search_trial.prune_reason(study, "asha", 40, 0.5)
    assert reason.startswith("ASHA pruner: validation error 50.00% at step 40")


def test_a_killed_workers_trial_is_resumed_not_lost_or_counted_twice(pruned_study):
    study, result = pruned_study
    trials = result["after"]["trials"]
    assert trials[0]["params"] == {"optimizer.lr": 0.1}, "the grid's first point changed"
    assert [t["state"] for t in trials] == ["FAIL", "COMPLETE", "PRUNED"]
    assert trials[1]["params"] == trials[0]["params"]
    assert trials[1]["system_attrs"]["failed_trial"] == 0 and trials[1]["run"] == trials[0]["run"]
    assert "retrying trial 0" in result["rerun"]["stdout"]
    assert result["killed_checkpoints"]  # the trainer checkpointed when its worker died
    run = study / trials[0]["run"]
    assert [m["step"] for m in read_metrics(run)] == list(range(5, 101, 5))  # each step once
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    rows = [line for line in (study / "results.md").read_text().splitlines()
            if line.startswith("| ") and "trial=" in line]
    assert len(rows) == 2  # two trials: the retry is the trial it retries


@pytest.mark.parametrize("args,message", [
    (["--space", "optimizer.lrr=uniform(0,1)"], "unknown config key 'optimizer.lrr'"),
    (["--space", "optimizer.lr=int(1,3)"], "int cannot give"),
    (["--space", "optimizer.lr=loguniform(0,1)"], "loguniform needs bounds > 0"),
    (["--space", "model.depth=choice(20,deep)"], "choice value 'deep' of model.depth is not"),
    (["--space", "model.plain=choice(true,maybe)"], "is not true or false"),
    (["--space", "optimizer.lr=normal(0,1)"], "must be one of"),
    (["--space", LR_SPACE, "--trials", "0"], "--trials must be >= 1"),
    (["--space", LR_SPACE], "--trials N is needed"),
    (["--space", LR_SPACE, "--trials", "3", "--config.val_examples=0"], "set val_examples > 0"),
    (["--space", LR_SPACE, "--sampler", "grid"], "--sampler grid needs choice"),
    (["--space", LR_SPACE, "--trials", "3", "--storage", "sqlite:////no/such/dir/s.db"],
     "cannot reach the storage"),
    (["--space", LR_SPACE, "--trials", "3", "--storage", "postgresql://me@127.0.0.1:1/db"],
     "driver is not installed"),
    (["--space", LR_SPACE, "--trials", "3", "--config.optimizer.lr=0.1"], "both searched"),
])
def test_bad_input_is_one_error_line_and_nothing_is_created(tmp_path, capsys, args, message):
    study = tmp_path / "s"
    code = search.main(["configs/digits.py", "--workdir", str(study), "--config.val_examples=100",
                        *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not study.exists()


def test_a_rerun_with_another_space_is_refused(random_study, capsys):
    study, _ = random_study
    before = sorted(os.listdir(study))
    code = search.main(["configs/digits.py:resnet-14", "--workdir", str(study), "--trials", "9",
                        "--space", "optimizer.lr=loguniform(0.01,2)",
                        *(f"--config.{k}={v}" for k, v in TRIAL.items())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds another search" in err[0], err
    assert "loguniform(0.01,1)" in err[0] and sorted(os.listdir(study)) == before


def test_the_space_parses_typed_choices_and_the_config_files_space():
    config = command_line.load_config("configs/digits.py")
    assert search_space.parse_param("model.widths", "choice((4,8,16), (8,16,32))",
                                    config).values == ("(4,8,16)", "(8,16,32)")
    assert search_space.parse_param("model.plain", "choice(true,no)", config).values == \
        (True, False)
    assert search_space.parse_param("schedule.warmup_steps", "int(0,400)", config).grid()[-1] \
        == 400
    assert search_space.file_space("configs/digits.py:plain-56") == {
        "optimizer.lr": "loguniform(0.01, 1)",
        "optimizer.weight_decay": "loguniform(1e-5, 1e-3)"}
    assert search_space.parse_param("model.shortcut", "choice(A,B)", config).values == ("A", "B")
    assert search_space.override_text(0.1 + 0.2) == "0.30000000000000004"


def test_the_search_imports_no_jax_flax_orbax_or_tensorflow():
    """It asks, follows and tells trials; the trainers and the validation import JAX."""
    heavy = ("jax", "flax", "orbax", "optax", "tensorflow", "tensorflow_datasets")
    code = ("import sys, experiments.search, experiments.search_report, training.tb_events; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
