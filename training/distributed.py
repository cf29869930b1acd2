"""Joins JAX's multi-controller runtime when this process is one of several.

One ``train.py`` process runs per host (or per GPU, as SLURM launches it);
``jax.distributed.initialize`` connects them so that ``jax.devices()`` lists
the devices of every process and one jitted program spans them all. Nothing
else in the code base changes: the mesh covers all devices, each process
feeds its own devices, and process 0 writes the run directory.

How a process learns it is one of several, first match wins:

1. explicit flags: ``--coordinator HOST:PORT --num-processes N --process-id I``;
2. JAX's own environment variables ``JAX_COORDINATOR_ADDRESS``,
   ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
3. a cluster JAX detects by itself: SLURM (``srun``, more than one task),
   Open MPI (``mpirun``, more than one rank), Cloud TPU pod slices.

Otherwise it is the only process and nothing is initialised.

A process that dies takes the job down: the coordination service notices its
missing heartbeats and stops the others (after ``heartbeat_timeout_s``), so a
job never hangs in a collective for ever; restarting the job resumes from the
last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os

import jax

DEFAULT_HEARTBEAT_TIMEOUT_S = 100


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the processes of one job."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S

    @property
    def explicit(self) -> bool:
        return self.coordinator is not None


def _cluster_detected() -> bool:
    """True under a launcher JAX auto-detects with more than one process."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return "TPU_WORKER_HOSTNAMES" in env and "," in env["TPU_WORKER_HOSTNAMES"]


def from_args(coordinator: str | None, num_processes: int | None, process_id: int | None,
              heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S) -> ProcessGroup:
    """Validates the command-line flags (all three or none); env variables fill the gaps."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "--coordinator HOST:PORT, --num-processes N and --process-id I go together "
            "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
        )
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if num_processes < 1:
            raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process-id must be in [0, {num_processes - 1}], got {process_id}"
            )
    if heartbeat_timeout_s < 1:
        raise ValueError(f"--heartbeat-timeout must be >= 1 s, got {heartbeat_timeout_s}")
    return ProcessGroup(coordinator, num_processes, process_id, heartbeat_timeout_s)


def initialize(group: ProcessGroup) -> bool:
    """Starts the distributed runtime if this is one of several processes; True if so.

    Must run before anything touches a JAX backend. CPU devices of several
    processes talk through gloo (the tests use it; GPUs and TPUs use their own
    interconnect and ignore this setting).
    """
    if not (group.explicit or _cluster_detected()):
        return False
    if group.explicit and group.num_processes == 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"heartbeat_timeout_seconds": group.heartbeat_timeout_s}
    if group.explicit:
        kwargs.update(coordinator_address=group.coordinator,
                      num_processes=group.num_processes, process_id=group.process_id)
    jax.distributed.initialize(**kwargs)
    return True
