"""``DistributedState``: what ``setup_distributed_process_group`` built for this process."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from xffl_hpc.distributed.nodes import NodeLayout
from xffl_hpc.distributed.rendezvous import Rendezvous
from xffl_hpc.network import Interface
from xffl_hpc.schedulers import Placement
from xffl_hpc.topology import Topology


@dataclass
class DistributedState:
    """This process's place in the job, its device, meshes and federated groups.

    Attribute names follow the reference ``xffl.distributed`` state. ``replica_*`` describe
    HSDP (``replica_local_rank`` is the shard index inside the sharding group,
    ``replica_rank`` the replica it belongs to); ``federated_*`` the federated groups.
    """

    backend: str
    master_addr: str
    master_port: int | None
    rank: int
    world_size: int
    node_local_rank: int
    node_local_size: int
    node_rank: int
    node_world_size: int
    topology: Topology
    timeout: timedelta
    placement: Placement | None = None
    replica_local_rank: int | None = None
    replica_local_size: int | None = None
    replica_rank: int | None = None
    replica_world_size: tuple[int, ...] | None = None
    federated_local_rank: int | None = None
    federated_local_size: tuple[int, ...] | None = None
    federated_rank: int | None = None
    federated_world_size: int | None = None
    fsdp_mesh: DeviceMesh | None = None
    hsdp_mesh: DeviceMesh | None = None
    is_sender: bool | None = None
    receive_from: int | None = None
    federated_group: tuple[dist.ProcessGroup, ...] | None = None
    replica_group: tuple[dist.ProcessGroup, ...] | None = None
    federation: dist.ProcessGroup | None = None
    device_type: str = "cpu"
    device_count: int = 0
    current_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    init_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    meta_initialization: bool = False
    streams: tuple[Any, ...] | None = None
    rendezvous: Rendezvous | None = field(default=None, repr=False)
    nodes: NodeLayout | None = field(default=None, repr=False)
    interface: Interface | None = None

    @property
    def mesh(self) -> DeviceMesh | None:
        """The mesh to shard the model on: the HSDP mesh when there is one, else FSDP's."""
        return self.hsdp_mesh if self.hsdp_mesh is not None else self.fsdp_mesh

    def is_fsdp_setup(self) -> bool:
        """Whether a 1-D FSDP mesh exists."""
        return self.fsdp_mesh is not None

    def is_hsdp_setup(self) -> bool:
        """Whether HSDP (a replica x shard mesh) is set up."""
        return self.hsdp_mesh is not None

    def is_federated_scaling_setup(self) -> bool:
        """Whether federated groups are set up."""
        return self.federated_rank is not None

    def __str__(self) -> str:
        lines = [
            f"rank {self.rank}/{self.world_size} on node {self.node_rank}/{self.node_world_size}"
            f" (local rank {self.node_local_rank}/{self.node_local_size}),"
            f" backend {self.backend}, rendezvous {self.master_addr}:{self.master_port}",
            f"mode {self.topology.mode}; device {self.current_device}"
            f" (init on {self.init_device}{', meta' if self.meta_initialization else ''})",
        ]
        if self.interface is not None:
            lines.append(f"network: {self.interface}")
        if self.hsdp_mesh is not None:
            lines.append(
                f"HSDP: shard {self.replica_local_rank} of {self.replica_local_size},"
                f" replica {self.replica_rank} of {self.replica_world_size}"
            )
        if self.federated_rank is not None:
            role = "sender" if self.is_sender else f"receives from rank {self.receive_from}"
            lines.append(
                f"federated group {self.federated_rank} of {self.federated_world_size}"
                f" (sizes {self.federated_local_size}), local rank {self.federated_local_rank},"
                f" {role}"
            )
        return "\n".join(lines)
