"""The variables a real allocation gives each process, for N emulated nodes on this host.

Emulated host names (``n1``, ``n2``...) need not resolve: every rank gets
``MASTER_ADDR=127.0.0.1``, which the adapters honour over the node list, and
``XFFL_HPC_IFNAME`` set to the loopback interface, since every emulated node is this
host. The port is left to the adapters (derived from the job id), so two emulated jobs
with different job ids get different ports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from xffl_hpc import NUMPY_WARNING
from xffl_hpc.network import loopback_interface
from xffl_hpc.schedulers.envrdzv import WORKER_VARIABLES
from xffl_hpc.schedulers.hostlist import compress
from xffl_hpc.schedulers.rendezvous import derive_port

#: Variables of any scheduler or launcher: never inherited by emulated ranks.
SCHEDULER_PREFIXES = (
    "SLURM",
    "PBS_",
    "PMI",
    "OMPI_",
    "PALS_",
    "JSM_",
    "LSB_",
    "FLUX_",
    "MASTER_",
    "TORCHELASTIC_",
)
SCHEDULERS = ("slurm", "pbs", "torchrun")
LOOPBACK = "127.0.0.1"
QUIET_NUMPY = f"ignore:{NUMPY_WARNING}:UserWarning"


def clean_environ() -> dict[str, str]:
    """This process's environment without scheduler, launcher or rendezvous variables."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(SCHEDULER_PREFIXES) and key not in WORKER_VARIABLES
    }


def on_this_host(environ: dict[str, str]) -> dict[str, str]:
    """What every rank of an emulated job shares: the rendezvous on loopback, collectives
    over the loopback interface (unless the user chose one), no warning about numpy."""
    warnings = environ.get("PYTHONWARNINGS", "").strip()
    return {
        "MASTER_ADDR": LOOPBACK,
        "XFFL_HPC_IFNAME": environ.get("XFFL_HPC_IFNAME", "").strip() or loopback_interface(),
        "PYTHONWARNINGS": f"{warnings},{QUIET_NUMPY}" if warnings else QUIET_NUMPY,
    }


def host_names(count: int, prefix: str = "n") -> list[str]:
    """Emulated node names: ``n1``, ``n2``, ..."""
    return [f"{prefix}{i + 1}" for i in range(count)]


def node_of(counts: Sequence[int], rank: int) -> tuple[int, int]:
    """The node of ``rank`` under block distribution, and that node's first rank."""
    first = 0
    for node, count in enumerate(counts):
        if rank < first + count:
            return node, first
        first += count
    raise ValueError(f"rank {rank} is beyond the {first} ranks of {list(counts)}")


def compress_counts(counts: Sequence[int]) -> str:
    """SLURM's form of per-node counts: ``[4, 4, 2]`` -> ``4(x2),2``."""
    parts: list[str] = []
    i = 0
    while i < len(counts):
        j = i
        while j < len(counts) and counts[j] == counts[i]:
            j += 1
        parts.append(f"{counts[i]}(x{j - i})" if j - i > 1 else str(counts[i]))
        i = j
    return ",".join(parts)


def slurm_task(
    job_id: str,
    hosts: Sequence[str],
    counts: Sequence[int],
    rank: int,
    het_nodes: Sequence[int] | None = None,
) -> dict[str, str]:
    """What ``srun`` gives task ``rank`` of a block-distributed step (step 0).

    ``het_nodes`` splits the nodes into heterogeneous-job components, as
    ``srun --het-group=0,1,...`` over all of them.
    """
    node, first = node_of(counts, rank)
    nodelist = compress(hosts)
    per_node = compress_counts(counts)
    total = str(sum(counts))
    env = {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOBID": job_id,
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(len(hosts)),
        "SLURM_NNODES": str(len(hosts)),
        "SLURM_TASKS_PER_NODE": per_node,
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_STEP_NUM_NODES": str(len(hosts)),
        "SLURM_STEP_NUM_TASKS": total,
        "SLURM_STEP_TASKS_PER_NODE": per_node,
        "SLURM_NTASKS": total,
        "SLURM_NPROCS": total,
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank - first),
        "SLURM_NODEID": str(node),
        "SLURMD_NODENAME": hosts[node],
    }
    if het_nodes is not None:
        env["SLURM_HET_SIZE"] = str(len(het_nodes))
        start = 0
        for group, size in enumerate(het_nodes):
            members = hosts[start : start + size]
            env[f"SLURM_JOB_NODELIST_HET_GROUP_{group}"] = compress(members)
            env[f"SLURM_JOB_ID_HET_GROUP_{group}"] = str(int(job_id) + group)
            env[f"SLURM_NTASKS_HET_GROUP_{group}"] = str(sum(counts[start : start + size]))
            start += size
    return env


def pbs_nodefile(hosts: Sequence[str], counts: Sequence[int]) -> str:
    """``PBS_NODEFILE`` contents: one line per slot, grouped by host."""
    return "".join(f"{host}\n" * count for host, count in zip(hosts, counts, strict=True))


def pbs_task(
    job_id: str,
    nodefile: str,
    counts: Sequence[int],
    rank: int,
    launcher: str = "pmi",
) -> dict[str, str]:
    """What ``mpiexec`` in a PBS job gives ``rank``: Hydra's PMI or Cray PALS variables."""
    node, first = node_of(counts, rank)
    env = {
        "PBS_JOBID": f"{job_id}.emulated",
        "PBS_NODEFILE": nodefile,
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "PBS_NODENUM": "0",
        "PBS_TASKNUM": "1",
        "PMI_RANK": str(rank),
        "PMI_SIZE": str(sum(counts)),
    }
    if launcher == "pals":
        env |= {
            "PALS_RANKID": str(rank),
            "PALS_LOCAL_RANKID": str(rank - first),
            "PALS_LOCAL_SIZE": str(counts[node]),
            "PALS_NODEID": str(node),
            "PMI_LOCAL_RANK": str(rank - first),
            "PMI_LOCAL_SIZE": str(counts[node]),
        }
    else:
        env |= {"MPI_LOCALRANKID": str(rank - first), "MPI_LOCALNRANKS": str(counts[node])}
    return env


def torchrun_task(job_id: str, counts: Sequence[int], rank: int) -> dict[str, str]:
    """What ``torchrun --nnodes=N`` (static rendezvous) gives worker ``rank``."""
    node, first = node_of(counts, rank)
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(sum(counts)),
        "LOCAL_RANK": str(rank - first),
        "LOCAL_WORLD_SIZE": str(counts[node]),
        "GROUP_RANK": str(node),
        "GROUP_WORLD_SIZE": str(len(counts)),
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(sum(counts)),
        "MASTER_PORT": str(derive_port(job_id)),
        "TORCHELASTIC_RUN_ID": job_id,
    }
