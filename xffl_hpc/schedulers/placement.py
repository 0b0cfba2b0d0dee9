"""The answer every adapter gives: who this process is and where its peers are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from xffl_hpc.errors import PlacementError

#: Keys of ``xffl-hpc env --json`` in the order DESIGN.md gives, then the extras.
CONTRACT_KEYS = (
    "scheduler",
    "launcher",
    "job_id",
    "rank",
    "world_size",
    "local_rank",
    "local_world_size",
    "node_rank",
    "num_nodes",
    "master_addr",
    "master_port",
    "hostnames",
)


@dataclass(frozen=True)
class Placement:
    """One process's place in a job.

    ``None`` means the environment does not determine the value (never a guess); the
    distributed core fills such fields after the rendezvous. ``hostnames`` lists the
    job's nodes in node-rank order; ``tasks_per_node`` the number of ranks on each.
    """

    scheduler: str
    launcher: str
    job_id: str | None
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None
    node_rank: int | None
    num_nodes: int | None
    master_addr: str | None
    master_port: int | None
    hostnames: tuple[str, ...] | None
    tasks_per_node: tuple[int, ...] | None = None
    step_id: str | None = None
    het_group: int | None = None
    het_size: int | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        src = self.sources

        def where(name: str) -> str:
            return src.get(name, name)

        if self.world_size < 1:
            raise PlacementError(
                f"{where('world_size')}={self.world_size}: the world size must be at least 1"
            )
        if not 0 <= self.rank < self.world_size:
            raise PlacementError(
                f"{where('rank')}={self.rank} with {where('world_size')}={self.world_size}: "
                f"the rank must be in 0..{self.world_size - 1}"
            )
        if self.local_world_size is not None:
            if not 1 <= self.local_world_size <= self.world_size:
                raise PlacementError(
                    f"{where('local_world_size')}={self.local_world_size} with "
                    f"{where('world_size')}={self.world_size}: the local world size must "
                    f"be in 1..{self.world_size}"
                )
            if not 0 <= self.local_rank < self.local_world_size:
                raise PlacementError(
                    f"{where('local_rank')}={self.local_rank} with "
                    f"{where('local_world_size')}={self.local_world_size}: the local rank "
                    f"must be in 0..{self.local_world_size - 1}"
                )
        elif self.local_rank < 0:
            raise PlacementError(
                f"{where('local_rank')}={self.local_rank}: the local rank must not be negative"
            )
        if (
            self.num_nodes is not None
            and self.node_rank is not None
            and not 0 <= self.node_rank < self.num_nodes
        ):
            raise PlacementError(
                f"{where('node_rank')}={self.node_rank} with "
                f"{where('num_nodes')}={self.num_nodes}: the node rank must be in "
                f"0..{self.num_nodes - 1}"
            )
        if (
            self.hostnames is not None
            and self.num_nodes is not None
            and len(self.hostnames) != self.num_nodes
        ):
            raise PlacementError(
                f"{where('hostnames')} names {len(self.hostnames)} host(s) but "
                f"{where('num_nodes')}={self.num_nodes}"
            )
        if self.tasks_per_node is not None:
            self._check_tasks_per_node(where)
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise PlacementError(
                f"{where('master_port')}={self.master_port}: a port must be in 1..65535"
            )

    def _check_tasks_per_node(self, where: Any) -> None:
        counts = self.tasks_per_node
        assert counts is not None
        if sum(counts) != self.world_size:
            raise PlacementError(
                f"{where('tasks_per_node')} adds up to {sum(counts)} task(s) but "
                f"{where('world_size')}={self.world_size}"
            )
        if self.num_nodes is not None and len(counts) != self.num_nodes:
            raise PlacementError(
                f"{where('tasks_per_node')} gives {len(counts)} node(s) but "
                f"{where('num_nodes')}={self.num_nodes}"
            )
        if (
            self.node_rank is not None
            and self.node_rank < len(counts)
            and self.local_world_size is not None
            and self.local_world_size != counts[self.node_rank]
        ):
            raise PlacementError(
                f"{where('local_world_size')}={self.local_world_size} but "
                f"{where('tasks_per_node')} gives {counts[self.node_rank]} task(s) "
                f"to node {self.node_rank}"
            )

    def to_json(self) -> dict[str, Any]:
        """The ``xffl-hpc env --json`` object: contract keys first, then the extras."""
        data = asdict(self)
        data.pop("sources")
        for key in ("hostnames", "tasks_per_node"):
            if data[key] is not None:
                data[key] = list(data[key])
        ordered = {key: data.pop(key) for key in CONTRACT_KEYS}
        ordered.update(data)
        return ordered
