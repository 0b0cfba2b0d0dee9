"""One rank of a multi-process benchmark; prints one JSON line of timings.

Run as ``python -m benchmarks.worker '<json options>'`` (see :func:`benchmarks.common.run_ranks`).
Times are seconds since the launcher spawned this process, so interpreter start-up and
imports count. Only the standard library is imported before the clock starts.
"""

import time

STARTED = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

SPAWNED = float(os.environ["XFFL_BENCH_SPAWN"])


def _since_spawn() -> float:
    return time.time() - SPAWNED


def bootstrap_ours(options: dict[str, Any]) -> dict[str, float]:
    """``setup_distributed_process_group`` from the srun variables of this rank."""
    import torch.distributed as dist

    from xffl_hpc import setup_distributed_process_group

    imported = _since_spawn()
    setup_distributed_process_group(hsdp=options["hsdp"], federated=options["federated"])
    ready = _since_spawn()
    dist.barrier()
    return {"imported": imported, "ready": ready}


def bootstrap_bare(options: dict[str, Any]) -> dict[str, float]:
    """The same process group, mesh and groups with bare torch calls (groups.py's order)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    imported = _since_spawn()
    rank, world = options["rank"], options["world_size"]
    hsdp, federated = options["hsdp"], options["federated"]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{options['port']}", rank=rank, world_size=world
    )
    if federated is None and hsdp is None:
        shape, names = (world,), ("shard",)
    elif federated is None:
        shape, names = (world // hsdp, hsdp), ("replica", "shard")
    elif hsdp is None:
        shape, names = (world // federated, federated), ("federation", "shard")
    else:
        shape = (world // federated, federated // hsdp, hsdp)
        names = ("federation", "replica", "shard")
    mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
    # The sub-meshes and groups groups.py takes from the mesh, in its order.
    if "replica" in names:
        mesh["replica", "shard"]
        mesh.get_group("replica")
    else:
        mesh["shard"]
    if federated is not None:
        if hsdp is not None:
            for start in range(0, world, federated):
                members = list(range(start, start + federated))
                if rank in members:
                    dist.new_group(members, use_local_synchronization=True)
        else:
            mesh.get_group("shard")
        mesh.get_group("federation")
    ready = _since_spawn()
    dist.barrier()
    return {"imported": imported, "ready": ready}


def average(options: dict[str, Any]) -> dict[str, Any]:
    """Seconds per ``federated_average`` and per flat ``all_reduce`` of the same bytes.

    Both run on the averaging group ``federated_average`` uses, after a warm-up,
    alternately, each started right after a barrier; rank 0's clock is reported.
    """
    import torch
    import torch.distributed as dist

    from xffl_hpc import federated_average, setup_distributed_process_group

    state = setup_distributed_process_group(federated=options["federated"])
    assert state.federated_group is not None
    group = state.federated_group[0]
    torch.manual_seed(state.rank)
    tensors = [torch.randn(shape) for shape in options["shapes"]]
    nbytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    flat = torch.randn(nbytes // 4)

    def ours() -> None:
        federated_average(tensors, state)

    def bare() -> None:
        dist.all_reduce(flat, group=group)

    runs = {"ours": ours, "baseline": bare}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(options["warmup"] + options["repetitions"]):
        order = list(runs) if index % 2 == 0 else list(runs)[::-1]
        for name in order:
            dist.barrier(group=group)
            start = time.perf_counter()
            runs[name]()
            elapsed = time.perf_counter() - start
            if index >= options["warmup"]:
                times[name].append(elapsed)
    dist.barrier()
    return {"bytes": nbytes, "group_size": dist.get_world_size(group), "times": times}


TASKS = {"bootstrap_ours": bootstrap_ours, "bootstrap_bare": bootstrap_bare, "average": average}


def main() -> None:
    """Run the task, print its result, and exit at once: tearing down torch and its
    process groups takes seconds at 8 ranks on 2 cores and is not what is measured."""
    options = json.loads(sys.argv[1])
    result = TASKS[options["task"]](options)
    print(json.dumps({"started": STARTED - SPAWNED, **result}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
