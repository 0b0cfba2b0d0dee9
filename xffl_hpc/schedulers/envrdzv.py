"""torchrun and hand-set ``env://`` variables (RANK, WORLD_SIZE, LOCAL_RANK, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.records import Launch
from xffl_hpc.schedulers.variables import quote, read_int

#: What torchrun sets per worker (besides MASTER_ADDR / MASTER_PORT): a process that
#: starts ranks must not pass its own values on.
WORKER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
)


def env_launch(environ: Mapping[str, str], underlying: Launch | None, host: str) -> Launch | None:
    """The ``env://`` view of this process, or ``None`` when RANK and WORLD_SIZE are unset.

    When the launcher below agrees on rank and world size (``RANK=$SLURM_PROCID`` in a
    batch script, say), it keeps its name and fills what ``env://`` leaves unset.
    Otherwise (torchrun inside a one-task-per-node ``srun``) the ``env://`` values stand
    alone: torchrun numbers nodes by arrival, so host order is unknown there.
    """
    rank = read_int(environ, "RANK")
    size = read_int(environ, "WORLD_SIZE", minimum=1)
    if rank is None and size is None:
        return None
    if rank is None or size is None:
        have, lack = ("RANK", "WORLD_SIZE") if rank is not None else ("WORLD_SIZE", "RANK")
        raise PlacementError(
            f"{have}={quote(environ[have].strip())} is set but {lack} is not: env:// needs both"
        )
    local = read_int(environ, "LOCAL_RANK")
    local_size = read_int(environ, "LOCAL_WORLD_SIZE", minimum=1)
    group = read_int(environ, "GROUP_RANK")
    groups = read_int(environ, "GROUP_WORLD_SIZE", minimum=1)
    found = {
        "rank": rank,
        "world_size": size,
        "local_rank": local,
        "local_world_size": local_size,
        "node_rank": group,
        "num_nodes": groups,
    }
    given = {key: item[1] for key, item in found.items() if item is not None}
    sources = {key: item[0] for key, item in found.items() if item is not None}
    if underlying is not None and (underlying.rank, underlying.world_size) == (rank[1], size[1]):
        keeps_hosts = group is None or group[1] == underlying.node_rank
        base = (
            underlying if keeps_hosts else replace(underlying, hostnames=None, tasks_per_node=None)
        )
        return replace(base, **given, sources={**underlying.sources, **sources})
    if local is None:
        raise PlacementError(
            f"RANK={rank[1]} and WORLD_SIZE={size[1]} are set but LOCAL_RANK is not: "
            "set LOCAL_RANK (torchrun does) so each process can pick its device"
        )
    one_node = (groups is not None and groups[1] == 1) or (
        local_size is not None and local_size[1] == size[1]
    )
    return Launch(
        launcher="torchrun",
        rank=rank[1],
        world_size=size[1],
        local_rank=local[1],
        local_world_size=local_size[1] if local_size else None,
        node_rank=group[1] if group else (0 if one_node else None),
        num_nodes=groups[1] if groups else (1 if one_node else None),
        hostnames=(host,) if one_node else None,
        sources=sources,
    )
