"""Multi-process training on JAX's multi-controller runtime, on this machine.

Two ``train.py`` processes on 127.0.0.1, two fake CPU devices each, talking
through gloo, must train exactly what one process with four fake devices
trains on the same global batch; killing one of them must end the other with
an error in bounded time, and a restart must resume.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import env_with_devices, wait_until

import train
from training import distributed

TINY = {
    "model.depth": "14",
    "model.widths": "(4,8,16)",
    "batch_size": "32",
    "log_every_steps": "5",
    "eval_every_steps": "10",
    "checkpoint_every_steps": "10",
    "layer_responses": "False",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(workdir, num_steps, *extra):
    return [sys.executable, "train.py", "--config", "configs/digits.py:resnet-14",
            "--workdir", str(workdir), f"--config.num_steps={num_steps}",
            *[f"--config.{k}={v}" for k, v in TINY.items()], *extra]


def start_pair(workdir, num_steps, *extra, heartbeat=100):
    port = free_port()
    return [subprocess.Popen(
        train_cmd(workdir, num_steps, "--coordinator", f"127.0.0.1:{port}",
                  "--num-processes", "2", "--process-id", str(i),
                  "--heartbeat-timeout", str(heartbeat), *extra),
        env=env_with_devices(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_processes_train_what_one_process_with_the_same_devices_trains(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    pair = start_pair(multi, 20)
    # One process with the same four devices: this one (conftest fakes four).
    assert jax.device_count() == 4 and jax.process_count() == 1
    assert train.main(train_cmd(single, 20)[2:]) == 0
    outs = [p.communicate(timeout=300) for p in pair]
    assert [p.returncode for p in pair] == [0, 0], [o[1][-2000:] for o in outs]

    want, got = read_metrics(single), read_metrics(multi)
    assert [m["step"] for m in got] == [m["step"] for m in want] == [5, 10, 15, 20]
    for key in ("train_loss", "train_error", "test_error", "test_loss"):
        a = [m[key] for m in want if key in m]
        b = [m[key] for m in got if key in m]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=key)
    # Only process 0 writes: one summary, one metrics line per step (checked above).
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert json.loads(outs[0][0].strip().splitlines()[-1]) == summary


def test_a_killed_process_ends_the_job_and_a_restart_resumes(tmp_path):
    workdir = tmp_path / "run"
    pair = start_pair(workdir, 100_000, heartbeat=5)  # far more steps than it will get to
    # Wait for the first checkpoint, then kill process 1 mid-training.
    ckpt = workdir / "checkpoints"
    wait_until(lambda: ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()),
               proc=pair[0], timeout=240, what="the first checkpoint")
    pair[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = pair[0].communicate(timeout=120)  # bounded: no hang for ever
    waited = time.monotonic() - killed_at
    pair[1].wait()
    assert pair[0].returncode not in (0, None) and waited < 120
    # Either our one line (a collective failed first) or JAX's coordination
    # service stopping the process (missed heartbeats): both name the cause.
    assert ("another process of this job has probably died" in err
            or "another task died" in err), err[-2000:]

    last = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    end = last + 10
    pair = start_pair(workdir, end, "--allow-config-change")
    outs = [p.communicate(timeout=300) for p in pair]
    assert [p.returncode for p in pair] == [0, 0], [o[1][-2000:] for o in outs]
    lines = read_metrics(workdir)
    assert [m["step"] for m in lines] == list(range(5, end + 1, 5))  # each step once


@pytest.mark.parametrize(
    "args,message",
    [
        (("127.0.0.1:1234", None, None), "go together"),
        (("localhost", 2, 0), "HOST:PORT"),
        (("127.0.0.1:1234", 2, 2), "--process-id must be in [0, 1]"),
        (("127.0.0.1:1234", 0, 0), "--num-processes must be >= 1"),
    ],
)
def test_bad_process_flags_are_refused(args, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        distributed.from_args(*args)


def test_a_single_process_initialises_nothing(monkeypatch):
    for var in ("SLURM_NTASKS", "SLURM_NPROCS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize(distributed.from_args(None, None, None)) is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.initialize(distributed.from_args(None, None, None)) is False
