"""Environments as real launchers would set them, for table and property tests."""

from __future__ import annotations

import os
import socket

from xffl_hpc.schedulers.hostlist import compress

#: Variables of any scheduler or launcher that could leak into a test from outside.
_PREFIXES = ("SLURM", "PBS_", "PMI", "OMPI_", "PALS_", "JSM_", "LSB_", "FLUX_", "MASTER_", "XFFL_")
_ENV_RDZV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def clean_environ() -> dict[str, str]:
    """This process's environment without any scheduler, launcher or rendezvous variable."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_PREFIXES) and key not in _ENV_RDZV
    }


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def compress_counts(counts: list[int]) -> str:
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


def srun_task(job_id: int, hosts: list[str], counts: list[int], rank: int) -> dict[str, str]:
    """The variables ``srun`` gives task ``rank`` of a block-distributed step."""
    node = 0
    first = 0
    while rank >= first + counts[node]:
        first += counts[node]
        node += 1
    nodelist = compress(hosts)
    per_node = compress_counts(counts)
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOBID": str(job_id),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(len(hosts)),
        "SLURM_TASKS_PER_NODE": per_node,
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_STEP_NUM_NODES": str(len(hosts)),
        "SLURM_STEP_NUM_TASKS": str(sum(counts)),
        "SLURM_STEP_TASKS_PER_NODE": per_node,
        "SLURM_NTASKS": str(sum(counts)),
        "SLURM_NPROCS": str(sum(counts)),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank - first),
        "SLURM_NODEID": str(node),
        "SLURMD_NODENAME": hosts[node],
    }
