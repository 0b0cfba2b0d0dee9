"""Device meshes and process groups built from a :class:`~xffl_hpc.topology.Topology`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from xffl_hpc.distributed.state import DistributedState
from xffl_hpc.topology import Topology


def _member_groups(
    groups: Iterable[tuple[int, ...]], rank: int, timeout: timedelta, copies: int = 1
) -> tuple[dist.ProcessGroup, ...] | None:
    """Create, in the global order of ``groups``, the groups that contain ``rank``.

    Only members take part (``use_local_synchronization``); every rank walks the same
    global order, so no two ranks wait on each other's groups in opposite orders.
    Returns ``copies`` groups with this rank's members (the last group found).
    """
    mine = None
    for members in groups:
        if rank in members:
            mine = tuple(
                dist.new_group(list(members), timeout=timeout, use_local_synchronization=True)
                for _ in range(copies)
            )
    return mine


def build_meshes_and_groups(state: DistributedState, copies: int) -> None:
    """Set ``state``'s meshes and groups; ``copies`` groups per averaging group (streams)."""
    topology = state.topology
    shape = topology.mesh_shape()
    if shape is not None:
        _from_one_mesh(state, topology, *shape, copies=copies)
    else:
        _from_groups(state, topology, copies=copies)


def _from_one_mesh(
    state: DistributedState,
    topology: Topology,
    shape: tuple[int, ...],
    names: tuple[str, ...],
    copies: int,
) -> None:
    """FSDP, HSDP and symmetric federated layouts: one mesh over all ranks."""
    mesh = init_device_mesh(state.device_type, shape, mesh_dim_names=names)
    if "replica" in names:
        state.hsdp_mesh = mesh["replica", "shard"]
        state.replica_group = (mesh.get_group("replica"),)
    else:
        state.fsdp_mesh = mesh["shard"]
    if "federation" not in names:
        return
    if "replica" in names:
        federations = (tuple(topology.federation(g)) for g in range(topology.num_groups))
        state.federation = _member_groups(federations, state.rank, state.timeout)[0]
    else:
        state.federation = mesh.get_group("shard")
    averaging = mesh.get_group("federation")
    extra = ()
    if copies > 1:
        extra = _member_groups(topology.averaging_groups(), state.rank, state.timeout, copies - 1)
    state.federated_group = (averaging, *extra)


def _from_groups(state: DistributedState, topology: Topology, copies: int) -> None:
    """Asymmetric federated groups (HSDP inside each): one mesh per group."""
    rank, timeout = state.rank, state.timeout
    federations = [tuple(topology.federation(g)) for g in range(topology.num_groups)]
    state.federation = _member_groups(federations, rank, timeout)[0]
    shard = _member_groups(topology.shard_groups(), rank, timeout)[0]
    replica = _member_groups(topology.replica_groups(), rank, timeout)[0]
    state.replica_group = (replica,)
    state.federated_group = _member_groups(topology.averaging_groups(), rank, timeout, copies)
    group = topology.group_of(rank)
    first = topology.offsets[group]
    hsdp = topology.hsdp
    assert hsdp is not None
    replicas = topology.federated[group] // hsdp
    layout = torch.arange(first, first + replicas * hsdp).view(replicas, hsdp)
    state.hsdp_mesh = DeviceMesh.from_group(
        [replica, shard], state.device_type, mesh=layout, mesh_dim_names=("replica", "shard")
    )
