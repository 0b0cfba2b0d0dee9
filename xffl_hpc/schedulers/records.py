"""What an allocation and a launcher each tell about the calling process."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Allocation:
    """The batch job: which scheduler, which job, which nodes (and slots, one per task)."""

    scheduler: str
    job_id: str | None
    hostnames: tuple[str, ...] | None = None
    slots: tuple[str, ...] | None = None
    port_key: str | None = None
    het_size: int | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """What the program that started this process says about it."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int | None
    local_world_size: int | None = None
    node_rank: int | None = None
    num_nodes: int | None = None
    hostnames: tuple[str, ...] | None = None
    tasks_per_node: tuple[int, ...] | None = None
    step_id: str | None = None
    het_group: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
