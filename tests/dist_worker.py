"""One rank of a multi-process test: set up, probe groups, train, average; print JSON.

Run as ``python -m tests.dist_worker '<json options>'`` with a scheduler environment.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from xffl_hpc import (
    cleanup_distributed_process_group,
    federated_average,
    get_appropriate_sharding_strategy,
    setup_distributed_process_group,
)


def members(group: dist.ProcessGroup | None) -> list[int] | None:
    return None if group is None else dist.get_process_group_ranks(group)


def group_sum(group: dist.ProcessGroup | None, rank: int) -> float | None:
    """all_reduce of (rank + 1) over ``group``."""
    if group is None:
        return None
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value, group=group)
    return value.item()


def mesh_info(mesh: Any) -> dict[str, Any] | None:
    if mesh is None:
        return None
    return {"ranks": mesh.mesh.tolist(), "names": list(mesh.mesh_dim_names)}


def train(state: Any, steps: int) -> dict[str, Any]:
    """Train a small MLP sharded on the state's mesh; data differs per federated group."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Linear(16, 1)
    )
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=state.mesh)
    fully_shard(model, mesh=state.mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1000 + (state.federated_rank or 0))
    inputs = torch.randn(64, 8, generator=generator)
    targets = inputs.sum(dim=1, keepdim=True) * (1.0 + (state.federated_rank or 0))
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    shards = [p.to_local().reshape(-1).tolist() for p in model.parameters()]
    result: dict[str, Any] = {"losses": losses, "before": shards}
    if state.is_federated_scaling_setup():
        federated_average(model, state, bucket_bytes=256)
        result["after"] = [p.to_local().reshape(-1).tolist() for p in model.parameters()]
    return result


def numpy_importable() -> bool:
    try:
        importlib.import_module("numpy")
    except ImportError:
        return False
    return True


def crash_before_groups(rank: int) -> None:
    """Make ``rank`` die after the rendezvous, before the sub-groups are created."""
    from xffl_hpc.distributed.rendezvous import Rendezvous

    real = Rendezvous.check_in

    def check_in(self: Rendezvous, label: str, *rest: Any) -> str:
        if label == "group creation" and self.rank == rank:
            os._exit(5)
        return real(self, label, *rest)

    Rendezvous.check_in = check_in  # type: ignore[method-assign]


def main() -> None:
    options = json.loads(sys.argv[1])
    setup = options.get("setup", {})
    if "crash_before_groups" in options:
        crash_before_groups(options["crash_before_groups"])
    try:
        state = setup_distributed_process_group(**setup)
    except Exception as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}), flush=True)
        traceback.print_exc()
        sys.exit(3)
    report: dict[str, Any] = {
        "numpy_importable": numpy_importable(),
        "rank": state.rank,
        "world_size": state.world_size,
        "node_rank": state.node_rank,
        "node_world_size": state.node_world_size,
        "node_local_rank": state.node_local_rank,
        "node_local_size": state.node_local_size,
        "backend": state.backend,
        "device": str(state.current_device),
        "init_device": str(state.init_device),
        "mode": state.topology.mode,
        "strategy": get_appropriate_sharding_strategy(state).name,
        "fsdp_mesh": mesh_info(state.fsdp_mesh),
        "hsdp_mesh": mesh_info(state.hsdp_mesh),
        "replica_local_rank": state.replica_local_rank,
        "replica_rank": state.replica_rank,
        "replica_world_size": state.replica_world_size,
        "federated_rank": state.federated_rank,
        "federated_local_rank": state.federated_local_rank,
        "federated_local_size": state.federated_local_size,
        "is_sender": state.is_sender,
        "receive_from": state.receive_from,
        "federated_group": members(state.federated_group[0] if state.federated_group else None),
        "federated_group_sum": group_sum(
            state.federated_group[0] if state.federated_group else None, state.rank
        ),
        "replica_group": members(state.replica_group[0] if state.replica_group else None),
        "federation": members(state.federation),
        "federation_sum": group_sum(state.federation, state.rank),
        "text": str(state),
    }
    if options.get("train"):
        report.update(train(state, options["train"]))
    cleanup_distributed_process_group(state)
    cleanup_distributed_process_group(state)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
