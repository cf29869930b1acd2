"""The sweep's SLURM job options (``--slurm KEY=VALUE``) and the checks made before submitting.

``parse(items, defaults)`` reads the options: the config file's ``slurm(arg)``
defaults (``config_defaults``), overridden by the command line. Each key is
one ``sbatch`` option of every trainer's job:

    partition, time, nodes, ntasks, tasks_per_node, gpus_per_node, cpus_per_task,
    mem, account, qos, constraint, extra (more sbatch options, "--key=value --flag"),
    array_parallelism (jobs of the study running at once), signal_s (seconds before
    the time limit at which the trainer is told to checkpoint), max_requeues

A value ``none`` drops the config file's default for that key.

``preflight(options, study)`` refuses, before anything is submitted: no
``sbatch`` on the machine, a partition that does not exist, options SLURM
refuses (``sbatch --test-only``: nothing is queued), and a study directory,
repository or virtualenv on a file system local to this machine when the
jobs may run on other nodes (they could not see it). Each is one ValueError
line. Light: no JAX (the launcher's side).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from training import command_line

DEFAULT_TIME_MIN = 60
DEFAULT_SIGNAL_S = 120
DEFAULT_MAX_REQUEUES = 20
SBATCH_KEYS = {  # our key -> sbatch's long option (underscores, as submitit spells them)
    "partition": "partition", "nodes": "nodes", "ntasks": "ntasks",
    "tasks_per_node": "ntasks_per_node", "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task", "mem": "mem", "account": "account", "qos": "qos",
    "constraint": "constraint",
}
COUNTS = ("nodes", "ntasks", "tasks_per_node", "gpus_per_node", "cpus_per_task",
          "array_parallelism", "max_requeues")
KEYS = (*SBATCH_KEYS, "time", "extra", "array_parallelism", "signal_s", "max_requeues")
# File systems of one machine: a job on another node cannot see what is written there.
LOCAL_FILE_SYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "tmpfs", "ramfs",
                      "overlay", "vfat", "exfat", "ntfs", "ntfs3", "apfs", "hfs"}
TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass
class SlurmOptions:
    """What every trainer's job asks SLURM for."""

    sbatch: dict[str, str | bool] = field(default_factory=dict)  # option -> value (True: flag)
    time_min: int = DEFAULT_TIME_MIN
    array_parallelism: int | None = None
    signal_s: int = DEFAULT_SIGNAL_S
    max_requeues: int = DEFAULT_MAX_REQUEUES

    @property
    def partition(self) -> str | None:
        value = self.sbatch.get("partition")
        return value if isinstance(value, str) else None

    def sbatch_args(self) -> list[str]:
        """The options as sbatch's command line, for ``--test-only``."""
        args = [f"--time={self.time_min}"]
        for key, value in self.sbatch.items():
            flag = "--" + key.replace("_", "-")
            args.append(flag if value is True else f"{flag}={value}")
        return args


def minutes(text: str) -> int:
    """SLURM's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    match = TIME.match(text.strip())
    if not match:
        raise ValueError(f"--slurm time={text!r}: use minutes or SLURM's [D-]HH:MM[:SS]")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is None:  # MM, MM:SS, HH:MM:SS
        seconds = a * 60 if b is None else (a * 60 + b if c is None else a * 3600 + b * 60 + c)
    else:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise ValueError(f"--slurm time={text!r} must be positive")
    return max(1, -(-seconds // 60))


def _extra(text: str) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for token in shlex.split(text):
        key, sep, value = token.partition("=")
        if not key.startswith("--") or len(key) < 3:
            raise ValueError(f"--slurm extra={text!r}: each option must be --key=value or --flag")
        options[key[2:].replace("-", "_")] = value if sep else True
    return options


def parse(items: list[str], defaults: dict[str, object] | None = None) -> SlurmOptions:
    """``KEY=VALUE`` items over the config file's defaults; one-line ValueError otherwise."""
    given: dict[str, str] = {k: str(v) for k, v in (defaults or {}).items()}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--slurm {item!r} must look like KEY=VALUE")
        if value.lower() == "none":  # drops a default of the config file
            given.pop(key, None)
        else:
            given[key] = value
    options = SlurmOptions()
    for key, value in given.items():
        if key not in KEYS:
            raise ValueError(f"unknown --slurm key {key!r} (known: {', '.join(KEYS)})")
        if key in COUNTS and not (value.isdigit() and int(value) >= 1):
            raise ValueError(f"--slurm {key} must be a positive integer, got {value!r}")
        if key in SBATCH_KEYS:
            options.sbatch[SBATCH_KEYS[key]] = value
        elif key == "time":
            options.time_min = minutes(value)
        elif key == "extra":
            options.sbatch.update(_extra(value))
        elif key == "signal_s":
            if not value.isdigit():
                raise ValueError(f"--slurm signal_s must be whole seconds, got {value!r}")
            options.signal_s = int(value)
        else:
            setattr(options, key, int(value))
    if options.signal_s >= options.time_min * 60:
        raise ValueError(f"--slurm signal_s={options.signal_s} must be shorter than the time "
                         f"limit ({options.time_min} min)")
    return options


def config_defaults(config_path: str) -> dict[str, object]:
    """The config file's ``slurm(arg)`` (called like its ``sweep``): default options, or {}."""
    path, arg = command_line.split_config_arg(config_path)
    module = command_line.load_module(path)
    if not hasattr(module, "slurm"):
        return {}
    try:
        value = command_line.call_with_arg(module.slurm, arg)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is bad input
        raise ValueError(f"slurm() in {path} failed: {type(e).__name__}: {e}") from e
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"slurm() in {path} must return a dict of --slurm options")
    return value or {}


def slurm_command(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A SLURM client command; ValueError if it is not on this machine or does not answer."""
    if shutil.which(name) is None:
        raise ValueError(f"no {name} on this machine: --launcher slurm runs where SLURM's "
                         "commands are (a cluster's login node)")
    try:
        return subprocess.run([name, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{name} did not answer in {timeout:.0f} s") from None


def last_error(out: subprocess.CompletedProcess) -> str:
    """SLURM's own message: the last ``error:`` line of a failed command, without its prefix."""
    lines = [line.strip() for line in (out.stderr + out.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line] or lines or [f"exit {out.returncode}"]
    return re.sub(r"^\S+: error: ", "", errors[-1])


def _partition_nodes(partition: str | None) -> tuple[str, list[str]]:
    """(the partition's name, its nodes); the default partition when None."""
    out = slurm_command("scontrol", "show", "partition", "--oneliner", *(
        [partition] if partition else []))
    if out.returncode != 0 or not out.stdout.strip():
        names = slurm_command("sinfo", "-h", "-o", "%R").stdout.split()
        if partition is None:
            raise ValueError(f"cannot read SLURM's partitions: {last_error(out)}")
        raise ValueError(f"partition {partition!r} does not exist (partitions: "
                         f"{', '.join(sorted(set(names))) or 'none'})")
    for line in out.stdout.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if partition is None and fields.get("Default") != "YES":
            continue
        nodes = fields.get("Nodes", "")
        if nodes in ("", "(null)"):
            return fields.get("PartitionName", "?"), []
        names = slurm_command("scontrol", "show", "hostnames", nodes).stdout.split()
        return fields.get("PartitionName", "?"), names
    raise ValueError("SLURM has no default partition: give one with --slurm partition=NAME")


def file_system(path: str) -> str:
    """The type of the file system holding ``path`` (its nearest existing ancestor): ext4, nfs..."""
    path = os.path.realpath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    best, kind = "", "?"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                mount = parts[4].encode().decode("unicode_escape")
                fs = parts[parts.index("-") + 1]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, fs
    except (OSError, ValueError, IndexError):
        return "?"  # not Linux: unknown, taken as shared
    return kind


def check_shared(paths: dict[str, str], partition: str | None) -> None:
    """Refuses paths on this machine's own disks when the partition's nodes are other machines."""
    name, nodes = _partition_nodes(partition)
    here = {socket.gethostname().split(".")[0], "localhost"}
    if nodes and all(node.split(".")[0] in here for node in nodes):
        return  # the jobs run on this machine: its disks are theirs
    for what, path in paths.items():
        kind = file_system(path)
        if kind in LOCAL_FILE_SYSTEMS:
            raise ValueError(f"the {what} {path} is on a file system of this machine ({kind}), "
                             f"which jobs on partition {name} (nodes {','.join(nodes) or 'none'})"
                             " cannot see: use a shared file system (NFS, Lustre, GPFS, ...)")


def preflight(options: SlurmOptions, study: str) -> None:
    """Every check that needs no submission (see the top); one-line ValueError."""
    slurm_command("sbatch", "--version")
    paths = {"study directory": study,
             "repository": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    if sys.prefix != sys.base_prefix:
        paths["virtualenv"] = sys.prefix
    check_shared(paths, options.partition)
    out = slurm_command("sbatch", "--test-only", *options.sbatch_args(), "--wrap=true")
    if out.returncode != 0:
        raise ValueError(f"SLURM refuses the job options ({' '.join(options.sbatch_args())}): "
                         f"{last_error(out)}")
