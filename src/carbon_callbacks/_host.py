"""Who this process is: its host, its place among the processes on that host, the devices it drives, and the job.

A host's CPU and DRAM counters (RAPL) cover every process on it, so exactly one process per host, the host's
leader (local rank 0), reads them; a GPU's NVML counter covers that GPU, so each process reads the GPUs it drives and
no others. That takes knowing, in every process, which host it is on and which process of that host it is. The
answer comes from the framework where it knows (Lightning's and the Trainer's local rank; JAX, by comparing the
host names of all its processes with its own collective), else from the launcher's environment (`torchrun` and
accelerate: `LOCAL_RANK`; SLURM's `srun`: `SLURM_LOCALID`; Open MPI: `OMPI_COMM_WORLD_LOCAL_RANK`; MPICH and
Intel MPI: `MPI_LOCALRANKID`, `PMI_LOCAL_RANK`). `CARBON_CALLBACKS_LOCAL_RANK` overrides them all, and
`CARBON_CALLBACKS_HOST` names the host where its host name cannot tell (containers that share one, tests that
simulate several hosts on one machine).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

#: Names the host (default: its host name).
HOST_ENV = "CARBON_CALLBACKS_HOST"
#: This process's index among the processes on its host, overriding what the framework or launcher says.
LOCAL_RANK_ENV = "CARBON_CALLBACKS_LOCAL_RANK"
#: The launchers' variables, in the order they are tried: (local rank, global rank, processes in the job).
LAUNCHERS = (
    ("torchrun / accelerate", "LOCAL_RANK", "RANK", "WORLD_SIZE"),
    ("SLURM srun", "SLURM_LOCALID", "SLURM_PROCID", "SLURM_NTASKS"),
    ("Open MPI", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("MPICH / Intel MPI", "MPI_LOCALRANKID", "PMI_RANK", "PMI_SIZE"),
    ("PMI", "PMI_LOCAL_RANK", "PMI_RANK", "PMI_SIZE"),
)


@dataclass(frozen=True)
class Host:
    """This process's place in the job.

    Attributes:
        name: the host's identity (`CARBON_CALLBACKS_HOST`, else its host name).
        local_rank: this process's index among the processes on the host; `None` when nothing says.
        rank: this process's index in the job.
        world: processes in the job.
        devices: CUDA ordinals (positions in `CUDA_VISIBLE_DEVICES`) of the GPUs this process drives; `None`:
            every GPU it sees.
        source: where `local_rank` came from, for `run.json` and the log.
    """

    name: str
    local_rank: int | None = 0
    rank: int = 0
    world: int = 1
    devices: tuple[int, ...] | None = None
    source: str = "one process"

    @property
    def leader(self) -> bool:
        """Whether this process reads the host's counters: local rank 0, or a process that cannot know."""
        return self.local_rank in (0, None)

    @property
    def known(self) -> bool:
        """Whether this process knows its place on its host (alone in the job, or told)."""
        return self.local_rank is not None or self.world == 1

    def describe(self) -> dict:
        """The facts for `run.json`'s `info` (of the writing process)."""
        return {"host": self.name, "local_rank": self.local_rank, "rank": self.rank, "world": self.world,
                "local_rank_source": self.source}


def host_name() -> str:
    """The host's identity: `CARBON_CALLBACKS_HOST`, else the host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def from_launcher(rank: int | None = None, world: int | None = None,
                  devices: Sequence[int] | None = None) -> Host:
    """This process as the launcher's environment describes it (`rank` and `world`, where given, win)."""
    name = host_name()
    override = _int(LOCAL_RANK_ENV)
    for launcher, local_var, rank_var, world_var in LAUNCHERS:
        local = _int(local_var)
        if local is None:
            continue
        rank = rank if rank is not None else _int(rank_var) or 0
        world = world if world is not None else _int(world_var) or 1
        source = f"{LOCAL_RANK_ENV}" if override is not None else f"{launcher}: {local_var}"
        return Host(name, override if override is not None else local, rank, world, _devices(devices), source)
    rank, world = rank or 0, world or 1
    if override is not None:
        return Host(name, override, rank, world, _devices(devices), LOCAL_RANK_ENV)
    return Host(name, 0 if world == 1 else None, rank, world, _devices(devices),
                "one process" if world == 1 else "unknown")


def from_framework(local_rank: int, rank: int, world: int, devices: Sequence[int] | None, source: str) -> Host:
    """This process as its framework describes it (`CARBON_CALLBACKS_LOCAL_RANK` still wins)."""
    override = _int(LOCAL_RANK_ENV)
    if override is not None:
        local_rank, source = override, LOCAL_RANK_ENV
    return Host(host_name(), local_rank, rank, world, _devices(devices), source)


def from_host_names(names: Sequence[str], rank: int, devices: Sequence[int] | None, source: str) -> Host:
    """This process among all the job's processes, given each one's host name (gathered with the framework's own
    collective): its local rank is the number of processes before it on the same host."""
    own = names[rank]
    return from_framework(sum(1 for name in names[:rank] if name == own), rank, len(names), devices, source)


def hosts_in_job() -> int | None:
    """How many hosts the launcher's job spans, where its environment says: SLURM's node count, torchrun's node
    groups, else the processes over the processes per host; `None` when nothing says."""
    for name in ("SLURM_NNODES", "SLURM_JOB_NUM_NODES", "GROUP_WORLD_SIZE"):
        if (count := _int(name)) is not None and count > 0:
            return count
    world = next((n for n in (_int(w) for *_, w in LAUNCHERS) if n), None)
    for name in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"):
        if (local := _int(name)) and world:
            return max(world // local, 1)
    return None


def job_id() -> str | None:
    """The launcher's id of the job (SLURM, torchrun), the same in every process: a folder name they can share."""
    return next((os.environ[n] for n in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID") if os.environ.get(n)), None)


def _devices(devices: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if devices is None else tuple(int(d) for d in devices)
