"""The sweep on a real one-node SLURM cluster (``--launcher slurm``, experiments/slurm.py).

One cluster per test session (``tests/slurm_cluster.py``: munged, slurmctld
and slurmd as root, a config of their own in a temporary directory), shared
by the pytest-xdist workers and stopped by the last of them. Where SLURM
cannot run (not root, not Linux, not installed) every test here skips with
the reason. The runs are conftest's tiny digits runs; the uninterrupted
reference is ``conftest.tiny_run`` (``train.py`` in one go, as the local
launcher runs it).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import filelock
import numpy as np
import pytest
import slurm_cluster
from conftest import (
    TINY,
    _shared_root,
    env_with_devices,
    read_metrics,
    tiny_run,
    wait_until,
    without_timing,
)

from experiments import slurm_queue, sweep

CONFIG = "configs/digits.py:resnet-14"
TINY_ARGS = [f"--config.{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The session's cluster: the first worker to ask starts it, the last to finish stops it."""
    reason = slurm_cluster.why_unavailable()
    if reason:
        pytest.skip(reason)
    root = _shared_root(tmp_path_factory)
    users, where = root / "slurm.users", root / "slurm.dir"
    with filelock.FileLock(str(root / "slurm.lock")):
        count = int(users.read_text()) if users.exists() else 0
        if count == 0:  # outside pytest's 0700 temp: munged runs as 'munge' and must get in
            directory = tempfile.mkdtemp(prefix="slurm-tests-")
            where.write_text(directory)
            try:
                started = slurm_cluster.SlurmCluster.start(directory)
            except slurm_cluster.Unavailable as e:
                pytest.skip(str(e))
        else:
            directory = where.read_text()
            started = slurm_cluster.SlurmCluster.attach(directory)
        users.write_text(str(count + 1))
    yield started
    with filelock.FileLock(str(root / "slurm.lock")):
        count = int(users.read_text()) - 1
        users.write_text(str(count))
        if count == 0:
            started.stop()
            shutil.rmtree(started.directory, ignore_errors=True)


def launch(cluster, study, *extra, env=None):
    """``python -m experiments.sweep`` on the tiny run's config against the test cluster."""
    return subprocess.run([sys.executable, "-m", "experiments.sweep", CONFIG, "--workdir",
                           str(study), *TINY_ARGS, "--launcher", "slurm", "--slurm", "time=10",
                           *extra], env=env or cluster.env, capture_output=True, text=True,
                          cwd=sweep.REPO, timeout=600)


def jobs_of(study):
    return json.loads((study / "slurm.json").read_text())["jobs"]


def job_logs(study, cluster, jobs, lines=30):
    """For a failing assertion's message, short enough to survive a cut CI log: what SLURM
    says of the jobs now, and the last lines of each job's log (submitit's)."""
    said = [cluster.run("scontrol", "show", "job", "--oneliner", job).stdout.split()
            for job in sorted(set(jobs))]
    keep = ("JobId=", "ArrayTaskId=", "JobState=", "Reason=", "ExitCode=", "Restarts=",
            "SubmitTime=", "StartTime=", "EndTime=")
    text = "\n--- scontrol: " + "\n--- scontrol: ".join(
        " ".join(f for f in fields if f.startswith(keep)) for fields in said)
    text += "\n--- the controller's log\n" + "\n".join(cluster.controller_log(jobs)[-40:])
    for log in sorted((study / ".slurm").glob("*.out")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        text += f"\n--- {log.name} (last {lines} lines)\n" + "\n".join(tail)
    return text + "\n--- the launcher's output\n"


def test_detached_requeued_and_attached_the_study_ends_as_the_local_launcher_ends(
        cluster, tmp_path, tmp_path_factory):
    """Submit detached; interrupt both runs mid-way; the same command attaches.

    seed=0 is requeued with `scontrol requeue` (SIGTERM, as preemption), seed=1
    gets the time-limit warning (SIGINT, as SLURM sends it `signal_s` before
    the limit: its job requeues itself). The same command again submits
    nothing new, follows the runs to their end, writes the report (the
    report's job, still waiting behind the runs, cancelled), and every run
    ends with the metrics of the uninterrupted run: each step once.
    """
    study = tmp_path / "study"
    out = launch(cluster, study, "--sweep", "seed=0,1", "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = jobs_of(study)
    assert sorted(jobs) == ["seed=0", "seed=1"] and jobs["seed=0"] != jobs["seed=1"]
    lines = out.stdout.splitlines()
    assert f"[submitted] seed=0 (job {jobs['seed=0']})" in lines
    assert any(line.startswith("2 jobs queued or running: ") and "the report: job" in line
               for line in lines), out.stdout
    attach = next(line for line in lines if line.startswith("attach: "))
    assert attach.endswith("--sweep seed=0,1")  # the same command, less --detach

    # Each interrupt as soon as its trainer is compiling: its signal handlers are in place
    # and it has steps to go (a tiny run ends seconds after its first metrics line).
    interrupts = {0: ("scontrol", "requeue"), 1: ("scancel", "--signal=INT")}
    for seed, interrupt in interrupts.items():
        log = study / f"seed={seed}" / "train.log"
        wait_until(lambda p=log: p.exists() and "compiling the training step" in p.read_text(),
                   timeout=240, what=f"the trainer of seed={seed} compiling")
        assert cluster.run(*interrupt, jobs[f"seed={seed}"]).returncode == 0
    for seed in interrupts:
        job = jobs[f"seed={seed}"]
        # SLURM holds a requeued job for a while (BeginTime), long enough for the last
        # attempt's batch step to end; here it starts again soon, but only once that step
        # is gone (a late end of the last attempt must not meet the next one), and in a later
        # second than the old attempt's credential was revoked (before that step ended):
        # slurmd compares the two to the second and kills a new attempt started within it
        # ("Job credential revoked"). StartTime=now, not now+N: that would wait for
        # the scheduler's next periodic pass.
        wait_until(lambda j=job: f"{j} PENDING" in cluster.jobs(), timeout=300,
                   what=f"the job of seed={seed} requeued")
        raw = cluster.run("squeue", "-h", "-r", "-j", job, "-o", "%A").stdout.strip()
        wait_until(lambda r=raw: subprocess.run(
            ["pgrep", "-f", rf"slurmstepd: \[{r}\.batch\]"], capture_output=True).returncode != 0,
            timeout=300, what=f"the last attempt of seed={seed}'s job to end")
        time.sleep(1.1)
        assert cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now").returncode == 0

    again = launch(cluster, study, "--sweep", "seed=0,1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[submitted]" not in again.stdout and jobs_of(study) == jobs, (
        job_logs(study, cluster, [*jobs.values(), *jobs_of(study).values()])
        + again.stdout[:2000])
    assert "[finished] seed=0" in again.stdout and "[finished] seed=1" in again.stdout
    assert "sweep done: 2 finished" in again.stdout
    assert (study / "results.md").exists()
    for seed, signal_name in ((0, "SIGTERM"), (1, "SIGINT")):
        log = (study / f"seed={seed}" / "train.log").read_text()
        assert f"{signal_name} at step" in log and "resuming from step" in log, log
    for seed in (0, 1):
        reference, _ = tiny_run(tmp_path_factory, **({"seed": seed} if seed else {}))
        got = read_metrics(study / f"seed={seed}")
        assert without_timing(got) == without_timing(read_metrics(reference))
    assert not [line for line in cluster.jobs() if line.split()[0] in jobs.values()]


def test_a_two_task_job_joins_through_slurm_and_trains_what_one_process_trains(
        cluster, tmp_path, tmp_path_factory):
    """`ntasks=2`: srun starts two train.py (two CPU devices each, gloo) joined by JAX's
    SLURM detection; the first logged loss is the one-process run's (four devices);
    `--cancel` then stops the job, and the run waits to be resumed."""
    study = tmp_path / "two"
    env = env_with_devices(2, cluster.env)
    out = launch(cluster, study, "--slurm", "ntasks=2", "--detach", "--no-report", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = study / "run" / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1,
               timeout=240, what="the first metrics line of the two-task run")
    cancelled = launch(cluster, study, "--slurm", "ntasks=2", "--cancel", env=env)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    job = jobs_of(study)["run"]
    assert cancelled.stdout.startswith(f"cancelled 1 job: {job} ")
    wait_until(lambda: not [line for line in cluster.jobs() if line.startswith(f"{job} ")],
               timeout=300, what="the cancelled job to leave the queue")
    first = read_metrics(study / "run")[0]
    reference = read_metrics(tiny_run(tmp_path_factory)[0])[0]
    assert first["step"] == reference["step"] == 5
    np.testing.assert_allclose(first["train_loss"], reference["train_loss"], rtol=1e-4)
    steps = [line["step"] for line in read_metrics(study / "run")]
    assert steps == sorted(set(steps))  # one writer: process 0
    status = launch(cluster, study, "--slurm", "ntasks=2", "--status", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    # What SLURM last said of the job (the test cluster forgets an ended job after 2 s).
    assert any(f"[interrupted] run (job {job}: {said}" in status.stdout
               for said in ("CANCELLED, exit ", "SLURM no longer knows it")), status.stdout


def test_a_job_missing_from_two_looks_at_the_queue_is_asked_for_alone(monkeypatch):
    """Only a job that squeue misses twice and `scontrol show job` no longer holds live is
    gone; what SLURM last said of it is the launcher's detail (SLURM's own output here)."""
    calls = []
    said = {"squeue": "2_0 RUNNING\n3 PENDING\n",
            "2_1": "JobId=2 ArrayJobId=2 ArrayTaskId=1 JobState=PENDING Reason=BeginTime "
                   "Restarts=1 ExitCode=0:0\n",
            "7": "JobId=7 JobName=sweep:s JobState=FAILED Reason=NonZeroExitCode "
                 "ExitCode=1:0\n"}

    def slurm_command(name, *args, timeout=60):
        calls.append(name)
        out = said["squeue"] if name == "squeue" else said.get(args[-1], "")
        return subprocess.CompletedProcess([name, *args], 0 if out else 1, out,
                                           "" if out else "Invalid job id specified")

    monkeypatch.setattr(slurm_queue.slurm_options, "slurm_command", slurm_command)
    monkeypatch.setattr(slurm_queue, "POLL_S", 0)
    assert slurm_queue.confirmed_queue(["2_0", "3"]) == {"2_0": "running", "3": "queued"}
    assert calls == ["squeue"]  # nothing missing: one look
    calls.clear()
    queued = slurm_queue.confirmed_queue(["2_0", "2_1", "7", "8"])
    assert queued == {"2_0": "running", "3": "queued", "2_1": "queued"}
    assert calls == ["squeue", "squeue", "scontrol", "scontrol", "scontrol"]
    assert slurm_queue.ended("7") == "job 7: FAILED, exit 1:0, NonZeroExitCode"
    assert slurm_queue.ended("8") == "job 8: SLURM no longer knows it"


@pytest.mark.parametrize("case,extra,message", [
    ("no sbatch", [], "no sbatch on this machine"),
    ("no partition", ["--slurm", "partition=nope"],
     "partition 'nope' does not exist (partitions: debug, remote)"),
    ("refused", ["--slurm", "mem=lots"], "SLURM refuses the job options"),
    ("not shared", ["--slurm", "partition=remote"],
     "is on a file system of this machine"),
    ("unknown key", ["--slurm", "gpus=1"], "unknown --slurm key 'gpus'"),
])
def test_bad_input_is_one_error_line_and_submits_nothing(cluster, tmp_path, case, extra,
                                                         message):
    env = cluster.env
    if case == "no sbatch":
        env = {**env, "PATH": os.path.dirname(sys.executable)}
    if case == "not shared" and slurm_cluster_fs(tmp_path) not in {"ext4", "xfs", "btrfs",
                                                                  "tmpfs", "overlay"}:
        pytest.skip("the temporary directory is not on a local file system here")
    study = tmp_path / "bad"
    out = launch(cluster, study, *extra, env=env)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and message in err[0], out.stderr
    assert err[0].startswith("error: ")
    assert not (study / "slurm.json").exists() and not (study / "sweep.json").exists()
    names = cluster.run("squeue", "-h", "-o", "%j").stdout.split()
    assert "sweep:bad" not in names


def slurm_cluster_fs(path):
    from experiments import slurm_options

    return slurm_options.file_system(str(path))


def test_options_take_slurm_time_formats_config_defaults_and_none():
    from experiments import slurm_options

    assert [slurm_options.minutes(t) for t in ("90", "1:30", "2:00:00", "1-0", "1-2:30",
                                               "0-0:0:30")] == [90, 2, 120, 1440, 1590, 1]
    defaults = slurm_options.config_defaults("configs/degradation.py:cifar10")
    options = slurm_options.parse(["cpus_per_task=4", "gpus_per_node=none",
                                   "extra=--exclusive --mail-type=END"], defaults)
    assert options.time_min == 720 and options.signal_s == slurm_options.DEFAULT_SIGNAL_S
    assert options.sbatch_args() == ["--time=720", "--cpus-per-task=4", "--exclusive",
                                     "--mail-type=END"]
    assert slurm_options.parse(["tasks_per_node=2", "nodes=4"]).sbatch == \
        {"ntasks_per_node": "2", "nodes": "4"}
    for bad, message in [("nodes=0", "positive integer"), ("time=x", "use minutes"),
                         ("extra=-x", "--key=value or --flag"), ("partition", "KEY=VALUE"),
                         ("signal_s=900", "shorter than the time limit")]:
        with pytest.raises(ValueError, match=message):
            slurm_options.parse([bad, "time=10"] if bad.startswith("signal") else [bad])


def test_a_search_runs_as_an_array_of_workers_sharing_one_study(cluster, tmp_path):
    """``experiments.search --launcher slurm``: --workers jobs of one worker each, one study.

    Three trials between two worker jobs: each trial trained once (three runs, three
    distinct trials, all complete), the total not overshot, the report written by the
    last worker; a bad option is refused before the study exists.
    """
    import optuna

    study = tmp_path / "search"
    cmd = [sys.executable, "-m", "experiments.search", CONFIG, "--workdir", str(study),
           *TINY_ARGS, "--config.val_examples=100", "--config.layer_responses=False",
           "--config.dead_units=False", "--space", "optimizer.lr=loguniform(0.01,1)",
           "--sampler", "random", "--trials", "3", "--workers", "2", "--launcher", "slurm",
           "--slurm", "time=10"]
    bad = subprocess.run([*cmd, "--slurm", "mem=lots"], env=cluster.env, capture_output=True,
                         text=True, cwd=sweep.REPO, timeout=120)
    assert bad.returncode == 2 and "SLURM refuses the job options" in bad.stderr, bad.stderr
    assert not study.exists()
    out = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True,
                         cwd=sweep.REPO, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("submitted 2 worker jobs: "))
    ids = line.split(": ", 1)[1].split(" (")[0].split()
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1  # one array
    wait_until(lambda: not any(j.split()[0] in ids for j in cluster.jobs()), timeout=400,
               what="both worker jobs ended")
    storage = optuna.storages.RDBStorage(f"sqlite:///{study}/study.db")
    trials = optuna.load_study(study_name="search", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    runs = sorted(t.user_attrs["run"] for t in trials)
    assert len(set(runs)) == 3
    assert sorted(d.name for d in study.iterdir() if (d / "config.json").exists()) == runs
    for run in runs:
        assert json.loads((study / run / "summary.json").read_text())["status"] == "finished"
    assert (study / "results.md").exists()
