"""A one-node SLURM cluster of its own for the tests: munged, slurmctld and slurmd, as root.

    cluster = SlurmCluster.start(directory)   # seconds; raises Unavailable with the reason
    env = cluster.env                         # SLURM_CONF (and PATH) for sbatch, squeue, ...
    cluster.stop()

Everything lives in ``directory``: a munge key and socket (a munged of its
own, run as the ``munge`` user, so no system daemon is needed or touched),
``slurm.conf`` (``SLURM_CONF``), the controller's state, the node's spool and
the daemons' pid files and logs. The node is this machine (``hostname -s``)
with its CPUs, in partition ``debug``; partition ``remote`` holds a node that
is not this machine and never answers (``ghost``, state FUTURE), for the
launcher's shared-file-system check. Ports are free ones, so two clusters
(two test sessions) do not meet. Needs Linux, root and Debian's ``slurm-wlm``
and ``munge`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

DAEMONS = ("munged", "slurmctld", "slurmd")


class Unavailable(RuntimeError):
    """SLURM cannot be started here (the reason is the message)."""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def why_unavailable() -> str | None:
    """Why this machine cannot run the test cluster; None if it can."""
    if not sys.platform.startswith("linux"):
        return "a SLURM test cluster needs Linux"
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (slurmd runs jobs as their user)"
    missing = [d for d in DAEMONS if shutil.which(d, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (apt-get install munge)"
    return None


@dataclass
class SlurmCluster:
    directory: str
    env: dict[str, str]
    node: str

    @classmethod
    def start(cls, directory: str, timeout: float = 60) -> SlurmCluster:
        reason = why_unavailable()
        if reason:
            raise Unavailable(reason)
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)  # munged runs as munge and must reach its files
        munge_dir = os.path.join(directory, "munge")
        os.makedirs(munge_dir, exist_ok=True)
        os.chmod(munge_dir, 0o755)  # munged wants its socket's directory searchable by all
        key = os.path.join(munge_dir, "munge.key")
        with open(key, "wb") as f:
            f.write(secrets.token_bytes(128))
        os.chmod(key, 0o400)
        user = pwd.getpwnam("munge")
        for path in (munge_dir, key):
            os.chown(path, user.pw_uid, user.pw_gid)
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
        sock = os.path.join(munge_dir, "munge.socket")
        node = socket.gethostname().split(".")[0]
        ctld_port, slurmd_port = _free_ports(2)
        conf = os.path.join(directory, "slurm.conf")
        d = directory
        with open(conf, "w") as f:
            f.write(f"""\
ClusterName=tests{ctld_port}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobRequeue=1
ReturnToService=2
MinJobAge=2
# SIGTERM to SIGKILL: a trainer on a loaded machine may need more than SLURM's default 30 s
# to reach its next step and checkpoint there.
KillWait=120
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
NodeName=ghost NodeAddr=127.0.0.2 CPUs=1 State=FUTURE
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=remote Nodes=ghost MaxTime=INFINITE State=UP
""")
        env = {**os.environ, "SLURM_CONF": conf}
        cluster = cls(directory, env, node)
        try:
            subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={sock}",
                            f"--key-file={key}", f"--pid-file={munge_dir}/munged.pid",
                            f"--log-file={munge_dir}/munged.log",
                            f"--seed-file={munge_dir}/munged.seed"],
                           check=True, capture_output=True, text=True, timeout=30)
            for daemon in ("slurmctld", "slurmd"):
                subprocess.run([daemon, "-f", conf], env=env, check=True, capture_output=True,
                               text=True, timeout=30)
            cluster._wait_idle(timeout)
        except (subprocess.SubprocessError, OSError, TimeoutError) as e:
            detail = getattr(e, "stderr", None) or str(e)
            cluster.stop()
            raise Unavailable(f"the test cluster did not start: {detail.strip()[-300:]}") from e
        return cluster

    @classmethod
    def attach(cls, directory: str) -> SlurmCluster:
        """The cluster another process started in ``directory``."""
        conf = os.path.join(directory, "slurm.conf")
        with open(conf) as f:
            node = next(line.split("=", 1)[1].split()[0] for line in f
                        if line.startswith("NodeName="))
        return cls(directory, {**os.environ, "SLURM_CONF": conf}, node)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-n", self.node, "-o", "%T"], env=self.env,
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the node did not become idle in {timeout} s")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """A SLURM command (squeue, scontrol, ...) against this cluster."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=30)

    def jobs(self) -> list[str]:
        """Lines 'ID STATE' of the jobs in the queue (every array task on its own)."""
        out = self.run("squeue", "-h", "-r", "-o", "%i %T")
        return out.stdout.split("\n")[:-1] if out.stdout else []

    def controller_log(self, jobs: list[str]) -> list[str]:
        """The controller's log lines about these jobs (``12_3``: its array's lines too)."""
        bases = {job.split("_")[0] for job in jobs}
        ids = "|".join(sorted(bases))
        pattern = re.compile(rf"\bjob(id=|[ _])?({ids})(?!\d)", re.IGNORECASE)
        try:
            with open(os.path.join(self.directory, "slurmctld.log"), errors="replace") as f:
                return [line.rstrip() for line in f if pattern.search(line)]
        except OSError as e:
            return [f"(no controller log: {e})"]

    def stop(self) -> None:
        """Stops the daemons (by their pid files; jobs still running are killed with slurmd).

        A daemon still up after 10 s (slurmd waiting on a job that is being cancelled) is
        killed, so no cluster outlives its session."""
        pids = []
        for name in ("slurmd.pid", "slurmctld.pid", os.path.join("munge", "munged.pid")):
            try:
                with open(os.path.join(self.directory, name)) as f:
                    pid = int(f.read().strip())
                os.kill(pid, 15)
                pids.append(pid)
            except (OSError, ValueError):
                continue
        deadline = time.monotonic() + 10
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, a daemon's exit nobody reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
