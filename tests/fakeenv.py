"""Environments as real launchers set them, for table, property and multi-process tests."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from xffl_hpc.emulate.environments import clean_environ, slurm_task

__all__ = ["clean_environ", "free_port", "srun_task"]


def srun_task(
    job_id: int, hosts: Sequence[str], counts: Sequence[int], rank: int
) -> dict[str, str]:
    """The variables ``srun`` gives task ``rank`` of a block-distributed step."""
    return slurm_task(str(job_id), hosts, counts, rank)


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
