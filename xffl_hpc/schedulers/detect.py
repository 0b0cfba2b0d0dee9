"""``detect()``: the placement of the calling process from its environment.

Each value is resolved in this order: torchrun / ``env://`` variables > the launcher that
started this process > the allocation it runs in > a single-process default.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers import flux, lsf, mpi, pbs, slurm
from xffl_hpc.schedulers.envrdzv import env_launch
from xffl_hpc.schedulers.placement import Placement
from xffl_hpc.schedulers.records import Allocation, Launch
from xffl_hpc.schedulers.rendezvous import derive_port, interface_address
from xffl_hpc.schedulers.variables import quote, read_int, read_str

AllocationReader = Callable[[Mapping[str, str]], "Allocation | None"]
LaunchReader = Callable[[Mapping[str, str], "Allocation | None"], "Launch | None"]

_ALLOCATIONS: tuple[AllocationReader, ...] = (
    slurm.allocation,
    pbs.allocation,
    lsf.allocation,
    flux.allocation,
)

#: Launchers that leave their own variables in the environment of each rank, in the
#: order they are trusted: jsrun also sets Open MPI's variables, flux and PALS also set
#: PMI's. Inside a SLURM job they win over the srun step variables, which there describe
#: the launcher's helper daemons, unless both agree (``srun --mpi=pmi2`` sets PMI_RANK).
_MPI_LAUNCHERS: tuple[LaunchReader, ...] = (
    mpi.jsrun_launch,
    mpi.flux_launch,
    mpi.pals_launch,
    mpi.openmpi_launch,
    mpi.pmi_launch,
)
#: Rank variables of launchers that export no world size: alone, they must not be
#: mistaken for a single process.
_RANK_WITHOUT_SIZE = ("PMIX_RANK", "PMI_ID")


def _allocation(environ: Mapping[str, str]) -> Allocation | None:
    for reader in _ALLOCATIONS:
        found = reader(environ)
        if found is not None:
            return found
    return None


def _launch(environ: Mapping[str, str], alloc: Allocation | None) -> Launch | None:
    srun = slurm.srun_launch(environ)
    for reader in _MPI_LAUNCHERS:
        found = reader(environ, alloc)
        if found is not None:
            agrees = srun is not None and (srun.rank, srun.world_size) == (
                found.rank,
                found.world_size,
            )
            return srun if agrees else found
    return srun or pbs.pbsdsh_launch(environ, alloc)


def _single_process(environ: Mapping[str, str], host: str, alloc: Allocation | None) -> Launch:
    """Rank 0 of 1; under SLURM (a batch or salloc shell) on the node SLURM names.

    Refused where the environment shows one task of many whose peers it cannot name.
    """
    orphan = read_str(environ, *_RANK_WITHOUT_SIZE)
    if orphan is not None:
        raise PlacementError(
            f"{orphan[0]}={quote(orphan[1])} is set but no variable gives the world size "
            "(this launcher exports only the rank): set RANK, WORLD_SIZE and LOCAL_RANK"
        )
    task = read_str(environ, "PBS_TASKNUM")
    if task is not None and task[1] != "1":
        raise PlacementError(
            f"PBS_TASKNUM={quote(task[1])}: this process was spawned through PBS's TM "
            "interface (pbsdsh), which exports no rank or world size: start it with "
            "mpiexec, or set RANK, WORLD_SIZE and LOCAL_RANK"
        )
    procid = read_int(environ, "SLURM_PROCID")
    if procid is not None and procid[1] != 0:
        raise PlacementError(
            f"SLURM_PROCID={procid[1]} but SLURM_STEP_ID is not set: SLURM numbers tasks "
            "only inside an srun step (a batch or salloc shell is task 0), and without the "
            "step's variables this task's world size and peers are unknown (SLURM_NTASKS "
            "counts the job's tasks, not this launch's): start the tasks with srun, or set "
            "RANK, WORLD_SIZE and LOCAL_RANK"
        )
    nodefile = pbs.absent_nodefile(environ, alloc)
    if nodefile is not None:
        raise PlacementError(
            f"PBS_NODEFILE={quote(nodefile)} does not exist on this node, and no launcher "
            "variable gives this process's rank: Torque writes the node file only on the "
            "job's first node, so this is a task on another node whose peers are unknown; "
            "start the tasks with mpiexec, or set RANK, WORLD_SIZE and LOCAL_RANK"
        )
    node = read_str(environ, "SLURMD_NODENAME")
    return Launch(
        launcher="none",
        rank=0,
        world_size=1,
        local_rank=0,
        local_world_size=1,
        node_rank=0,
        num_nodes=1,
        hostnames=(node[1] if node else host,),
    )


def _on_one_node(launch: Launch, host: str) -> Launch:
    """A launch whose ranks all share one node: node 0 of 1, that node its host list."""
    one = launch.num_nodes == 1 or launch.local_world_size == launch.world_size
    done = launch.node_rank == 0 and launch.hostnames and len(launch.hostnames) == 1
    if not one or (done and launch.local_world_size is not None):
        return launch
    index = _node_rank(launch, host)
    node = launch.hostnames[index] if launch.hostnames and index is not None else host
    size = launch.sources["world_size"]
    return replace(
        launch,
        local_world_size=launch.world_size,
        node_rank=0,
        num_nodes=1,
        hostnames=(node,),
        tasks_per_node=(launch.world_size,),
        sources={"local_world_size": size, "tasks_per_node": size, **launch.sources},
    )


def _node_rank(launch: Launch, host: str) -> int | None:
    """The launcher's node index, else this host's unique position in the host list."""
    if launch.node_rank is not None or launch.hostnames is None:
        return launch.node_rank
    short = host.split(".", 1)[0]
    matches = [i for i, name in enumerate(launch.hostnames) if name.split(".", 1)[0] == short]
    return matches[0] if len(matches) == 1 else None


def _master_addr(
    environ: Mapping[str, str], launch: Launch, node_rank: int | None
) -> tuple[str, str | None]:
    explicit = read_str(environ, "MASTER_ADDR")
    if explicit is not None:
        return explicit
    ifname = read_str(environ, "XFFL_HPC_IFNAME")
    if ifname is not None and node_rank == 0:
        return ifname[0], interface_address(ifname[1], ifname[0])
    if launch.launcher == "none":
        return "default", "127.0.0.1"
    if launch.hostnames:
        return launch.sources.get("hostnames", "hostnames"), launch.hostnames[0]
    return "master_addr", None


def _master_port(
    environ: Mapping[str, str], alloc: Allocation | None, launch: Launch
) -> tuple[str, int | None]:
    explicit = read_int(environ, "MASTER_PORT", minimum=1)
    if explicit is not None:
        return explicit
    if alloc is not None and alloc.port_key is not None:
        return alloc.sources.get("job_id", "job id"), derive_port(alloc.port_key, launch.step_id)
    return "master_port", None


def detect(environ: Mapping[str, str] | None = None, hostname: str | None = None) -> Placement:
    """The placement of this process (``environ`` defaults to ``os.environ``).

    ``hostname`` is this host's name (default ``socket.gethostname()``). Raises
    :class:`~xffl_hpc.errors.PlacementError` naming the variables at fault when the
    environment is malformed or inconsistent.
    """
    env = os.environ if environ is None else environ
    host = hostname or socket.gethostname()
    alloc = _allocation(env)
    below = _launch(env, alloc)
    launch = env_launch(env, below, host) or below or _single_process(env, host, alloc)
    if launch.local_rank is None:
        raise PlacementError(
            f"{launch.sources['rank']}={launch.rank} is set but "
            f"{launch.sources['local_rank']} is not: {launch.launcher} normally sets both, "
            "and without it this process cannot pick its device"
        )
    launch = _on_one_node(launch, host)
    node_rank = _node_rank(launch, host)
    hosts = launch.hostnames
    num_nodes = launch.num_nodes
    counted: dict[str, str] = {}
    if num_nodes is None and hosts:
        num_nodes = len(hosts)
        counted["num_nodes"] = f"the host count of {launch.sources.get('hostnames', 'the job')}"
    addr_source, addr = _master_addr(env, launch, node_rank)
    port_source, port = _master_port(env, alloc, launch)
    sources = {
        **(alloc.sources if alloc else {}),
        **counted,
        **launch.sources,
        "master_addr": addr_source,
        "master_port": port_source,
    }
    return Placement(
        scheduler=alloc.scheduler if alloc else "none",
        launcher=launch.launcher,
        job_id=alloc.job_id if alloc else None,
        rank=launch.rank,
        world_size=launch.world_size,
        local_rank=launch.local_rank,
        local_world_size=launch.local_world_size,
        node_rank=node_rank,
        num_nodes=num_nodes,
        master_addr=addr,
        master_port=port,
        hostnames=hosts,
        tasks_per_node=launch.tasks_per_node,
        step_id=launch.step_id,
        het_group=launch.het_group,
        het_size=alloc.het_size if alloc else None,
        cpus_per_task=alloc.cpus_per_task if alloc else None,
        gpus_per_task=alloc.gpus_per_task if alloc else None,
        sources=sources,
    )
