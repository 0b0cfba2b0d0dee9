"""PBS Pro / OpenPBS / Torque: the job allocation and Torque's ``pbsdsh``."""

from __future__ import annotations

from collections.abc import Mapping

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.hostfile import read_slots, unique_hosts
from xffl_hpc.schedulers.records import Allocation, Launch
from xffl_hpc.schedulers.variables import read_int, read_str


def allocation(environ: Mapping[str, str]) -> Allocation | None:
    """The PBS job of this process (hosts from ``PBS_NODEFILE``), or ``None``."""
    job = read_str(environ, "PBS_JOBID")
    if job is None:
        return None
    nodefile = read_str(environ, "PBS_NODEFILE")
    slots = read_slots(*nodefile) if nodefile else None
    return Allocation(
        scheduler="pbs",
        job_id=job[1],
        hostnames=unique_hosts(slots) if slots else None,
        slots=slots,
        port_key=job[1],
        sources={"job_id": job[0], "hostnames": "PBS_NODEFILE"},
    )


def pbsdsh_launch(environ: Mapping[str, str], allocation: Allocation | None) -> Launch | None:
    """A task of Torque's plain ``pbsdsh``: one task per ``PBS_NODEFILE`` line.

    ``PBS_VNODENUM`` is the line (slot) this task was spawned on, which is its rank only
    under plain ``pbsdsh`` (``-u``, ``-c`` and ``-n`` start other subsets). The job shell
    also has ``PBS_VNODENUM=0`` but is TM task 1 (``PBS_TASKNUM``); OpenPBS sets no
    ``PBS_VNODENUM``.
    """
    slot = read_int(environ, "PBS_VNODENUM")
    task = read_str(environ, "PBS_TASKNUM")
    if slot is None or task is None or task[1] == "1":
        return None
    slots = allocation.slots if allocation is not None else None
    if not slots:
        raise PlacementError(
            f"PBS_VNODENUM={slot[1]} is set but PBS_NODEFILE is not: a pbsdsh task needs the "
            "job's node file to know the world size (Torque gives it only on the first node; "
            "copy it to a shared file system and pass PBS_NODEFILE with pbsdsh -v)"
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
            "node_rank": "PBS_NODEFILE",
            "hostnames": "PBS_NODEFILE",
        },
    )
