"""Launchers that leave per-rank variables: Open MPI, Hydra (MPICH, Intel MPI), Cray PALS,
IBM ``jsrun`` and ``flux run``.

They give rank, size and the local rank; the hosts come from the allocation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.records import Allocation, Launch
from xffl_hpc.schedulers.variables import read_int


def launch_from(
    environ: Mapping[str, str],
    allocation: Allocation | None,
    launcher: str,
    rank: str,
    size: str,
    local_rank: str,
    local_size: str | None,
    node_rank: str | None = None,
) -> Launch | None:
    """A launcher's view from its variable names; ``None`` when ``rank`` is unset.

    The allocation gives the host list; ``node_rank`` names the launcher's node index
    variable where it has one. A missing local rank is left ``None`` for ``detect``.
    """
    found = read_int(environ, rank)
    if found is None:
        return None
    found_rank = found[1]
    sources = {"rank": rank, "world_size": size, "local_rank": local_rank}
    found_size = read_int(environ, size, minimum=1)
    if found_size is None:
        raise PlacementError(
            f"{rank}={found_rank} is set but {size} is not: {launcher} gives no world size "
            "here; set WORLD_SIZE (and RANK, LOCAL_RANK) for env://"
        )
    found_local = read_int(environ, local_rank)
    local_count = read_int(environ, local_size, minimum=1) if local_size else None
    if local_count is not None:
        sources["local_world_size"] = local_size
    node = read_int(environ, node_rank) if node_rank else None
    if node is not None:
        sources["node_rank"] = node[0]
    hosts = allocation.hostnames if allocation else None
    if hosts is not None and allocation is not None:
        sources["hostnames"] = allocation.sources.get("hostnames", "hostnames")
    return Launch(
        launcher=launcher,
        rank=found_rank,
        world_size=found_size[1],
        local_rank=found_local[1] if found_local else None,
        local_world_size=local_count[1] if local_count else None,
        node_rank=node[1] if node else None,
        hostnames=hosts,
        sources=sources,
    )


def openmpi_launch(environ: Mapping[str, str], allocation: Allocation | None) -> Launch | None:
    """Open MPI ``mpirun``. ``OMPI_COMM_WORLD_NODE_RANK`` is not a node index."""
    return launch_from(
        environ,
        allocation,
        "openmpi",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    )


def pmi_launch(environ: Mapping[str, str], allocation: Allocation | None) -> Launch | None:
    """MPICH / Intel MPI Hydra ``mpiexec`` (simple PMI)."""
    return launch_from(
        environ,
        allocation,
        "pmi",
        "PMI_RANK",
        "PMI_SIZE",
        "MPI_LOCALRANKID",
        "MPI_LOCALNRANKS",
    )


def pals_launch(environ: Mapping[str, str], allocation: Allocation | None) -> Launch | None:
    """HPE Cray PALS ``mpiexec``: PALS_NODEID indexes the application's host list, which is
    ``PBS_NODEFILE`` unless ``--hosts``/``--hostfile`` say otherwise. The world size is
    exported only in Cray-PMI mode (``PMI_SIZE``)."""
    local_size = "PALS_LOCAL_SIZE" if "PALS_LOCAL_SIZE" in environ else "PMI_LOCAL_SIZE"
    return launch_from(
        environ,
        allocation,
        "pals",
        "PALS_RANKID",
        "PMI_SIZE",
        "PALS_LOCAL_RANKID",
        local_size,
        node_rank="PALS_NODEID",
    )


def jsrun_launch(environ: Mapping[str, str], allocation: Allocation | None) -> Launch | None:
    """IBM JSM ``jsrun`` (LSF on CORAL systems such as Summit and Lassen).

    There the batch script runs on a launch node that LSF lists first with one slot and
    on which ``jsrun`` starts no task: a list that starts with a one-slot host followed by
    others loses that host. A first host with more slots is a node of the job.
    """
    found = launch_from(
        environ,
        allocation,
        "jsrun",
        "JSM_NAMESPACE_RANK",
        "JSM_NAMESPACE_SIZE",
        "JSM_NAMESPACE_LOCAL_RANK",
        "JSM_NAMESPACE_LOCAL_SIZE",
    )
    slots = allocation.slots if allocation else None
    if found is None or found.hostnames is None or len(found.hostnames) < 2 or not slots:
        return found
    launch_node = slots.count(slots[0]) == 1
    return replace(found, hostnames=found.hostnames[1:]) if launch_node else found


def flux_launch(environ: Mapping[str, str], allocation: Allocation | None) -> Launch | None:
    """``flux run``: no host list and no local size in the environment."""
    found = launch_from(
        environ,
        allocation,
        "flux",
        "FLUX_TASK_RANK",
        "FLUX_JOB_SIZE",
        "FLUX_TASK_LOCAL_ID",
        None,
    )
    nodes = read_int(environ, "FLUX_JOB_NNODES", minimum=1)
    if found is None or nodes is None:
        return found
    return replace(found, num_nodes=nodes[1], sources={**found.sources, "num_nodes": nodes[0]})
