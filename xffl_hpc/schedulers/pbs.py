"""PBS Pro / OpenPBS / Torque: the job allocation and Torque's ``pbsdsh``.

Reads ``PBS_JOBID`` and ``PBS_NODEFILE`` (one line per slot), which the job's first node
(mother superior) always has. OpenPBS and PBS Pro write the node file on the other
(sister) nodes too; Torque does not, so there ``PBS_NODEFILE`` is unset or, forwarded by
``mpiexec`` from the job shell, names a file that does not exist on that node. Torque's
TM tasks (``pbsdsh``) also get ``PBS_TASKNUM`` and ``PBS_VNODENUM``.
"""

from __future__ import annotations

from collections.abc import Mapping

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.hostfile import read_slots_if_present, unique_hosts
from xffl_hpc.schedulers.records import Allocation, Launch
from xffl_hpc.schedulers.variables import quote, read_int, read_str


def allocation(environ: Mapping[str, str]) -> Allocation | None:
    """The PBS job of this process (hosts from ``PBS_NODEFILE``), or ``None``.

    A node file that does not exist on this node leaves the hosts unknown (``None``),
    as an unset ``PBS_NODEFILE`` does; any other reason it cannot be read is an error.
    """
    job = read_str(environ, "PBS_JOBID")
    if job is None:
        return None
    nodefile = read_str(environ, "PBS_NODEFILE")
    slots = read_slots_if_present(*nodefile) if nodefile else None
    return Allocation(
        scheduler="pbs",
        job_id=job[1],
        hostnames=unique_hosts(slots) if slots else None,
        slots=slots,
        port_key=job[1],
        sources={"job_id": job[0], "hostnames": "PBS_NODEFILE"},
    )


def absent_nodefile(environ: Mapping[str, str], allocation: Allocation | None) -> str | None:
    """The path in ``PBS_NODEFILE`` when :func:`allocation` found no file there (a Torque
    sister node), else ``None``."""
    nodefile = read_str(environ, "PBS_NODEFILE")
    if nodefile is None or allocation is None or allocation.scheduler != "pbs":
        return None
    return nodefile[1] if allocation.slots is None else None


def pbsdsh_launch(environ: Mapping[str, str], allocation: Allocation | None) -> Launch | None:
    """A task of Torque's plain ``pbsdsh`` in a PBS job: one task per ``PBS_NODEFILE`` line.

    ``PBS_VNODENUM`` is the line (slot) this task was spawned on, which is its rank only
    under plain ``pbsdsh`` (``-u``, ``-c`` and ``-n`` start other subsets). The job shell
    also has ``PBS_VNODENUM=0`` but is TM task 1 (``PBS_TASKNUM``); OpenPBS sets no
    ``PBS_VNODENUM``.
    """
    slot = read_int(environ, "PBS_VNODENUM")
    task = read_str(environ, "PBS_TASKNUM")
    if slot is None or task is None or task[1] == "1":
        return None
    if allocation is None or allocation.scheduler != "pbs":
        return None  # not a PBS job: refused as a TM task by detect
    slots = allocation.slots
    if not slots:
        raise PlacementError(
            f"PBS_VNODENUM={slot[1]} is set but {_nodefile_state(environ, allocation)}: a "
            "pbsdsh task needs the job's node file to know the world size (Torque writes it "
            "only on the first node; copy it to a shared file system and pass PBS_NODEFILE "
            "with pbsdsh -v)"
        )
    if slot[1] >= len(slots):
        raise PlacementError(
            f"PBS_VNODENUM={slot[1]} but PBS_NODEFILE lists {len(slots)} slot(s): "
            f"expected 0..{len(slots) - 1}"
        )
    host = slots[slot[1]]
    hosts = unique_hosts(slots)
    counts = tuple(slots.count(name) for name in hosts)
    return Launch(
        launcher="pbsdsh",
        rank=slot[1],
        world_size=len(slots),
        local_rank=slots[: slot[1]].count(host),
        local_world_size=slots.count(host),
        node_rank=hosts.index(host),
        hostnames=hosts,
        tasks_per_node=counts,
        sources={
            "rank": slot[0],
            "world_size": "PBS_NODEFILE",
            "local_rank": "PBS_NODEFILE",
            "local_world_size": "PBS_NODEFILE",
            "node_rank": "PBS_NODEFILE",
            "hostnames": "PBS_NODEFILE",
            "tasks_per_node": "PBS_NODEFILE",
        },
    )


def _nodefile_state(environ: Mapping[str, str], allocation: Allocation) -> str:
    """Why ``allocation`` has no slots, naming ``PBS_NODEFILE``."""
    absent = absent_nodefile(environ, allocation)
    if absent is not None:
        return f"PBS_NODEFILE={quote(absent)} does not exist on this node"
    nodefile = read_str(environ, "PBS_NODEFILE")
    if nodefile is None:
        return "PBS_NODEFILE is not set"
    return f"PBS_NODEFILE={quote(nodefile[1])} lists no host"
