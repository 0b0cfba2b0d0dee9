"""Local emulation: N fake nodes x M tasks on this host, each rank with the variables a
real SLURM step, PBS ``mpiexec`` or ``torchrun`` would give it."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from xffl_hpc.emulate import environments as envs
from xffl_hpc.emulate.supervisor import JobResult, Supervisor
from xffl_hpc.errors import ConfigurationError

__all__ = ["JobResult", "emulate"]


def _counts(nodes: int, tasks_per_node: int | Sequence[int]) -> list[int]:
    if isinstance(tasks_per_node, int):
        counts = [tasks_per_node] * nodes
    else:
        counts = list(tasks_per_node)
        if len(counts) != nodes:
            raise ConfigurationError(
                f"tasks_per_node={counts} gives {len(counts)} node(s) but nodes={nodes}"
            )
    if nodes < 1 or any(count < 1 for count in counts):
        raise ConfigurationError(
            f"nodes={nodes}, tasks_per_node={tasks_per_node}: every node needs at least one task"
        )
    return counts


def emulate(
    command: Sequence[str],
    scheduler: str = "slurm",
    nodes: int = 2,
    tasks_per_node: int | Sequence[int] = 2,
    het: Sequence[int] | None = None,
    hsdp: int | None = None,
    federated: str | None = None,
    launcher: str = "pmi",
    job_id: str | None = None,
    node_prefix: str = "n",
    log_dir: Path | None = None,
    grace: float = 5.0,
    extra_env: dict[str, str] | None = None,
    console: TextIO = sys.stdout,
) -> JobResult:
    """Run ``command`` once per rank of an emulated allocation and wait for the job.

    ``het`` gives the nodes of each SLURM heterogeneous-job component; ``hsdp`` and
    ``federated`` reach the ranks as ``XFFL_HPC_HSDP`` / ``XFFL_HPC_FEDERATED``;
    ``launcher`` is ``pmi`` (Hydra) or ``pals`` for ``scheduler="pbs"``. The job id
    defaults to this process's id, so concurrent emulated jobs get different ports.
    Nodes are named ``node_prefix`` and a number; the names need not resolve.
    """
    if scheduler not in envs.SCHEDULERS:
        raise ConfigurationError(
            f"scheduler={scheduler!r}: expected one of {', '.join(envs.SCHEDULERS)}"
        )
    if launcher not in ("pmi", "pals"):
        raise ConfigurationError(f"launcher={launcher!r}: expected 'pmi' or 'pals'")
    counts = _counts(nodes, tasks_per_node)
    if het is not None and (scheduler != "slurm" or sum(het) != nodes or min(het) < 1):
        raise ConfigurationError(
            f"het={list(het)}: heterogeneous components are SLURM's and must split "
            f"the {nodes} nodes (sizes >= 1 adding up to {nodes})"
        )
    job = job_id or str(os.getpid())
    if not job.isdigit():
        raise ConfigurationError(f"job_id={job!r}: expected a number, as SLURM's job ids are")
    if not node_prefix or any(c.isspace() or c in ",[]" for c in node_prefix):
        raise ConfigurationError(
            f"node_prefix={node_prefix!r}: expected a host name prefix without spaces, "
            "commas or brackets"
        )
    hosts = envs.host_names(nodes, node_prefix)
    clean = envs.clean_environ()
    common = clean | envs.on_this_host(clean) | (extra_env or {})
    if hsdp is not None:
        common["XFFL_HPC_HSDP"] = str(hsdp)
    if federated is not None:
        common["XFFL_HPC_FEDERATED"] = str(federated)
    with tempfile.TemporaryDirectory(prefix="xffl-emulate-") as folder:
        nodefile = Path(folder) / "nodefile"
        nodefile.write_text(envs.pbs_nodefile(hosts, counts))
        ranks = []
        for rank in range(sum(counts)):
            if scheduler == "slurm":
                own = envs.slurm_task(job, hosts, counts, rank, het)
            elif scheduler == "pbs":
                own = envs.pbs_task(job, str(nodefile), counts, rank, launcher)
            else:
                own = envs.torchrun_task(job, counts, rank)
            ranks.append(common | own)
        return Supervisor(command, ranks, console, log_dir, grace).run()
