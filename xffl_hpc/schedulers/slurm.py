"""SLURM: the job allocation and the ``srun`` step launcher."""

from __future__ import annotations

import re
from collections.abc import Mapping

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers import hostlist
from xffl_hpc.schedulers.records import Allocation, Launch
from xffl_hpc.schedulers.variables import parse_int, quote, read_int, read_str, require_int

_TASKS_ITEM = re.compile(r"(\d+)(?:\(x(\d+)\))?")
#: Most nodes one tasks-per-node value may describe (as hostlist.MAX_HOSTS).
_MAX_NODES = hostlist.MAX_HOSTS


def parse_tasks_per_node(name: str, text: str) -> tuple[int, ...]:
    """Expand SLURM's compressed counts, e.g. ``4(x2),2`` -> ``(4, 4, 2)``."""
    counts: list[int] = []
    for item in text.split(","):
        match = _TASKS_ITEM.fullmatch(item.strip())
        if match is None:
            raise PlacementError(
                f"{name}={quote(text)}: {quote(item.strip())} is not a count or COUNT(xREPEAT), "
                "as in '4(x2),2'"
            )
        value = parse_int(name, match.group(1), minimum=1)
        repeat = parse_int(name, match.group(2), minimum=1) if match.group(2) else 1
        if len(counts) + repeat > _MAX_NODES:
            raise PlacementError(f"{name}={quote(text)}: describes more than {_MAX_NODES} nodes")
        counts.extend([value] * repeat)
    return tuple(counts)


def _gpus_per_task(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """``SLURM_GPUS_PER_TASK`` is ``N`` or ``TYPE:N``."""
    found = read_str(environ, "SLURM_GPUS_PER_TASK")
    if found is None:
        return None
    name, text = found
    return name, parse_int(name, text.rsplit(":", 1)[-1])


def allocation(environ: Mapping[str, str]) -> Allocation | None:
    """The SLURM job this process belongs to, or ``None`` outside SLURM."""
    job = read_str(environ, "SLURM_JOB_ID", "SLURM_JOBID")
    if job is None:
        return None
    sources = {"job_id": job[0]}
    parse_int(job[0], job[1])
    nodes = read_str(environ, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    hosts = None
    if nodes is not None:
        hosts = tuple(hostlist.expand(nodes[1], variable=nodes[0]))
        sources["hostnames"] = nodes[0]
    het_size = read_int(environ, "SLURM_HET_SIZE", minimum=1)
    cpus = read_int(environ, "SLURM_CPUS_PER_TASK", minimum=1)
    gpus = _gpus_per_task(environ)
    return Allocation(
        scheduler="slurm",
        job_id=job[1],
        hostnames=hosts,
        port_key=job[1],
        het_size=het_size[1] if het_size else None,
        cpus_per_task=cpus[1] if cpus else None,
        gpus_per_task=gpus[1] if gpus else None,
        sources=sources,
    )


def het_group(environ: Mapping[str, str], host: str) -> int | None:
    """The heterogeneous-job component whose nodes include ``host``, if exactly one does.

    SLURM 22.05 sets no per-task component index; each component's node list is in
    ``SLURM_JOB_NODELIST_HET_GROUP_<n>``.
    """
    size = read_int(environ, "SLURM_HET_SIZE", minimum=1)
    if size is None:
        return None
    owners = []
    for group in range(size[1]):
        nodes = read_str(environ, f"SLURM_JOB_NODELIST_HET_GROUP_{group}")
        if nodes is not None and host in hostlist.expand(nodes[1], variable=nodes[0]):
            owners.append(group)
    return owners[0] if len(owners) == 1 else None


def srun_launch(environ: Mapping[str, str]) -> Launch | None:
    """This process as a task of an ``srun`` step, or ``None`` outside a step.

    The batch shell and an ``salloc`` shell are not steps (no ``SLURM_STEP_ID``).
    """
    step = read_str(environ, "SLURM_STEP_ID", "SLURM_STEPID")
    if step is None or read_str(environ, "SLURM_PROCID") is None:
        return None
    rank_var, rank = require_int(environ, "SLURM_PROCID")
    size_var, size = require_int(
        environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS", minimum=1
    )
    local_var, local_rank = require_int(environ, "SLURM_LOCALID")
    node_var, node_rank = require_int(environ, "SLURM_NODEID")
    sources = {
        "rank": rank_var,
        "world_size": size_var,
        "local_rank": local_var,
        "node_rank": node_var,
    }
    hosts = None
    nodes = read_str(environ, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if nodes is not None:
        hosts = tuple(hostlist.expand(nodes[1], variable=nodes[0]))
        sources["hostnames"] = nodes[0]
    num_nodes = read_int(environ, "SLURM_STEP_NUM_NODES", minimum=1)
    if num_nodes is not None:
        sources["num_nodes"] = num_nodes[0]
    elif nodes is not None:
        sources["num_nodes"] = f"the host count of {nodes[0]}"
    counts = None
    per_node = read_str(environ, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    if per_node is not None:
        counts = parse_tasks_per_node(*per_node)
        sources["tasks_per_node"] = sources["local_world_size"] = per_node[0]
    local_size = None
    if counts is not None and node_rank < len(counts):
        local_size = counts[node_rank]
    return Launch(
        launcher="srun",
        rank=rank,
        world_size=size,
        local_rank=local_rank,
        local_world_size=local_size,
        node_rank=node_rank,
        num_nodes=num_nodes[1] if num_nodes else (len(hosts) if hosts else None),
        hostnames=hosts,
        tasks_per_node=counts,
        step_id=step[1],
        het_group=het_group(environ, hosts[node_rank])
        if hosts and node_rank < len(hosts)
        else None,
        sources=sources,
    )
